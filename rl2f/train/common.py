"""What SFT and GRPO share: starting (or resuming) a run, the optimiser and its schedule, the
optimiser step with its non-finite guard, the step loop with its checkpoints and metrics
file, per-rank sums reduced over ranks, timers and the progress bar.

The learning rate follows the run's progress, not only its step count: a GRPO run bounded
by a generated-token budget (`train.max_student_tokens`) or an SFT run bounded by its
epochs reaches the end of its cosine at the step it actually stops.
"""
from __future__ import annotations

import dataclasses
import os
import json
import math
import random
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rl2f.config import RunConfig, TrainSection
from rl2f.distributed import Dist, all_reduce_sum, barrier, init_distributed, loss_scale, max_over_ranks
from rl2f.errors import UserError
from rl2f.lora import lora_parameters
from rl2f.outputs import claim_dir, remove_own
from rl2f.progress import Progress
from rl2f.run import Run, build_run
from rl2f.trackers import Trackers, check_trackers
from rl2f.train.checkpoint import (check_resume_config, complete_checkpoints, find_checkpoint,
                                   load_trainer_state, restore, save_checkpoint)


class NonFiniteError(UserError):
    """A non-finite loss or gradient: the run stops, the last good checkpoint stays."""


# ----------------------------------------------------------------------------------------
# Starting a run


def start_run(cfg: RunConfig, out_dir: str | Path, resume, d: Dist | None, task, init_adapter,
              with_engine: bool = True, dry_run: bool = False):
    """What every training loop does first: check that the trackers' packages are installed,
    join the process group, check the run directory, read the checkpoint to resume (if any)
    and check the config against it, repair the metrics file to end at the checkpoint's step,
    seed, and build the run with the adapter to start from (the checkpoint's, else
    `init_adapter` / `train.init_adapter`, else a fresh LoRA). `dry_run` (`rl2f train
    --dry-run`) checks the run directory but writes nothing, not even the directory. Returns
    (out_dir, d, checkpoint dir or None, trainer state or None, run)."""
    check_trackers(cfg.train.report_to)  # a missing tracker package is refused before any work
    out_dir = Path(out_dir)
    ckpt = find_checkpoint(resume) if resume else None
    state = load_trainer_state(ckpt) if ckpt else None
    if ckpt is not None:
        check_resume_config(cfg, ckpt, state["step"])
    if d is None:
        d = init_distributed(cfg.model.device)
    # Rank 0 claims the directory before the others look at it: a peer's check would
    # otherwise meet a half-written marker, and rank 0 a peer's write probe ("holds files rl2f
    # did not write").
    if d.is_main:
        check_out_dir(out_dir, resuming=ckpt is not None, write=not dry_run)
    barrier(d)
    if not d.is_main:
        check_out_dir(out_dir, resuming=ckpt is not None, is_main=False, write=not dry_run)
    if ckpt is not None and d.is_main and not dry_run:
        Metrics.resume(out_dir / "metrics.jsonl", state["step"], state.get("metrics_row"))
    seed_everything(cfg.train.seed + d.rank)  # a resume then restores the saved RNG states
    init = init_adapter or cfg.train.init_adapter or None
    run = build_run(cfg, d, adapter=ckpt / "adapter" if ckpt else init, task=task, with_engine=with_engine)
    return out_dir, d, ckpt, state, run


# What `rl2f train` writes in its --out: a fresh run in a directory of an earlier one that
# never completed a checkpoint removes these, and nothing else (rl2f.outputs).
TRAIN_OUTPUTS = ("checkpoints", "metrics.jsonl", "metrics.jsonl.tmp", "adapters", "sft-dialogues.jsonl",
                 "sft-dialogues.tmp", "eval.jsonl", "eval.jsonl.tmp", "best-adapter", "tensorboard", "wandb",
                 "trackers.json")


def check_out_dir(out_dir: Path, resuming: bool, is_main: bool = True, write: bool = True) -> None:
    """A fresh run never mixes with an old one's checkpoints, metrics or dialogues, never
    deletes or overwrites a file rl2f did not write (`rl2f.outputs.claim_dir`: a non-empty
    directory that is not an rl2f train run is refused), has the directory to itself (a
    second process writing there is refused), and the directory must be writable before any
    work is done. A run directory whose run stopped before its first checkpoint was complete
    holds nothing to resume: a fresh run clears rl2f's own entries in it. `write=False` (a dry
    run) only checks: nothing is locked, cleared or created."""
    # a run written before run directories were marked is recognised by its checkpoints
    claim_dir(out_dir, "train", lock_it=is_main and write,
              adopt=bool(out_dir.is_dir() and complete_checkpoints(out_dir)))
    if not resuming:
        if complete_checkpoints(out_dir):
            raise UserError(f"--out {out_dir}: holds a previous run; continue it with --resume {out_dir} "
                            "or choose another --out")
        if is_main and write:  # one rank clears; the others only check
            remove_own(out_dir, TRAIN_OUTPUTS)
    if not write:
        return
    probe = out_dir / f".write-test-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {out_dir}: cannot write there ({e.strerror or e}); nothing was written") from None


def seed_everything(seed: int) -> None:
    """Global RNGs (LoRA dropout, anything unseeded) from the config: a fresh run is
    reproducible; a resumed one restores the saved states instead."""
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


def make_optimizer(cfg: RunConfig, model) -> torch.optim.Optimizer:
    params = lora_parameters(model)
    if not params:
        raise UserError("no trainable LoRA parameters (check lora.targets)")
    # foreach=False: the same per-tensor arithmetic in one process and under FSDP (DTensors),
    # which the distributed-equivalence test holds to 1e-5.
    return torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, foreach=False)


def lr_factor(step: int, progress: float, t: TrainSection) -> float:
    """Linear warmup over the first `warmup_steps` steps, times a cosine from 1 down to
    `min_lr_ratio` as the run's progress (0 at the start, 1 at its last step) goes to 1."""
    warmup = min((step + 1) / t.warmup_steps, 1.0) if t.warmup_steps else 1.0
    cosine = 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return warmup * (t.min_lr_ratio + (1 - t.min_lr_ratio) * cosine)


def clip_and_check(model, cfg: RunConfig, loss_value: float, step: int, save_good) -> float:
    """Global grad norm (clipped to max_grad_norm). A non-finite loss or norm stops the run
    before the update is applied: `save_good()` writes the current (still good) state as a
    checkpoint, unless the newest checkpoint already is this state, and returns its path."""
    params = [p for p in lora_parameters(model) if p.grad is not None]
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
# Per-rank sums


@dataclass
class Sums:
    """Base for a step's per-rank sums (every field a float or a list of floats): added
    chunk by chunk with `+=`, then summed over ranks with `all_reduce`."""

    def __iadd__(self, other):
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(self, f.name, [x + y for x, y in zip(a, b)] if isinstance(a, list) else a + b)
        return self

    def all_reduce(self, d: Dist):
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]
        flat = all_reduce_sum([x for v in values for x in (v if isinstance(v, list) else [v])], d)
        out, i = [], 0
        for v in values:
            n = len(v) if isinstance(v, list) else 1
            out.append(flat[i : i + n] if isinstance(v, list) else flat[i])
            i += n
        return type(self)(*out)


# ----------------------------------------------------------------------------------------
# The step loop


@dataclass
class Loop:
    """The state every training loop carries from step to step, and the skeleton around its
    step body: the learning rate, the optimiser step, checkpoints, metrics, the progress bar."""

    cfg: RunConfig
    out_dir: Path
    run: Run
    optimizer: torch.optim.Optimizer
    metrics: "Metrics"
    timer: "Timer"
    scale: float  # multiplies each micro-batch loss before backward (undoes FSDP's average)
    step: int = 0  # optimiser steps taken (= the adapter version)
    position: int = 0  # data items consumed
    totals: dict = field(default_factory=dict)  # running totals kept in checkpoints
    last_checkpoint: str | None = None

    @classmethod
    def start(cls, cfg: RunConfig, out_dir, resume, d: Dist | None, task, init_adapter, with_engine=True,
              totals: dict | None = None) -> "Loop":
        out_dir, d, ckpt, state, run = start_run(cfg, out_dir, resume, d, task, init_adapter, with_engine)
        optimizer = make_optimizer(cfg, run.model)
        resume_step = state["step"] if state else None
        trackers = Trackers(cfg, out_dir, resume_step) if d.is_main else None
        loop = cls(cfg, out_dir, run, optimizer, Metrics(out_dir / "metrics.jsonl", d.is_main, resume_step, trackers),
                   Timer(d.device), loss_scale(d, run.model), totals=dict(totals or {}))
        if state is not None:
            restore(ckpt, state, d, run.model, optimizer, _NoSchedule())
            loop.step, loop.position = state["step"], state["data_position"]
            loop.totals.update(state.get("extra", {}))
            loop.last_checkpoint = str(ckpt)
        return loop

    @property
    def dist(self) -> Dist:
        return self.run.dist

    def optimizer_step(self, loss_value: float, progress: float, apply: bool = True) -> tuple[float, float]:
        """Set this step's learning rate from the run's progress after it, clip, check, step.
        `apply=False` (no group carried signal) skips the update. Returns (lr, grad norm)."""
        lr = self.cfg.train.lr * lr_factor(self.step, progress, self.cfg.train)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        grad_norm = 0.0
        with self.timer("optim"):
            if apply:
                grad_norm = clip_and_check(self.run.model, self.cfg, loss_value, self.step, self.save_good)
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return lr, grad_norm

    def save(self, metrics_row: dict | None = None) -> str:
        """Checkpoint the current step; `metrics_row` (the step's row) is kept inside it, so a
        kill between the checkpoint and the metrics write loses no row (`Metrics.resume`)."""
        self.last_checkpoint = str(save_checkpoint(self.out_dir, self.dist, self.run.model, self.optimizer,
                                                   _NoSchedule(), self.cfg, self.step, self.position,
                                                   extra=self.totals, metrics_row=metrics_row))
        return self.last_checkpoint

    def save_good(self) -> str:
        """The current (still good) state as a checkpoint, unless the newest one already is it."""
        if self.last_checkpoint is None or not self.last_checkpoint.endswith(f"step-{self.step:06d}"):
            return self.save()
        return self.last_checkpoint

    def run_steps(self, total_steps: int, step: Callable[[], dict], summary: Callable[[dict], str],
                  done: Callable[[], bool] = lambda: False, after: Callable[[dict], None] | None = None) -> dict:
        """Call `step()` (one optimiser step; returns its metrics) until `total_steps` steps or
        `done()`; checkpoint every `save_every` steps and at the end; one metrics row per step;
        then `after(row)` (evaluation during training: outside the step's timing). Returns the
        last row."""
        record: dict = {}
        with Progress("train", total_steps, self.step, enabled=self.dist.is_main) as bar:
            while self.step < total_steps and not done():
                t0 = time.perf_counter()
                record = step()
                seconds = time.perf_counter() - t0
                # memory and phase times: the maximum over ranks, not rank 0's own
                per_rank = max_over_ranks({"peak_mem_mb": peak_memory_mb(self.dist.device),
                                           **{f"{k}_s": v for k, v in self.timer.reset().items()}}, self.dist)
                record = {"step": self.step, **record, "tokens_per_s": record["tokens"] / seconds,
                          "peak_mem_mb": per_rank.pop("peak_mem_mb"), "adapter_version": self.step,
                          **self.totals, **per_rank}
                final = self.step == total_steps or done()
                save_every = self.cfg.train.save_every
                if final or (save_every and self.step % save_every == 0):
                    record["checkpoint"] = self.save(metrics_row=record)
                self.metrics.write(record)
                if after is not None:
                    after(record)
                bar.update(1, summary(record))
        self.metrics.close()
        return record


class _NoSchedule:
    """The learning rate is set from the loop's state each step (`Loop.optimizer_step`), so
    the schedule has no state of its own to checkpoint."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


# ----------------------------------------------------------------------------------------
# Metrics


class Metrics:
    """One JSON line per step in out/metrics.jsonl (rank 0 only), flushed to disk per row.
    A fresh run starts the file anew; a resumed one continues the file `Metrics.resume` has
    cut back to the checkpoint's step, so the file reads as one run. Each row, once on disk,
    also goes to the run's trackers (`train.report_to`), so none of them holds a row the file
    lacks."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None = None, trackers: Trackers | None = None):
        self.path = path
        self.enabled = enabled
        self.trackers = trackers
        if enabled and resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise UserError(f"{self.path}: cannot write the metrics row of step {record.get('step')} "
                            f"({e.strerror or e}); the rows before it and the last complete checkpoint "
                            f"are kept") from None
        if self.trackers is not None:
            self.trackers.log(record)

    def close(self) -> None:
        """Finish the trackers' runs (each row is already on disk: metrics.jsonl fsyncs it)."""
        if self.trackers is not None:
            self.trackers.close()

    @staticmethod
    def resume(path: Path, step: int, row: dict | None) -> None:
        """Make `path` end with the row of checkpoint `step`: rows past it (steps the resumed
        run replays) and a torn last line (a kill mid-write) are dropped, and the checkpoint's
        own copy of its row is put back if the kill came between the checkpoint and the row.
        A damaged line before the end is a UserError naming it."""
        rows = []
        if path.exists():
            text = path.read_text(encoding="utf-8", errors="replace")
            lines = text.split("\n")
            for lineno, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                        raise ValueError("no step")
                except ValueError:
                    if lineno == len(lines):  # unterminated: the row a kill cut short
                        break
                    raise UserError(f"{path}:{lineno}: not a metrics row; remove the line to resume") from None
                if rec["step"] <= step:
                    rows.append(rec)
        if row is not None and not any(r["step"] == step for r in rows):
            rows.append(row)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
            os.replace(tmp, path)
        except OSError as e:
            raise UserError(f"{path}: cannot rewrite the metrics file ({e.strerror or e}); it is unchanged") from None


class Timer:
    """Wall time per named phase, synchronising CUDA so a phase's kernels count in it. Each
    phase is also a profiler range named `rl2f:<phase>`, so a trace (and the memory plan's
    benchmark, which reads allocations per phase from one) sees where a phase begins and ends."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        try:
            with torch.profiler.record_function(f"rl2f:{name}"):
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


