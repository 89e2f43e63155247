"""Evaluation during training (`train.eval_every`): held-out acc@t while a GRPO run goes on.

Every `eval_every` steps (and after the last), the adapter just trained plays
`train.eval_problems` problems of the task's test split, one episode each, with the training
teacher and turns, sampled as `rl2f evaluate` samples (`eval.temperature`, keyed by
`eval.seed` and the problem only): a row equals what `rl2f evaluate` measures for the
adapter of its step (tested). The row appended to OUT/eval.jsonl holds acc@1..T, the
correction rate, the plasticity and the leak rate (rl2f.eval.metrics, the definitions `rl2f
evaluate` reports). The adapter with the best `train.eval_best` so far is kept in
OUT/best-adapter (with best.json: its step and value) beside the run's checkpoints.

It does not change the training stream: sampling is keyed by the eval seed and the problem,
never by the global RNGs, and the engine's prefix cache is released after it as after every
rollout. So a run with evaluation makes the same training rows as one without (tested).
Under torchrun each rank plays its share of the problems; every rank gathers all episodes and
computes the same row, so the best-adapter decision (a collective save) agrees everywhere.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

from rl2f.distributed import barrier, gather_objects, unsharded
from rl2f.eval.metrics import point_metrics, problem_table
from rl2f.lora import save_adapter
from rl2f.run import Run, episode_runner, eval_rollout
from rl2f.train.common import Metrics

EVAL_FILE = "eval.jsonl"
BEST_DIR = "best-adapter"


class HeldOut:
    """Called with a step's metrics row after the row is written; evaluates on its steps."""

    def __init__(self, run: Run, max_turns: int, out_dir: Path, resume_step: int | None, total_steps: int):
        cfg, d = run.cfg, run.dist
        # the training teacher and turns, sampled as `rl2f evaluate` samples (eval.temperature,
        # eval.seed): a row here equals that command's acc@t for the adapter of its step
        self.runner = episode_runner(run, cfg.rollout.teacher, max_turns, rollout=eval_rollout(cfg))
        self.run, self.total_steps = run, total_steps
        self.every = cfg.train.eval_every
        self.problems = run.task.problems(cfg.train.eval_problems, seed=cfg.task.seed, split="test")
        self.keys = [(run.task.name, p.id) for p in self.problems]
        T = max_turns
        self.metric = f"acc@{T}" if cfg.train.eval_best == "acc@T" else cfg.train.eval_best
        self.best_dir = out_dir / BEST_DIR
        path = out_dir / EVAL_FILE
        if resume_step is not None and d.is_main:
            Metrics.resume(path, resume_step, None)  # rows past the checkpoint are replayed
            self._drop_best_after(resume_step)
        barrier(d)  # every rank reads the file as rank 0 left it: one best, one decision to save
        self.rows = Metrics(path, d.is_main, resume_step)
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] \
            if resume_step is not None and path.exists() else []
        self.best = max((r[self.metric] for r in rows if r.get(self.metric) is not None), default=None)

    def _drop_best_after(self, step: int) -> None:
        """A best adapter from a step the resumed run replays is not the run's any more."""
        note = self.best_dir / "best.json"
        if note.is_file() and json.loads(note.read_text()).get("step", 0) > step:
            shutil.rmtree(self.best_dir)

    def __call__(self, record: dict) -> None:
        step = record["step"]
        if step % self.every and step != self.total_steps:
            return
        row = self.evaluate(step)
        value = row.get(self.metric)
        row["best"] = value is not None and (self.best is None or value > self.best)
        if row["best"]:
            self.best = value
            self.keep_best(step, value)
        self.rows.write(row)

    def evaluate(self, step: int) -> dict:
        run, d = self.run, self.run.dist
        t0 = time.perf_counter()
        mine = self.problems[d.rank :: d.world_size]
        full = unsharded(run.model) if run.cfg.rollout.engine == "builtin" else contextlib.nullcontext()
        with full:
            run.engine.wake()
            episodes = self.runner.run(mine, 1, seed=run.cfg.eval.seed, adapter_version=step)
            run.engine.sleep()
        episodes = [e for part in gather_objects(episodes, d) for e in part]
        m = point_metrics(problem_table(episodes, self.runner.max_turns, self.keys))
        return {"step": step, "problems": len(self.problems),
                **{f"acc@{t}": a for t, a in enumerate(m["acc_at"], 1)},
                **{k: m[k] for k in ("correction_rate", "plasticity", "leak_rate")},
                "seconds": time.perf_counter() - t0}

    def keep_best(self, step: int, value: float) -> None:
        d = self.run.dist
        save_adapter(self.run.model, self.best_dir, write=d.is_main)  # atomic; a collective under FSDP2
        if d.is_main:
            (self.best_dir / "best.json").write_text(json.dumps({"step": step, self.metric: value}))
        barrier(d)
