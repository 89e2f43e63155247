"""Leak guard: which teacher messages give the answer away, alone or over an episode."""
from __future__ import annotations

import pytest

from rl2f.engine import SamplingParams
from rl2f.engine.types import CompletionOutput, RequestOutput
from rl2f.episodes import EpisodeRunner
from rl2f.leak_guard import GENERIC_HINT, LeakGuard, number_words
from rl2f.model import build_tiny_checkpoint, load_tokenizer
from rl2f.tasks.base import Problem, Task, Verdict
from rl2f.tasks.math import MathTask
from rl2f.teacher import FeedbackRequest, ProgrammaticTeacher, earlier_feedback


class PlainTask(Task):
    """A task with the base class's answer_forms (just the answer): the guard's own
    normalisation must find equivalent spellings, not the task."""

    name = "plain"

    def problems(self, n, seed=0, split="train"):
        return []

    def extract_answer(self, text):
        return text

    def verify(self, text, problem):
        return Verdict(text == problem.answer, text)

    def hint(self, problem, attempt, verdict):
        return ""


P345 = Problem("p", "What is 300 + 45?", "345")
PHALF = Problem("h", "A coin is fair. What is the chance of heads?", "0.5")
PSQRT = Problem("s", "Simplify the square root of 12.", r"2\sqrt{3}")
PNEG = Problem("n", "Solve x + 5 = 0.", "-5")
PFRAC = Problem("f", "What is 1/3 + 1/4?", "7/12")
PMOVES = Problem("m", "Find the path through the maze.", "RRDL")

LEAKS = [
    (P345, "The answer is 345."),
    (P345, "It should be $345$"),
    (P345, "Close: 3 4 5"),
    (P345, "Try 3-4-5."),
    (P345, "three four five"),
    (P345, "Three hundred forty-five is right."),
    (P345, "three hundred and forty five"),
    (P345, "the digits are 3, 4 and 5"),
    (P345, "The digits are three, four, and five."),
    (PHALF, "It is 1/2."),
    (PHALF, r"The probability is \frac{1}{2}."),
    (PHALF, "Think 50%."),
    (PHALF, "It's 2/4 really."),
    (PHALF, "0.50"),
    (PSQRT, r"You want $2\sqrt{3}$."),
    (PSQRT, "It is 2*sqrt(3)."),
    (PSQRT, r"It is 2 \cdot \sqrt{3}."),
    (PNEG, "x is -5."),
    (PNEG, "x equals minus five, so the answer is -5"),
    (PFRAC, r"The sum is \frac{7}{12}."),
    (PFRAC, "About 0.58."),
    (PMOVES, "Go R R D L."),
    (PMOVES, "the path is rrdl"),
]


@pytest.mark.parametrize("problem,message", LEAKS, ids=[m for _, m in LEAKS])
@pytest.mark.parametrize("task", [MathTask(), PlainTask()], ids=["math", "plain"])
def test_leaks_are_caught(task, problem, message):
    """The answer written plainly, in an equivalent form (0.5 as 1/2, 50%), rounded, in
    words or one digit at a time is flagged, with a reason."""
    check = LeakGuard(task).check(message, problem)
    assert check.leaked and check.reason


CLEAN = [
    (P345, "Your answer is too high; the tens digit is wrong."),
    (P345, "Add 300 and 45 again, carefully."),  # numbers from the prompt are not leaks
    (P345, "You wrote 1345, which has one digit too many."),  # 345 inside 1345 is not 345
    (P345, "Look at the 3rd step and the 45 in the problem."),
    (P345, "The answer has three digits."),
    (PHALF, "Think about how many outcomes there are."),
    (PHALF, "There are 2 outcomes."),
    (PSQRT, "Factor 12 as a perfect square times something."),
    (PNEG, "Move the 5 to the other side."),  # 5 is in the prompt, even though the answer is -5
    (PFRAC, "Use 12 as the common denominator."),
    (PMOVES, "You walked into a wall on your second move."),
    (P345, ""),
]


@pytest.mark.parametrize("problem,message", CLEAN, ids=[m or "empty" for _, m in CLEAN])
def test_clean_messages_pass(problem, message):
    """Hints that mention numbers from the problem, or numbers that merely contain the
    answer's digits, are not flagged."""
    check = LeakGuard(MathTask()).check(message, problem)
    assert not check.leaked, check.reason


def test_judge_is_consulted_after_string_checks():
    """The judge sees only messages that pass the string checks, and its verdict is a leak."""
    seen = []

    def judge(message, problem):
        seen.append(message)
        return "secret" in message

    guard = LeakGuard(MathTask(), judge=judge)
    assert guard.check("The answer is 345.", P345).leaked
    assert seen == []  # caught by the string check first
    c = guard.check("Here is a secret hint.", P345)
    assert c.leaked and "judge" in c.reason
    assert not guard.check("Check the tens digit.", P345).leaked
    assert seen == ["Here is a secret hint.", "Check the tens digit."]


def test_number_words():
    """English number words, checked against hand-written spellings."""
    assert number_words(0) == "zero"
    assert number_words(13) == "thirteen"
    assert number_words(40) == "forty"
    assert number_words(345) == "three hundred forty five"
    assert number_words(1_002_030) == "one million two thousand thirty"


# ---------------------------------------------------------------------------------------
# The classes of leaks an LLM teacher writes: each class with its positives and, on the same
# problems, plain-number negatives (numbers from the problem, or numbers that are not the
# answer, are not leaks).

P76 = Problem("q", "Count the squares in a grid of 4 rows and 19 columns, then add 0.", "76")
P7 = Problem("s", "Solve 2x + 3 = 17.", "7")
P345_WORDS = Problem("w", "Three hundred forty-five people came; how many came? Write it in digits.", "345")

CLASSES = {
    "number_words_any_punctuation": (
        [(P76, "The answer is seventy-six."), (P345, "It is three hundred forty-five."), (P76, "(seventy-six)"),
         (P76, "Seventy six!"), (P76, "Think: seventy\u2013six?"), (P345, "Three hundred and forty-five.")],
        [(P76, "There are four rows and nineteen columns."), (P76, "Seventy-five is too low."),
         (P345_WORDS, "Re-read the problem: three hundred forty-five people."), (P76, "It is six less than you think.")],
    ),
    "leading_dot_decimals": (
        [(PHALF, "It is .5"), (PHALF, "Think of -.5 without the sign."), (PFRAC, "Roughly .58")],
        [(PHALF, "There are 2 outcomes of .25 each? No."), (P345, "Version 3.45 of the book.")],
    ),
    "fraction_and_percent_words": (
        [(PHALF, "It is one half."), (PHALF, "Half of the time."), (PHALF, "fifty percent"), (PHALF, "Fifty per cent."),
         (PHALF, "zero point five"), (Problem("t", "Cut a cake into 3 equal parts. One part?", "1/3"), "a third of it")],
        [(PHALF, "Think of two outcomes."), (PHALF, "Forty percent is wrong."), (PFRAC, "One third plus one quarter.")],
    ),
    "one_digit_words_stated": (
        [(P7, "It's seven."), (P7, "x equals seven"), (P7, "The answer is seven."), (P7, "(seven)"), (P7, "Seven."),
         (PNEG, "x equals minus five")],
        [(P7, "Subtract three from both sides, then divide by two."), (P7, "You made seven mistakes? No, one."),
         (P7, "The answer has one digit.")],
    ),
    "digit_by_digit_and_place_value": (
        [(P76, "The first digit is 7 and the second digit is 6."), (P76, "7 tens and 6 ones"),
         (P76, "The tens digit is seven and the units digit is six."), (P345, "3 hundreds, 4 tens and 5 ones."),
         (P76, "The first digit is 7; the last digit is 6.")],
        [(P76, "The first digit is 7."), (P76, "The first wrong digit is the tens digit."),
         (P76, "The first digit is 8 and the second digit is 6."), (P345, "4 tens is right; check the hundreds.")],
    ),
    "symbolic_equivalents": (
        [(PSQRT, r"It equals $\sqrt{12}$."), (PSQRT, r"Try \sqrt{12}."), (PSQRT, "It is about 3.46."),
         (PSQRT, "Roughly 3.464 in decimals."), (Problem("pi", "Half a turn in radians?", r"\pi"), r"It is $\frac{2\pi}{2}$.")],
        [(PSQRT, "Factor 12 as 4 times 3."), (PSQRT, r"The square root of 12 is not $\sqrt{3}$."),
         (PSQRT, "Your 3.5 is too high."), (PSQRT, "Compute 12 first.")],
    ),
}
_CASES = [(c, leak, p, m) for c, (pos, neg) in CLASSES.items() for leak, rows in ((True, pos), (False, neg)) for p, m in rows]


@pytest.mark.parametrize("cls,leak,problem,message", _CASES, ids=[f"{c}:{'leak' if l else 'clean'}:{m}" for c, l, _, m in _CASES])
def test_leak_classes(cls, leak, problem, message):
    """Each class of leak is flagged, with a reason; its negatives on the same problems pass."""
    check = LeakGuard(MathTask()).check(message, problem)
    assert check.leaked is leak, check.reason
    assert bool(check.reason) is leak


def test_cumulative_teacher_text():
    """One digit per message: each message alone is clean, the second one with the first as
    `earlier` completes the answer and is flagged; unrelated earlier digits do not."""
    guard = LeakGuard(MathTask())
    first, second = "The first digit is 7.", "The second digit is 6."
    assert not guard.check(first, P76).leaked and not guard.check(second, P76).leaked
    check = guard.check(second, P76, earlier=[first])
    assert check.leaked and "across turns" in check.reason
    assert not guard.check(second, P76, earlier=["The first digit is 8."]).leaked
    assert not guard.check("Check your work.", P76, earlier=[first, second]).leaked  # nothing new


class DigitPerTurnTask(MathTask):
    """A math task whose hint names one more digit of the answer each turn."""

    def hint(self, problem, attempt, verdict):
        turn = sum(1 for _ in self.hints_given.setdefault(problem.id, [None])) - 1
        self.hints_given[problem.id].append(None)
        ordinal = ["first", "second", "third"][turn]
        return f"The {ordinal} digit is {problem.answer[turn]}."

    hints_given: dict = {}


class WrongAnswers:
    """An engine whose student always answers 11."""

    def __init__(self, tok):
        self.tok = tok

    def generate(self, prompts, params, use_adapter=True):
        params = params if isinstance(params, list) else [params] * len(prompts)
        outs = []
        for ids, p in zip(prompts, params):
            tokens = self.tok.encode("Answer: 11") + [self.tok.stop_ids[0]]
            outs.append(RequestOutput(str(len(outs)), list(ids), [CompletionOutput(i, "Answer: 11", tokens, [-0.5] * len(tokens), "stop")
                                                                  for i in range(p.n)]))
        return outs


def test_episode_leaking_one_digit_per_turn_is_flagged(tmp_path):
    """Through the real EpisodeRunner and ProgrammaticTeacher: the first hint (one digit) is
    sent, the second (which completes 76 with the first) is flagged and replaced."""
    tok = load_tokenizer(build_tiny_checkpoint(tmp_path / "tiny"))
    task = DigitPerTurnTask()
    task.hints_given = {}
    runner = EpisodeRunner(task, WrongAnswers(tok), tok, ProgrammaticTeacher(task), SamplingParams(), max_turns=3)
    (ep,) = runner.run([P76], group_size=1)
    assert [t.feedback for t in ep.turns] == ["The first digit is 7.", GENERIC_HINT, None]
    assert [t.leak_flagged for t in ep.turns] == [False, True, False]
    assert "across turns" in ep.turns[1].leak_reasons[0]


def test_programmatic_teacher_passes_earlier_teacher_messages():
    """`earlier` is the user messages after the first attempt: the problem is not in it."""
    history = [{"role": "system", "content": "sys"}, {"role": "user", "content": P76.prompt},
               {"role": "assistant", "content": "Answer: 11"}, {"role": "user", "content": "hint one"},
               {"role": "assistant", "content": "Answer: 12"}]
    assert earlier_feedback(history) == ["hint one"]
    verdict = Verdict(False, "12")
    seen = []

    class Spy(LeakGuard):
        def check(self, message, problem, earlier=()):
            seen.append(list(earlier))
            return super().check(message, problem, earlier)

    task = MathTask()
    ProgrammaticTeacher(task, Spy(task)).feedback([FeedbackRequest(P76, "Answer: 12", verdict, history)])
    assert seen == [["hint one"]]


# Forms an audit at ffe5a89 found missed (LLM-style hints), and two false alarms.
P144 = Problem("q144", "What is 12 squared?", "144")
P025 = Problem("q025", "What is 5 times 5, divided by 100?", "0.25")
P90 = Problem("q90", "What is 45 + 45?", "90")
PROOT2 = Problem("qr2", "Simplify 2/sqrt(8).", r"\frac{\sqrt{2}}{2} \cdot 2")
P19 = Problem("q19", "What is 11 + 8?", "19")
P3600 = Problem("q3600", "How many seconds are in an hour?", "3600")
PHALF2 = Problem("qh", "A fair coin: chance of tails?", "1/2")
P2 = Problem("q2", "What is 1 + 1?", "2")
MISSED = [
    (P144, "You are close: it is a hundred forty-four."),
    (P025, "Think of twenty-five hundredths."),
    (P90, "The sum is nine tens."),
    (PROOT2, "It simplifies to the square root of two."),
    (P3600, "It is 3.6 thousand seconds."),
    (P3600, "Write it as 3.6e3."),
    (PHALF2, "The chance is \u00bd."),
]


@pytest.mark.parametrize("problem,message", MISSED, ids=[m for _, m in MISSED])
def test_forms_missed_at_ffe5a89_are_caught(problem, message):
    check = LeakGuard(MathTask()).check(message, problem)
    assert check.leaked and check.reason, message


def test_a_digit_per_turn_with_ends_in_is_caught_across_turns():
    """"It starts with a 1" then "it ends in a 9": the two turns name both digits of 19."""
    guard = LeakGuard(MathTask())
    assert not guard.check("Your answer should start with a 1.", P19).leaked
    check = guard.check("Also, it ends in a 9.", P19, earlier=["Your answer should start with a 1."])
    assert check.leaked and "across turns" in check.reason


@pytest.mark.parametrize("problem,message", [(PHALF2, "Half of your reasoning is right; check the rest."),
                                             (P2, "Redo step 2: the carry is wrong.")])
def test_false_alarms_at_ffe5a89_pass(problem, message):
    check = LeakGuard(MathTask()).check(message, problem)
    assert not check.leaked, check.reason
