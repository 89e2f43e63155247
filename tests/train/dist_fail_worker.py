"""Worker of the failing-rank test, launched by torchrun (2 gloo ranks, CPU):

    torchrun --nproc_per_node=2 tests/train/dist_fail_worker.py train --method rlvr --config ...

Runs the `rl2f` command line with the training loop replaced: rank 1 fails at once (as a
rank does on an error of its own: a full disk, a bad problem), while rank 0 waits in a
collective for rank 1, as a training step would.
"""
import torch.distributed as dist

import rl2f.train
from rl2f.cli.main import cli


def train_where_rank_1_fails(cfg, out_dir, resume=None, d=None):
    if d.rank == 1:
        raise RuntimeError("rank 1 failed here on purpose")
    dist.all_gather_object([None] * d.world_size, "rank 0's step")  # never matched by rank 1
    return {}


rl2f.train.train = train_where_rank_1_fails
cli()
