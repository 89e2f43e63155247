"""bench_demo_step --config smollm2 at its smallest (one round, one step, one problem of two
episodes of up to two turns): this checkout against an earlier commit, each in its own
process from its own tree. The earlier code here is HEAD (any clone has it): the mechanism
is what is tested, not a speed-up. Skipped until `rl2f fetch-model smollm2`."""
import pytest

pytestmark = pytest.mark.slow

PHASES = ("step_s", "tokens_per_s", "rollout_s", "logprob_s", "backward_s", "optim_s")


def test_smollm2_against_head(run_bench, smollm2_dir):
    record = run_bench("bench_demo_step", "--config", "smollm2", "--base-commit", "HEAD", "--problems", "1",
                       "--group", "2", "--max-turns", "2", "--new-tokens", "6", "--steps", "1", "--warmup", "0",
                       "--rounds", "1", "--threads", "1")
    assert record["bench"] == "demo_step" and record["config"] == "smollm2"
    assert record["codes"]["this"].endswith("+ working tree") and len(record["codes"]["earlier"]) >= 7
    settings = record["settings"]
    assert settings["model"]["path"] == str(smollm2_dir) and settings["task"]["name"] == "math"
    assert settings["rollout"]["teacher"] == "programmatic" and settings["threads"] == 1
    for code in ("earlier", "this"):
        rounds = record[code]["rounds"]
        assert len(rounds) == 1 and "error" not in rounds[0], rounds
        assert rounds[0]["episodes"] == 2 and rounds[0]["student_tokens"] > 0
        for key in PHASES:
            assert record[code][key]["n"] == 1
        assert record[code]["step_s"]["median"] > 0 and record[code]["backward_s"]["median"] > 0
    for key in ("speedup", "speedup_per_token"):
        assert record[key]["n"] == 1 and record[key]["median"] > 0
    for turns in (record["prefill_per_turn"], record["prefill_per_turn_earlier"]):
        assert 1 <= len(turns) <= 2
        assert all(0 < t["prefill_tokens"] <= t["prompt_tokens"] for t in turns), turns
