"""TOML configs read into dataclasses that mirror the tables.

A config file is a set of TOML tables; each table maps onto a dataclass field of the root
config. Unknown keys, wrong types and out-of-range values are `UserError`s that name the
key (`train.gamma`), so a typo never silently falls back to a default. Overrides from the
command line (`--set train.max_steps=3`) are parsed as TOML values and applied before
validation, so they are checked the same way.

Each dataclass validates its own ranges in `__post_init__` by raising `ValueError`; the
loader re-raises it as a `UserError` prefixed with the table name.
"""
from __future__ import annotations

import dataclasses
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
from rl2f.plugins import absolute_spec, entry_point_names, is_spec

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
# The run config: one file drives generate, train, evaluate and demo.

@dataclasses.dataclass
class ModelSection:
    path: str = ""  # HF checkpoint dir; "" = the embedded tiny model (built on first use)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # frozen base weights
    device: str = "auto"  # "auto" = cuda when available, else cpu; or "cpu", "cuda", "cuda:N"
    tiny_family: Literal["gemma3", "llama", "qwen2", "qwen3"] = "gemma3"  # embedded model's family
    tiny_seed: int = 0  # init seed of the embedded model

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
    # math | maze | puzzle | code | secret, a name an installed package registers (entry-point
    # group rl2f.tasks), or the class: "package.module:Class" | "path/to/file.py:Class"
    name: str = "math"
    options: dict = dataclasses.field(default_factory=dict)  # passed to get_task(name, **options)
    n_train: int = 256  # training problems drawn from the task's train split (at most MAX_PROBLEMS)
    n_eval: int = 100  # held-out problems (test split, at most MAX_PROBLEMS)
    seed: int = 0  # problem generation seed (>= 0)

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


TEACHERS = ("programmatic", "llm", "retry", "placebo", "self")  # built in (rl2f/teacher.py)


@dataclasses.dataclass
class RolloutSection:
    engine: Literal["builtin", "vllm"] = "builtin"
    group_size: int = 8  # G episodes per problem (GRPO group)
    max_turns: int = 4  # T: student attempts per episode (1 = single-turn)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None  # tokens kept; None (the key left out) = off
    max_new_tokens: int = 64  # per student attempt
    # programmatic (the task's hints) | llm | retry ("incorrect, try again") | placebo (the hint
    # format, no content) | self (the student critiques itself), or a teacher class of the
    # user's: "package.module:Class" | "path/to/file.py:Class" | a name registered under the
    # entry-point group rl2f.teachers (rl2f.teacher.GuardedTeacher: its messages are guarded)
    teacher: str = "programmatic"
    teacher_max_new_tokens: int = 64
    leak_guard_tries: int = 3  # regenerations of a leaking LLM-teacher message before the fallback
    leak_judge: bool = False  # LLM teacher: the base model also judges each draft the string checks pass
    vllm_kv_cache_gib: float = 0.0  # vLLM KV cache in GiB; 0 = GPU: a share of its memory, CPU: VLLM_CPU_KVCACHE_SPACE or 2
    vllm_gpu_memory_utilization: float = 0.45  # GPU: the share of each GPU vLLM reserves (weights + KV cache); the trainer gets the rest
    vllm_sleep: bool = False  # GPU only: vLLM sleeps while the trainer trains (weights to host memory, KV cache freed)
    problems_per_batch: int = 8  # problems rolled out together (x group_size episodes)
    # A dialogue that outgrows the model's context: "skip" ends the episode before the turn that
    # no longer fits (recorded as context_full, counted in the metrics) and skips a problem whose
    # prompt alone cannot fit, naming it; "error" stops the run with the problem's id instead.
    overlong: Literal["skip", "error"] = "skip"
    # built-in engine: keys/values kept between an episode's turns (MB; 0 = off). Left out:
    # sized from the model, what a batch's longest dialogues hold (rl2f.memory_plan)
    prefix_cache_mb: int | None = None
    seed: int = 0

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError("group_size must be >= 1")
        if self.max_turns < 1:
            raise ValueError("max_turns must be >= 1")
        self.teacher = absolute_spec(self.teacher)  # a teacher file, found again from anywhere
        if self.teacher not in TEACHERS and not is_spec(self.teacher) \
                and self.teacher not in entry_point_names("rl2f.teachers"):
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


# The Linear layers LoRA can wrap (rl2f/lora.py), and the short names accepted for them.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_SHORT_TARGETS = {t.removesuffix("_proj"): t for t in LORA_TARGETS}


@dataclasses.dataclass
class LoRASection:
    rank: int = 16
    alpha: float = 32.0  # scale = alpha / rank; 0 would make every LoRA gradient exactly zero
    dropout: float = 0.0
    targets: list[str] = dataclasses.field(default_factory=lambda: list(LORA_TARGETS))

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
    method: Literal["sft", "rlvr", "rl2f"] = "rl2f"  # rlvr forces rollout.max_turns = 1, no teacher
    max_steps: int = 100  # optimiser steps
    max_student_tokens: int = 0  # GRPO stops once this many student tokens were generated (0 = off)
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine schedule floor, as a fraction of lr, in [0, 1]
    grad_accum: int = 1  # rollout/SFT batches per optimiser step
    micro_batch: int = 8  # sequences per forward/backward
    share_prefix: bool = True  # rows of a micro-batch that begin alike (a group's prompt) compute it once
    max_grad_norm: float = 1.0  # clip the global gradient norm to this (0 = no clipping)
    gamma: float = 0.7  # discount of rewards over turns (paper's companion: 0.7)
    clip_low: float = 0.2  # ratio floor 1 - clip_low, in [0, 1)
    clip_high: float = 0.28
    beta: float = 0.0  # k3 KL to the adapter-off base (paper: 0)
    std_normalize: bool = True  # divide group-centred advantages by the group std
    drop_zero_variance: bool = True  # groups whose rewards are all equal carry no signal
    critique_weight: float = 0.0  # likelihood weight on teacher turns (self-correction)
    init_adapter: str = ""  # PEFT adapter to start from (e.g. an SFT warm start for GRPO); "" = fresh LoRA
    sft_data: str = ""  # JSONL of dialogues for SFT ("" = generate from the task with its hints)
    sft_epochs: int = 1
    save_every: int = 0  # steps between checkpoints (0 = only at the end)
    seed: int = 0

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
        for name in ("clip_low", "clip_high", "beta", "critique_weight", "save_every", "warmup_steps",
                     "weight_decay", "max_student_tokens", "max_grad_norm", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            # negative: the schedule ends at a negative lr (gradient ascent); above 1 it rises
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.clip_low >= 1:
            raise ValueError(f"clip_low must be < 1 (the ratio floor is 1 - clip_low), got {self.clip_low}")


@dataclasses.dataclass
class EvalSection:
    max_turns: int = 5  # T for acc@1..T
    temperature: float = 1.0  # sampling (greedy flatters an imitation base)
    samples_per_problem: int = 1  # episodes per problem (pass@K uses max_turns samples)
    # problems played together (x samples_per_problem rows, x K for pass@K): larger batches
    # decode more tokens per second (benchmarks/results/eval_batch-cpu.json); the results do
    # not depend on it (sampling is keyed by seed and problem)
    batch_size: int = 32
    bootstrap: int = 1000  # resamples for the 95% intervals (>= 100)
    seed: int = 0

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
