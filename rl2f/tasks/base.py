"""What every verifiable task provides: problems with privileged information, answer
extraction, a verifier, and a programmatic hint (the embedded default's teacher).

The student sees `Problem.prompt` only. `Problem.answer` and `Problem.info` are privileged:
the teacher and the verifier see them, the student never does.
"""
from __future__ import annotations

import math
import random
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from rl2f.errors import UserError


@dataclass
class Problem:
    id: str  # stable across runs: resume and paired evaluation key on it
    prompt: str  # what the student sees
    answer: str  # privileged reference answer ("" for coding, whose truth is the tests)
    info: dict[str, Any] = field(default_factory=dict)  # other privileged data (tests, grid, ...)


@dataclass
class Verdict:
    correct: bool
    answer: str | None  # the answer extracted from the attempt (None: none found)
    detail: str = ""  # privileged feedback for the teacher (failing test output, ...)


def check_option(task: str, name: str, value, kind: type, lo=None, hi=None, lo_open: bool = False):
    """A task option's value, or a UserError naming it: of `kind` (an int is a float; a bool is
    neither), finite, and within [lo, hi] ((lo, hi] with `lo_open`)."""
    ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
    if isinstance(value, bool) and kind is not bool:
        ok = False
    if ok and kind in (int, float):
        ok = math.isfinite(value) and (lo is None or (value > lo if lo_open else value >= lo)) \
            and (hi is None or value <= hi)
    if not ok:
        what = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(kind, kind.__name__)
        if lo is not None or hi is not None:
            what += f" in {'(' if lo_open else '['}{'' if lo is None else lo}, {'' if hi is None else hi}]"
        raise UserError(f"task '{task}': option {name} must be {what}, got {value!r}")
    return float(value) if kind is float else value


class Task(ABC):
    """A family of verifiable problems."""

    name: str = ""
    system_prompt: str = ""  # instructions to the student (answer format)

    @abstractmethod
    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        """`n` problems, deterministic from (seed, split); splits never share a problem."""

    @abstractmethod
    def extract_answer(self, text: str) -> str | None:
        """The final answer in a student's attempt, or None."""

    @abstractmethod
    def verify(self, text: str, problem: Problem) -> Verdict:
        """Grade a whole attempt (extraction included) against the privileged answer."""

    @abstractmethod
    def hint(self, problem: Problem, attempt: str, verdict: Verdict) -> str:
        """A programmatic teacher message for a wrong attempt: informative, never the answer."""

    def placebo_hint(self, problem: Problem, attempt: str, verdict: Verdict, rng: random.Random) -> str:
        """A message in `hint`'s format that carries no information about the answer (drawn
        from `rng`, never from `problem.answer` or `problem.info`): the placebo control, whose
        difference to `hint` isolates the value of the hint's content (RL2F.md, Metrics)."""
        raise NotImplementedError(f"task '{self.name}' has no placebo hint")

    def decoy(self, problem: Problem, rng: random.Random, exclude: set[str] = frozenset()) -> Problem:
        """`problem` with a decoy answer drawn from `rng` as the task draws real answers for
        its prompt, never one of `exclude`, independently of `problem.answer`: the decoy
        teacher gives the real hints about it (rl2f/teacher.py, `DecoyTeacher`)."""
        raise NotImplementedError(f"task '{self.name}' has no decoy answers")

    def answer_forms(self, problem: Problem) -> list[str]:
        """Strings whose appearance in a teacher message leaks the answer (for the leak guard)."""
        return [problem.answer] if problem.answer else []


# The hint for an attempt with no answer the task could read (the math and jsonl tasks).
NO_ANSWER_HINT = "I could not find your final answer. End your reply with a line of the form 'Answer: <your answer>'."

_ANSWER_MARKER = re.compile(r"answer\s*(?:is)?\s*[:=]?", re.IGNORECASE)


def answer_segment(text: str) -> str:
    """The line after the last "Answer:" / "answer is" marker, else the last non-empty line."""
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        return text[markers[-1].end():].strip().split("\n")[0]
    lines = [ln for ln in text.strip().split("\n") if ln.strip()]
    return lines[-1] if lines else ""
