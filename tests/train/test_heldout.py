"""Evaluation during training (train.eval_every): held-out rows in OUT/eval.jsonl, the best
adapter kept, and the training stream unchanged by it."""
import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from train_toys import OneSecretTask, tiny_config

from rl2f.eval.evaluate import evaluate_models
from rl2f.train.grpo import train_grpo

TIMING = ("tokens_per_s", "gen_tokens_per_s", "peak_mem_mb", "checkpoint")  # and the run's own path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _training(row: dict) -> dict:
    """A metrics row without its timings (wall clock differs between any two runs) and path."""
    return {k: v for k, v in row.items() if k not in TIMING and not k.endswith("_s")}


def _adapter(run: Path, step: int) -> dict:
    return load_file(str(run / "checkpoints" / f"step-{step:06d}" / "adapter" / "adapter_model.safetensors"))


def test_eval_rows_best_adapter_and_an_unchanged_training_stream(tmp_path, tiny_ckpt, warm_start):
    """4 GRPO steps with eval_every 2 on 4 held-out problems: eval.jsonl has rows at steps 2
    and 4 with acc@1..T, correction rate, plasticity and leak rate; the step-2 row equals what
    `evaluate_models` measures for the step-2 checkpoint's adapter on the same problems and
    seed; best-adapter holds the adapter of the best row's step; and every training row and
    checkpoint equals those of the same run without evaluation. A run stopped at step 2 and
    resumed to 4 writes the same eval rows."""
    common = ['train.method="rl2f"', "train.max_steps=4", "train.save_every=2", "train.drop_zero_variance=false",
              "train.eval_problems=4", "eval.seed=3"]
    with_eval, without = tmp_path / "with", tmp_path / "without"
    train_grpo(tiny_config(tiny_ckpt, *common, "train.eval_every=2"), with_eval, task=OneSecretTask(),
               init_adapter=warm_start)
    train_grpo(tiny_config(tiny_ckpt, *common), without, task=OneSecretTask(), init_adapter=warm_start)

    assert [_training(r) for r in _rows(with_eval / "metrics.jsonl")] == \
        [_training(r) for r in _rows(without / "metrics.jsonl")]
    for step in (2, 4):
        a, b = _adapter(with_eval, step), _adapter(without, step)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (without / "eval.jsonl").exists()

    evals = _rows(with_eval / "eval.jsonl")
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert r["problems"] == 4 and 0 <= r["acc@1"] <= r["acc@2"] <= 1
        assert {"correction_rate", "plasticity", "leak_rate", "best"} <= set(r)

    # the same measurement by `rl2f evaluate`'s code, on the checkpoint's adapter
    cfg = tiny_config(tiny_ckpt, *common, "eval.max_turns=2")
    problems = OneSecretTask().problems(4, seed=cfg.task.seed, split="test")
    report = evaluate_models(cfg, {"step2": str(with_eval / "checkpoints" / "step-000002" / "adapter")}, problems,
                             seeds=[3], controls=("feedback",), pass_at_k=0)
    assert report["models"]["step2"]["acc_at"] == [evals[0]["acc@1"], evals[0]["acc@2"]]

    best = max(evals, key=lambda r: (r["acc@2"], -r["step"]))
    assert [r["step"] for r in evals if r["best"]][-1] == best["step"]
    assert json.loads((with_eval / "best-adapter" / "best.json").read_text())["step"] == best["step"]
    kept = load_file(str(with_eval / "best-adapter" / "adapter_model.safetensors"))
    ref = _adapter(with_eval, best["step"])
    assert kept.keys() == ref.keys() and all(torch.equal(kept[k], ref[k]) for k in kept)

    resumed = tmp_path / "resumed"
    cfg2 = tiny_config(tiny_ckpt, *common[:1], "train.max_steps=2", *common[2:], "train.eval_every=2")
    train_grpo(cfg2, resumed, task=OneSecretTask(), init_adapter=warm_start)
    train_grpo(tiny_config(tiny_ckpt, *common, "train.eval_every=2"), resumed, resume=resumed, task=OneSecretTask())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(_rows(resumed / "eval.jsonl")) == strip(evals)
