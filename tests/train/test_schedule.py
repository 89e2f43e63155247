"""The learning-rate schedule completes over the steps a run actually takes: warmup, then a
cosine to `lr * min_lr_ratio` at the last step, whether the run ends at `max_steps`, at its
generated-token budget (GRPO) or at its epoch limit (SFT)."""
import json
import math
from pathlib import Path

import pytest

from train_toys import tiny_config

from rl2f.config import TrainSection
from rl2f.train import train
from rl2f.train.common import lr_factor


def rows(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_lr_factor_by_hand():
    """Warmup ramps (step + 1) / warmup_steps; the cosine is 1 at progress 0, halfway between
    1 and the floor at progress 1/2, exactly the floor at 1 (and beyond)."""
    t = TrainSection(warmup_steps=4, min_lr_ratio=0.1)
    assert lr_factor(0, 0.0, t) == pytest.approx(0.25)
    assert lr_factor(3, 0.0, t) == pytest.approx(1.0)
    assert lr_factor(10, 0.5, t) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(10, 1.0, t) == pytest.approx(0.1)
    assert lr_factor(10, 1.7, t) == pytest.approx(0.1)
    t = TrainSection(warmup_steps=0, min_lr_ratio=0.0)
    assert lr_factor(0, 0.25, t) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_budget_bounded_grpo_ends_at_the_final_lr(tmp_path, tiny_ckpt, warm_start):
    """A GRPO run stopped by `train.max_student_tokens` long before `max_steps` takes its last
    step at lr * min_lr_ratio, and its learning rate falls step by step on the way."""
    probe = tiny_config(tiny_ckpt, 'train.method="rlvr"', "train.max_steps=1")
    train(probe, tmp_path / "probe", init_adapter=warm_start)
    per_step = rows(tmp_path / "probe")[0]["student_tokens"]
    budget = int(3.5 * per_step)  # about four steps of a 1000-step schedule
    cfg = tiny_config(tiny_ckpt, 'train.method="rlvr"', "train.max_steps=1000", "train.lr=1e-3",
                      "train.min_lr_ratio=0.1", f"train.max_student_tokens={budget}")
    train(cfg, tmp_path / "budget", init_adapter=warm_start)
    lrs = [r["lr"] for r in rows(tmp_path / "budget")]
    assert 3 <= len(lrs) < 10
    assert lrs[-1] == pytest.approx(1e-3 * 0.1)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_epoch_limited_sft_ends_at_the_final_lr(tmp_path, tiny_ckpt, chat_files):
    """An SFT run that its epoch limit ends after a few steps (max_steps far away) takes its
    last step at lr * min_lr_ratio."""
    cfg = tiny_config(tiny_ckpt, 'train.method="sft"', f'train.sft_data="{chat_files["train"]}"',
                      "train.max_steps=1000", "train.sft_epochs=1", "train.micro_batch=16", "train.lr=1e-3",
                      "train.min_lr_ratio=0.2")
    train(cfg, tmp_path / "sft")
    lrs = [r["lr"] for r in rows(tmp_path / "sft")]
    assert len(lrs) == 4  # 64 dialogues / 16 per step
    assert lrs[-1] == pytest.approx(1e-3 * 0.2)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
