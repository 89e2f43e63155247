"""The demo's higher-or-lower task: its exact ceilings against hand counts, the two placebos'
wording against the real hints', and the content effects of scripted students through the
real teachers (rl2f/tasks/highlow.py, rl2f/demo/data.py, rl2f/teacher.py)."""
import random

import numpy as np
import pytest

from rl2f.demo.data import Bisect, HintBlind, consistent, play, solved_at
from rl2f.demo.prereg import DECISIVE_TURN
from rl2f.eval.metrics import bootstrap_indices, mean_ci
from rl2f.tasks.highlow import TOO_HIGH, TOO_LOW, HighLowTask, hint_blind_acc, hint_optimal_acc, optimal_guess
from rl2f.teacher import DecoyTeacher, PlaceboTeacher, ProgrammaticTeacher

# ----------------------------------------------------------------------------------------
# The ceilings


@pytest.mark.parametrize("weights, t, blind, optimal", [
    ([1, 1, 1], 1, 1 / 3, 1 / 3),
    ([1, 1, 1], 2, 2 / 3, 1.0),  # the middle, then the hint names the side: one candidate left
    ([1] * 7, 3, 3 / 7, 1.0),  # a full binary tree of depth 3 holds 7
    ([1] * 8, 3, 3 / 8, 7 / 8),
    ([3, 1, 1], 1, 3 / 5, 3 / 5),
    ([3, 1, 1], 2, 4 / 5, 1.0),  # guessing the likeliest first covers 4/5; the middle covers all
    ([1, 1, 1, 1, 6], 2, 7 / 10, 8 / 10),  # 6 first, then "too high" leaves 4: one more of them
])
def test_ceilings_against_hand_counts(weights, t, blind, optimal):
    assert hint_blind_acc(weights, t) == pytest.approx(blind)
    assert hint_optimal_acc(weights, t) == pytest.approx(optimal)


def test_task_ceilings_average_the_prompts():
    """Modulus 30 leaves 3 candidates per prompt (10..99 is 90 numbers); with a flat prior the
    ceilings are the hand counts of 3 equal candidates, whatever the prompt."""
    c = HighLowTask(modulus=30, prior=0.0).ceilings(3)
    assert c["hint_blind"] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert c["hint_optimal"] == pytest.approx([1 / 3, 1.0, 1.0])


def test_demo_task_has_room_for_content():
    """The properties issue #27 asks of the demo task: a turn-1 ceiling in 0.1-0.3 (single-turn
    RL has a prior to learn) and >= 0.3 between the best hint-blind student and the best hint
    user at the decisive turn."""
    c = HighLowTask().ceilings(DECISIVE_TURN)
    assert c["hint_blind"][0] == pytest.approx(c["hint_optimal"][0])
    assert 0.1 <= c["hint_blind"][0] <= 0.3
    assert c["hint_optimal"][-1] - c["hint_blind"][-1] >= 0.3


def test_optimal_guess_plays_the_ceiling():
    """The bisecting student (its guesses from `optimal_guess`) reaches exactly the hint-optimal
    ceiling when played against the real teacher: the DP's value is a policy, not a bound."""
    task = HighLowTask()
    turns = 3
    problems = task.problems(600, seed=5, split="test")
    rng = random.Random(0)
    hits = [solved_at(task, p, play(task, p, Bisect(turns), ProgrammaticTeacher(task), rng, turns)) for p in problems]
    # per prompt the bisector's tree is fixed: score each secret by its prior weight exactly
    by_prompt = {}
    for p, hit in zip(problems, hits):
        by_prompt.setdefault(p.info["residue"], {})[int(p.answer)] = hit is not None
    for r, solved in by_prompt.items():
        pool = task.candidates(r)
        w = [task.weight(x) for x in pool]
        covered = [x for x in solved if solved[x]]
        assert sum(task.weight(x) for x in covered) / sum(w) <= hint_optimal_acc(w, turns) + 1e-12
        if len(solved) == len(pool):  # every secret of this prompt drawn: the tree is known whole
            assert sum(task.weight(x) for x in covered) / sum(w) == pytest.approx(hint_optimal_acc(w, turns))
    w = [1.0] * 7
    assert optimal_guess(w, 3) == 3  # the middle of seven


# ----------------------------------------------------------------------------------------
# The placebos' wording


def _hint_texts(teacher, n: int, turns: int = 4) -> list[list[str]]:
    """Per turn, the messages `teacher` sends a hint-blind student on `n` problems."""
    task = teacher.task
    rng = random.Random(1)
    out = [[] for _ in range(turns - 1)]
    for p in task.problems(n, seed=2, split="test"):
        chat = play(task, p, HintBlind(), teacher, rng, turns)
        for t, m in enumerate(m for m in chat[1:] if m["role"] == "user"):
            out[t].append(m["content"])
    return out


@pytest.mark.parametrize("placebo", [PlaceboTeacher, DecoyTeacher])
def test_placebo_wording_matches_the_real_hints(placebo):
    """Over 10,000 dialogues of a hint-blind student, each placebo says only what real hints
    say ("Too high." / "Too low."), as often per turn as they do, and as many times (the
    verifier, not the placebo, ends an episode): the wording alone cannot tell them apart."""
    task = HighLowTask()
    real, fake = _hint_texts(ProgrammaticTeacher(task), 10_000), _hint_texts(placebo(task), 10_000)
    for t, (a, b) in enumerate(zip(real, fake)):
        assert set(a) == set(b) == {TOO_HIGH, TOO_LOW}
        assert len(a) == len(b)  # the same student, the same secrets: the same episodes go on
        pa, pb = a.count(TOO_HIGH) / len(a), b.count(TOO_HIGH) / len(b)
        se = np.sqrt(pa * (1 - pa) / len(a) + pb * (1 - pb) / len(b))
        assert abs(pa - pb) < 4 * se, (t + 1, pa, pb)
    # the prior favours low secrets, so the real hints say "too high" well over half the time
    # (a fair coin would be told apart at once)
    assert real[0].count(TOO_HIGH) / len(real[0]) > 0.6


def test_decoy_hints_are_consistent_and_blind_to_the_secret():
    """A decoy's hints describe one number, as real hints do (each hint agrees with a single
    decoy for the whole episode until the student names it), and never read the secret: two
    problems that differ only in the secret get the same decoy hints."""
    task = HighLowTask()
    teacher = DecoyTeacher(task)
    p = task.problems(1, seed=3, split="test")[0]
    other = next(x for x in task.candidates(p.info["residue"]) if str(x) != p.answer)
    q = type(p)(p.id, p.prompt, str(other), dict(p.info))
    assert q.answer != p.answer
    rng = random.Random(4)
    chat = play(task, p, HintBlind(), teacher, rng, 5)
    hints = [(int(a["content"].split()[-1]), h["content"]) for a, h in zip(chat[1::2], chat[2::2])]
    assert len(hints) >= 2 and any(all(consistent(d, hints[:k]) for k in range(1, len(hints) + 1)) for d in range(10, 100))
    replay = [{"role": "user", "content": p.prompt}]
    for m in chat[1:]:
        if m["role"] == "assistant":
            replay.append(m)
        else:  # the same attempts against the other secret: the same decoy hint
            from rl2f.teacher import FeedbackRequest
            attempt = replay[-1]["content"]
            text = teacher.feedback([FeedbackRequest(q, attempt, task.verify(attempt, q), list(replay))])[0].text
            assert text == m["content"]
            replay.append(m)


# ----------------------------------------------------------------------------------------
# Content effects of scripted students, with the report's intervals


def _solved(student, teacher, problems, turns: int, seed: int) -> np.ndarray:
    """(1, N, T) acc@t per problem of one play each."""
    task = teacher.task
    rng = random.Random(seed)
    out = np.zeros((1, len(problems), turns))
    for i, p in enumerate(problems):
        hit = solved_at(task, p, play(task, p, student, teacher, rng, turns))
        if hit:
            out[0, i, hit - 1:] = 1
    return out


@pytest.mark.parametrize("placebo", [PlaceboTeacher, DecoyTeacher])
def test_content_effect_is_zero_for_a_hint_blind_student_and_large_for_a_hint_user(placebo):
    """Feedback minus placebo at the decisive turn, with the report's bootstrap over problems:
    for a student that never reads a hint it is 0 within its interval (the placebo changes
    nothing else: not the verifier, not the episode's length); for the hint-optimal student it
    is >= 0.3 (the room the task was designed to have), its whole interval above 0.3."""
    task = HighLowTask()
    problems = task.problems(2000, seed=6, split="test")
    t = DECISIVE_TURN
    idx = bootstrap_indices(len(problems), 1000, 0)
    # independent plays (other seeds) under the hints and under the placebo
    blind = _solved(HintBlind(), ProgrammaticTeacher(task), problems, t, 1) \
        - _solved(HintBlind(), placebo(task), problems, t, 2)
    lo, hi = mean_ci(blind, idx)[t - 1]
    assert lo <= 0 <= hi
    user = _solved(Bisect(t), ProgrammaticTeacher(task), problems, t, 1) - _solved(Bisect(t), placebo(task), problems, t, 2)
    lo, hi = mean_ci(user, idx)[t - 1]
    assert lo >= 0.3
