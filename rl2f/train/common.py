"""What SFT and GRPO share: building the run from a RunConfig, the optimiser and schedule,
the metrics file, timers, and the optimiser step with its non-finite guard.

`build_run` loads the model (the embedded tiny checkpoint when `model.path` is empty), puts
LoRA on it (fp32 adapter on a frozen base of `model.dtype`), optionally restores an
adapter, shards it with FSDP2 under torchrun, and builds the engine, task, teacher and
episode runner from the config's tables.
"""
from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from rl2f.config import RunConfig
from rl2f.errors import UserError
from rl2f.train.distributed import Dist, shard_model

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NonFiniteError(UserError):
    """A non-finite loss or gradient: the run stops, the last good checkpoint stays."""


# ----------------------------------------------------------------------------------------
# Building the run


def cache_dir() -> Path:
    return Path(os.environ.get("RL2F_CACHE", Path.home() / ".cache" / "rl2f"))


def resolve_model_path(cfg: RunConfig) -> Path:
    """`model.path`, or the embedded tiny checkpoint (written once to the cache, atomically)."""
    if cfg.model.path:
        path = Path(cfg.model.path).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"model.path: {path} is not a checkpoint directory (no config.json)")
        return path
    from rl2f.model import build_tiny_checkpoint

    path = cache_dir() / f"tiny-{cfg.model.tiny_family}-seed{cfg.model.tiny_seed}"
    if (path / "config.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    build_tiny_checkpoint(tmp, family=cfg.model.tiny_family, seed=cfg.model.tiny_seed)
    try:
        os.rename(tmp, path)
    except OSError:  # another rank or process won the race: theirs is the same checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def student_sampling_params(cfg: RunConfig, seed: int | None = None):
    from rl2f.engine.types import SamplingParams

    r = cfg.rollout
    return SamplingParams(n=1, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k if r.top_k > 0 else -1,
                          max_tokens=r.max_new_tokens, seed=r.seed if seed is None else seed)


def effective_max_turns(cfg: RunConfig) -> int:
    """RLVR is the same loop with single-turn episodes and no teacher."""
    return 1 if cfg.train.method == "rlvr" else cfg.rollout.max_turns


@dataclass
class Run:
    cfg: RunConfig
    dist: Dist
    model: torch.nn.Module
    tokenizer: Any
    model_path: Path
    engine: Any = None
    task: Any = None
    runner: Any = None


def build_run(cfg: RunConfig, d: Dist, adapter: str | Path | None = None, task=None,
              with_engine: bool = True) -> Run:
    """Model + LoRA (+ restored adapter) + FSDP2 + engine, task, teacher and episode runner."""
    from rl2f.lora import apply_lora, load_adapter
    from rl2f.model import load_model, load_tokenizer

    path = resolve_model_path(cfg)
    device = d.device
    dtype = DTYPES[cfg.model.dtype]
    model = load_model(path, dtype=dtype, device=device)
    tokenizer = load_tokenizer(path)
    lc = cfg.lora
    apply_lora(model, rank=lc.rank, alpha=lc.alpha, targets=list(lc.targets), dropout=lc.dropout,
               seed=cfg.train.seed, dtype=torch.float32)
    if adapter is not None:
        load_adapter(model, adapter)
    model.train()
    if device.type == "cuda":
        # Activations dominate at 8k-token dialogues; recomputing each block is the usual trade.
        model.model.gradient_checkpointing = True
    if d.enabled:
        shard_model(model)
    run = Run(cfg, d, model, tokenizer, path)
    if task is None and (with_engine or cfg.train.method != "sft"):
        from rl2f.tasks import get_task

        task = get_task(cfg.task.name, **cfg.task.options)
    run.task = task
    if with_engine:
        run.engine = build_engine(cfg, model, tokenizer, path, d)
        run.runner = build_runner(cfg, run.engine, tokenizer, task)
    return run


def build_engine(cfg: RunConfig, model, tokenizer, path: Path, d: Dist):
    from rl2f.engine import make_engine

    if cfg.rollout.engine == "builtin":
        return make_engine("builtin", model=model, tokenizer=tokenizer)
    # One vLLM engine per rank on its own GPU, beside the trainer: leave it half the memory.
    # Under torchrun, vLLM joins the existing process group instead of starting its own
    # (the "external_launcher" executor, as TRL's colocate mode does).
    extra = {"distributed_executor_backend": "external_launcher"} if d.enabled else {}
    return make_engine("vllm", model_path=str(path), tokenizer=tokenizer, max_lora_rank=max(cfg.lora.rank, 8),
                       gpu_memory_utilization=0.45, seed=cfg.rollout.seed, enable_prefix_caching=True,
                       dtype=cfg.model.dtype, kv_cache_gib=cfg.rollout.vllm_kv_cache_gib or None, **extra)


def build_runner(cfg: RunConfig, engine, tokenizer, task):
    from rl2f.episodes import EpisodeRunner
    from rl2f.teacher import make_teacher

    teacher_params = replace(student_sampling_params(cfg), max_tokens=cfg.rollout.teacher_max_new_tokens)
    teacher = make_teacher(cfg.rollout.teacher, task, engine, tokenizer, teacher_params, cfg.rollout.leak_guard_tries,
                           leak_judge=cfg.rollout.leak_judge)
    return EpisodeRunner(task, engine, tokenizer, teacher, student_sampling_params(cfg), effective_max_turns(cfg))


def start_run(cfg: RunConfig, out_dir: str | Path, resume, d: Dist | None, task, init_adapter,
              with_engine: bool = True):
    """What every training loop does first: join the process group, check the run directory,
    read the checkpoint to resume (if any), seed, and build the run with the adapter to start
    from (the checkpoint's, else `init_adapter` / `train.init_adapter`, else a fresh LoRA).
    Returns (out_dir, d, checkpoint dir or None, trainer state or None, run)."""
    from rl2f.train.checkpoint import find_checkpoint, load_trainer_state
    from rl2f.train.distributed import init_distributed

    out_dir = Path(out_dir)
    d = d or init_distributed(cfg.model.device)
    ckpt = find_checkpoint(resume) if resume else None
    check_out_dir(out_dir, resuming=ckpt is not None)
    state = load_trainer_state(ckpt) if ckpt else None
    seed_everything(cfg.train.seed + d.rank)  # a resume then restores the saved RNG states
    init = init_adapter or cfg.train.init_adapter or None
    run = build_run(cfg, d, adapter=ckpt / "adapter" if ckpt else init, task=task, with_engine=with_engine)
    return out_dir, d, ckpt, state, run


def check_out_dir(out_dir: Path, resuming: bool) -> None:
    """A fresh run never mixes with an old one's checkpoints, metrics or dialogues."""
    if not resuming and (out_dir / "checkpoints").exists():
        raise UserError(f"--out {out_dir}: holds a previous run; continue it with --resume {out_dir} "
                        "or choose another --out")


def seed_everything(seed: int) -> None:
    """Global RNGs (LoRA dropout, anything unseeded) from the config: a fresh run is
    reproducible; a resumed one restores the saved states instead."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_problems(cfg: RunConfig, task) -> list:
    if cfg.task.n_train < 1:
        raise UserError("task.n_train must be >= 1 to train")
    return task.problems(cfg.task.n_train, seed=cfg.task.seed, split="train")


class EpochStream:
    """Item i of an endless stream over `n` items: epoch i // n, in a per-epoch shuffled order
    that depends only on (seed, epoch), so a data position is all a resume needs."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, list[int]] = {}

    def __getitem__(self, i: int) -> int:
        epoch, j = divmod(i, self.n)
        if epoch not in self._perms:
            perm = list(range(self.n))
            random.Random(f"rl2f-data-{self.seed}-{epoch}").shuffle(perm)
            self._perms = {epoch: perm}
        return self._perms[epoch][j]


# ----------------------------------------------------------------------------------------
# Optimiser, schedule, step


def lora_params(model) -> list[torch.nn.Parameter]:
    from rl2f.lora import lora_parameters

    return lora_parameters(model)


def make_optimizer(cfg: RunConfig, model) -> torch.optim.Optimizer:
    params = lora_params(model)
    if not params:
        raise UserError("no trainable LoRA parameters (check lora.targets)")
    # foreach=False: the same per-tensor arithmetic in one process and under FSDP (DTensors),
    # which the distributed-equivalence test holds to 1e-5.
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, foreach=False)


def lr_factor(step: int, cfg: RunConfig) -> float:
    """Linear warmup to lr, then cosine down to lr * min_lr_ratio at max_steps."""
    t = cfg.train
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    span = max(t.max_steps - t.warmup_steps, 1)
    progress = min((step - t.warmup_steps) / span, 1.0)
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(cfg: RunConfig, optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))


def clip_and_check(model, cfg: RunConfig, loss_value: float, step: int, save_good) -> float:
    """Global grad norm (clipped to max_grad_norm). A non-finite loss or norm stops the run
    before the update is applied: `save_good()` writes the current (still good) state as a
    checkpoint, unless the newest checkpoint already is this state, and returns its path."""
    params = [p for p in lora_params(model) if p.grad is not None]
    max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False) if params else torch.zeros(())
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    norm = float(norm)
    if not (math.isfinite(loss_value) and math.isfinite(norm)):
        for p in params:
            p.grad = None
        kept = save_good()
        bad = " and ".join(name for name, v in (("loss", loss_value), ("gradient norm", norm)) if not math.isfinite(v))
        raise NonFiniteError(f"step {step + 1}: non-finite {bad} (loss {loss_value}, gradient norm {norm}); "
                             f"the update was not applied, the run stopped, and the last good checkpoint "
                             f"is {kept}. Lower train.lr or check the data.")
    return norm


# ----------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """One JSON line per step in out/metrics.jsonl (rank 0 only); on resume, lines after the
    resumed step are dropped so the file reads as one run."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None = None):
        self.path = path
        self.enabled = enabled
        if enabled and resume_step is not None and path.exists():
            lines = [l for l in path.read_text().splitlines() if l.strip()]
            keep = [l for l in lines if json.loads(l).get("step", 0) <= resume_step]
            path.write_text("".join(l + "\n" for l in keep))
        elif enabled and resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class Timer:
    """Wall time per named phase, synchronising CUDA so a phase's kernels count in it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t0

    def reset(self) -> dict[str, float]:
        out, self.totals = self.totals, {}
        return out


def peak_memory_mb(device: torch.device, reset: bool = True) -> float:
    """CUDA: peak allocated since the last reset; CPU: the process's peak RSS."""
    if device.type == "cuda":
        mb = torch.cuda.max_memory_allocated(device) / 2**20
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        return mb
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def progress_bar(total: int, start: int, enabled: bool):
    """A click progress bar over steps (rank 0), or a stand-in that does nothing."""
    if not enabled:
        return _NoBar()
    import click

    bar = click.progressbar(length=total, label="train", show_pos=True, show_eta=True,
                            item_show_func=lambda s: s)
    bar.__enter__()
    bar.update(start)
    return bar


class _NoBar:
    def update(self, n, current_item=None):
        pass

    def __exit__(self, *a):
        pass
