"""Evaluate the base model and LoRA adapters on the same problems and seeds (a paired
comparison), with the two reference points of docs/method.md beside each model.

For every model (the base with its adapter switched off, or an adapter loaded into the one
base model, which is loaded once) and every seed, on the same held-out problems:
- feedback episodes: up to T turns with the config's teacher (`rollout.teacher`);
- retry episodes: up to T turns where the teacher only says "incorrect, try again";
- pass@K samples: K = T independent single-turn samples per problem (x samples_per_problem);
- self-correction episodes (models named in `self_correct`): the student critiques its own
  attempt in the teacher's turn, no privileged information (rl2f/teacher.py, "self").
Sampling is keyed by (seed, problem) only (the episode runner's one scheme), never by the
model or the batch, so every model and every episode kind draws the same noise for the same
problems: turn 1 of the feedback, retry and self-correction episodes is the same attempt,
and differences between models are paired.

Episodes are sampled at `eval.temperature` (greedy flatters an imitation base) with the
rollout's top-p / top-k / max_new_tokens. Metrics and intervals: rl2f/eval/metrics.py; the
report's fields: rl2f/eval/report.py.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import numpy as np

from rl2f.config import RolloutSection, RunConfig, to_dict
from rl2f.distributed import init_distributed
from rl2f.episodes import Episode
from rl2f.errors import UserError
from rl2f.eval.metrics import (acc_at, bootstrap_indices, mean_ci, metrics_with_ci, pass_at_k_values,
                               problem_table)
from rl2f.run import build_inference_run, episode_runner
from rl2f.tasks import get_task
from rl2f.tasks.base import Problem, Task

SCHEMA = "rl2f.eval.report/1"
SELF_SUFFIX = "_self_correct"
PHASES = ("feedback", "retry", "pass", "self")  # episode kinds, in the order they are played

Progress = Callable[[int, int, str], None]  # (problems just done, total, what is running)


# ----------------------------------------------------------------------------------------
# Inputs


def resolve_problems(cfg: RunConfig, problems=None) -> list[tuple[Task, list[Problem]]]:
    """(task, problems) pairs to evaluate on.

    `problems`: None = `task.n_eval` test-split problems of the config's task; a list of
    Problems of the config's task; or {task: list of Problems} for several tasks, a task given
    as a Task or by name (the config's `task.options` apply to the task of the config's name,
    defaults to others)."""
    def task_named(name: str) -> Task:
        return get_task(name, **(cfg.task.options if name == cfg.task.name else {}))

    if problems is None:
        task = task_named(cfg.task.name)
        sets = [(task, task.problems(cfg.task.n_eval, seed=cfg.task.seed, split="test"))]
    elif isinstance(problems, dict):
        sets = [(task_named(t) if isinstance(t, str) else t, list(ps)) for t, ps in problems.items()]
    else:
        sets = [(task_named(cfg.task.name), list(problems))]
    sets = [(t, ps) for t, ps in sets if ps]
    if not sets:
        raise UserError("no problems to evaluate on (empty task set: check task.n_eval / --problems / --task)")
    names = [t.name for t, _ in sets]
    if len(set(names)) != len(names):
        raise UserError(f"task '{next(n for n in names if names.count(n) > 1)}' is given twice")
    for task, ps in sets:
        ids = [p.id for p in ps]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise UserError(f"task '{task.name}': problem id {dup!r} appears twice; ids must be unique")
    return sets


def eval_rollout(cfg: RunConfig) -> RolloutSection:
    """The rollout table with eval's temperature and seed: how every evaluated student samples."""
    return dataclasses.replace(cfg.rollout, temperature=cfg.eval.temperature, seed=cfg.eval.seed)


# ----------------------------------------------------------------------------------------
# Model switching


def _select(engine, name: str, adapter: str | None, version: int) -> None:
    """Student requests from now on run `name`: the base (adapter off) or `adapter`."""
    try:
        engine.set_adapter(None if adapter is None else version, adapter)
    except UserError as e:
        raise UserError(f"adapter '{name}' ({adapter}): {e}") from None


# ----------------------------------------------------------------------------------------
# The evaluation


def evaluate_models(cfg: RunConfig, models: dict[str, str | None], problems=None, seeds: list[int] = (0,),
                    self_correct: list[str] = (), *, turns: int | None = None, progress: Progress | None = None,
                    episodes_dir: str | Path | None = None, model=None, tokenizer=None) -> dict:
    """Evaluate `models` (name -> adapter directory, None for the base) and return the report
    dict (schema: rl2f/eval/report.py).

    problems: see `resolve_problems`. seeds: one full evaluation per seed, pooled per problem.
    self_correct: model names also run with self-critique (reported as NAME_self_correct).
    turns: T (default `eval.max_turns`). progress: called as (problems done, total, label).
    episodes_dir: also write every episode as JSONL there (<model>.<kind>.jsonl).
    model, tokenizer: an already loaded base model (with or without LoRA) to reuse instead of
    loading `model.path`; its adapter is replaced by the ones evaluated.
    """
    t0 = time.perf_counter()
    T = cfg.eval.max_turns if turns is None else int(turns)
    if T < 1:
        raise UserError(f"turns must be >= 1, got {T}")
    if not models:
        raise UserError("no model to evaluate: give an adapter (NAME=DIR) or the base")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise UserError("no seeds given")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be distinct, got {seeds}")
    for n in self_correct:
        if n not in models:
            raise UserError(f"self-correct '{n}': not an evaluated model (models: {', '.join(models)})")
    for name, adapter in models.items():
        if adapter is not None and not Path(adapter).is_dir():
            raise UserError(f"adapter '{name}': {adapter}: adapter directory not found")
    sets = resolve_problems(cfg, problems)
    S = cfg.eval.samples_per_problem

    # --- the base model, once
    run = build_inference_run(dataclasses.replace(cfg, rollout=eval_rollout(cfg)),
                              init_distributed(cfg.model.device), model, tokenizer)
    engine = run.engine

    def runner(task, kind: str):
        teacher = {"feedback": cfg.rollout.teacher, "retry": "retry", "pass": "retry", "self": "self"}[kind]
        return episode_runner(run, teacher, 1 if kind == "pass" else T, task=task)

    runners = {task.name: {k: runner(task, k) for k in PHASES} for task, _ in sets}
    kinds = {name: [k for k in PHASES if k != "self" or name in self_correct] for name in models}
    n_problems = sum(len(ps) for _, ps in sets)
    total = n_problems * len(seeds) * sum(len(k) for k in kinds.values())
    per_batch = cfg.rollout.problems_per_batch

    # --- play every model, seed and episode kind on the same problems
    # episodes[name][kind][seed]: every episode of that model, kind and seed
    episodes: dict[str, dict[str, dict[int, list[Episode]]]] = {}
    for version, (name, adapter) in enumerate(models.items(), start=1):
        episodes[name] = {k: {s: [] for s in seeds} for k in kinds[name]}
        _select(engine, name, adapter, version)
        for seed in seeds:
            for task, ps in sets:
                for kind in kinds[name]:
                    group = S * T if kind == "pass" else S
                    for b in range(0, len(ps), per_batch):
                        batch = ps[b : b + per_batch]
                        eps = runners[task.name][kind].run(batch, group, seed=seed,
                                                           adapter_version=version if adapter else 0)
                        episodes[name][kind][seed] += eps
                        if progress is not None:
                            progress(len(batch), total, f"{name} {kind} seed {seed}")
        if episodes_dir is not None:
            out = Path(episodes_dir)
            out.mkdir(parents=True, exist_ok=True)
            for kind, by_seed in episodes[name].items():
                with (out / f"{name}.{kind}.jsonl").open("w") as f:
                    f.writelines(e.to_json() + "\n" for s in seeds for e in by_seed[s])

    # --- metrics
    keys = [(task.name, p.id) for task, ps in sets for p in ps]
    report_models: dict[str, dict] = {}
    for name, adapter in models.items():
        eps = episodes[name]
        base = _model_report(eps["feedback"], eps["retry"], eps["pass"], keys, sets, T, seeds, cfg)
        report_models[name] = {"adapter": None if adapter is None else str(adapter),
                               "teacher": cfg.rollout.teacher, **base}
        if name in self_correct:
            sc = _model_report(eps["self"], eps["retry"], eps["pass"], keys, sets, T, seeds, cfg)
            # The self-critique sees no privileged information and passes no guard.
            for m in [sc, *sc.get("per_task", {}).values()]:
                m["leak_rate"], m["leak_rate_ci"] = None, None
            report_models[name + SELF_SUFFIX] = {"adapter": None if adapter is None else str(adapter),
                                                 "teacher": "self", **sc}

    reference = "base" if "base" in report_models else next(iter(report_models))
    idx = bootstrap_indices(len(keys), cfg.eval.bootstrap, cfg.eval.seed)
    ref_solved = _solved_by(episodes, reference, keys, T)
    paired = {}
    for name in report_models:
        if name == reference:
            continue
        diff = _solved_by(episodes, name, keys, T) - ref_solved  # (N, T)
        paired[name] = {"reference": reference, "delta_acc_at": [float(x) for x in diff.mean(axis=0)],
                        "delta_acc_at_ci": mean_ci(diff, idx)}

    config = to_dict(cfg)
    config["eval"]["max_turns"] = T
    return {
        "schema": SCHEMA,
        "models": report_models,
        "paired": paired,
        "reference": reference,
        "seeds": seeds,
        "max_turns": T,
        "k": T,
        "tasks": {task.name: len(ps) for task, ps in sets},
        "n_problems": n_problems,
        "samples_per_problem": S,
        "bootstrap": cfg.eval.bootstrap,
        "ci_level": 0.95,
        "config": config,
        "wall_seconds": time.perf_counter() - t0,
    }


def _solved_by(episodes, name: str, keys, T: int) -> np.ndarray:
    """(N, T) acc@t per problem of a report entry (NAME or NAME_self_correct)."""
    kind = "feedback"
    if name not in episodes and name.endswith(SELF_SUFFIX):
        name, kind = name[: -len(SELF_SUFFIX)], "self"
    eps = [e for by_seed in episodes[name][kind].values() for e in by_seed]
    return problem_table(eps, T, keys).solved_by


def _model_report(feedback, retry, passes, keys, sets, T: int, seeds: list[int], cfg: RunConfig) -> dict:
    """One model's metrics over all problems, plus per task when there are several."""
    flat = lambda by_seed: [e for s in seeds for e in by_seed[s]]  # noqa: E731
    out = _metrics(flat(feedback), flat(retry), flat(passes), keys, T, cfg)
    out["acc_at_per_seed"] = [acc_at(problem_table(feedback[s], T, keys)) for s in seeds]
    if len(sets) > 1:
        out["per_task"] = {}
        for task, ps in sets:
            sub = [(task.name, p.id) for p in ps]
            pick = lambda eps: [e for e in eps if e.task == task.name]  # noqa: E731
            out["per_task"][task.name] = _metrics(pick(flat(feedback)), pick(flat(retry)), pick(flat(passes)),
                                                  sub, T, cfg)
    return out


def _metrics(feedback, retry, passes, keys, T: int, cfg: RunConfig) -> dict:
    idx = bootstrap_indices(len(keys), cfg.eval.bootstrap, cfg.eval.seed)
    m = metrics_with_ci(problem_table(feedback, T, keys), idx)
    rt = problem_table(retry, T, keys)
    m["retry_acc_at"] = acc_at(rt)
    m["retry_acc_at_ci"] = mean_ci(rt.solved_by, idx)
    pk = pass_at_k_values(passes, T, keys)  # (N,)
    m["pass_at_k"] = float(pk.mean())
    m["pass_at_k_ci"] = mean_ci(pk, idx)
    return m
