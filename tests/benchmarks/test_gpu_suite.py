"""`python -m benchmarks.gpu_suite --dry` runs every part of the GPU suite at tiny shapes on
the CPU, so the real run is known to work before a device minute is spent. It pins that
every part ran and wrote its result, that the correctness checks (each against its own
reference: fp32 chunked log-probs, transformers' logits, a teacher-forced forward pass)
passed, and that a peer which cannot run here is recorded as skipped with a reason rather
than dropped."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PARTS = ("correctness", "kernels", "engine", "grpo_step")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_suite", "--dry", "--out", str(out),
                           "--wheels", str(out / "no-wheels")],
                          capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "gpu_suite-dry.json").read_text())
    assert summary == json.loads(proc.stdout.strip().splitlines()[-1])  # the last line is the result
    return out, summary


def test_every_part_ran(dry_run):
    out, summary = dry_run
    assert summary["dry"] is True and summary["command"].startswith("python -m benchmarks.gpu_suite --dry")
    assert summary["env"]["device"].startswith("CPU") and summary["env"]["versions"]["torch"]
    assert list(summary["parts"]) == list(PARTS)
    for name, part in summary["parts"].items():
        assert part["status"] == "ok", (name, part["status"], part.get("traceback"))
    for name in ("correctness", "linear_token_logprobs", "token_logprobs", "engine", "grpo_step"):
        assert json.loads((out / f"{name}-dry.json").read_text())


def test_correctness_checks_passed(dry_run):
    c = dry_run[1]["parts"]["correctness"]
    assert c["kernel_tests"]["passed"] and c["kernel_tests"]["counts"]["passed"] >= 5
    head = c["head_shape"]
    for variant in ("frozen_head", "trained_head"):
        assert head[variant]["checks"] and all(head[variant]["checks"].values()), head[variant]
    assert "grad_weight.rel_l2" in head["trained_head"]["checks"]
    for family in ("llama", "gemma3"):
        assert all(c["model_logits"][family]["checks"].values()), c["model_logits"][family]
    assert c["engine_logprobs"]["float32"]["max_abs"] <= 1e-3
    assert c["passed"] is True


def test_kernel_rows_cover_every_provider(dry_run):
    """Each provider has a measured row or a skip with its reason; Liger and Cut-CE (CUDA
    only) are among the skips, not missing."""
    kernels = dry_run[1]["parts"]["kernels"]
    for op, expected in (("linear_token_logprobs", {"torch", "ours", "liger", "cce", "torch.compile"}),
                         ("token_logprobs", {"torch", "ours", "liger", "torch.compile"})):
        rows = kernels[op]["results"]
        assert expected <= {r["provider"] for r in rows}
        for r in rows:
            if r["status"].startswith("skipped"):
                assert len(r["status"]) > len("skipped: ")
            else:
                assert r["status"] == "ok" and r["ms"] > 0, r
        assert {(r["provider"], r["mode"]) for r in rows if "mode" in r} >= {("ours", "forward"), ("ours", "full")}


def test_engine_and_grpo_step_report_every_provider(dry_run):
    parts = dry_run[1]["parts"]
    engine = parts["engine"]["engine"]["results"]["tiny"]
    for provider in ("builtin", "hf_generate"):
        assert engine[provider]["distinct"]["tokens_per_s"]["median"] > 0
        turns = engine[provider]["multiturn"]["turns"]
        assert [t["turn"] for t in turns] == [1, 2] and all(t["prefilled_tokens"] > 0 for t in turns)
    assert "vllm" in engine and ("skipped" in engine["vllm"] or "distinct" in engine["vllm"])
    step = parts["grpo_step"]["grpo_step"]["configs"]["tiny"]
    assert step["rl2f"]["step_s"]["median"] > 0
    assert set(step["rl2f"]) >= {"rollout_s", "logprob_s", "backward_s", "optim_s", "peak_mem_mb"}
    # TRL is measured wherever it is installed (CI's benchmark stage installs it): a peer that
    # fails to start (an import error) is a failure here, never a quiet skip.
    if all(importlib.util.find_spec(m) for m in ("trl", "peft", "datasets")):
        assert "error" not in step["trl"] and "skipped" not in step["trl"], step["trl"]
        assert step["trl"]["step_s"]["median"] > 0
    else:
        assert "not installed" in step["trl"]["skipped"], step["trl"]
