"""bench_grpo_step at its smallest (one round of one step): the tiny model, and the fetched
SmolLM2 loaded by both providers (skipped until `rl2f fetch-model smollm2`). TRL is measured
wherever trl, peft and datasets import (CI's benchmark stage), never quietly skipped there."""
import importlib.util

import pytest

pytestmark = pytest.mark.slow

TINY = ["--prompts", "1", "--group", "2", "--new-tokens", "4", "--micro-batch", "2", "--steps", "1",
        "--warmup", "0", "--rounds", "1"]
PHASES = ("rollout_s", "logprob_s", "backward_s", "optim_s", "step_s", "tokens_per_s", "peak_mem_mb")
HAS_TRL = all(importlib.util.find_spec(m) for m in ("trl", "peft", "datasets"))


def check(row: dict) -> None:
    for provider in ("rl2f", "trl") if HAS_TRL else ("rl2f",):
        r = row[provider]
        assert "error" not in r and "skipped" not in r, r
        for key in PHASES:
            assert r[key]["n"] == 1 and r[key]["median"] >= 0, (provider, key, r[key])
        # every phase ran: no group is left out of training (drop_zero_variance off)
        assert r["step_s"]["median"] > 0 and r["backward_s"]["median"] > 0 and r["logprob_s"]["median"] > 0
        assert r["gen_tokens_per_step"] > 0 and r["tokens_per_s"]["median"] > 0
    if HAS_TRL:
        assert set(row["rl2f_vs_trl"]) == {"throughput", "step_time", "memory_ratio"}
        assert row["rl2f_vs_trl"]["throughput"]["median"] > 0
    else:
        assert "not installed" in row["trl"]["skipped"]


def test_tiny(run_bench):
    record = run_bench("bench_grpo_step", "--configs", "tiny", *TINY)
    assert record["bench"] == "grpo_step" and record["shape"]["dtype"] == "fp32"
    assert record["shape"]["gradient_checkpointing"] == {"rl2f": False, "trl": False}
    check(record["configs"]["tiny"])


def test_smollm2(run_bench, smollm2_dir):
    record = run_bench("bench_grpo_step", "--configs", "smollm2", *TINY)
    row = record["configs"]["smollm2"]
    assert row["checkpoint"] == str(smollm2_dir)
    check(row)
