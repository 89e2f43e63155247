"""Math grading of student-style attempts (issue #29): the answer graded is the one the
student commits to, never a number inside the text that happens to equal the reference, and
every wrong answer that is graded as a number gets the numeric hints."""
from __future__ import annotations

import pytest

from rl2f.tasks.base import Problem
from rl2f.tasks.math import MathTask

# (reference answer, student text, graded correct?, why), written by hand.
LABELLED = [
    # a restated problem: the committed value is the one after the last "="
    ("18", "3 * 6 = 18", True, "the problem restated with its result"),
    ("18", "The answer is 3 * 6 = 19", False, "restated, with a wrong result"),
    ("18", "The answer is clearly 3 * 6 = 18.", True, "prose, then the problem restated with its result"),
    ("18", "The answer is 18 * 6 = 108.", False, "the result after the last '=' is 108"),
    ("108", "The answer is 18 * 6 = 108.", True, "the result after the last '=' is 108"),
    ("18", "3 * 6 = 18? No: 3 * 6 = 19.", False, "a restated computation, corrected to a wrong result"),
    # an expression committed as the answer is read whole, never its first or last number
    ("18", "The correct answer is indeed 18 * 6", False, "the answer is the expression 18 * 6 = 108"),
    ("108", "The correct answer is indeed 18 * 6", True, "the answer is the expression 18 * 6 = 108"),
    ("6", "18 * 6", False, "a bare expression is 108, not its last number"),
    ("18", "Answer: 18 * 6", False, "an answer line holding an expression"),
    ("3/4", "The answer is about 3/4 * 2", False, "the expression is 3/2, not its first fraction"),
    ("18", "The answer is 18 (from 3 * 6).", True, "the working in parentheses follows the answer"),
    # units and currency
    ("18", "18 apples", True, "a unit word after the number"),
    ("18", "The answer is 19 apples.", False, "a wrong number with a unit word"),
    ("18", "Answer: 18 cm", True, "a short unit after the number"),
    ("18", "$18", True, "a currency sign before the number"),
    ("18", "It costs $18.", True, "a currency sign in a sentence"),
    ("18", "Answer: 18\u20ac", True, "a currency sign after the number"),
    ("18", r"\boxed{18 \text{ apples}}", True, "a LaTeX unit in the box"),
    # quotes
    ("18", "'18'", True, "single quotes around the answer"),
    ("18", '"18"', True, "double quotes around the answer"),
    ("18", "The answer is \u201c18\u201d.", True, "curly quotes around the answer"),
    ("18", "Answer: '19'", False, "a wrong answer in quotes"),
    # trailing text
    ("18", "18. I hope this helps!", True, "a closing sentence after the answer"),
    ("18", "The answer is 18, I hope this helps!", True, "a closing clause after the answer"),
    # boxed
    ("18", r"So $3 \times 6 = \boxed{18}$.", True, "the boxed result of a restated problem"),
    ("18", r"\boxed{19}", False, "a wrong boxed answer"),
    ("18", r"First \boxed{18}, but no: \boxed{19}", False, "the last box wins"),
    # "Answer:" lines
    ("18", "3 times 6 is 18.\nAnswer: 18", True, "an answer line after the work"),
    ("18", "Answer: 17\nLet me recheck.\nAnswer: 18", True, "the last answer line wins"),
    ("18", "Answer: 18\nLet me recheck.\nAnswer: 19", False, "the last answer line wins"),
    # fractions, decimals, percents
    ("3/4", "3/4", True, "a fraction"),
    ("3/4", r"\frac{3}{4}", True, "a LaTeX fraction"),
    ("3/4", "The answer is 0.75.", True, "the decimal of the fraction"),
    ("3/4", "Answer: 4/3", False, "the inverted fraction"),
    (r"25\%", "25%", True, "a percent"),
    (r"25\%", "The answer is 25 percent.", True, "a percent word"),
    (r"25\%", "Answer: 0.25", True, "the percent as a decimal"),
    (r"25\%", "Answer: 26%", False, "a wrong percent"),
    # negative numbers, thousands separators, equations
    ("-5", "The answer is -5.", True, "a negative number"),
    ("-5", "Answer: 5", False, "the sign is lost"),
    ("1234", "The total is 1,234 apples.", True, "a thousands separator"),
    ("1234", "Answer: 1,235", False, "a wrong number with a thousands separator"),
    ("4", "So x = 4.", True, "the solved equation"),
    ("4", "x = 5", False, "a wrongly solved equation"),
    # a final answer after another number
    ("18", "I first got 17, but the answer is 18", True, "the final answer follows an earlier wrong one"),
    ("18", "18? No, the answer is 19", False, "an earlier right number, then a final wrong one"),
    ("18", "First 3 * 6 = 18, then I doubled it: 36", False, "the last value of the text is 36"),
]


@pytest.mark.parametrize("ref,text,want,why", LABELLED, ids=[f"{r}|{t}" for r, t, _, _ in LABELLED])
def test_labelled_attempts(ref, text, want, why):
    """MathTask.verify gives each hand-labelled attempt its verdict."""
    assert MathTask().verify(text, Problem("g", "?", ref)).correct is want, why


def test_labelled_set_is_balanced():
    """The labelled set is large enough and holds both verdicts."""
    assert len(LABELLED) >= 30
    assert sum(want for _, _, want, _ in LABELLED) >= 10 and sum(not want for _, _, want, _ in LABELLED) >= 10


# Wrong answers to 3 * 6 = 18 in every form that is graded as a number: (attempt, direction).
WRONG_NUMBER_FORMS = [
    ("Answer: '19'", "too high"),
    ('Answer: "17"', "too low"),
    ("Answer: `19`", "too high"),
    ("The answer is \u201c17\u201d.", "too low"),
    ("Answer: 19 cm", "too high"),
    ("Answer: 17 kg", "too low"),
    ("19 apples", "too high"),
    ("Answer: $17", "too low"),
    ("Answer: 19\u20ac", "too high"),
    (r"\boxed{17 \text{ apples}}", "too low"),
    ("The answer is 19.", "too high"),
    ("The answer is 3 * 6 = 17", "too low"),
]


@pytest.mark.parametrize("attempt,direction", WRONG_NUMBER_FORMS)
def test_wrong_number_forms_get_numeric_hints(attempt, direction):
    """A wrong number in quotes, with units or currency, or in words gets the too-high /
    too-low hint and the digit hint, not "should be a single number"."""
    task = MathTask(difficulty=1)
    p = Problem("h", "What is 3 * 6?", "18", {"kind": "mul"})
    verdict = task.verify(attempt, p)
    assert not verdict.correct
    hint = task.hint(p, attempt, verdict)
    assert direction in hint and "ones digit" in hint, hint
    assert "single number" not in hint, hint
