"""The memory plan (rl2f/memory_plan.py, `rl2f plan-memory`): its sizes against independent
counts, its phases against the peaks a real CPU step measures, and the 12B reference
setting's plan as committed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl2f.config import RunConfig, load_config
from rl2f.errors import UserError
from rl2f.memory_plan import GiB, ModelSizes, Shapes, model_config_for, over_memory_message, plan_memory

ROOT = Path(__file__).resolve().parent.parent
GEMMA_12B = ROOT / "configs" / "models" / "gemma-3-12b-it.config.json"
PLAN_12B = ROOT / "benchmarks" / "results" / "memory_plan-gemma3-12b-2x80gb.txt"


def _config(*overrides, path="configs/tiny-rl2f.toml"):
    return load_config(RunConfig, ROOT / path, list(overrides))


def test_gemma3_12b_parameters_equal_an_independent_count():
    """Our decoder built from Gemma 3 12B IT's config.json has the parameters keras-hub lists
    for gemma3_instruct_12b_text (11,765,788,416 at its 262,144-token vocabulary; the HF
    checkpoint's embedding has 64 more rows of 3,840)."""
    cfg = _config(path="configs/gemma3-12b-rl2f.toml")
    sizes = ModelSizes.of(model_config_for(cfg, GEMMA_12B), cfg)
    assert sizes.params - 64 * 3840 == 11_765_788_416


def test_sizes_equal_the_loaded_model_and_its_adapter(tmp_path):
    """Parameter, adapted-weight and adapter counts equal those of the real model after
    apply_lora, for all targets and for a subset."""
    from rl2f.lora import apply_lora, lora_layers
    from rl2f.model import build_tiny_checkpoint, load_model

    path = build_tiny_checkpoint(tmp_path / "tiny", family="llama")
    for targets in (["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], ["q", "down"]):
        cfg = _config(f'model.path="{path}"', f"lora.targets={json.dumps(targets)}", "lora.rank=4")
        sizes = ModelSizes.of(model_config_for(cfg), cfg)
        model = load_model(path)
        assert sizes.params == sum(p.numel() for p in model.parameters())
        apply_lora(model, rank=4, alpha=8.0, targets=targets)
        layers = [m for _, m in lora_layers(model)]
        assert sizes.adapted_params == sum(m.weight.numel() for m in layers)
        assert sizes.lora_params == sum(m.lora_A.numel() + m.lora_B.numel() for m in layers)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_kv_cache_item_is_what_the_engine_allocates(dtype):
    """The rollout's KV cache item equals the bytes of the cache the model allocates for the
    same rows and columns."""
    from rl2f.model import load_model
    from rl2f.run import resolve_model_path

    cfg = _config(f"model.dtype={dtype!r}".replace("'", '"'))
    model = load_model(resolve_model_path(cfg), dtype=dtype)
    shapes = Shapes(rows=12, context_tokens=77, prefill_tokens=1, kept_tokens=0, micro_tokens=1)
    plan = plan_memory(cfg, model.config, 1, "cpu", shapes=shapes)
    cache = model.new_cache(12, 77)
    rollout = next(p for p in plan.phases if p.name == "rollout")
    assert rollout.items["KV cache"] == cache.key_buffer.nbytes + cache.value_buffer.nbytes


def _measure(case):
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_memory_plan", "--cases", case], cwd=ROOT,
                         capture_output=True, text=True, timeout=1200)
    record = json.loads(out.stdout.strip().splitlines()[-1])
    return out.returncode, record["results"][case]


def _check_measured(rc, result):
    assert set(result["phases"]) == {"rollout", "train", "optim"}, result  # every phase was measured
    for phase, row in result["phases"].items():
        # at the step's own sizes the plan is within 15% of the live tensor bytes measured
        assert abs(row["error"]) <= 0.15, (phase, row)
        # and the config's worst case (longest dialogues, full batches) covers the step's sizes
        assert row["worst_case_mib"] >= row["planned_mib"], (phase, row)
    assert rc == 0


def test_plan_matches_measured_peaks_tiny():
    """A real two-step RL2F run of the tiny config: each phase's peak of live tensor bytes
    (torch's profiler, CPU allocator) is within 15% of the plan at the step's sizes."""
    _check_measured(*_measure("tiny"))


def test_plan_matches_measured_peaks_smollm2(smollm2_dir):
    """The same on SmolLM2-135M-Instruct (fp32, 30 layers): weights, folded adapter weights
    and all layers' activations dominate, each planned from the model config."""
    _check_measured(*_measure("smollm2"))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "rl2f.cli", "plan-memory", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_committed_12b_plan_is_what_the_cli_prints_and_fits():
    """benchmarks/results' plan for the reference setting (Gemma 3 12B, 2 x 80 GB, vLLM) is
    what `rl2f plan-memory` prints today, and it fits with more than 5 GiB to spare."""
    command, *expected = PLAN_12B.read_text().splitlines()
    args = command.removeprefix("$ rl2f plan-memory ").split()
    out = _cli(*args)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == expected
    assert expected[-1] in (ROOT / "README.md").read_text()  # the verdict the README quotes
    plan = json.loads(_cli(*args, "--json").stdout)
    assert plan["world_size"] == 2 and plan["headroom_bytes"] > 5 * GiB
    assert plan["peak_bytes"] == max(p["total"] for p in plan["phases"].values())


def test_builtin_engine_on_12b_says_by_how_much_it_does_not_fit():
    """The built-in engine rolls out with the FSDP2 weights unsharded: on 2 x 80 GB the plan
    says it does not fit and by how much (exit 1); the pre-flight warning says the same."""
    out = _cli("--config", "configs/gemma3-12b-rl2f.toml", "--model-config", str(GEMMA_12B), "--gpus", "2",
               "--gpu-gib", "79.1", "--set", 'rollout.engine="builtin"')
    assert out.returncode == 1
    verdict = out.stdout.splitlines()[-1]
    assert verdict.startswith("DOES NOT FIT: peak") and "(rollout)" in verdict and "GiB by" in verdict
    assert "unsharded weights (FSDP2)" in out.stdout
    cfg = _config('rollout.engine="builtin"', path="configs/gemma3-12b-rl2f.toml")
    mc = model_config_for(cfg, GEMMA_12B)
    message = over_memory_message(cfg, mc, 2, int(79.1 * GiB))
    assert message and "rollout phase" in message and "more than this GPU's 79.1 GiB" in message
    assert over_memory_message(_config(path="configs/gemma3-12b-rl2f.toml"), mc, 2, int(79.1 * GiB)) is None


def test_sharding_divides_weights_and_sleep_frees_vllm_during_training():
    """More ranks shard the base weights; rollout.vllm_sleep takes vLLM's share out of the
    train phase (it stays in the rollout phase)."""
    cfg = _config(path="configs/gemma3-12b-rl2f.toml")
    mc = model_config_for(cfg, GEMMA_12B)
    one, two = (plan_memory(cfg, mc, w, "cuda", 80 * GiB) for w in (1, 2))
    weights = ModelSizes.of(mc, cfg).params * 2
    assert one.phases[0].items["base weights"] == weights
    assert two.phases[0].items["base weights (1/world)"] == weights // 2
    awake = plan_memory(cfg, mc, 2, "cuda", 80 * GiB)
    asleep = plan_memory(_config("rollout.vllm_sleep=true", path="configs/gemma3-12b-rl2f.toml"), mc, 2, "cuda",
                         80 * GiB)
    share = int(0.45 * 80 * GiB)
    train = {p.name: p for p in awake.phases}["train"].total - {p.name: p for p in asleep.phases}["train"].total
    assert train == share - GiB  # what a sleeping vLLM keeps is planned as 1 GiB
    assert awake.phases[0].total == asleep.phases[0].total


def test_cli_errors_are_one_line():
    """A model.path that is not there yet names --model-config; a bad --model-config file is
    named; neither is a traceback."""
    out = _cli("--config", "configs/gemma3-12b-rl2f.toml", "--gpus", "2")
    assert out.returncode == 2 and "--model-config" in out.stderr and "Traceback" not in out.stderr
    out = _cli("--config", "configs/gemma3-12b-rl2f.toml", "--model-config", "configs/tiny-rl2f.toml")
    assert out.returncode == 2 and "tiny-rl2f.toml: not readable JSON" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_model_config_for_refuses_a_missing_checkpoint():
    with pytest.raises(UserError, match="plan-memory --model-config"):
        model_config_for(_config('model.path="/nowhere/model"'))
