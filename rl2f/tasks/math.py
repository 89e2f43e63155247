"""Math: a procedural generator, Omni-MATH-shaped JSONL loading, grading by math-verify
(`rl2f.tasks.answers`), and a programmatic hint that never states the answer.

A reference answer is LaTeX as datasets write it (`2\\sqrt{3}`, `(3, \\infty)`, `\\frac{1}{2}`);
a student's final answer is extracted from the attempt by the conventions of Math-Verify
(boxed, then "final answer", then the last math span) and compared with it in math-verify's
killable worker process. The hint is not guarded here: `ProgrammaticTeacher` guards every
message it sends, once.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

from rl2f.errors import UserError
from rl2f.tasks.answers import is_equivalent, numeric_value, read_answer, stated_value, text_answer
from rl2f.tasks.base import NO_ANSWER_HINT, Problem, Task, Verdict, check_option
from rl2f.tasks.records import Fields, answer_pattern, draw, hash_bucket, read_problems

_INTERVAL_END = re.compile(r"\\infty|\u221e|\binf")


def _rhs(answer: str) -> str:
    """`3` for `x = 3`, `k=1` or `a_1 = 5`: a named single value is that value; `19` for
    `3 * 6 = 19`: a restated computation states its result (math-verify grades that)."""
    m = re.fullmatch(r"\s*(?:[A-Za-z](?:_\{?\w+\}?)?|(?:[\d\s.+\-*/^()\u00d7\u00f7]|\\times|\\cdot|\\div)+)"
                     r"\s*=\s*([^=<>]+)", answer)
    return m.group(1).strip() if m else answer


def answer_kind(answer: str) -> str:
    """`number`, `set`, `list`, `tuple`, `interval`, `equation`, `expression` or `text`: the
    shape of an answer, for a hint that names what kind of answer is expected."""
    s = _rhs(re.sub(r"\\(?:left|right)(?![A-Za-z])|\$", "", answer).strip())
    if stated_value(s) is not None:
        return "number"
    if text_answer(s) is not None:
        return "text"
    if s.startswith("\\{") or "\\cup" in s or "\\emptyset" in s:
        return "set"
    if re.search(r"=|<|>|\\le|\\ge|\\ne", s):
        return "equation"
    if len(s) > 1 and s[0] in "([" and s[-1] in ")]" and "," in s:
        interval = s.count(",") == 1 and (s[0] + s[-1] != "()" or _INTERVAL_END.search(s))
        return "interval" if interval else "tuple"
    if "," in s:
        return "list"
    names = re.sub(r"\\[A-Za-z]+", "", s)  # \sqrt, \pi, \frac: constants and functions
    return "expression" if re.search(r"[A-Za-z]", names) else "number"


# ---------------------------------------------------------------------------------------
# Procedural problems

_NAMES = ["Ana", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lea"]


def _fmt(v: Fraction, fraction: bool = False) -> str:
    """An exact value as a student would write it: 12, -3, 7/12, or a terminating 2.5
    (unless `fraction`: then 3/10, as fraction problems ask)."""
    if v.denominator == 1:
        return str(v.numerator)
    if fraction:
        return f"{v.numerator}/{v.denominator}"
    d = v.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1 and v.denominator in (2, 4, 5, 8, 10, 20, 25, 50, 100):
        s = f"{float(v):.6f}".rstrip("0").rstrip(".")
        if Fraction(s) == v:
            return s
    return f"{v.numerator}/{v.denominator}"


def _lin(a: int, b: int, var: str = "x") -> str:
    """`a x + b` written the usual way (3x - 5, -x + 2, x)."""
    head = {1: var, -1: f"-{var}"}.get(a, f"{a}{var}")
    if b == 0:
        return head
    return f"{head} {'+' if b > 0 else '-'} {abs(b)}"


def _gen(rng: random.Random, level: int) -> tuple[str, Fraction, dict]:
    """One problem at `level`: (prompt, exact answer, privileged info for the hint)."""
    r = rng.randint
    kind = rng.choice(_KINDS[level])
    info: dict[str, Any] = {"kind": kind}
    if kind == "add":
        a, b = r(10, 99), r(10, 99)
        return f"What is {a} + {b}?", Fraction(a + b), info
    if kind == "sub":
        a = r(20, 99)
        b = r(1, a)
        return f"What is {a} - {b}?", Fraction(a - b), info
    if kind == "mul":
        a, b = r(2, 19), r(2, 9)
        return f"What is {a} * {b}?", Fraction(a * b), info
    if kind == "mul_add":
        a, b, c = r(2, 12), r(2, 12), r(1, 50)
        return f"What is {a} * {b} + {c}?", Fraction(a * b + c), info
    if kind == "sub_mul":
        a, b, c = r(1, 60), r(2, 9), r(2, 9)
        return f"What is {a} - {b} * {c}?", Fraction(a - b * c), info
    if kind == "div":
        b, q = r(2, 12), r(2, 15)
        return f"What is {b * q} / {b}?", Fraction(q), info
    if kind == "add_neg":
        a, b = r(-40, 40), r(-40, -1)
        return f"What is {a} + ({b})?", Fraction(a + b), info
    if kind == "linear":
        a, x, b = rng.choice([2, 3, 4, 5, 6, 7, 8, 9]), r(-9, 20), rng.choice([i for i in range(-20, 21) if i])
        c = a * x + b
        info.update(lhs=[a, b], rhs=[0, c])
        return f"Solve for x: {_lin(a, b)} = {c}.", Fraction(x), info
    if kind in ("frac_add", "frac_sub", "frac_mul"):
        a, b, c, d = r(1, 8), r(2, 9), r(1, 8), r(2, 9)
        op = {"frac_add": "+", "frac_sub": "-", "frac_mul": "*"}[kind]
        v = {"+": Fraction(a, b) + Fraction(c, d), "-": Fraction(a, b) - Fraction(c, d), "*": Fraction(a, b) * Fraction(c, d)}[op]
        info.update(denominators=[b, d])
        return f"What is {a}/{b} {op} {c}/{d}? Give a fraction in lowest terms.", v, info
    if kind == "pct_of":
        p = rng.choice([5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 80])
        n = 20 * r(1, 20)
        info.update(percent=p)
        return f"What is {p}% of {n}?", Fraction(p * n, 100), info
    if kind == "linear2":
        a, c = r(2, 9), r(1, 8)
        if a == c:
            a += 1
        x, b = r(-9, 15), r(-20, 20)
        d = (a - c) * x + b
        info.update(lhs=[a, b], rhs=[c, d])
        return f"Solve for x: {_lin(a, b)} = {_lin(c, d)}.", Fraction(x), info
    if kind == "pct_change":
        n, p = 20 * r(1, 25), rng.choice([10, 20, 25, 50])
        up = rng.random() < 0.5
        info.update(percent=p)
        word = "increased" if up else "decreased"
        return (f"A price of {n} dollars is {word} by {p}%. What is the new price in dollars?",
                Fraction(n) * (100 + (p if up else -p)) / 100, info)
    if kind == "boxes":
        name, a, b = rng.choice(_NAMES), r(2, 9), r(3, 12)
        c = r(1, a * b - 1)
        return (f"{name} buys {a} boxes with {b} apples each and gives away {c} apples. "
                f"How many apples are left?", Fraction(a * b - c), info)
    if kind == "linear_paren":
        a, b, c = r(2, 6), rng.choice([-6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6]), r(1, 9)
        if a == c:
            c += 1
        x = r(-8, 12)
        d = a * (x + b) - c * x
        info.update(lhs=[a, a * b], rhs=[c, d])
        paren = _lin(1, b)
        return f"Solve for x: {a}({paren}) = {_lin(c, d)}.", Fraction(x), info
    if kind == "average":
        a, b, m = r(1, 30), r(1, 30), r(5, 30)
        return f"The average of {a}, {b} and x is {m}. What is x?", Fraction(3 * m - a - b), info
    if kind == "reading":
        name, a, d, b, e = rng.choice(_NAMES), r(5, 30), r(2, 7), r(5, 30), r(2, 7)
        return (f"{name} reads {a} pages a day for {d} days, then {b} pages a day for {e} days. "
                f"How many pages does {name} read in total?", Fraction(a * d + b * e), info)
    if kind == "discount_tax":
        n, p, q = 20 * r(2, 20), rng.choice([10, 20, 25, 50]), rng.choice([5, 10, 20])
        info.update(percent=p)
        return (f"A shirt costs {n} dollars. It is discounted by {p}%, and then a {q}% tax is added "
                f"to the discounted price. What is the final price in dollars?",
                Fraction(n) * (100 - p) / 100 * (100 + q) / 100, info)
    raise AssertionError(kind)


_KINDS = {
    1: ["add", "sub", "mul"],
    2: ["mul_add", "sub_mul", "div", "add_neg"],
    3: ["linear", "frac_add", "pct_of"],
    4: ["linear2", "frac_sub", "frac_mul", "pct_change"],
    5: ["boxes", "linear_paren", "average", "reading", "discount_tax"],
}


# ---------------------------------------------------------------------------------------
# The task

_PLACES = ["ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions"]
_KIND_WORDS = {
    "set": "a set of values", "list": "a list of all values", "tuple": "an ordered tuple",
    "interval": "an interval", "equation": "an equation", "expression": "an expression",
    "number": "a single number", "text": "a short phrase",
}


class MathTask(Task):
    """Math word and arithmetic problems, generated (`difficulty` 1-5) or from a JSONL file
    in Omni-MATH's shape (`path`; fields problem, answer, and optional id, solution, domain,
    difficulty). Splits: a fixed share (`test_fraction`) of problem texts, by hash, is test.
    An answer must be a short one (rl2f.tasks.records.reference_answer); `answer_regex` takes it
    out of a longer field (GSM8K's `####\\s*(.+)$`). Other field names: the `jsonl` task."""

    name = "math"
    system_prompt = "Solve the problem. Keep it short and end with a line 'Answer: <your answer>'."

    def __init__(self, path: str | os.PathLike | None = None, difficulty: int = 3,
                 skip_bad: bool = False, test_fraction: float = 0.2, timeout: float = 2.0,
                 answer_regex: str | None = None):
        if difficulty not in _KINDS or isinstance(difficulty, bool):
            raise UserError(f"math task: difficulty must be 1..5, got {difficulty!r}")
        if not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
            raise UserError(f"math task: test_fraction must be in (0, 1), got {test_fraction!r}")
        # a grading time limit of 0 or less (or NaN) would mark every equivalent answer wrong
        timeout = check_option("math", "timeout", timeout, float, 0, 600, lo_open=True)
        check_option("math", "skip_bad", skip_bad, bool)
        self.answer_pattern = answer_pattern("math", answer_regex)
        if self.answer_pattern is not None and path is None:
            raise UserError("math task: answer_regex reads answers from a problems file: give path too")
        self.path = Path(path) if path is not None else None
        self.difficulty = difficulty
        self.skip_bad = skip_bad
        self.test_cut = int(round(100 * test_fraction))
        self.timeout = timeout
        self.skipped = 0  # malformed JSONL lines skipped with skip_bad=True
        self._pool: dict[str, list[Problem]] | None = None
        if self.path is not None:
            self._pool = self._load(self.path)

    # -- problems ---------------------------------------------------------------------
    def _split_of(self, text: str) -> str:
        return "test" if hash_bucket(text) < self.test_cut else "train"

    def _load(self, path: Path) -> dict[str, list[Problem]]:
        problems, skipped = read_problems(
            path, Fields(answer_regex=self.answer_pattern), lambda prompt, lineno: f"{path.name}:{lineno}",
            lambda rec: {k: rec[k] for k in ("solution", "domain", "difficulty", "source") if k in rec}, self.skip_bad)
        self.skipped += skipped
        pool: dict[str, list[Problem]] = {"train": [], "test": []}
        for p in problems:
            pool[self._split_of(p.prompt)].append(p)
        return pool

    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        if split not in ("train", "test"):
            raise UserError(f"math task: split must be 'train' or 'test', got {split!r}")
        if self._pool is not None:
            return draw(self._pool[split], n, split, f"rl2f-math-file:{split}:{seed}", self.path,
                        f"{100 - self.test_cut}% train / {self.test_cut}% test by hash")
        rng = random.Random(f"rl2f-math:{self.difficulty}:{split}:{seed}")
        out: list[Problem] = []
        seen: set[str] = set()
        tries = 0
        while len(out) < n:
            tries += 1
            if tries > 100 * n + 1000:
                raise UserError(f"math task: difficulty {self.difficulty} has fewer than {n} distinct {split} problems")
            prompt, value, info = _gen(rng, self.difficulty)
            if prompt in seen or self._split_of(prompt) != split:
                continue
            seen.add(prompt)
            info["difficulty"] = self.difficulty
            pid = f"math-d{self.difficulty}-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}"
            out.append(Problem(pid, prompt, _fmt(value, fraction=info["kind"].startswith("frac")), info))
        return out

    # -- grading ----------------------------------------------------------------------
    def extract_answer(self, text: str) -> str | None:
        ans = read_answer(text)
        return ans.text if ans is not None else None

    def verify(self, text: str, problem: Problem) -> Verdict:
        ans = read_answer(text)
        if ans is None:
            return Verdict(False, None, "no final answer found in the attempt")
        ok = is_equivalent(ans.text, problem.answer, timeout=self.timeout, math=ans.math)
        return Verdict(ok, ans.text, f"extracted {ans.text!r}; reference {problem.answer!r}")

    def answer_forms(self, problem: Problem) -> list[str]:
        """The reference and equivalent spellings of a numeric one: 3/4, \\frac{3}{4}, 0.75, 75%."""
        ans = problem.answer
        forms = [ans] if ans else []
        v = numeric_value(ans) if ans else None
        if v is not None:
            forms.append(_fmt(v))  # 12, -3, 0.75 or 7/12
            if v.denominator != 1:
                a = abs(v)
                forms += [f"{v.numerator}/{v.denominator}",
                          f"{'-' if v < 0 else ''}\\frac{{{a.numerator}}}{{{a.denominator}}}"]
            elif abs(v) >= 1000:
                forms.append(f"{v.numerator:,}")
            pct = _fmt(v * 100)
            if "/" not in pct:
                forms.append(f"{pct}%")
                if ans.rstrip().endswith("%"):
                    forms.append(pct)  # 75% also equals 75
        return list(dict.fromkeys(f for f in forms if f))

    # -- the programmatic teacher -----------------------------------------------------
    def hint(self, problem: Problem, attempt: str, verdict: Verdict) -> str:
        if verdict.correct:
            return "That is correct."
        if verdict.answer is None:
            return NO_ANSWER_HINT
        return " ".join(["That is not correct."] + self._hint_sentences(problem, verdict.answer))

    def _hint_sentences(self, problem: Problem, answer: str) -> list[str]:
        out: list[str] = []
        # stated_value: a number with its units, currency or quotes (`'19'`, `$19`, `19 cm`) is
        # graded as that number, so it gets the numeric hints too
        ref, got = stated_value(problem.answer), stated_value(_rhs(answer))
        info = problem.info
        if ref is not None and got is not None and problem.answer.rstrip().endswith("%") \
                and not answer.rstrip().endswith("%") and abs(got) >= 1:
            ref = ref * 100  # "25" for a reference of 25%: the student counts in percent
        if ref is not None and got is not None:
            if (ref < 0) != (got < 0) and ref != 0 and got != 0:
                out.append("Check the sign of your answer.")
            out.append(f"Your answer is too {'high' if got > ref else 'low'}.")
            if ref.denominator == 1 and got.denominator == 1 and (ref < 0) == (got < 0):
                rs, gs = str(abs(ref.numerator)), str(abs(got.numerator))
                if len(gs) > len(rs):
                    out.append("Your answer has too many digits.")
                elif len(gs) < len(rs):
                    out.append("Your answer has too few digits.")
                else:
                    k = next(i for i in range(len(rs)) if rs[i] != gs[i])
                    place = len(rs) - 1 - k
                    name = _PLACES[place] if place < len(_PLACES) else f"{place + 1}th-from-the-right"
                    out.append(f"The first wrong digit is the {name} digit.")
            elif ref.denominator != 1 and got != 0 and abs(got - ref) <= abs(ref) / 100:
                out.append("You are close; give the exact value as a fraction.")
        elif ref is not None:
            out.append("Your answer should be a single number.")
        else:
            want, have = answer_kind(problem.answer), answer_kind(answer)
            if want != have and want in _KIND_WORDS:
                out.append(f"Your answer should be {_KIND_WORDS[want]}.")
        kind = info.get("kind")
        if kind in ("linear", "linear2", "linear_paren") and got is not None and "lhs" in info:
            (a, b), (c, d) = info["lhs"], info["rhs"]
            left, right = a * got + b, c * got + d
            # Both sides are computed from the student's x; one could happen to be the answer.
            if ref is None or abs(ref) not in (abs(left), abs(right)):
                out.append(f"Check it: with your x, the two sides of the equation come out as {_fmt(left)} "
                           f"and {_fmt(right)}, which are not equal.")
        elif kind in ("frac_add", "frac_sub"):
            out.append("Rewrite both fractions over a common denominator before combining them, "
                       "then reduce to lowest terms.")
        elif kind == "frac_mul":
            out.append("Multiply numerators together and denominators together, then reduce.")
        elif kind in ("pct_of", "pct_change", "discount_tax"):
            out.append(f"Remember that {info['percent']}% means {info['percent']}/100 of the amount it applies to.")
        elif kind in ("boxes", "average", "reading"):
            out.append("Write down each quantity from the problem and combine them one step at a time.")
        elif kind in ("add", "sub", "mul", "mul_add", "sub_mul", "div", "add_neg"):
            out.append("Redo the arithmetic carefully, digit by digit, and remember the order of operations.")
        elif kind is None:
            step = "Re-check each step of your solution, starting with the first step where you use the given conditions."
            domain = info.get("domain")
            if isinstance(domain, list) and domain:
                domain = domain[0]
            if isinstance(domain, str) and domain.strip():
                topic = domain.split("->")[-1].strip().rstrip(".")
                step += f" Think about what you know about {topic.lower()}."
            out.append(step)
        return out
