"""The evaluation's controls: the placebo teacher carries no information about the answer;
the oracle-free task never tells the student whether it was right."""
import random
from collections import Counter

import pytest

from rl2f.errors import UserError
from rl2f.eval.evaluate import NoOracle
from rl2f.tasks.base import Problem
from rl2f.tasks.secret import SecretNumberTask
from rl2f.teacher import FeedbackRequest, PlaceboTeacher, make_teacher


def _requests(task, answer: str, attempt: str, n: int) -> list[FeedbackRequest]:
    """`n` problems whose secret is `answer` (digit sum 9), each with the same wrong attempt."""
    out = []
    for i in range(n):
        p = Problem(f"p-{i}", task.prompt(9), answer, {"digit_sum": 9})
        out.append(FeedbackRequest(p, attempt, task.verify(attempt, p), [{"role": "user", "content": p.prompt}]))
    return out


def test_placebo_hint_is_independent_of_the_answer():
    """The same attempt gets the same placebo messages whatever the secret: secret 18 (every
    real hint says "too high" about the first digit of 45) and secret 81 (every real hint
    says "too low") give the identical message stream, and the four messages of the format
    are about equally frequent; the real hints, by contrast, differ between the two."""
    task = SecretNumberTask()
    teacher = make_teacher("placebo", task)
    assert isinstance(teacher, PlaceboTeacher)
    low, high = _requests(task, "18", "Answer: 45", 400), _requests(task, "81", "Answer: 45", 400)
    a = [f.text for f in teacher.feedback(low)]
    b = [f.text for f in teacher.feedback(high)]
    assert a == b
    counts = Counter(a)
    assert set(counts) == {f"The {pos} digit is too {d}." for pos in ("first", "second") for d in ("high", "low")}
    assert all(60 <= c <= 140 for c in counts.values()), counts  # 100 each expected; 4+ sd off is a bug
    real = make_teacher("programmatic", task)
    assert {f.text for f in real.feedback(low)} == {"The first digit is too high."}
    assert {f.text for f in real.feedback(high)} == {"The first digit is too low."}


def test_placebo_hint_never_reads_the_privileged_fields():
    """The hook called with the answer and info blanked out writes the same message as with
    them (a direct check that it does not read them), and a malformed attempt gets the real
    hint's format message, which depends on the attempt only."""
    task = SecretNumberTask()
    p = Problem("p", task.prompt(9), "45", {"digit_sum": 9})
    blind = Problem("p", task.prompt(9), "", {})
    for attempt in ("Answer: 27", "Answer: 63", "nothing"):
        v = task.verify(attempt, p)
        assert task.placebo_hint(p, attempt, v, random.Random(1)) == task.placebo_hint(blind, attempt, v, random.Random(1))
    assert task.placebo_hint(p, "nothing", task.verify("nothing", p), random.Random(0)) == task.hint(
        p, "nothing", task.verify("nothing", p))


def test_placebo_needs_the_hook():
    """A task without `placebo_hint` is a one-line UserError, not a silent fallback."""
    from rl2f.tasks.math import MathTask

    task = MathTask()
    p = task.problems(1)[0]
    with pytest.raises(UserError, match="placebo.*no placebo hint"):
        PlaceboTeacher(task).feedback([FeedbackRequest(p, "x", task.verify("x", p), [])])


def test_no_oracle_never_says_correct():
    task = SecretNumberTask()
    p = Problem("p", task.prompt(9), "45", {"digit_sum": 9})
    assert task.verify("Answer: 45", p).correct
    v = NoOracle(task).verify("Answer: 45", p)
    assert not v.correct and v.answer == "45" and NoOracle(task).name == task.name
