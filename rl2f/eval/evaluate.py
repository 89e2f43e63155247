"""Evaluate the base model and LoRA adapters on the same problems and seeds (a paired
comparison), with the two reference points of docs/method.md beside each model.

For every model (the base with its adapter switched off, or an adapter loaded into the one
base model, which is loaded once) and every seed, on the same held-out problems, the episode
kinds of `controls` (default feedback and retry) and pass@K:
- feedback episodes: up to T turns with the config's teacher (`rollout.teacher`);
- retry episodes: up to T turns where the teacher only says "incorrect, try again";
- placebo episodes: up to T turns of the task's hint format with no information about the
  answer (rl2f/teacher.py, "placebo"); feedback minus placebo is the value of the content;
- decoy episodes: up to T turns of the task's real hints about a decoy answer drawn from the
  task's prior (rl2f/teacher.py, "decoy"): the stricter placebo (`decoy_content_effect`);
- pass@K samples: K (default T; 0 = none) independent single-turn samples per problem (x
  samples_per_problem);
- self-correction episodes (models named in `self_correct`): the student critiques its own
  attempt in the teacher's turn, no privileged information (rl2f/teacher.py, "self"). The
  verifier still stops an episode at its first correct attempt (verifier-gated);
- oracle-free self-correction (`oracle_free=True`, for the same models): exactly T rounds of
  attempt and self-critique whatever the verifier would say, the answer of each round scored
  afterwards: what self-correction is worth with no oracle at all.
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

from rl2f.config import RunConfig, to_dict
from rl2f.distributed import init_distributed
from rl2f.episodes import Episode, read_episodes
from rl2f.errors import UserError
from rl2f.eval.metrics import (acc_at, bootstrap_indices, mean_ci, metrics_with_ci, pass_at_k_values,
                               problem_table)
from rl2f.run import build_inference_run, episode_runner, eval_rollout
from rl2f.tasks import get_task
from rl2f.tasks.base import Problem, Task, Verdict

SCHEMA = "rl2f.eval.report/1"
SELF_SUFFIX = "_self_correct"
PHASES = ("feedback", "retry", "pass", "placebo", "decoy", "self", "self_free")  # episode kinds, in the order they are played
CONTROLS = ("feedback", "retry", "placebo", "decoy")  # the multi-turn kinds a caller chooses among (`controls`)
TEACHERS = {"retry": "retry", "pass": "retry", "placebo": "placebo", "decoy": "decoy", "self": "self", "self_free": "self"}

# The placebo controls and the report field of each one's content effect (feedback minus it).
PLACEBOS = {"placebo": "content_effect", "decoy": "decoy_content_effect"}

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


class NoOracle(Task):
    """`task` with a verifier that never says "correct": an episode plays every round and its
    student never learns the verdict (the answers are scored afterwards, `oracle_free_acc`)."""

    def __init__(self, task: Task):
        self.task, self.name, self.system_prompt = task, task.name, task.system_prompt

    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        return self.task.problems(n, seed, split)

    def extract_answer(self, text: str) -> str | None:
        return self.task.extract_answer(text)

    def verify(self, text: str, problem: Problem) -> Verdict:
        return Verdict(False, self.task.extract_answer(text))

    def hint(self, problem: Problem, attempt: str, verdict: Verdict) -> str:
        return self.task.hint(problem, attempt, verdict)


def evaluate_models(cfg: RunConfig, models: dict[str, str | None], problems=None, seeds: list[int] = (0,),
                    self_correct: list[str] = (), *, controls: tuple[str, ...] = ("feedback", "retry"),
                    pass_at_k: int | None = None, oracle_free: bool = False, contrasts: list[tuple[str, str]] = (),
                    turns: int | None = None, progress: Progress | None = None,
                    episodes_dir: str | Path | None = None, model=None, tokenizer=None) -> dict:
    """Evaluate `models` (name -> adapter directory, None for the base) and return the report
    dict (schema: rl2f/eval/report.py): `play_models`, then `build_report`.

    problems: see `resolve_problems`. seeds: one full evaluation per seed (intervals resample
    seeds, then problems). self_correct: model names also run with self-critique (reported as
    NAME_self_correct). controls: the episode kinds played for every model (`CONTROLS`, any
    non-empty subset): acc@t is the feedback episodes', else the first kind's (the report's
    `teacher` says which). pass_at_k: K (default T; 0 = no pass@K samples). oracle_free: the
    extra control of the module docstring.
    contrasts: (a, b) model pairs whose paired differences the report holds.
    turns: T (default `eval.max_turns`). progress: called as (problems done, total, label).
    episodes_dir: also write every episode as JSONL there (<model>.<kind>.jsonl).
    model, tokenizer: an already loaded base model (with or without LoRA) to reuse instead of
    loading `model.path`; its adapter is replaced by the ones evaluated.
    """
    t0 = time.perf_counter()
    T = cfg.eval.max_turns if turns is None else int(turns)
    sets = resolve_problems(cfg, problems)
    K = T if pass_at_k is None else int(pass_at_k)
    episodes = play_models(cfg, models, sets, seeds, self_correct, controls=controls, pass_at_k=K,
                           oracle_free=oracle_free, turns=T, progress=progress, episodes_dir=episodes_dir, model=model,
                           tokenizer=tokenizer)
    report = build_report(cfg, episodes, models, sets, T, contrasts=contrasts, K=K)
    report["wall_seconds"] = time.perf_counter() - t0
    return report


def play_models(cfg: RunConfig, models: dict[str, str | None], sets, seeds: list[int] = (0,),
                self_correct: list[str] = (), *, controls: tuple[str, ...] = ("feedback", "retry"),
                pass_at_k: int | None = None, oracle_free: bool = False, turns: int, progress: Progress | None = None,
                episodes_dir: str | Path | None = None, model=None,
                tokenizer=None) -> dict[str, dict[str, dict[int, list[Episode]]]]:
    """Play every model, seed and episode kind on the (task, problems) `sets`; returns
    episodes[name][kind][seed] (kinds: `PHASES`). Arguments as for `evaluate_models`."""
    T = int(turns)
    if T < 1:
        raise UserError(f"turns must be >= 1, got {T}")
    K = T if pass_at_k is None else int(pass_at_k)
    if K < 0:
        raise UserError(f"pass@K: K must be >= 0 (0 = no pass@K samples), got {K}")
    unknown = [c for c in controls if c not in CONTROLS]
    if unknown or not controls:
        raise UserError(f"controls {list(controls)}: choose one or more of {', '.join(CONTROLS)}")
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
    S = cfg.eval.samples_per_problem

    # --- the base model, once
    run = build_inference_run(dataclasses.replace(cfg, rollout=eval_rollout(cfg)),
                              init_distributed(cfg.model.device), model, tokenizer)
    engine = run.engine

    def runner(task, kind: str):
        teacher = TEACHERS.get(kind, cfg.rollout.teacher)
        return episode_runner(run, teacher, 1 if kind == "pass" else T,
                              task=NoOracle(task) if kind == "self_free" else task)

    def wanted(name: str, kind: str) -> bool:
        if kind == "pass":
            return K > 0
        if kind in ("self", "self_free"):
            return name in self_correct and (kind == "self" or oracle_free)
        return kind in controls

    kinds = {name: [k for k in PHASES if wanted(name, k)] for name in models}
    runners = {task.name: {k: runner(task, k) for k in {k for ks in kinds.values() for k in ks}} for task, _ in sets}
    n_problems = sum(len(ps) for _, ps in sets)
    total = n_problems * len(seeds) * sum(len(k) for k in kinds.values())
    per_batch = cfg.eval.batch_size

    episodes: dict[str, dict[str, dict[int, list[Episode]]]] = {}
    for version, (name, adapter) in enumerate(models.items(), start=1):
        episodes[name] = {k: {s: [] for s in seeds} for k in kinds[name]}
        _select(engine, name, adapter, version)
        for seed in seeds:
            for task, ps in sets:
                for kind in kinds[name]:
                    group = S * K if kind == "pass" else S
                    for b in range(0, len(ps), per_batch):
                        batch = ps[b : b + per_batch]
                        eps = runners[task.name][kind].run(batch, group, seed=seed,
                                                           adapter_version=version if adapter else 0)
                        episodes[name][kind][seed] += eps
                        if progress is not None:
                            progress(len(batch), total, f"{name} {kind} seed {seed}")
        if episodes_dir is not None:
            write_episodes(episodes[name], Path(episodes_dir), name)
    return episodes


def write_episodes(by_kind: dict[str, dict[int, list[Episode]]], out_dir: Path, name: str) -> None:
    """One model's episodes as DIR/<name>.<kind>.jsonl, seeds in order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for kind, by_seed in by_kind.items():
        with (out_dir / f"{name}.{kind}.jsonl").open("w") as f:
            f.writelines(e.to_json() + "\n" for s in by_seed for e in by_seed[s])


def read_episode_dirs(dirs: dict[int, str | Path], names: list[str]) -> dict[str, dict[str, dict[int, list[Episode]]]]:
    """episodes[name][kind][seed] from one `episodes_dir` per seed (each written by a one-seed
    `play_models`): how runs evaluated apart, such as one adapter per training seed, are
    reported together."""
    out: dict[str, dict[str, dict[int, list[Episode]]]] = {}
    for name in names:
        out[name] = {}
        for kind in PHASES:
            files = {s: Path(d) / f"{name}.{kind}.jsonl" for s, d in dirs.items()}
            if all(f.is_file() for f in files.values()):
                out[name][kind] = {s: read_episodes(f) for s, f in files.items()}
            elif any(f.is_file() for f in files.values()):
                raise UserError(f"model '{name}': {kind} episodes for some seeds only ({', '.join(map(str, files.values()))})")
        if "feedback" not in out[name]:
            raise UserError(f"model '{name}': no feedback episodes in {', '.join(str(d) for d in dirs.values())}")
    return out


# ----------------------------------------------------------------------------------------
# The report


def build_report(cfg: RunConfig, episodes: dict[str, dict[str, dict[int, list[Episode]]]],
                 adapters: dict[str, str | list[str] | None], sets, T: int,
                 contrasts: list[tuple[str, str]] = (), K: int | None = None) -> dict:
    """The report (schema: rl2f/eval/report.py) of episodes[name][kind][seed] played on the
    (task, problems) `sets`; adapters: name -> adapter directory (a list: one per seed), None
    for the base. Every interval resamples seeds, then problems, with the same draws for every
    model (paired). K: of pass@K (default T), where pass samples were played. acc@t is of the
    feedback episodes, else of the first of `CONTROLS` played."""
    K = T if K is None else K
    main = next(k for k in CONTROLS if k in next(iter(episodes.values())))
    seeds = list(next(iter(episodes.values()))[main])
    keys = [(task.name, p.id) for task, ps in sets for p in ps]
    idx = resamples(cfg, len(keys), len(seeds))
    tasks = {task.name: task for task, _ in sets}
    problems = {(task.name, p.id): p for task, ps in sets for p in ps}
    rows = {}  # report name -> (episode kind, episodes by kind) of its acc@t
    report_models: dict[str, dict] = {}
    for name, eps in episodes.items():
        adapter = adapters.get(name)
        adapter = adapter if adapter is None or isinstance(adapter, list) else str(adapter)
        teacher = cfg.rollout.teacher if main == "feedback" else main
        report_models[name] = {"adapter": adapter, "teacher": teacher,
                               **_model_report(eps, main, keys, sets, T, K, seeds, cfg)}
        rows[name] = (eps, main)
        if "self" in eps:
            sc = _model_report(eps, "self", keys, sets, T, K, seeds, cfg)
            # The self-critique sees no privileged information and passes no guard.
            for m in [sc, *sc.get("per_task", {}).values()]:
                m["leak_rate"], m["leak_rate_ci"] = None, None
            sc["verifier_gated"] = True
            if "self_free" in eps:
                rounds = np.stack([_round_correct(eps["self_free"][s], keys, T, tasks, problems) for s in seeds])
                sc["oracle_free_acc"] = [float(x) for x in rounds.mean(axis=(0, 1))]
                sc["oracle_free_acc_ci"] = mean_ci(rounds, idx)
            report_models[name + SELF_SUFFIX] = {"adapter": adapter, "teacher": "self", **sc}
            rows[name + SELF_SUFFIX] = (eps, "self")

    reference = "base" if "base" in report_models else next(iter(report_models))
    paired = {name: _contrast(rows[name], rows[reference], keys, T, seeds, idx, reference=reference)
              for name in report_models if name != reference}
    pairs = {}
    for a, b in contrasts:
        if a not in rows or b not in rows:
            raise UserError(f"contrast '{a} - {b}': not an evaluated model (models: {', '.join(rows)})")
        pairs[f"{a} - {b}"] = {"a": a, "b": b, **_contrast(rows[a], rows[b], keys, T, seeds, idx)}

    config = to_dict(cfg)
    config["eval"]["max_turns"] = T
    return {
        "schema": SCHEMA,
        "models": report_models,
        "paired": paired,
        "contrasts": pairs,
        "reference": reference,
        "seeds": seeds,
        "max_turns": T,
        "k": K,
        "tasks": {task.name: len(ps) for task, ps in sets},
        "n_problems": len(keys),
        "samples_per_problem": cfg.eval.samples_per_problem,
        "bootstrap": cfg.eval.bootstrap,
        "ci_level": 0.95,
        "config": config,
    }


def _solved(by_seed: dict[int, list[Episode]], keys, T: int, seeds) -> np.ndarray:
    """(S, N, T) acc@t per seed and problem."""
    return np.stack([problem_table(by_seed[s], T, keys).solved_by for s in seeds])


def _contrast(a, b, keys, T: int, seeds, idx, **extra) -> dict:
    """Paired acc@t differences of two report rows (episodes, kind), and of their content
    effects (feedback minus a placebo) where both rows have that placebo's episodes."""
    (eps_a, kind_a), (eps_b, kind_b) = a, b
    diff = _solved(eps_a[kind_a], keys, T, seeds) - _solved(eps_b[kind_b], keys, T, seeds)  # (S, N, T)
    out = {**extra, "delta_acc_at": [float(x) for x in diff.mean(axis=(0, 1))], "delta_acc_at_ci": mean_ci(diff, idx)}
    for control, field in PLACEBOS.items():
        if kind_a == kind_b == "feedback" and control in eps_a and control in eps_b:
            content = diff - (_solved(eps_a[control], keys, T, seeds) - _solved(eps_b[control], keys, T, seeds))
            out[f"delta_{field}"] = [float(x) for x in content.mean(axis=(0, 1))]
            out[f"delta_{field}_ci"] = mean_ci(content, idx)
    return out


def _round_correct(episodes: list[Episode], keys, T: int, tasks, problems) -> np.ndarray:
    """(N, T) per problem the fraction of its oracle-free episodes whose round-t answer is
    correct, graded now by the real verifier (the episodes were played blind)."""
    out, count = np.zeros((len(keys), T)), np.zeros(len(keys))
    row = {k: i for i, k in enumerate(keys)}
    for e in episodes:
        i = row[(e.task, e.problem_id)]
        count[i] += 1
        for t, turn in enumerate(e.turns[:T]):
            out[i, t] += tasks[e.task].verify(turn.attempt, problems[(e.task, e.problem_id)]).correct
    if (count == 0).any():
        raise ValueError(f"no oracle-free episodes for problem {keys[int(np.argmin(count))]}")
    return out / count[:, None]


def resamples(cfg: RunConfig, n_problems: int, n_seeds: int):
    """The report's bootstrap draws (seeds, then problems): the same for every model."""
    return bootstrap_indices(n_problems, cfg.eval.bootstrap, cfg.eval.seed, n_seeds=n_seeds)


def _model_report(eps, kind: str, keys, sets, T: int, K: int, seeds: list[int], cfg: RunConfig) -> dict:
    """One model's metrics (acc@t from its `kind` episodes) over all problems, plus per task
    when there are several."""
    out = _metrics(eps, kind, keys, T, K, seeds, resamples(cfg, len(keys), len(seeds)))
    out["acc_at_per_seed"] = [acc_at(problem_table(eps[kind][s], T, keys)) for s in seeds]
    out["multi_turn_gain_per_seed"] = [a[-1] - a[0] for a in out["acc_at_per_seed"]]
    if len(sets) > 1:
        out["per_task"] = {}
        for task, ps in sets:
            sub = [(task.name, p.id) for p in ps]
            pick = {k: {s: [e for e in by_seed[s] if e.task == task.name] for s in seeds} for k, by_seed in eps.items()}
            out["per_task"][task.name] = _metrics(pick, kind, sub, T, K, seeds, resamples(cfg, len(sub), len(seeds)))
    return out


def _metrics(eps, kind: str, keys, T: int, K: int, seeds: list[int], idx) -> dict:
    """acc@t and the rest from the `kind` episodes; retry, placebo and pass@K beside them
    where they were played."""
    tables = lambda k: [problem_table(eps[k][s], T, keys) for s in seeds]  # noqa: E731
    m = metrics_with_ci(tables(kind), idx)
    for control in ("retry", *PLACEBOS):
        if control in eps:
            solved = np.stack([t.solved_by for t in tables(control)])  # (S, N, T)
            m[f"{control}_acc_at"] = [float(x) for x in solved.mean(axis=(0, 1))]
            m[f"{control}_acc_at_ci"] = mean_ci(solved, idx)
    if "pass" in eps:
        pk = np.stack([pass_at_k_values(eps["pass"][s], K, keys) for s in seeds])  # (S, N): per seed, never pooled
        m["pass_at_k"] = float(pk.mean())
        m["pass_at_k_ci"] = mean_ci(pk, idx)
        m["pass_at_k_per_seed"] = [float(x) for x in pk.mean(axis=1)]
    for control, field in PLACEBOS.items():
        if kind == "feedback" and control in eps:
            effect = np.stack([t.solved_by for t in tables(kind)]) - np.stack([t.solved_by for t in tables(control)])
            m[field] = [float(x) for x in effect.mean(axis=(0, 1))]
            m[f"{field}_ci"] = mean_ci(effect, idx)
    return m
