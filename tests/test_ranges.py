"""Every numeric value a user gives is range-checked where it is read, and a value outside its
range is one line naming the key: run config fields (walked, so a new field without a bad
value here fails), task options, a checkpoint's config.json, its weights, an adapter config."""
import dataclasses
import json
import math
import typing

import pytest
import torch
from safetensors.torch import load_file, save_file

from rl2f.config import RunConfig, load_config
from rl2f.errors import UserError

# one value outside the documented range of every numeric field
OUT_OF_RANGE = {
    "model.tiny_seed": -1,
    "task.n_train": -1, "task.n_eval": -1, "task.seed": -1,
    "rollout.group_size": 0, "rollout.max_turns": 0, "rollout.temperature": -0.1, "rollout.top_p": 1.5,
    "rollout.top_k": 0, "rollout.max_new_tokens": 0, "rollout.teacher_max_new_tokens": 0,
    "rollout.leak_guard_tries": 0, "rollout.vllm_kv_cache_gib": -1.0, "rollout.vllm_gpu_memory_utilization": 1.5,
    "rollout.problems_per_batch": 0, "rollout.prefix_cache_mb": -1, "rollout.seed": -1,
    "teacher.temperature": -0.1, "teacher.max_new_tokens": 0, "teacher.endpoint_timeout_s": 0.0,
    "lora.rank": 0, "lora.alpha": 0.0, "lora.dropout": 1.0,
    "train.max_steps": 0, "train.max_student_tokens": -1, "train.lr": 0.0, "train.weight_decay": -1.0,
    "train.warmup_steps": -1, "train.min_lr_ratio": -5.0, "train.grad_accum": 0, "train.micro_batch": 0,
    "train.max_grad_norm": -1.0, "train.gamma": 1.5, "train.clip_low": 5.0, "train.clip_high": -1.0,
    "train.beta": -1.0, "train.tis_cap": -1.0, "train.critique_weight": -1.0, "train.sft_epochs": 0, "train.save_every": -1,
    "train.seed": -1, "train.eval_every": -1, "train.eval_problems": 0,
    "eval.max_turns": 0, "eval.temperature": -1.0, "eval.samples_per_problem": 0, "eval.batch_size": 0,
    "eval.bootstrap": 0, "eval.seed": -1,
}
# a second bad value where the range has two ends
ABOVE = {"train.min_lr_ratio": 40.0, "rollout.top_p": 0.0, "lora.dropout": -0.1, "train.gamma": -0.1,
         "rollout.vllm_gpu_memory_utilization": 0.0, "eval.batch_size": 5000, "train.eval_problems": 10**6}


def numeric_fields(cls=RunConfig, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from numeric_fields(hint, f"{prefix}{f.name}.")
        elif {int, float} & set(typing.get_args(hint) or (hint,)):
            yield f"{prefix}{f.name}", float if float in (typing.get_args(hint) or (hint,)) else int


def test_every_numeric_field_has_an_out_of_range_case():
    assert {k for k, _ in numeric_fields()} == set(OUT_OF_RANGE)


@pytest.mark.parametrize("key", sorted(OUT_OF_RANGE))
def test_out_of_range_is_one_line_naming_the_key(key):
    values = [OUT_OF_RANGE[key]] + ([ABOVE[key]] if key in ABOVE else [])
    kind = dict(numeric_fields())[key]
    if kind is float:
        values += [float("nan"), float("inf")]
    for value in values:
        text = repr(value) if math.isfinite(value) else ("nan" if value != value else "inf")
        overrides = [f"{key}={text}"]
        if key.startswith("rollout.vllm"):
            overrides.append('rollout.engine="vllm"')
        if key == "model.tiny_seed":
            overrides.append('model.path=""')
        with pytest.raises(UserError) as e:
            load_config(RunConfig, overrides=overrides)
        message = str(e.value)
        assert "\n" not in message and key.split(".", 1)[1] in message, (key, value, message)


TASK_OPTIONS = [
    ("secret", {"digits": 0}, "digits"), ("secret", {"digits": 12}, "digits"), ("secret", {"sums": [99]}, "sums"),
    ("secret", {"sums": []}, "sums"), ("secret", {"prior": "x"}, "prior"), ("secret", {"digits": True}, "digits"),
    ("code", {"memory_mb": -1}, "memory_mb"), ("code", {"timeout_s": 0}, "timeout_s"),
    ("code", {"timeout_s": float("nan")}, "timeout_s"), ("math", {"timeout": -1}, "timeout"),
    ("math", {"timeout": float("nan")}, "timeout"), ("math", {"difficulty": 9}, "difficulty"),
    ("math", {"test_fraction": "x"}, "test_fraction"), ("maze", {"size": 3000}, "size"),
    ("maze", {"size": "x"}, "size"), ("maze", {"wall_prob": "x"}, "wall_prob"),
    ("puzzle", {"n_people": "x"}, "n_people"), ("maze", {"colour": 1}, "colour"),
]


@pytest.mark.parametrize("task,options,key", TASK_OPTIONS, ids=[f"{t}-{k}" for t, _, k in TASK_OPTIONS])
def test_task_options_out_of_range_are_one_line_naming_the_option(task, options, key):
    """Before: digits=0/12, sums=[99], prior="x" were tracebacks (or a 10^12-number pool),
    memory_mb=-1 lifted the sandbox's memory limit, timeout_s=0 failed every program, a
    negative math timeout graded equivalent answers wrong, maze size 3000 hung."""
    from rl2f.tasks import get_task

    with pytest.raises(UserError) as e:
        get_task(task, **options)
    assert "\n" not in str(e.value) and key in str(e.value) and task in str(e.value), str(e.value)


@pytest.fixture
def tiny(tmp_path):
    from rl2f.model import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path / "tiny", family="llama")


@pytest.mark.parametrize("key,value", [("rope_theta", float("nan")), ("rope_theta", -1.0),
                                       ("rms_norm_eps", float("nan")), ("rms_norm_eps", 0.0),
                                       ("rms_norm_eps", -1e-6), ("rope_scaling", {"rope_type": "linear", "factor": -2.0}),
                                       ("rope_scaling", {"rope_type": "linear", "factor": float("inf")})])
def test_checkpoint_config_with_bad_numbers_is_refused(tiny, key, value):
    """NaN, infinite, zero or negative RoPE and norm constants in config.json are refused
    naming the key (before: accepted, every log-prob NaN, exit 0)."""
    from rl2f.model import read_config

    cfg = json.loads((tiny / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg["rope_theta"] = 10000.0
    cfg[key] = value
    (tiny / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError) as e:
        read_config(tiny)
    named = "factor" if key == "rope_scaling" else key
    assert named in str(e.value) and "config.json" in str(e.value), str(e.value)


def test_non_finite_weights_are_refused_naming_the_tensor(tiny):
    """A checkpoint with NaN (or inf) in a weight is refused when loaded, naming the tensor
    (before: loaded, NaN log-probs written, exit 0); a clean one loads."""
    from rl2f.model import load_model

    load_model(tiny)
    weights = load_file(str(tiny / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    for bad in (float("nan"), float("inf")):
        broken = dict(weights)
        broken[name] = torch.full_like(weights[name], bad)
        save_file(broken, str(tiny / "model.safetensors"))
        with pytest.raises(UserError, match=rf"tensor '{name}' holds non-finite values"):
            load_model(tiny)


def test_adapter_use_rslora_must_be_a_boolean(tiny, tmp_path):
    """`"use_rslora": "false"` (a string, true to bool()) is refused, not read as rsLoRA on."""
    from rl2f.lora import apply_lora, load_adapter, save_adapter
    from rl2f.model import load_model

    model = apply_lora(load_model(tiny), rank=4, alpha=8.0)
    path = save_adapter(model, tmp_path / "adapter")
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["use_rslora"] = "false"
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="use_rslora must be true or false"):
        load_adapter(load_model(tiny), path)


@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_a_hundred_million_problems_is_refused_at_once(command, tmp_path, monkeypatch):
    """`--problems 100000000` is one line before any problem is made (before: generate built
    the whole list, 2.56 GB after 150 s and growing); task.n_train beyond the bound too."""
    import resource

    from click.testing import CliRunner

    from rl2f.cli.main import cli

    monkeypatch.setenv("RL2F_CACHE", str(tmp_path / "cache"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = tmp_path / ("eps.jsonl" if command == "generate" else "report")
    r = CliRunner().invoke(cli, [command, "--set", "task.name=math", "--problems", "100000000", "--out", str(out)])
    assert r.exit_code == 2 and "--problems must be in 1..100,000, got 100,000,000" in r.output, r.output
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing was built
    with pytest.raises(UserError, match="n_train must be at most 100,000"):
        load_config(RunConfig, overrides=["task.n_train=1000000000"])
