"""Training: SFT on dialogues (sft.py) and GRPO for RLVR / RL2F (grpo.py).

`train(cfg, out_dir, resume=None)` runs the method named by `cfg.train.method`; both loops
write out_dir/metrics.jsonl and atomic checkpoints under out_dir/checkpoints/.
"""
from __future__ import annotations

from pathlib import Path

from rl2f.train.grpo import train_grpo
from rl2f.train.sft import train_sft


def train(cfg, out_dir: str | Path, resume: str | Path | None = None, **kw) -> dict:
    """Run the configured method; returns the last step's metrics."""
    if cfg.train.method == "sft":
        return train_sft(cfg, out_dir, resume=resume, **kw)
    return train_grpo(cfg, out_dir, resume=resume, **kw)
