"""One assembly room: a typed `Run` built from a `RunConfig`, used by training, evaluation,
generation, self-correction and the demo alike.

`build_run` loads the model (the embedded tiny checkpoint when `model.path` is empty), puts
LoRA on it (an fp32 adapter on a frozen base of `model.dtype`), optionally restores an
adapter, shards it with FSDP2 under torchrun, and builds the task and the rollout engine.
`episode_runner` builds an episode runner for one use: its teacher kind, its number of
turns and its sampling are passed in explicitly, never patched afterwards.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from rl2f.config import RolloutSection, RunConfig
from rl2f.distributed import Dist, shard_model
from rl2f.engine import make_engine
from rl2f.engine.types import Engine, SamplingParams
from rl2f.episodes import EpisodeRunner
from rl2f.lora import apply_lora, load_adapter
from rl2f.memory_plan import over_memory_message, prefix_cache_bytes
from rl2f.model import CausalLM, Tokenizer, load_config, load_model, load_tokenizer
from rl2f.model.loading import check_tokenizer_fits
from rl2f.model.tiny import checkpoint_dir
from rl2f.tasks import get_task
from rl2f.tasks.base import Task
from rl2f.teacher import make_teacher


@dataclass
class Run:
    cfg: RunConfig
    dist: Dist
    model: CausalLM | None  # None only for inference through vLLM, which holds its own copy
    tokenizer: Tokenizer
    model_path: Path
    task: Task | None = None
    engine: Engine | None = None


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


def episode_runner(run: Run, teacher: str, max_turns: int, rollout: RolloutSection | None = None,
                   task: Task | None = None) -> EpisodeRunner:
    """An episode runner on the run's engine: `teacher` kind, up to `max_turns` attempts, the
    student sampled as `rollout` says (default: the config's rollout table)."""
    rollout = rollout or run.cfg.rollout
    task = task or run.task
    student = student_sampling(rollout)
    teacher_params = dataclasses.replace(student, max_tokens=rollout.teacher_max_new_tokens)
    feedback = make_teacher(teacher, task, run.engine, run.tokenizer, teacher_params, rollout.leak_guard_tries,
                            leak_judge=rollout.leak_judge)
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
