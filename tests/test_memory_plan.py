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


def test_prefix_cache_follows_the_model_unless_set():
    """rollout.prefix_cache_mb left out: the built-in engine keeps what the larger batch's
    longest dialogues hold in this model's keys/values, counted by hand here; set, it is the
    MB given. SmolLM2-135M (30 layers, 3 KV heads of 64, fp32) holds 46,080 bytes a token, the
    2-layer tiny model far fewer: one fixed 256 MB fitted the tiny model's batch only."""
    from rl2f.memory_plan import prefix_cache_bytes
    from rl2f.model.config import ModelConfig

    smollm2 = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                          num_attention_heads=9, num_key_value_heads=3, head_dim=64, family="llama",
                          rms_norm_eps=1e-5, tie_word_embeddings=True)
    cfg = _config("rollout.problems_per_batch=2", "rollout.group_size=8", "eval.batch_size=32",
                  "eval.samples_per_problem=1")
    r = cfg.rollout
    dialogue = Shapes.worst_case(cfg).context_tokens  # the longest dialogue the plan assumes
    # a 256-token prompt, then every turn at its longest with 16 template tokens a message
    assert dialogue == 256 + r.max_turns * (r.max_new_tokens + 16) + (r.max_turns - 1) * (r.teacher_max_new_tokens + 16)
    rows = max(2 * 8, 32 * 1)  # the evaluation's batch is the larger here
    assert prefix_cache_bytes(cfg, smollm2) == rows * dialogue * 2 * 30 * 3 * 64 * 4
    assert prefix_cache_bytes(_config("rollout.prefix_cache_mb=100"), smollm2) == 100 << 20
    assert prefix_cache_bytes(_config("rollout.prefix_cache_mb=0"), smollm2) == 0


def test_the_builtin_engine_gets_that_prefix_cache(tmp_path, monkeypatch):
    """What `build_inference_run` hands the built-in engine is `prefix_cache_bytes` of the
    loaded model's config (left out), or the MB set."""
    from rl2f.distributed import Dist
    from rl2f.memory_plan import prefix_cache_bytes
    from rl2f.run import build_inference_run

    monkeypatch.setenv("RL2F_CACHE", str(tmp_path))  # the embedded tiny checkpoint is built there
    for overrides in ((), ("rollout.prefix_cache_mb=3",)):
        cfg = load_config(RunConfig, None, list(overrides))
        run = build_inference_run(cfg, Dist())
        budget = run.engine.prefix_cache.budget_bytes
        assert budget == prefix_cache_bytes(cfg, run.model.config) == (3 << 20 if overrides else budget)
        assert overrides or budget != 256 << 20
