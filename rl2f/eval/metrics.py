"""The RL2F metrics (RL2F.md, Metrics) from Episode records, with bootstrap intervals.

Every metric is computed from per-problem tables, one per seed, so that one hierarchical
bootstrap (seeds with replacement, then problems with replacement, all of a problem's
episodes together: `Resamples`) gives the 95% intervals, and two models evaluated on the same
seeds and problems can share the resample indices (a paired comparison).

Definitions, with T the number of turns and an episode stopping at its first correct attempt:
- acc@t: per problem, the fraction of its episodes (samples x seeds) solved at some turn
  <= t; then the mean over problems.
- multi-turn gain: acc@T - acc@1.
- correction rate: among episodes wrong at turn 1, the fraction solved by turn T (pooled
  over episodes: sum of successes / sum of cases). Per turn t = 1..T-1: among episodes
  wrong at turn t that went on to a turn t+1, the fraction correct at t+1.
- plasticity: among feedback turns (wrong at t, feedback given, a turn t+1 played), the
  fraction where the extracted answer at t+1 differs from the one at t. A missing answer
  (None) is a value of its own: None -> None is unchanged (the student still gave no
  answer), None -> "5" and "5" -> None are changes. Answers compare after stripping
  whitespace. Per turn as for the correction rate.
- leak rate: teacher messages flagged by the leak guard / teacher messages.
- pass@K: per problem and seed, the unbiased estimator 1 - C(n-c, K) / C(n, K) over that
  seed's n independent single-turn samples with c correct (with n = K: solved if any is
  correct); then the mean over seeds and problems. Never pooled over seeds: each seed is its
  own trained model, and a mixture of models has a higher pass@K than the models' mean.
A ratio with no cases (no episode wrong at turn 1, no feedback turn) is None.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

from rl2f.episodes import Episode

CI_LEVEL = 0.95


@dataclass
class ProblemTable:
    """Per-problem counts of one set of episodes; row i is problem `keys[i]`."""

    keys: list[tuple[str, str]]  # (task, problem_id)
    max_turns: int  # T
    solved_by: np.ndarray  # (N, T) fraction of the problem's episodes solved at some turn <= t
    first_wrong: np.ndarray  # (N,) episodes wrong at turn 1
    corrected: np.ndarray  # (N,) of those, solved by turn T
    turn_wrong: np.ndarray  # (N, T-1) episodes wrong at t with a turn t+1
    turn_fixed: np.ndarray  # (N, T-1) of those, correct at t+1
    fb_turns: np.ndarray  # (N, T-1) feedback turns: wrong at t, feedback given, turn t+1 played
    fb_changed: np.ndarray  # (N, T-1) of those, answer at t+1 != answer at t
    teacher_msgs: np.ndarray  # (N,) teacher messages
    leaks: np.ndarray  # (N,) of those, flagged by the leak guard
    episodes: np.ndarray  # (N,) episodes per problem


def _norm(answer: str | None) -> str | None:
    return None if answer is None else answer.strip()


def problem_table(episodes: list[Episode], max_turns: int, keys: list[tuple[str, str]] | None = None) -> ProblemTable:
    """Count the episodes per problem. `keys` fixes the row order (every key must have
    episodes); by default rows follow the problems' first appearance."""
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    groups: dict[tuple[str, str], list[Episode]] = {}
    for e in episodes:
        groups.setdefault((e.task, e.problem_id), []).append(e)
    if keys is None:
        keys = list(groups)
    missing = [k for k in keys if k not in groups]
    if missing:
        raise ValueError(f"no episodes for problem {missing[0]}")
    T, N = max_turns, len(keys)
    t = dict(
        solved_by=np.zeros((N, T)), first_wrong=np.zeros(N), corrected=np.zeros(N),
        turn_wrong=np.zeros((N, T - 1)), turn_fixed=np.zeros((N, T - 1)),
        fb_turns=np.zeros((N, T - 1)), fb_changed=np.zeros((N, T - 1)),
        teacher_msgs=np.zeros(N), leaks=np.zeros(N), episodes=np.zeros(N),
    )
    for i, key in enumerate(keys):
        eps = groups[key]
        t["episodes"][i] = len(eps)
        for e in eps:
            turns = e.turns[:T]
            s = e.solved_at
            if s is not None and s <= T:
                t["solved_by"][i, s - 1 :] += 1
            if turns and not turns[0].correct:
                t["first_wrong"][i] += 1
                t["corrected"][i] += s is not None and s <= T
            for k in range(min(len(turns) - 1, T - 1)):
                cur, nxt = turns[k], turns[k + 1]
                if cur.correct:
                    break
                t["turn_wrong"][i, k] += 1
                t["turn_fixed"][i, k] += nxt.correct
                if cur.feedback is not None:
                    t["fb_turns"][i, k] += 1
                    t["fb_changed"][i, k] += _norm(nxt.answer) != _norm(cur.answer)
            for turn in e.turns:
                if turn.feedback is not None:
                    t["teacher_msgs"][i] += 1
                    t["leaks"][i] += turn.leak_flagged
        t["solved_by"][i] /= len(eps)
    return ProblemTable(list(keys), T, **t)


# --------------------------------------------------------------------------------------
# Point estimates


def _ratio(num: np.ndarray, den: np.ndarray) -> float | None:
    d = float(den.sum())
    return float(num.sum()) / d if d > 0 else None


def _ratios(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    """Per column of (N, C) counts."""
    return [_ratio(num[:, c], den[:, c]) for c in range(num.shape[1])]


def acc_at(table: ProblemTable) -> list[float]:
    """acc@t for t = 1..T."""
    return [float(x) for x in table.solved_by.mean(axis=0)] if len(table.keys) else [0.0] * table.max_turns


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021); needs n >= k."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def pass_at_k_values(episodes: list[Episode], k: int, keys: list[tuple[str, str]]) -> np.ndarray:
    """(N,) per-problem pass@k from single-turn episodes (only turn 1 is read)."""
    n: dict[tuple[str, str], int] = {}
    c: dict[tuple[str, str], int] = {}
    for e in episodes:
        key = (e.task, e.problem_id)
        n[key] = n.get(key, 0) + 1
        c[key] = c.get(key, 0) + bool(e.turns and e.turns[0].correct)
    return np.array([pass_at_k(n.get(key, 0), c.get(key, 0), k) for key in keys], dtype=float)


def point_metrics(table: ProblemTable) -> dict:
    """Every metric of the module docstring as plain floats (or None for an empty ratio)."""
    acc = acc_at(table)
    return {
        "acc_at": acc,
        "multi_turn_gain": acc[-1] - acc[0],
        "correction_rate": _ratio(table.corrected, table.first_wrong),
        "correction_rate_per_turn": _ratios(table.turn_fixed, table.turn_wrong),
        "plasticity": _ratio(table.fb_changed, table.fb_turns),
        "plasticity_per_turn": _ratios(table.fb_changed, table.fb_turns),
        "leak_rate": _ratio(table.leaks, table.teacher_msgs),
        "n_teacher_messages": int(table.teacher_msgs.sum()),
        "n_feedback_turns": int(table.fb_turns.sum()),
        "n_problems": len(table.keys),
        "n_episodes": int(table.episodes.sum()),
    }


# --------------------------------------------------------------------------------------
# Hierarchical bootstrap: seeds, then problems


@dataclass
class Resamples:
    """Bootstrap draws for values laid out (S seeds, N problems, ...).

    Each resample b draws S seeds with replacement, then N problems with replacement, and its
    statistic pools the cells (seed, problem) of the drawn seeds and problems. The problems are
    the same for every seed (a crossed design: a hard problem is hard for every seed), so one
    problem draw serves all the drawn seeds of a resample. With several seeds the interval
    holds both the variance between seeds (training seeds: the unit that varies the method)
    and between problems; with one seed it is the plain bootstrap over problems."""

    problems: np.ndarray  # (B, N) problem indices
    seeds: np.ndarray  # (B, S) seed indices


def bootstrap_indices(n_problems: int, n_resamples: int, seed: int, n_seeds: int = 1) -> Resamples:
    """Resamples of `n_seeds` x `n_problems` values; the same arguments give the same draws, so
    models evaluated on the same seeds and problems are resampled in pairs."""
    rng = np.random.default_rng(seed)
    problems = rng.integers(0, n_problems, size=(n_resamples, n_problems))
    seeds = rng.integers(0, n_seeds, size=(n_resamples, n_seeds)) if n_seeds > 1 else np.zeros((n_resamples, 1), int)
    return Resamples(problems, seeds)


def _cells(values: np.ndarray, idx: Resamples) -> np.ndarray:
    """(B, S, N, ...) the drawn cells of (S, N, ...) values."""
    return values[idx.seeds[:, :, None], idx.problems[:, None, :]]


def _interval(samples: np.ndarray, point) -> list:
    """95% percentile interval of (B, ...) resampled statistics (NaN = undefined in that
    resample, skipped). A skewed resample distribution can put the point estimate just
    outside the percentile interval; it is widened to include it, so [lo, hi] always holds
    the reported value."""
    alpha = (1 - CI_LEVEL) / 2
    out = []
    flat = samples.reshape(samples.shape[0], int(np.prod(samples.shape[1:])))  # (B, C); C or B may be 0
    points = np.atleast_1d(np.array(point, dtype=object)).reshape(-1)
    for j in range(flat.shape[1]):
        col = flat[:, j]
        col = col[~np.isnan(col)]
        p = points[j]
        if p is None or col.size == 0:
            out.append(None)
            continue
        lo, hi = np.quantile(col, [alpha, 1 - alpha])
        out.append([float(min(lo, p)), float(max(hi, p))])
    return out


def mean_ci(values: np.ndarray, idx: Resamples) -> list:
    """Intervals of the mean over (seed, problem) cells of (S, N) or (S, N, C) values: one
    [lo, hi] for (S, N), a list of C for (S, N, C)."""
    if values.ndim == 3 and values.shape[2] == 0:
        return []
    if values.shape[1] == 0:
        return None if values.ndim == 2 else [None] * values.shape[2]
    stats = _cells(values, idx).mean(axis=(1, 2))  # (B,) or (B, C)
    ci = _interval(stats, values.mean(axis=(0, 1)).tolist())
    return ci[0] if values.ndim == 2 else ci


def ratio_ci(num: np.ndarray, den: np.ndarray, idx: Resamples) -> list:
    """Intervals of sum(num) / sum(den) over the drawn cells; (S, N) or (S, N, C) counts."""
    if num.ndim == 3 and num.shape[2] == 0:  # per-turn counts of a one-turn evaluation: none
        return []
    if num.shape[1] == 0:
        return None if num.ndim == 2 else [None] * num.shape[2]
    n, d = _cells(num, idx).sum(axis=(1, 2)), _cells(den, idx).sum(axis=(1, 2))  # (B,) or (B, C)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = np.where(d > 0, n / np.where(d > 0, d, 1), np.nan)
    flat_num, flat_den = num.reshape(-1, *num.shape[2:]), den.reshape(-1, *den.shape[2:])
    point = _ratio(flat_num, flat_den) if num.ndim == 2 else _ratios(flat_num, flat_den)
    ci = _interval(stats, point)
    return ci[0] if num.ndim == 2 else ci


def merge_tables(tables: list[ProblemTable]) -> ProblemTable:
    """One table of several seeds' tables on the same problems (every seed with as many
    episodes per problem): acc@t averaged, counts summed; its point metrics equal those of
    `problem_table` over all the seeds' episodes."""
    first = tables[0]
    if any(t.keys != first.keys for t in tables):
        raise ValueError("tables of different problems cannot be merged")
    stack = lambda name: np.stack([getattr(t, name) for t in tables])  # noqa: E731
    counts = {name: stack(name).sum(axis=0) for name in ("first_wrong", "corrected", "turn_wrong", "turn_fixed",
                                                         "fb_turns", "fb_changed", "teacher_msgs", "leaks", "episodes")}
    return ProblemTable(list(first.keys), first.max_turns, solved_by=stack("solved_by").mean(axis=0), **counts)


def metrics_with_ci(tables: list[ProblemTable], idx: Resamples) -> dict:
    """`point_metrics` of the seeds' tables merged, plus a `*_ci` interval for each rate from
    the hierarchical resamples `idx` (one table per seed, in `idx`'s seed order)."""
    m = point_metrics(merge_tables(tables))
    stack = lambda name: np.stack([getattr(t, name) for t in tables])  # noqa: E731  (S, N, ...)
    solved = stack("solved_by")
    m["acc_at_ci"] = mean_ci(solved, idx)
    m["multi_turn_gain_ci"] = mean_ci(solved[:, :, -1] - solved[:, :, 0], idx)
    m["correction_rate_ci"] = ratio_ci(stack("corrected"), stack("first_wrong"), idx)
    m["correction_rate_per_turn_ci"] = ratio_ci(stack("turn_fixed"), stack("turn_wrong"), idx)
    m["plasticity_ci"] = ratio_ci(stack("fb_changed").sum(axis=2), stack("fb_turns").sum(axis=2), idx)
    m["plasticity_per_turn_ci"] = ratio_ci(stack("fb_changed"), stack("fb_turns"), idx)
    m["leak_rate_ci"] = ratio_ci(stack("leaks"), stack("teacher_msgs"), idx)
    return m
