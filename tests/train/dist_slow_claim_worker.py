"""Worker of the run-directory claim test, launched by torchrun (2 gloo ranks, CPU):

    torchrun --nproc_per_node=2 tests/train/dist_slow_claim_worker.py train --method rlvr ...

Runs the `rl2f` command line with rank 0's claim of --out slowed down (as on a slow shared
file system): rank 0 holds the marker's lock, still empty, for two seconds before it writes
the marker's contents.
"""
import time

import torch.distributed as dist

import rl2f.outputs
from rl2f.cli.main import cli

_lock = rl2f.outputs.lock


def slow_lock(path, what):
    _lock(path, what)
    if dist.get_rank() == 0:
        time.sleep(2)


rl2f.outputs.lock = slow_lock
cli()
