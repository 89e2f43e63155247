"""Seating puzzles: N people in a row, clues with exactly one arrangement that fits.

Generation: draw a hidden arrangement, add random clues that hold for it and rule out at
least one remaining candidate, until a single arrangement is left (checked by brute force
over all N! orders); then drop clues that are not needed, so prompts stay short. An answer is
correct iff it is an arrangement of the N people that satisfies every clue, which by
construction is the hidden one. The hint names one clue the attempt breaks.
"""
from __future__ import annotations

import itertools
import random
import re

from rl2f.errors import UserError
from rl2f.tasks.base import Problem, Task, Verdict, answer_segment
from rl2f.tasks.maze import content_id, sample_problems

NAMES = ("Ann", "Bob", "Cy", "Dee", "Eve", "Fay", "Gus", "Ivy")
_BY_LOWER = {n.lower(): n for n in NAMES}

# clue kinds: (kind, a, b) with b a name or a 1-based seat
_KINDS = ("left", "next_left", "adjacent", "not_adjacent", "seat", "not_seat", "end")
_WEIGHTS = (4, 3, 3, 2, 1, 2, 1)  # seat clues are strong: rarely drawn


def holds(clue, order) -> bool:
    """Whether `clue` is true of `order` (a tuple of names, left to right)."""
    kind, a, b = clue
    i = order.index(a)
    if kind == "seat":
        return i == b - 1
    if kind == "not_seat":
        return i != b - 1
    if kind == "end":
        return i in (0, len(order) - 1)
    j = order.index(b)
    return {"left": i < j, "next_left": i == j - 1, "adjacent": abs(i - j) == 1,
            "not_adjacent": abs(i - j) != 1}[kind]


def describe(clue) -> str:
    kind, a, b = clue
    return {
        "left": f"{a} is somewhere left of {b}.",
        "next_left": f"{a} is directly left of {b}.",
        "adjacent": f"{a} is next to {b}.",
        "not_adjacent": f"{a} is not next to {b}.",
        "seat": f"{a} is in seat {b}.",
        "not_seat": f"{a} is not in seat {b}.",
        "end": f"{a} is at an end.",
    }[kind]


class PuzzleTask(Task):
    name = "puzzle"
    system_prompt = ("Solve the seating puzzle. End with a line 'Answer: ' and the names from "
                     "left to right, separated by commas.")

    def __init__(self, n_people: int = 4):
        if not isinstance(n_people, int) or isinstance(n_people, bool) or not 3 <= n_people <= 6:
            # 6! = 720 orders keeps the brute force instant
            raise UserError(f"puzzle n_people must be between 3 and 6, got {n_people}")
        self.n_people = n_people

    # --- problems ---
    def _random_true_clue(self, rng: random.Random, order: tuple[str, ...]):
        kind = rng.choices(_KINDS, weights=_WEIGHTS)[0]
        a, b = rng.sample(order, 2)
        i, j = order.index(a), order.index(b)
        if kind in ("left", "next_left") and i > j:
            a, b = b, a
        if kind == "seat":
            return ("seat", a, i + 1)
        if kind == "not_seat":
            return ("not_seat", a, rng.choice([k for k in range(1, len(order) + 1) if k != i + 1]))
        if kind == "end":
            a = rng.choice([order[0], order[-1]])
            return ("end", a, None)
        clue = (kind, a, b)
        return clue if holds(clue, order) else None

    def _make(self, rng: random.Random) -> tuple[str, Problem]:
        names = sorted(rng.sample(NAMES, self.n_people))
        order = tuple(rng.sample(names, len(names)))
        all_orders = list(itertools.permutations(names))
        candidates, clues = all_orders, []
        while len(candidates) > 1:
            clue = self._random_true_clue(rng, order)
            if clue is None or clue in clues:
                continue
            kept = [o for o in candidates if holds(clue, o)]
            if len(kept) < len(candidates):  # informative clues only
                candidates, clues = kept, clues + [clue]
        for clue in rng.sample(clues, len(clues)):  # drop clues the others already imply
            rest = [c for c in clues if c != clue]
            if sum(all(holds(c, o) for c in rest) for o in all_orders) == 1:
                clues = rest
        rng.shuffle(clues)
        lines = "\n".join(f"- {describe(c)}" for c in clues)
        prompt = (f"{', '.join(names)} sit in seats 1-{len(names)}, left to right.\n{lines}\n"
                  f"Order from left?")
        answer = ", ".join(order)
        key = f"puzzle|{prompt}"
        info = {"names": names, "clues": [list(c) for c in clues], "solution": list(order)}
        return key, Problem(id=content_id(f"puzzle{len(names)}", key), prompt=prompt,
                            answer=answer, info=info)

    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        return sample_problems(f"puzzle{self.n_people}", n, seed, split, self._make)

    # --- answers ---
    def extract_answer(self, text: str) -> str | None:
        segment = answer_segment(text)
        found = [_BY_LOWER[w.lower()] for w in re.findall(r"[A-Za-z]+", segment)
                 if w.lower() in _BY_LOWER]
        return ", ".join(found) or None

    def _check(self, order: list[str], problem: Problem):
        """(problem with the list as an arrangement or "", clues it breaks)."""
        names = problem.info["names"]
        missing = [n for n in names if n not in order]
        extra = sorted({n for n in order if n not in names or order.count(n) > 1})
        if missing or extra or len(order) != len(names):
            parts = []
            if missing:
                parts.append("missing: " + ", ".join(missing))
            if extra:
                parts.append("repeated or unknown: " + ", ".join(extra))
            return "; ".join(parts) or "wrong number of people", []
        clues = [tuple(c) for c in problem.info["clues"]]
        return "", [c for c in clues if not holds(c, tuple(order))]

    def verify(self, text: str, problem: Problem) -> Verdict:
        answer = self.extract_answer(text)
        if answer is None:
            return Verdict(False, None, "no arrangement found")
        shape, broken = self._check(answer.split(", "), problem)
        if shape:
            return Verdict(False, answer, f"not an arrangement of all people ({shape})")
        if broken:
            return Verdict(False, answer, "breaks: " + " ".join(describe(c) for c in broken))
        return Verdict(True, answer, "satisfies every clue")

    def hint(self, problem: Problem, attempt: str, verdict: Verdict) -> str:
        answer = self.extract_answer(attempt)
        if answer is None:
            return ("I could not find your arrangement. End with a line 'Answer: ' and the "
                    "names from left to right, separated by commas.")
        shape, broken = self._check(answer.split(", "), problem)
        if shape:
            if len(problem.info["names"]) - len(set(answer.split(", "))) > 1:
                # listing (almost) everyone in seat-name order could spell the answer
                return (f"List all {len(problem.info['names'])} people of the puzzle, each "
                        f"exactly once.")
            return f"Name each person of the puzzle exactly once ({shape})."
        if broken:
            return f"Your order breaks this clue: {describe(broken[0])}"
        return "Your order satisfies every clue."

    def answer_forms(self, problem: Problem) -> list[str]:
        order = problem.info["solution"]
        return [", ".join(order), ",".join(order), " ".join(order)]
