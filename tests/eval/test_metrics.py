"""The RL2F metrics on hand-built Episode records against hand-computed values, pass@k
against brute-force enumeration, and the bootstrap intervals against a naive loop."""
from itertools import combinations

import numpy as np
import pytest

from rl2f.episodes import Episode, Turn
from rl2f.eval.metrics import (bootstrap_indices, mean_ci, merge_tables, metrics_with_ci, pass_at_k,
                               pass_at_k_values, point_metrics, problem_table, ratio_ci)


def episode(pid, turns, sample=0, task="t"):
    """turns: (answer, correct, feedback, leak_flagged) per attempt."""
    return Episode(pid, task, sample, 0, 0, [], [Turn(f"a {a}", a, c, float(c), "stop", fb, leak)
                                                 for a, c, fb, leak in turns], [], [], [], [])


def dataset():
    """T = 3. A: two samples, solved at turn 1 and at turn 2. B: never solved, answer
    unchanged after the first feedback, first message leak-flagged. C: no answer twice, then
    correct. D: an answer, then no answer twice, second message leak-flagged."""
    return [
        episode("A", [("5", True, None, False)], sample=0),
        episode("A", [("3", False, "hint", False), ("5", True, None, False)], sample=1),
        episode("B", [("1", False, "hint", True), ("1", False, "hint", False), ("2", False, None, False)]),
        episode("C", [(None, False, "hint", False), (None, False, "hint", False), ("7", True, None, False)]),
        episode("D", [("4", False, "hint", False), (None, False, "hint", True), (None, False, None, False)]),
    ]


def test_point_metrics_match_hand_computed_values():
    """acc@t averages samples within a problem, then problems; ratios pool episodes; None
    answers: None->None unchanged, None<->answer changed (values computed by hand)."""
    m = point_metrics(problem_table(dataset(), 3))
    # per problem acc@1..3: A [0.5, 1, 1], B [0, 0, 0], C [0, 0, 1], D [0, 0, 0]
    assert m["acc_at"] == pytest.approx([0.125, 0.25, 0.5])
    assert m["multi_turn_gain"] == pytest.approx(0.375)
    # wrong at turn 1: A1, B, C, D; solved by turn 3: A1, C
    assert m["correction_rate"] == pytest.approx(2 / 4)
    # t=1: A1 fixed of {A1, B, C, D}; t=2: C fixed of {B, C, D}
    assert m["correction_rate_per_turn"] == pytest.approx([1 / 4, 1 / 3])
    # t=1: A1 3->5 yes, B 1->1 no, C None->None no, D 4->None yes; t=2: B 1->2 yes, C None->7 yes, D None->None no
    assert m["plasticity_per_turn"] == pytest.approx([2 / 4, 2 / 3])
    assert m["plasticity"] == pytest.approx(4 / 7)
    # teacher messages: A1 1, B 2, C 2, D 2; flagged: B's first, D's second
    assert m["leak_rate"] == pytest.approx(2 / 7)
    assert (m["n_teacher_messages"], m["n_feedback_turns"], m["n_problems"], m["n_episodes"]) == (7, 7, 4, 5)


def test_fewer_turns_truncate_and_empty_ratios_are_none():
    """Evaluated at T = 2, a turn-3 success does not count; with every problem solved at
    turn 1 the correction rate, plasticity and leak rate have no cases and are None."""
    m = point_metrics(problem_table(dataset(), 2))
    assert m["acc_at"] == pytest.approx([0.125, 0.25])
    assert m["correction_rate"] == pytest.approx(1 / 4)
    solved = point_metrics(problem_table([episode("A", [("5", True, None, False)])], 3))
    assert solved["acc_at"] == [1.0, 1.0, 1.0]
    assert solved["correction_rate"] is None and solved["plasticity"] is None and solved["leak_rate"] is None
    assert solved["plasticity_per_turn"] == [None, None]


def test_pass_at_k_matches_enumeration():
    """The unbiased estimator equals the fraction of all size-k subsets with a correct sample."""
    for n, c, k in [(5, 2, 3), (6, 1, 2), (4, 0, 4), (4, 4, 4), (3, 1, 3), (7, 3, 1)]:
        flags = [1] * c + [0] * (n - c)
        subsets = list(combinations(range(n), k))
        brute = sum(any(flags[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute)
    # per problem, from single-turn episodes: P has 1 of 3 correct, Q none
    eps = [episode("P", [("1", i == 2, None, False)], sample=i) for i in range(3)]
    eps += [episode("Q", [("1", False, None, False)], sample=i) for i in range(3)]
    assert pass_at_k_values(eps, 3, [("t", "P"), ("t", "Q")]).tolist() == [1.0, 0.0]
    assert pass_at_k_values(eps, 2, [("t", "P")]).tolist() == pytest.approx([2 / 3])


def test_bootstrap_is_deterministic_contains_the_estimate_and_matches_a_naive_loop():
    """Same seed -> same intervals; every interval holds its point estimate; the ratio
    interval equals percentiles of a per-resample loop over episodes."""
    eps = dataset()
    table = problem_table(eps, 3)
    a = metrics_with_ci([table], bootstrap_indices(4, 500, seed=7))
    b = metrics_with_ci([table], bootstrap_indices(4, 500, seed=7))
    assert a == b
    for key in ("acc_at", "correction_rate_per_turn", "plasticity_per_turn"):
        for v, ci in zip(a[key], a[key + "_ci"]):
            assert ci[0] <= v <= ci[1]
    for key in ("multi_turn_gain", "correction_rate", "plasticity", "leak_rate"):
        assert a[key + "_ci"][0] <= a[key] <= a[key + "_ci"][1]

    idx = bootstrap_indices(4, 300, seed=1)
    by_problem = {k: [e for e in eps if (e.task, e.problem_id) == k] for k in table.keys}
    stats = []
    for row in idx.problems:
        picked = [e for i in row for e in by_problem[table.keys[i]]]
        wrong = [e for e in picked if not e.turns[0].correct]
        if wrong:
            stats.append(sum(e.solved_at is not None for e in wrong) / len(wrong))
    lo, hi = np.quantile(stats, [0.025, 0.975])
    assert ratio_ci(table.corrected[None], table.first_wrong[None], idx) == pytest.approx([min(lo, 0.5), max(hi, 0.5)])
    naive_acc = [np.mean([table.solved_by[i, 2] for i in row]) for row in idx.problems]
    lo, hi = np.quantile(naive_acc, [0.025, 0.975])
    assert mean_ci(table.solved_by[None], idx)[2] == pytest.approx([min(lo, 0.5), max(hi, 0.5)])


def test_merged_seed_tables_give_the_pooled_metrics():
    """Point metrics of per-seed tables merged equal those of one table over all episodes."""
    eps = dataset()
    other = [episode(e.problem_id, [(t.answer, t.correct, t.feedback, t.leak_flagged) for t in e.turns][::-1][:1],
                     sample=e.sample) for e in eps]  # seed 2: each episode cut to one attempt
    merged = point_metrics(merge_tables([problem_table(eps, 3), problem_table(other, 3)]))
    pooled = point_metrics(problem_table(eps + other, 3))
    # key by key: pytest >= 9.2's approx compares no dicts with list values
    assert merged.keys() == pooled.keys()
    for key in pooled:
        assert merged[key] == pytest.approx(pooled[key]), key


def test_hierarchical_bootstrap_widens_with_between_seed_variance():
    """Synthetic per-seed, per-problem values: problem effects shared by every seed, plus a
    seed offset of known spread. With no seed variance, the interval has the width of the
    problem bootstrap; it grows with the seed offsets' spread (about 2 x 1.96 x sd/sqrt(S)
    once the seed term dominates), and it is the plain problem bootstrap for one seed."""
    rng = np.random.default_rng(0)
    S, N = 5, 200
    problems = rng.normal(0.5, 0.1, size=N)
    idx = bootstrap_indices(N, 2000, seed=3, n_seeds=S)
    widths = []
    for sd in (0.0, 0.05, 0.2):
        offsets = np.linspace(-1, 1, S) * sd / np.std(np.linspace(-1, 1, S))  # sd exactly
        values = problems[None, :] + offsets[:, None]  # (S, N)
        lo, hi = mean_ci(values, idx)
        assert lo <= values.mean() <= hi
        widths.append(hi - lo)
    assert widths[0] < widths[1] < widths[2]
    problem_only = 2 * 1.96 * problems.std() / np.sqrt(N)
    assert widths[0] == pytest.approx(problem_only, rel=0.15)
    # the seed term: a bootstrap of S offsets has sd = sd_offsets * sqrt((S-1)/S) / sqrt(S)
    seed_term = 2 * 1.96 * 0.2 * np.sqrt((S - 1) / S) / np.sqrt(S)
    assert widths[2] == pytest.approx(np.hypot(seed_term, problem_only), rel=0.2)
    one = bootstrap_indices(N, 2000, seed=3)
    assert np.array_equal(one.seeds, np.zeros((2000, 1), int))
    naive = [values[0, row].mean() for row in one.problems]
    assert mean_ci(values[:1], one) == pytest.approx(list(np.quantile(naive, [0.025, 0.975])), abs=1e-12)
