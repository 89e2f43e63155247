"""The trainer-vs-sampler log-prob gap on every GRPO metrics row: |log p_trainer - log
p_sampler| over the step's loss tokens before the update, and the importance ratio's range."""
import dataclasses
import json
from pathlib import Path

from train_toys import OneSecretTask, tiny_config

import rl2f.train.grpo as grpo
from rl2f.train.grpo import train_grpo


def _rows(cfg, out, warm_start):
    train_grpo(cfg, out, task=OneSecretTask(), init_adapter=warm_start)
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_gap_is_zero_on_policy_with_the_builtin_engine(tmp_path, tiny_ckpt, warm_start):
    """The built-in engine samples with the trainer's own weights at temperature 1: the gap
    is float rounding (mean <= 1e-6; the folded-LoRA fp32 sampler and the trainer differ by
    up to ~4e-6 on a token), and the ratio stays within 1e-5 of 1, on every step."""
    cfg = tiny_config(tiny_ckpt, 'train.method="rl2f"', "train.max_steps=2", "train.drop_zero_variance=false")
    rows = _rows(cfg, tmp_path / "run", warm_start)
    for r in rows:
        assert r["loss_tokens"] > 0
        assert 0 <= r["logprob_gap_mean"] <= 1e-6 and r["logprob_gap_mean"] <= r["logprob_gap_max"] <= 1e-5, r
        assert 1 - 1e-5 <= r["ratio_min"] <= r["ratio_max"] <= 1 + 1e-5, r


def test_gap_shows_a_sampler_at_another_temperature(tmp_path, tiny_ckpt, warm_start, monkeypatch):
    """A sampler that draws at temperature 0.7 while the trainer scores at 1 (what a
    misconfigured inference engine does): the gap is far from 0 and the ratio leaves 1; with
    train.tis_cap the same rollouts are trained on the trainer's own ratio, nothing clipped."""
    real = grpo.training_runner

    def hotter(run):
        runner = real(run)
        runner.sampling_params = dataclasses.replace(runner.sampling_params, temperature=0.7)
        return runner

    monkeypatch.setattr(grpo, "training_runner", hotter)
    cfg = tiny_config(tiny_ckpt, 'train.method="rl2f"', "train.max_steps=1", "train.drop_zero_variance=false")
    (row,) = _rows(cfg, tmp_path / "run", warm_start)
    assert row["logprob_gap_mean"] > 0.01 and row["logprob_gap_max"] > 0.1, row
    assert row["ratio_min"] < 0.9 or row["ratio_max"] > 1.1, row
    assert row["clip_frac"] > 0  # the ratio against such a sampler leaves the clip range
    # train.tis_cap: the clipped term on the trainer's own ratio (1), the gap as a capped weight
    cfg = tiny_config(tiny_ckpt, 'train.method="rl2f"', "train.max_steps=1", "train.drop_zero_variance=false",
                      "train.tis_cap=2.0")
    (tis,) = _rows(cfg, tmp_path / "tis", warm_start)
    assert tis["clip_frac"] == 0 and tis["logprob_gap_mean"] == row["logprob_gap_mean"], (tis, row)
    assert tis["loss"] != row["loss"]
