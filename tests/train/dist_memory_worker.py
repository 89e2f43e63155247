"""Worker of the per-rank metrics test, launched by torchrun (2 gloo ranks, CPU):

    torchrun --nproc_per_node=2 tests/train/dist_memory_worker.py CKPT OUT

Rank 1 first fills 800 MB of its own memory (so its peak RSS is far above rank 0's), then
both train 3 GRPO steps on the equivalence config (OUT/grpo). Each rank writes
OUT/rank{r}.json with its peak RSS (MiB) after the filling and at the end.
"""
import json
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from train_toys import OneSecretTask, equivalence_configs  # noqa: E402

from rl2f.distributed import init_distributed, shutdown  # noqa: E402
from rl2f.train.grpo import train_grpo  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


ckpt, out = sys.argv[1:3]
_, grpo_cfg = equivalence_configs(ckpt, "", grad_accum=1)
d = init_distributed("cpu")
ballast = torch.ones(200 << 20) if d.rank == 1 else None  # 800 MB, every page written
after_filling = peak_rss_mb()
try:
    train_grpo(grpo_cfg, Path(out) / "grpo", d=d, task=OneSecretTask())
finally:
    Path(out, f"rank{d.rank}.json").write_text(json.dumps({"after_filling": after_filling, "end": peak_rss_mb()}))
    shutdown(d)
