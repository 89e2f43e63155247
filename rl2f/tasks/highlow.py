"""Higher-or-lower: the demo's hidden-information task, designed so that the content of a hint
is worth more than its shape.

The student is told a residue of a secret two-digit number ("remainder 7 when divided by 10":
by default its last digit, so 9 candidates, one per tens digit) and must name the number;
after a wrong guess the teacher says only "Too high." or "Too low.". Secrets follow a prior
that favours low tens digits (weight exp(-prior x tens digit)), which single-turn RL can
learn: turn 1 is not hopeless, and not solved (0.217 at best with the defaults). Why this
design (issue #27): on the digit-sum `secret` task a student that ignores what the hints say
but never repeats a guess reached acc@5 0.91, so "uses the content" and "keeps revising"
could not be told apart. Here the best hint-blind student (the prior's likeliest candidates
in order) and the best hint user (a binary search weighted by the prior) are far apart after
the first turn: acc@4 0.660 against 1.0 with the defaults. `ceilings` computes both exactly,
and the demo's report draws them as reference lines. (A remainder mod 6, 15 candidates,
had more room, but the demo's 2-layer base then named a number of the right residue only 44%
of the time: the last digit is a constraint it learns.)

The two placebos are in the real hints' exact words ("Too high." / "Too low.", nothing else)
and, for a student that ignores hints, the real hints' exact distribution:
- `placebo_hint` (random direction): "Too high." with the probability that the prior gives a
  secret below the guess, among the candidates the episode's wrong guesses have not ruled
  out; it reads the prompt's residue and the attempts, never the secret;
- `decoy` (a decoy secret): an independent secret drawn from the same prior and residue, whose
  real hints the decoy teacher gives (rl2f/teacher.py, `DecoyTeacher`): hints as consistent
  as real ones, about the wrong number.
"""
from __future__ import annotations

import functools
import math
import random

from rl2f.errors import UserError
from rl2f.tasks.base import Problem, Verdict, check_option
from rl2f.tasks.secret import NumberGuessTask

TOO_HIGH, TOO_LOW = "Too high.", "Too low."
LOW, HIGH = 10, 99  # the default secrets: two-digit numbers
# The "chat" wording, for pretrained instruct models (the real-model run, rl2f/demo/real.py):
# SmolLM2-135M-Instruct named a number on about half of its first replies with this system
# prompt and far fewer without it (a measurement of five wordings, issue #26).
CHAT_SYSTEM_PROMPT = "You are playing a number guessing game. Always reply with a single number and nothing else."


class HighLowTask(NumberGuessTask):
    """Options: `modulus` (the prompt gives the secret's remainder; 1 = no clue), `prior`
    (secrets weighted exp(-prior x (n // modulus)): for the defaults, the tens digit),
    `residues`, `low`/`high` (the secrets' range, default 10-99), `wording` ("terse": the
    tiny model's one-line prompt and "Answer: N"; "chat": sentences and a system prompt for
    a pretrained instruct model), `name`."""
    name = "highlow"

    def __init__(self, modulus: int = 10, prior: float = 0.2, residues: list[int] | None = None,
                 name: str | None = None, low: int = LOW, high: int = HIGH, wording: str = "terse"):
        self.low = check_option("highlow", "low", low, int, 0, 10**6)
        self.high = check_option("highlow", "high", high, int, self.low + 1, 10**6)
        # modulus 1-30: 1 gives no clue; 10 (the default) gives the last digit
        self.modulus = check_option("highlow", "modulus", modulus, int, 1, 30)
        self.prior = check_option("highlow", "prior", prior, float, -10, 10)  # negative favours high numbers
        if wording not in ("terse", "chat"):
            raise UserError(f"task 'highlow': option wording must be 'terse' or 'chat', got {wording!r}")
        self.wording = wording
        # the terse prompt says the answer format; the tiny model needs no preamble
        self.system_prompt = CHAT_SYSTEM_PROMPT if wording == "chat" else ""
        self.residues = list(range(self.modulus)) if residues is None else residues
        if not isinstance(self.residues, list) or not self.residues:
            raise UserError(f"task 'highlow': option residues must be a non-empty list, got {residues!r}")
        for r in self.residues:
            check_option("highlow", "residues[]", r, int, 0, self.modulus - 1)
        if name is not None:
            self.name = check_option("highlow", "name", name, str)
        self.id_prefix = self.name

    # --- the distribution of problems

    def candidates(self, residue: int) -> list[int]:
        """The numbers a prompt with this residue allows, ascending."""
        return [n for n in range(self.low, self.high + 1) if n % self.modulus == residue]

    def weight(self, n: int) -> float:
        return math.exp(-self.prior * (n // self.modulus))

    def prompt(self, residue: int) -> str:
        lo, hi, m = self.low, self.high, self.modulus
        if self.wording == "terse":
            return f"Secret number from {lo} to {hi}, remainder {residue} when divided by {m}. Answer: ?"
        clue = ("" if m == 1 else f" Its last digit is {residue}." if m == 10
                else f" It leaves remainder {residue} when divided by {m}.")
        return f"I am thinking of a secret number from {lo} to {hi}.{clue} Guess the number. Reply with only the number."

    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        # Each split draws its own instances (ids never shared); with a handful of prompts the
        # space is necessarily shared, so held-out means fresh i.i.d. draws.
        rng = random.Random(f"{self.id_prefix}-{self.modulus}-{split}-{seed}")
        pool = [x for r in self.residues for x in self.candidates(r)]
        weights = [self.weight(x) for x in pool]
        out = []
        for i in range(n):
            secret = rng.choices(pool, weights)[0]
            r = secret % self.modulus
            out.append(Problem(f"{self.id_prefix}-{split}-{seed}-{i}", self.prompt(r), str(secret), {"residue": r}))
        return out

    # --- grading and hints

    def _guess(self, answer: str | None) -> int | None:
        """The number an extracted answer names, if it is in the range (else the format hint)."""
        return int(answer) if answer is not None and answer.isdigit() and self.low <= int(answer) <= self.high else None

    def format_hint(self) -> str:
        if self.wording == "chat":
            return f"Reply with only a number from {self.low} to {self.high}."
        return f"Give a number from {self.low} to {self.high} as 'Answer: N'."

    def hint(self, problem: Problem, attempt: str, verdict: Verdict) -> str:
        guess = self._guess(verdict.answer)
        if guess is None:
            return self.format_hint()
        return TOO_HIGH if guess > int(problem.answer) else TOO_LOW

    def placebo_hint(self, problem: Problem, attempt: str, verdict: Verdict, rng: random.Random,
                     earlier: list[str] = ()) -> str:
        """"Too high." with the prior's probability of a secret below the guess, among the
        candidates that neither the guess nor the `earlier` attempts ruled out: the real hint's
        distribution for a student that ignores hints, with no information about the secret."""
        guess = self._guess(verdict.answer)
        if guess is None:
            return self.format_hint()  # depends on the attempt only, as the real hint does
        ruled_out = {guess} | {self._guess(self.extract_answer(e)) for e in earlier}
        left = [x for x in self.candidates(problem.info["residue"]) if x not in ruled_out]
        below = sum(self.weight(x) for x in left if x < guess)
        total = sum(self.weight(x) for x in left)
        if total == 0:  # every candidate ruled out (the student repeated itself): no odds to follow
            return rng.choice([TOO_HIGH, TOO_LOW])
        return TOO_HIGH if rng.random() < below / total else TOO_LOW

    def decoy(self, problem: Problem, rng: random.Random, exclude: set[str] = frozenset()) -> Problem:
        """The same prompt with a decoy secret drawn from the prior among the candidates, never
        one of `exclude` (answers already said to be wrong): independent of the real secret."""
        left = [x for x in self.candidates(problem.info["residue"]) if str(x) not in exclude]
        if not left:  # every candidate excluded: any of them
            left = self.candidates(problem.info["residue"])
        secret = rng.choices(left, [self.weight(x) for x in left])[0]
        return Problem(problem.id, problem.prompt, str(secret), dict(problem.info))

    # --- the reference lines: what ignoring hints and using them perfectly are worth

    def ceilings(self, turns: int) -> dict[str, list[float]]:
        """Exact acc@t, t = 1..turns, of the best hint-blind student (the prior's most likely
        candidates in order, never repeating) and of the best hint user (the guess tree that
        covers the most prior mass in t guesses), averaged over the task's prompts."""
        blind, optimal = [0.0] * turns, [0.0] * turns
        weights = {r: [self.weight(x) for x in self.candidates(r)] for r in self.residues}
        mass = sum(sum(w) for w in weights.values())
        for w in weights.values():
            share = sum(w) / mass  # the prompt's probability
            for t in range(1, turns + 1):
                blind[t - 1] += share * hint_blind_acc(w, t)
                optimal[t - 1] += share * hint_optimal_acc(w, t)
        return {"hint_blind": blind, "hint_optimal": optimal}


def hint_blind_acc(weights: list[float], t: int) -> float:
    """The most prior mass t distinct guesses can cover when the hints are ignored."""
    return sum(sorted(weights, reverse=True)[:t]) / sum(weights)


def _coverage(weights: tuple[float, ...]):
    """best(lo, hi, t): the most prior mass t guesses can cover among candidates lo..hi-1 (in
    ascending order) with "too high / too low" after each. A guess splits the candidates left
    into those below and above it, so this is a dynamic programme over intervals and turns."""

    @functools.lru_cache(maxsize=None)
    def best(lo: int, hi: int, turns: int) -> float:
        if lo >= hi or turns == 0:
            return 0.0
        return max(weights[g] + best(lo, g, turns - 1) + best(g + 1, hi, turns - 1) for g in range(lo, hi))

    return best


def hint_optimal_acc(weights: list[float], t: int) -> float:
    """The most prior mass t guesses can cover when each is followed by "too high / too low"."""
    return _coverage(tuple(weights))(0, len(weights), t) / sum(weights)


def optimal_guess(weights: list[float], t: int, lo: int = 0, hi: int | None = None) -> int:
    """The index of the best guess among candidates lo..hi-1 with t guesses left (ties: the
    lowest index): the hint user that `hint_optimal_acc` scores."""
    hi = len(weights) if hi is None else hi
    best = _coverage(tuple(weights))
    return max(range(lo, hi), key=lambda g: (weights[g] + best(lo, g, t - 1) + best(g + 1, hi, t - 1), -g))
