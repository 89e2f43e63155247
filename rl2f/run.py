"""One assembly room: a typed `Run` built from a `RunConfig`, used by training, evaluation,
generation, self-correction and the demo alike.

`build_run` loads the model (the embedded tiny checkpoint when `model.path` is empty), puts
LoRA on it (an fp32 adapter on a frozen base of `model.dtype`), optionally restores an
adapter, shards it with FSDP2 under torchrun, and builds the task and the rollout engine.
`episode_runner` builds an episode runner for one use: its teacher kind, its number of
turns and its sampling are passed in explicitly, never patched afterwards. The LLM teacher
and its judge speak through what `[teacher]` names (`teacher_engine`): the student's base on
the rollout engine, adapter off (the default), a checkpoint of its own on a built-in engine
of its own, loaded once per run, or an OpenAI-compatible endpoint.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from rl2f.config import RolloutSection, RunConfig, TeacherSection, read_teacher_prompt
from rl2f.distributed import Dist, shard_model
from rl2f.engine import make_engine
from rl2f.engine.openai_endpoint import ChatEndpoint
from rl2f.engine.types import Engine, SamplingParams
from rl2f.episodes import EpisodeRunner
from rl2f.errors import UserError
from rl2f.lora import apply_lora, load_adapter
from rl2f.memory_plan import over_memory_message, prefix_cache_bytes
from rl2f.model import CausalLM, Tokenizer, load_config, load_model, load_tokenizer
from rl2f.model.loading import check_tokenizer_fits
from rl2f.model.tiny import checkpoint_dir
from rl2f.tasks import get_task
from rl2f.tasks.base import Task
from rl2f.teacher import TEACHER_SYSTEM, make_teacher


@dataclass
class Run:
    cfg: RunConfig
    dist: Dist
    model: CausalLM | None  # None only for inference through vLLM, which holds its own copy
    tokenizer: Tokenizer
    model_path: Path
    task: Task | None = None
    engine: Engine | None = None
    # what the LLM teacher speaks through, (engine or endpoint, tokenizer or None): built on
    # first use by `teacher_engine`, so a run without an LLM teacher loads no teacher model
    teacher: tuple[Engine | ChatEndpoint, Tokenizer | None] | None = None


def resolve_model_path(cfg: RunConfig) -> Path:
    """`model.path`, or the embedded tiny checkpoint (written once to the cache, atomically)."""
    return checkpoint_dir(cfg.model.path, cfg.model.tiny_family, cfg.model.tiny_seed)


def build_run(cfg: RunConfig, d: Dist, adapter: str | Path | None = None, task: Task | None = None,
              with_engine: bool = True, lora: bool = True) -> Run:
    """Model (+ LoRA, + restored adapter) + FSDP2 + task + engine.

    lora=False loads the bare base (evaluation puts each evaluated adapter on it in turn);
    with_engine=False skips the engine (SFT on a file of dialogues needs none)."""
    path = resolve_model_path(cfg)
    if d.device.type == "cuda":  # before loading: an over-full GPU would fail in the first rollout
        message = over_memory_message(cfg, load_config(path), d.world_size,
                                      torch.cuda.get_device_properties(d.device).total_memory)
        if message:
            warnings.warn(message)
    model = load_model(path, dtype=cfg.model.dtype, device=d.device)
    tokenizer = load_tokenizer(path)
    check_tokenizer_fits(tokenizer, model.config)
    if lora:
        lc = cfg.lora
        apply_lora(model, rank=lc.rank, alpha=lc.alpha, targets=list(lc.targets), dropout=lc.dropout,
                   seed=cfg.train.seed, dtype=torch.float32)
    if adapter is not None:
        load_adapter(model, adapter)
    model.train()
    if d.device.type == "cuda":
        # Activations dominate at 8k-token dialogues; recomputing each block is the usual trade.
        model.model.gradient_checkpointing = True
    if d.enabled:
        shard_model(model)
    if task is None and (with_engine or cfg.train.method != "sft"):
        task = get_task(cfg.task.name, **cfg.task.options)
    engine = build_engine(cfg, model, tokenizer, path, d) if with_engine else None
    return Run(cfg, d, model, tokenizer, path, task, engine)


def build_inference_run(cfg: RunConfig, d: Dist, model: CausalLM | None = None,
                        tokenizer: Tokenizer | None = None) -> Run:
    """The base model for evaluation and generation, with no LoRA of its own: each adapter is
    loaded into it by `engine.set_adapter` (built-in engine) or handed to vLLM as a directory
    (then the base is not loaded here at all). `model` / `tokenizer` reuse loaded ones."""
    path = resolve_model_path(cfg)
    tokenizer = tokenizer or load_tokenizer(path)
    if model is None and cfg.rollout.engine == "builtin":
        model = load_model(path, dtype=cfg.model.dtype, device=d.device)
    check_tokenizer_fits(tokenizer, model.config if model is not None else load_config(path))
    task = get_task(cfg.task.name, **cfg.task.options)
    return Run(cfg, d, model, tokenizer, path, task, build_engine(cfg, model, tokenizer, path, d))


def build_engine(cfg: RunConfig, model, tokenizer, path: Path, d: Dist) -> Engine:
    if cfg.rollout.engine == "builtin":
        return make_engine("builtin", model=model, tokenizer=tokenizer,
                           prefix_cache_bytes=prefix_cache_bytes(cfg, model.config))
    # One vLLM engine per rank on its own GPU, beside the trainer, which gets what vLLM's
    # share (rollout.vllm_gpu_memory_utilization) leaves: `rl2f plan-memory` shows both.
    # Under torchrun, vLLM joins the existing process group instead of starting its own
    # (the "external_launcher" executor, as TRL's colocate mode does).
    extra = {"distributed_executor_backend": "external_launcher"} if d.enabled else {}
    return make_engine("vllm", model_path=str(path), tokenizer=tokenizer, max_lora_rank=max(cfg.lora.rank, 8),
                       gpu_memory_utilization=cfg.rollout.vllm_gpu_memory_utilization, seed=cfg.rollout.seed,
                       enable_prefix_caching=True, dtype=cfg.model.dtype,
                       kv_cache_gib=cfg.rollout.vllm_kv_cache_gib or None, sleep_mode=cfg.rollout.vllm_sleep, **extra)


def student_sampling(rollout: RolloutSection) -> SamplingParams:
    return SamplingParams(n=1, temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k,
                          max_tokens=rollout.max_new_tokens, seed=rollout.seed)


def teacher_sampling(teacher: TeacherSection, rollout: RolloutSection) -> SamplingParams:
    """The generated teachers' (llm, self) sampling: the student's, with `[teacher]`'s
    temperature and length where given (else rollout's, as before `[teacher]` existed)."""
    temperature = rollout.temperature if teacher.temperature is None else teacher.temperature
    max_tokens = rollout.teacher_max_new_tokens if teacher.max_new_tokens is None else teacher.max_new_tokens
    return dataclasses.replace(student_sampling(rollout), temperature=temperature, max_tokens=max_tokens)


def teacher_engine(run: Run) -> tuple[Engine | ChatEndpoint, Tokenizer | None]:
    """What the LLM teacher and its judge speak through (see the module docstring)."""
    if run.teacher is not None:
        return run.teacher
    t = run.cfg.teacher
    if t.endpoint:
        api_key = None
        if t.api_key_env:
            api_key = os.environ.get(t.api_key_env)
            if not api_key:
                raise UserError(f"teacher.api_key_env: the environment variable {t.api_key_env} is not set")
        run.teacher = (ChatEndpoint(t.endpoint, t.endpoint_model, api_key, t.endpoint_timeout_s), None)
    elif t.model_path:
        path = Path(t.model_path).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"teacher.model_path: {path} is not a checkpoint directory (no config.json)")
        model = load_model(path, dtype=run.cfg.model.dtype, device=run.dist.device)
        tokenizer = load_tokenizer(path)
        check_tokenizer_fits(tokenizer, model.config)
        run.teacher = (make_engine("builtin", model=model, tokenizer=tokenizer), tokenizer)
    else:
        run.teacher = (run.engine, run.tokenizer)
    return run.teacher


def episode_runner(run: Run, teacher: str, max_turns: int, rollout: RolloutSection | None = None,
                   task: Task | None = None) -> EpisodeRunner:
    """An episode runner on the run's engine: `teacher` kind, up to `max_turns` attempts, the
    student sampled as `rollout` says (default: the config's rollout table)."""
    rollout = rollout or run.cfg.rollout
    task = task or run.task
    student = student_sampling(rollout)
    # the self teacher is the student itself; only the LLM teacher speaks through [teacher]'s model
    engine, tokenizer = teacher_engine(run) if teacher == "llm" else (run.engine, run.tokenizer)
    t = run.cfg.teacher
    system = read_teacher_prompt(t.prompt_file) if t.prompt_file else TEACHER_SYSTEM
    feedback = make_teacher(teacher, task, engine, tokenizer, teacher_sampling(t, rollout), rollout.leak_guard_tries,
                            leak_judge=rollout.leak_judge, system=system)
    config = run.model.config if run.model is not None else load_config(run.model_path)
    return EpisodeRunner(task, run.engine, run.tokenizer, feedback, student, max_turns,
                         max_len=config.max_position_embeddings, overlong=rollout.overlong)


def eval_rollout(cfg: RunConfig) -> RolloutSection:
    """The rollout table with eval's temperature and seed: how every evaluated student samples
    (`rl2f evaluate`, and the evaluation during training)."""
    return dataclasses.replace(cfg.rollout, temperature=cfg.eval.temperature, seed=cfg.eval.seed)


def training_runner(run: Run) -> EpisodeRunner:
    """RLVR is the same loop with single-turn episodes and no teacher."""
    max_turns = 1 if run.cfg.train.method == "rlvr" else run.cfg.rollout.max_turns
    return episode_runner(run, run.cfg.rollout.teacher, max_turns)
