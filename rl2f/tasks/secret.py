"""Hidden-information number guessing: the embedded demo's task.

The student is told only the digit sum of a secret number and must name the number; the
teacher knows the number and says, for the first wrong digit, whether it is too high or too
low. Only the hints carry the missing bits, so a student that guesses well from the prompt
alone is capped at E[1 / #candidates] (about 0.2 for two digits), while one that uses the
hints can solve nearly every problem in a few turns. RL2F.md ("Toy-scale evidence") found
this design separates RL2F from single-turn RL at toy scale, where plain arithmetic did not.
"""
from __future__ import annotations

import math
import random
import re

from rl2f.errors import UserError
from rl2f.tasks.base import Problem, Task, Verdict, check_option

_ANSWER = re.compile(r"answer\s*[:=]?\s*(-?\d+)", re.IGNORECASE)
_INTEGER = re.compile(r"-?\d+")


def stated_number(text: str) -> str | None:
    """The number an attempt commits to: the last "Answer: N", else its last integer."""
    m = _ANSWER.findall(text)
    if m:
        return m[-1]
    ints = _INTEGER.findall(text)
    return ints[-1] if ints else None


def _digit_sum(n: int) -> int:
    return sum(map(int, str(n)))


def candidates(digit_sum: int, digits: int = 2) -> list[int]:
    """Every `digits`-digit number whose digits add up to `digit_sum` (no leading zero)."""
    lo, hi = 10 ** (digits - 1), 10**digits
    return [n for n in range(lo, hi) if sum(map(int, str(n))) == digit_sum]


class NumberGuessTask(Task):
    """A task whose answer is one number: the attempt's stated number (`stated_number`), right
    when it is the answer's digits exactly. The hidden-information tasks, secret and highlow."""

    def extract_answer(self, text: str) -> str | None:
        return stated_number(text)

    def verify(self, text: str, problem: Problem) -> Verdict:
        answer = self.extract_answer(text)
        return Verdict(answer is not None and answer == problem.answer, answer)

    def answer_forms(self, problem: Problem) -> list[str]:
        return [problem.answer]


class SecretNumberTask(NumberGuessTask):
    name = "secret"
    system_prompt = ""  # the prompt says the answer format; the tiny model needs no preamble

    def __init__(self, digits: int = 2, prior: float = 0.0, sums: list[int] | None = None, name: str | None = None):
        # digits <= 6: the pool lists every number (a million at most)
        self.digits = check_option("secret", "digits", digits, int, 1, 6)
        # the weight of a secret is exp(-prior * first digit): negative favours high digits
        self.prior = check_option("secret", "prior", prior, float, -10, 10)
        self.pool = list(range(10 ** (digits - 1), 10**digits))
        if sums is not None:
            if not isinstance(sums, list) or not sums:
                raise UserError(f"task 'secret': option sums must be a non-empty list of digit sums, got {sums!r}")
            for s in sums:
                check_option("secret", "sums[]", s, int, 1, 9 * digits)
            self.pool = [n for n in self.pool if _digit_sum(n) in set(sums)]
            if not self.pool:
                raise UserError(f"task 'secret': no {digits}-digit number has a digit sum in {sums}")
        if name is not None:
            check_option("secret", "name", name, str)
        self.id_prefix = "secret"  # problem ids (and so sampling keys) stay those of the plain task
        if name is not None:
            self.name = self.id_prefix = name  # a variant (subclasses keep their class attribute)

    def prompt(self, digit_sum: int) -> str:
        return f"Secret {self.digits}-digit number, digit sum {digit_sum}. Answer: ?"

    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        # Each split draws its own instances (ids never shared), secrets uniform over all
        # numbers. With 18 possible prompts the space is necessarily shared, so held-out means
        # fresh i.i.d. draws (as in RL2F.md's prototype). Holding out a set of secrets instead
        # was tried and measured memorisation: RL learned a turn-1 prior over the training
        # secrets that is wrong on the held-out ones by construction.
        rng = random.Random(f"secret-{self.digits}-{split}-{seed}")
        weights = [math.exp(-self.prior * int(str(n)[0])) for n in self.pool]
        out = []
        for i in range(n):
            secret = rng.choices(self.pool, weights)[0] if self.prior else rng.choice(self.pool)
            s = _digit_sum(secret)
            out.append(Problem(f"{self.id_prefix}-{split}-{seed}-{i}", self.prompt(s), str(secret), {"digit_sum": s}))
        return out

    def hint(self, problem: Problem, attempt: str, verdict: Verdict) -> str:
        guess = verdict.answer
        if guess is None or not guess.isdigit() or len(guess) != self.digits:
            return f"Give a {self.digits}-digit number as 'Answer: N'."
        names = ["first", "second", "third", "fourth", "fifth"]
        for pos, (g, s) in enumerate(zip(guess, problem.answer)):
            if g != s:
                direction = "too high" if g > s else "too low"
                name = names[pos] if pos < len(names) else f"digit {pos + 1}"
                return f"The {name} digit is {direction}."
        return "Check the digits again."

    def placebo_hint(self, problem: Problem, attempt: str, verdict: Verdict, rng: random.Random) -> str:
        """The hint's format with a random digit and direction: it never reads the secret."""
        guess = verdict.answer
        if guess is None or not guess.isdigit() or len(guess) != self.digits:
            return f"Give a {self.digits}-digit number as 'Answer: N'."  # depends on the attempt only
        names = ["first", "second", "third", "fourth", "fifth"]
        pos = rng.randrange(self.digits)
        name = names[pos] if pos < len(names) else f"digit {pos + 1}"
        return f"The {name} digit is {rng.choice(['too high', 'too low'])}."

def hints_consistent(guess: int, hints: list[tuple[int, str]]) -> bool:
    """Whether `guess` agrees with every (previous guess, hint) pair seen so far."""
    g = str(guess)
    for prev, text in hints:
        p = str(prev)
        # The hint names the first wrong digit: every digit before it was right.
        m = re.search(r"The (\w+) digit is too (high|low)", text)
        if not m:
            continue
        pos = ["first", "second", "third", "fourth", "fifth"].index(m.group(1))
        if g[:pos] != p[:pos]:
            return False
        if m.group(2) == "high" and not g[pos] < p[pos]:
            return False
        if m.group(2) == "low" and not g[pos] > p[pos]:
            return False
    return True
