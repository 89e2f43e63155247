"""TOML configs read into dataclasses that mirror the tables.

A config file is a set of TOML tables; each table maps onto a dataclass field of the root
config. Unknown keys, wrong types and out-of-range values are `UserError`s that name the
key (`train.gamma`), so a typo never silently falls back to a default. Overrides from the
command line (`--set train.max_steps=3`) are parsed as TOML values and applied before
validation, so they are checked the same way.

Each dataclass validates its own ranges in `__post_init__` by raising `ValueError`; the
loader re-raises it as a `UserError` prefixed with the table name. Each field carries its
help text as metadata (`field_docs`, `rl2f config --list`), and `to_toml` writes a config
back as TOML that loads to the same config (`rl2f config --print`).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from rl2f.errors import UserError
from rl2f.plugins import TEACHER_PLUGINS, absolute_spec, entry_point_names, is_spec

T = TypeVar("T")
MAX_PROBLEMS = 100_000  # problems a run or a command makes (all made up front: a bound on memory and time)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Read `path` (TOML; None = all defaults), apply `key.sub=value` overrides, build `cls`."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (TOML must be UTF-8): byte {e.start}") from None
        except OSError as e:
            raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML: {e}") from None
    for item in overrides:
        apply_override(data, item)
    where = str(path) if path is not None else "config"
    return from_dict(cls, data, where=where)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from a dict, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: [{prefix.rstrip('.')}] must be a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(sorted(fields))
        raise UserError(f"{where}: unknown key '{prefix}{unknown[0]}' (known keys: {known})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, where, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise UserError(f"{where}: {prefix}{e}") from None


def to_dict(config) -> dict[str, Any]:
    """The config as plain data (for saving beside checkpoints and reports)."""
    return dataclasses.asdict(config)


def _convert(hint, value, where: str, key: str):
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where, prefix=key + ".")
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise UserError(f"{where}: {key} must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where, key)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: {key} has an invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: {key} must be a list, got {type(value).__name__} {value!r}")
        (item_hint, *_) = get_args(hint) or (Any,)
        items = [_convert(item_hint, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: {key} must be a table, got {type(value).__name__}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(_int64(value, where, key))
    if hint in (int, float, str, bool):
        # bool is a subclass of int in Python: refuse `max_steps = true`.
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise UserError(f"{where}: {key} must be {hint.__name__}, got {type(value).__name__} {_short(value)}")
        if hint is int:
            _int64(value, where, key)
        if hint is float and not math.isfinite(value):
            # nan passes every `x < 0` range check and then poisons the run: refuse it here.
            raise UserError(f"{where}: {key} must be a finite number, got {value!r}")
        return value
    return value


def _int64(value: int, where: str, key: str) -> int:
    """TOML integers are 64-bit; tomllib accepts any size, so the limit is checked here."""
    if not -2**63 <= value < 2**63:
        raise UserError(f"{where}: {key} = {_short(value)} does not fit in 64 bits (TOML integers are 64-bit)")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


def apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise UserError(f"--set {item!r}: expected section.key=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise UserError(f"--set {item!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # bare words (`method=rl2f`) are strings
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {item!r}: {k} is not a table")
    node[keys[-1]] = value


# ----------------------------------------------------------------------------------------
# The run config: one file drives generate, train, evaluate and demo. Each field's help is
# its metadata, so `rl2f config --list` shows the same text the source does.


def _f(default: Any = dataclasses.MISSING, *, help: str, factory: Any = dataclasses.MISSING):
    """A config field with its help text; `factory` builds a list or dict default per instance."""
    return dataclasses.field(default=default, default_factory=factory, metadata={"help": help})


@dataclasses.dataclass
class ModelSection:
    path: str = _f("", help='HF checkpoint dir; "" = the embedded tiny model (built on first use)')
    dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32", help="dtype of the frozen base weights (the LoRA adapter is always float32)")
    device: str = _f("auto", help='"auto" = cuda when available, else cpu; or "cpu", "cuda", "cuda:N"')
    tiny_family: Literal["gemma3", "llama", "qwen2", "qwen3"] = _f(
        "gemma3", help='family of the embedded model (model.path = "")')
    tiny_seed: int = _f(0, help="init seed of the embedded model")

    def __post_init__(self):
        if self.path == "" and self.tiny_seed < 0:
            raise ValueError("tiny_seed must be >= 0")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.device.startswith("cuda"):
            import torch  # only here: reading a config otherwise needs no torch

            if not torch.cuda.is_available():
                raise ValueError(f"device is {self.device!r} but this torch {torch.__version__} sees no CUDA "
                                 f"device; use \"auto\" or \"cpu\"")
            index = int(self.device.partition(":")[2] or 0)
            if index >= torch.cuda.device_count():
                raise ValueError(f"device is {self.device!r} but only {torch.cuda.device_count()} CUDA "
                                 f"devices are visible")


@dataclasses.dataclass
class TaskSection:
    name: str = _f("math", help='math | maze | puzzle | code | secret | jsonl | reasoning_gym, a name an installed package registers '
                                '(entry-point group rl2f.tasks), or the class: "package.module:Class" | '
                                '"path/to/file.py:Class"')
    options: dict = _f(factory=dict, help="the task's options, passed to get_task(name, **options)")
    n_train: int = _f(256, help=f"training problems drawn from the task's train split (at most {MAX_PROBLEMS:,})")
    n_eval: int = _f(100, help=f"held-out problems (test split, at most {MAX_PROBLEMS:,})")
    seed: int = _f(0, help="problem generation seed (>= 0): which problems the train and test splits hold")

    def __post_init__(self):
        # a task file by its absolute path: a resumed run, evaluate and generate find the same file
        self.name = absolute_spec(self.name)
        for name in ("n_train", "n_eval", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("n_train", "n_eval"):
            if getattr(self, name) > MAX_PROBLEMS:
                raise ValueError(f"{name} must be at most {MAX_PROBLEMS:,} (problems are made up front), "
                                 f"got {getattr(self, name):,}")


TEACHERS = ("programmatic", "llm", "retry", "placebo", "decoy", "self")  # built in (rl2f/teacher.py)


@dataclasses.dataclass
class RolloutSection:
    engine: Literal["builtin", "vllm"] = _f(
        "builtin", help="what samples the episodes: builtin (rl2f's engine, on the trainer's own weights) | "
                        "vllm (a vLLM engine beside the trainer; needs the vllm package)")
    group_size: int = _f(8, help="G episodes per problem (GRPO group)")
    max_turns: int = _f(4, help="T: student attempts per episode (1 = single-turn)")
    temperature: float = _f(1.0, help="the student's sampling temperature (0 = greedy)")
    top_p: float = _f(1.0, help="nucleus sampling: the student samples from the most likely tokens that "
                                "hold this much probability (1 = off)")
    top_k: int | None = _f(None, help="tokens kept; None (the key left out) = off")
    max_new_tokens: int = _f(64, help="most tokens per student attempt")
    teacher: str = _f(
        "programmatic",
        help="programmatic (the task's hints) | llm | retry ('incorrect, try again') | placebo (the hint format, "
             "no content) | decoy (the real hints about a decoy answer from the task's prior) | self (the student critiques itself), or a teacher class of the user's: "
             '"package.module:Class" | "path/to/file.py:Class" | a name registered under the entry-point group '
             'rl2f.teachers (rl2f.teacher.GuardedTeacher: its messages are guarded)')
    teacher_max_new_tokens: int = _f(64, help="most tokens per generated teacher message (llm and self teachers)")
    leak_guard_tries: int = _f(3, help="regenerations of a leaking LLM-teacher message before the fallback")
    leak_judge: bool = _f(False, help="LLM teacher: the base model also judges each draft the string checks pass")
    vllm_kv_cache_gib: float = _f(0.0, help="vLLM KV cache in GiB; 0 = GPU: a share of its memory, "
                                            "CPU: VLLM_CPU_KVCACHE_SPACE or 2")
    vllm_gpu_memory_utilization: float = _f(0.45, help="GPU: the share of each GPU vLLM reserves (weights + KV "
                                                       "cache); the trainer gets the rest")
    vllm_sleep: bool = _f(False, help="GPU only: vLLM sleeps while the trainer trains (weights to host memory, "
                                      "KV cache freed)")
    problems_per_batch: int = _f(8, help="problems rolled out together (x group_size episodes)")
    overlong: Literal["skip", "error"] = _f(
        "skip", help="a dialogue that outgrows the model's context: skip ends the episode before the turn that "
                     "no longer fits (recorded as context_full, counted in the metrics) and skips a problem whose "
                     "prompt alone cannot fit, naming it; error stops the run with the problem's id instead")
    prefix_cache_mb: int | None = _f(
        None, help="built-in engine: keys/values kept between an episode's turns (MB; 0 = off). None (the key "
                   "left out): sized from the model, what a batch's longest dialogues hold (rl2f.memory_plan)")
    seed: int = _f(0, help="the student's sampling seed (each request's stream is keyed by it, the problem and "
                           "its place in the data); also vLLM's engine seed")

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError("group_size must be >= 1")
        if self.max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        self.teacher = absolute_spec(self.teacher)  # a teacher file, found again from anywhere
        if self.teacher not in TEACHERS and not is_spec(self.teacher) \
                and self.teacher not in entry_point_names(TEACHER_PLUGINS):
            raise ValueError(f"teacher must be one of {', '.join(TEACHERS)}, a teacher class "
                             f"('package.module:Class' or 'path/to/file.py:Class') or a registered name, "
                             f"got {self.teacher!r}")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 (leave it out for no top-k), got {self.top_k}")
        for name in ("max_new_tokens", "teacher_max_new_tokens", "problems_per_batch", "leak_guard_tries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prefix_cache_mb is not None and self.prefix_cache_mb < 0:
            raise ValueError(f"prefix_cache_mb must be >= 0, got {self.prefix_cache_mb}")
        if self.vllm_kv_cache_gib < 0:
            raise ValueError(f"vllm_kv_cache_gib must be >= 0, got {self.vllm_kv_cache_gib}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not 0 < self.vllm_gpu_memory_utilization < 1:
            raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1), got {self.vllm_gpu_memory_utilization}")
        if self.vllm_sleep and self.engine != "vllm":
            # the built-in engine shares the trainer's weights: there is nothing to put to sleep
            raise ValueError(f"vllm_sleep = true needs engine = 'vllm'; engine is {self.engine!r}")


PRIVILEGED = "{privileged}"  # where a teacher prompt file takes the privileged information


def read_teacher_prompt(path: str) -> str:
    """The LLM teacher's system prompt from `path`: UTF-8 text with the {privileged} placeholder
    (a prompt without it would give the teacher nothing the student cannot see)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"prompt_file {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"prompt_file {path}: not UTF-8 text: byte {e.start}") from None
    except OSError as e:
        raise UserError(f"prompt_file {path}: cannot read: {e.strerror or e}") from None
    if PRIVILEGED not in text:
        raise UserError(f"prompt_file {path}: no {PRIVILEGED} placeholder (where the reference answer and the "
                        f"verifier's output go)")
    return text


@dataclasses.dataclass
class TeacherSection:
    """Who speaks for the LLM teacher (`rollout.teacher = "llm"`) and its leak judge
    (`rollout.leak_judge`). The defaults are the student's base model on the rollout engine,
    adapter off, with the built-in prompt and the student's sampling."""

    model_path: str = _f("", help='HF checkpoint dir of a teacher of its own (its own built-in engine, loaded once, '
                                  'in model.dtype, no adapter); "" = the student\'s base model, adapter off')
    prompt_file: str = _f("", help='text file with the teacher\'s system prompt, holding the {privileged} placeholder '
                                   '(reference answer and verifier output); "" = the built-in prompt')
    temperature: float | None = _f(None, help="the generated teachers' (llm, self) sampling temperature; None (the "
                                              "key left out) = rollout.temperature")
    max_new_tokens: int | None = _f(None, help="most tokens per generated teacher message (llm, self); None (the "
                                               "key left out) = rollout.teacher_max_new_tokens")
    endpoint: str = _f("", help='base URL of an OpenAI-compatible server the LLM teacher and judge speak through '
                                '(POST {endpoint}/chat/completions), e.g. "http://127.0.0.1:8000/v1"; "" = off')
    endpoint_model: str = _f("", help="the model name the endpoint serves (the request's \"model\")")
    api_key_env: str = _f("", help='environment variable holding the endpoint\'s API key (sent as a Bearer '
                                   'token); "" = no key')
    endpoint_timeout_s: float = _f(60.0, help="seconds to wait for each endpoint reply")

    def __post_init__(self):
        if self.prompt_file:
            # absolute: a resumed run, evaluate and generate find the same file from anywhere
            self.prompt_file = str(Path(self.prompt_file).expanduser().absolute())
            read_teacher_prompt(self.prompt_file)
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.endpoint_timeout_s > 0:
            raise ValueError(f"endpoint_timeout_s must be > 0, got {self.endpoint_timeout_s}")
        if self.endpoint:
            if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", self.endpoint):
                raise ValueError(f"endpoint must be an http:// or https:// base URL, got {self.endpoint!r}")
            if not self.endpoint_model:
                raise ValueError("endpoint_model is empty: name the model the endpoint serves")
            if self.model_path:
                raise ValueError("endpoint and model_path are both set: the teacher is one or the other")
        if self.api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError(f"api_key_env must be an environment variable's name, got {self.api_key_env!r}")


# The Linear layers LoRA can wrap (rl2f/lora.py), and the short names accepted for them.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_SHORT_TARGETS = {t.removesuffix("_proj"): t for t in LORA_TARGETS}


@dataclasses.dataclass
class LoRASection:
    rank: int = _f(16, help="r: the rank of each adapter (lora_a is r x in, lora_b out x r)")
    alpha: float = _f(32.0, help="scale = alpha / rank; 0 would make every LoRA gradient exactly zero")
    dropout: float = _f(0.0, help="dropout on the adapter's input (as in PEFT), in [0, 1)")
    targets: list[str] = _f(factory=lambda: list(LORA_TARGETS),
                            help=f"the Linear layers LoRA wraps: {', '.join(LORA_TARGETS)} "
                                 f"(or {', '.join(LORA_SHORT_TARGETS)})")

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError("rank must be >= 1")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0 (alpha 0 scales the adapter, and its gradient, to zero), "
                             f"got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        if not self.targets:
            raise ValueError(f"targets is empty: name at least one of {', '.join(LORA_TARGETS)}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS and t not in LORA_SHORT_TARGETS]
        if unknown:
            raise ValueError(f"targets: unknown LoRA target {unknown[0]!r} (known: {', '.join(LORA_TARGETS)} "
                             f"or {', '.join(LORA_SHORT_TARGETS)})")


@dataclasses.dataclass
class TrainSection:
    method: Literal["sft", "rlvr", "rl2f"] = _f("rl2f", help="rlvr forces rollout.max_turns = 1, no teacher")
    max_steps: int = _f(100, help="optimiser steps")
    max_student_tokens: int = _f(0, help="GRPO stops once this many student tokens were generated (0 = off)")
    lr: float = _f(1e-4, help="AdamW's peak learning rate (after warmup, before the cosine decay)")
    weight_decay: float = _f(0.0, help="AdamW's decoupled weight decay on the adapter")
    warmup_steps: int = _f(0, help="steps of linear warmup to lr (0 = none)")
    min_lr_ratio: float = _f(0.1, help="cosine schedule floor, as a fraction of lr, in [0, 1]")
    grad_accum: int = _f(1, help="rollout/SFT batches per optimiser step")
    micro_batch: int = _f(8, help="sequences per forward/backward")
    share_prefix: bool = _f(True, help="rows of a micro-batch that begin alike (a group's prompt) compute it once")
    max_grad_norm: float = _f(1.0, help="clip the global gradient norm to this (0 = no clipping)")
    gamma: float = _f(0.7, help="discount of rewards over turns (paper's companion: 0.7)")
    clip_low: float = _f(0.2, help="ratio floor 1 - clip_low, in [0, 1)")
    clip_high: float = _f(0.28, help="ratio ceiling 1 + clip_high (DAPO's clip-higher when above clip_low)")
    beta: float = _f(0.0, help="k3 KL to the adapter-off base (paper: 0)")
    tis_cap: float = _f(0.0, help="truncated importance sampling for a sampler whose log-probs are not the "
                                  "trainer's (vLLM): each token's term weighted by min(p_trainer / p_sampler, "
                                  "tis_cap) and clipped on the trainer's own ratio (0 = off: the ratio is "
                                  "taken against the sampler's log-probs; see logprob_gap_* in the metrics)")
    std_normalize: bool = _f(True, help="divide group-centred advantages by the group std")
    drop_zero_variance: bool = _f(True, help="leave out groups whose rewards are all equal: they carry no signal")
    critique_weight: float = _f(0.0, help="likelihood weight on teacher turns (self-correction)")
    init_adapter: str = _f("", help='PEFT adapter to start from (e.g. an SFT warm start for GRPO); "" = fresh LoRA')
    sft_data: str = _f("", help='JSONL of dialogues for SFT ("" = generate from the task with its hints)')
    sft_epochs: int = _f(1, help="SFT: passes over the dialogues (train.max_steps still bounds the run)")
    save_every: int = _f(0, help="steps between checkpoints (0 = only at the end)")
    seed: int = _f(0, help="seeds the global RNGs (+ the rank), the fresh LoRA's init and the order of the training data (GRPO's problems, SFT's dialogues)")
    eval_every: int = _f(0, help="GRPO: every N steps, play train.eval_problems held-out problems (the task's "
                                 "test split) with the training teacher and append acc@t, correction rate, "
                                 "plasticity and leak rate to OUT/eval.jsonl (0 = off)")
    eval_problems: int = _f(16, help="held-out problems each evaluation during training plays (one episode each)")
    eval_best: str = _f("acc@T", help='the eval.jsonl metric whose best value keeps its adapter in '
                                     'OUT/best-adapter: "acc@T" (the last turn), "acc@<t>" or "correction_rate"')
    report_to: list[str] = _f(factory=list, help='trackers fed each metrics row and the config (rl2f/trackers.py): '
                                                 '"tensorboard", "wandb", "trackio"; each needs its package '
                                                 "(pip install 'rl2f[trackers]')")
    tracker_project: str = _f("rl2f", help="the wandb / trackio project the run is logged under")

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be > 0")
        for name in ("grad_accum", "micro_batch", "sft_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("clip_low", "clip_high", "beta", "tis_cap", "critique_weight", "save_every", "warmup_steps",
                     "weight_decay", "max_student_tokens", "max_grad_norm", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            # negative: the schedule ends at a negative lr (gradient ascent); above 1 it rises
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.clip_low >= 1:
            raise ValueError(f"clip_low must be < 1 (the ratio floor is 1 - clip_low), got {self.clip_low}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if not 1 <= self.eval_problems <= MAX_PROBLEMS:
            raise ValueError(f"eval_problems must be in 1..{MAX_PROBLEMS:,}, got {self.eval_problems}")
        if not re.fullmatch(r"acc@(T|[1-9]\d*)|correction_rate", self.eval_best):
            raise ValueError(f'eval_best must be "acc@T", "acc@<t>" or "correction_rate", got {self.eval_best!r}')
        unknown = [n for n in self.report_to if n not in ("tensorboard", "wandb", "trackio")]
        if unknown:
            raise ValueError(f'report_to: unknown tracker {unknown[0]!r} (known: "tensorboard", "wandb", "trackio")')
        if not self.tracker_project:
            raise ValueError("tracker_project must not be empty")


@dataclasses.dataclass
class EvalSection:
    max_turns: int = _f(5, help="T for acc@1..T")
    temperature: float = _f(1.0, help="sampling (greedy flatters an imitation base)")
    samples_per_problem: int = _f(1, help="episodes per problem (pass@K uses max_turns samples)")
    batch_size: int = _f(
        64, help="problems played together (x samples_per_problem rows, x K for pass@K): larger batches decode "
                 "more tokens per second (benchmarks/results/eval_batch-cpu.json); the results do not depend on it "
                 "(sampling is keyed by seed and problem)")
    bootstrap: int = _f(1000, help="resamples for the 95% intervals (>= 100)")
    seed: int = _f(0, help="the evaluation's sampling seed (in place of rollout.seed) and its bootstrap resamples")

    def __post_init__(self):
        if self.max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        if self.samples_per_problem < 1:
            raise ValueError("samples_per_problem must be >= 1")
        if not 1 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size must be in 1..4096, got {self.batch_size}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.bootstrap < 100:
            raise ValueError(f"bootstrap must be >= 100 (fewer resamples give no 95% interval), got {self.bootstrap}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclasses.dataclass
class RunConfig:
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    task: TaskSection = dataclasses.field(default_factory=TaskSection)
    rollout: RolloutSection = dataclasses.field(default_factory=RolloutSection)
    teacher: TeacherSection = dataclasses.field(default_factory=TeacherSection)
    lora: LoRASection = dataclasses.field(default_factory=LoRASection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    eval: EvalSection = dataclasses.field(default_factory=EvalSection)

    def __post_init__(self):
        if self.train.method in ("rlvr", "rl2f") and self.rollout.group_size < 2:
            # A group of one has zero variance by construction: GRPO would learn nothing.
            raise ValueError("rollout.group_size must be >= 2 for GRPO")
        r = self.rollout
        if self.train.method in ("rlvr", "rl2f") and r.engine == "vllm" and r.temperature > 0 and (r.top_p < 1 or r.top_k is not None):
            # vLLM's log-probs are of the truncated distribution, the trainer's of the full one.
            raise ValueError(f"rollout.top_p = {r.top_p} / rollout.top_k = {r.top_k} with rollout.engine = 'vllm' "
                             "biases GRPO's ratio (vLLM's sampling log-probs are of the truncated distribution): "
                             "set rollout.top_p = 1.0 and leave rollout.top_k out")


# ----------------------------------------------------------------------------------------
# The config shown back (`rl2f config`): each field with its help, and a config as TOML.


@dataclasses.dataclass(frozen=True)
class FieldDoc:
    key: str  # "section.key"
    type: str  # "int", "int|None" (None: the key left out), "list[str]", "table", a Literal's choices "skip|error"
    default: str  # the default as TOML; "(left out)" for None
    help: str  # the field's metadata["help"]


def field_docs(section: str | None = None) -> list[FieldDoc]:
    """Every field of the run config (or of one section), in the order of this file."""
    sections = get_type_hints(RunConfig)
    if section is not None and section not in sections:
        raise UserError(f"unknown config section '{section}' (sections: {', '.join(sections)})")
    docs = []
    for name, cls in sections.items():
        if section not in (None, name):
            continue
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            docs.append(FieldDoc(f"{name}.{f.name}", _type_name(hints[f.name]),
                                 "(left out)" if default is None else _toml_value(default), f.metadata["help"]))
    return docs


def _type_name(hint) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        return "|".join(get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return "|".join(_type_name(arg) for arg in get_args(hint))
    if origin is list:
        return f"list[{_type_name(get_args(hint)[0])}]"
    if hint is dict:
        return "table"
    return "None" if hint is type(None) else hint.__name__


def to_toml(config: RunConfig) -> str:
    """`config` as TOML that `load_config` reads back to an equal config: every field, one table
    per section. A None field is left out, as TOML has no null: None is the default of each
    field that can hold it ("None (the key left out)")."""
    tables = []
    for section, values in to_dict(config).items():
        rows = [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
        tables.append("\n".join([f"[{section}]", *rows]))
    return "\n\n".join(tables) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)  # a float's repr keeps its '.' or exponent, so it reads back as a float, exactly
    if isinstance(value, str):
        # TOML's basic strings take JSON's escapes. Non-ASCII stays as it is (JSON's surrogate
        # pairs, \ud83d\ude00, are invalid TOML), and DEL, which JSON leaves bare, TOML wants escaped.
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # task.options: an inline table
        items = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, (datetime.date, datetime.time)):  # a TOML date or time in task.options
        return value.isoformat()
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)
