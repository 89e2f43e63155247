"""Worker for the distributed-equivalence test, launched by torchrun (gloo, CPU):

    torchrun --nproc_per_node=2 tests/train/dist_worker.py CKPT WARM_ADAPTER SFT_DATA OUT

Runs 3 steps of SFT (OUT/sft) and then 3 of GRPO (OUT/grpo) with FSDP2 over the ranks; the
test repeats both in one process with grad_accum = 2 (the same global batch) and compares.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_toys import OneSecretTask, equivalence_configs  # noqa: E402

from rl2f.distributed import init_distributed, shutdown  # noqa: E402
from rl2f.train.grpo import train_grpo  # noqa: E402
from rl2f.train.sft import train_sft  # noqa: E402

ckpt, warm, data, out = sys.argv[1:5]
sft_cfg, grpo_cfg = equivalence_configs(ckpt, data, grad_accum=1)
d = init_distributed("cpu")
assert d.world_size == 2, d
try:
    train_sft(sft_cfg, Path(out) / "sft", d=d)
    train_grpo(grpo_cfg, Path(out) / "grpo", d=d, task=OneSecretTask(), init_adapter=warm)
finally:
    shutdown(d)
