"""Maze navigation: procedural grids with a guaranteed path; the answer is a move string.

A problem is a `size` x `size` grid of free cells (.) and walls (#) with a start S and a goal
G, rendered as text. Any move string over U/D/L/R that walks from S to G without entering a
wall or leaving the grid is correct (checked by simulation); the shortest path is only the
reference. The hint says where the attempt first goes wrong, never the path.

Also home of the split helpers the procedural families share (`split_of`, `split_rng`).
"""
from __future__ import annotations

import hashlib
import random
import re
from collections import deque

from rl2f.errors import UserError
from rl2f.tasks.base import Problem, Task, Verdict, answer_segment, check_option

# --- splits ------------------------------------------------------------------------------
# A problem's split is a function of its content, so train and test can never share one,
# whatever seeds the callers use. 80 / 10 / 10.
SPLITS = ("train", "val", "test")


def split_of(key: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 10
    return "train" if bucket < 8 else ("val" if bucket == 8 else "test")


def split_rng(family: str, seed: int, split: str) -> random.Random:
    """A generator for the candidates of one (family, seed, split); str seeds hash with
    sha512 inside `random`, so this is stable across processes and PYTHONHASHSEED."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return random.Random(f"{family}|{seed}|{split}")


def content_id(prefix: str, key: str) -> str:
    return f"{prefix}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:12]}"


def sample_problems(family, n, seed, split, make, max_tries_per_problem=200):
    """n distinct problems of `split`: draw candidates `make(rng) -> (key, Problem or a
    function building it)` and keep those whose key belongs to the split."""
    rng = split_rng(family, seed, split)
    out, seen = [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > max_tries_per_problem * (n + 10):
            raise UserError(f"{family}: could not make {n} distinct {split} problems "
                            f"(only {len(out)} exist with these settings)")
        key, problem = make(rng)
        if key in seen or split_of(key) != split:
            continue
        seen.add(key)
        out.append(problem() if callable(problem) else problem)
    return out


# --- maze --------------------------------------------------------------------------------
MOVES = {"U": (-1, 0), "D": (1, 0), "L": (0, -1), "R": (0, 1)}
_WORDS = {"UP": "U", "DOWN": "D", "LEFT": "L", "RIGHT": "R"}


def _bfs(grid: list[str], start: tuple[int, int]) -> dict[tuple[int, int], str]:
    """Shortest move string from `start` to every reachable cell (U, D, L, R tie order)."""
    n_rows, n_cols = len(grid), len(grid[0])
    paths = {start: ""}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for m, (dr, dc) in MOVES.items():
            nr, nc = r + dr, c + dc
            if 0 <= nr < n_rows and 0 <= nc < n_cols and grid[nr][nc] != "#" and (nr, nc) not in paths:
                paths[(nr, nc)] = paths[(r, c)] + m
                queue.append((nr, nc))
    return paths


def simulate(grid: list[str], start, moves: str) -> tuple[tuple[int, int], int | None, str | None]:
    """Walk `moves` from `start`: (last legal cell, index of the first illegal move or None,
    "wall" / "edge" / None)."""
    r, c = start
    for i, m in enumerate(moves):
        dr, dc = MOVES[m]
        nr, nc = r + dr, c + dc
        if not (0 <= nr < len(grid) and 0 <= nc < len(grid[0])):
            return (r, c), i, "edge"
        if grid[nr][nc] == "#":
            return (r, c), i, "wall"
        r, c = nr, nc
    return (r, c), None, None


class MazeTask(Task):
    name = "maze"
    system_prompt = ("Find a path from S to G that never enters a wall (#). End with a line "
                     "'Answer: ' and the moves as letters U (up), D (down), L (left), R (right).")

    def __init__(self, size: int = 5, wall_prob: float = 0.3, min_moves: int | None = None):
        # size <= 30: a 30x30 grid is already a 900-character prompt; 3000 took hours to draw
        size = check_option("maze", "size", size, int, 3, 30)
        if not isinstance(wall_prob, (int, float)) or isinstance(wall_prob, bool) or not 0.0 <= wall_prob < 0.7:
            raise UserError(f"maze wall_prob must be in [0, 0.7), got {wall_prob!r}")
        if min_moves is not None:
            check_option("maze", "min_moves", min_moves, int, 0)
        self.size = size
        self.wall_prob = wall_prob
        # >= 3, so that no hint (which names at most one move letter) can spell the path
        self.min_moves = max(3, size - 1 if min_moves is None else min_moves)
        if self.min_moves > 2 * (size - 1):
            raise UserError(f"maze min_moves={self.min_moves} is impossible on a {size}x{size} grid")

    # --- problems ---
    def _make(self, rng: random.Random) -> tuple[str, Problem]:
        n = self.size
        while True:
            grid = ["".join("#" if rng.random() < self.wall_prob else "." for _ in range(n))
                    for _ in range(n)]
            free = [(r, c) for r in range(n) for c in range(n) if grid[r][c] == "."]
            if len(free) < 2:
                continue
            start, goal = rng.sample(free, 2)
            path = _bfs(grid, start).get(goal)
            if path is not None and len(path) >= self.min_moves:
                break
        rows = [list(row) for row in grid]
        rows[start[0]][start[1]] = "S"
        rows[goal[0]][goal[1]] = "G"
        text = "\n".join("".join(row) for row in rows)
        prompt = f"Maze (S start, G goal, # wall, . free):\n{text}\nMoves from S to G?"
        key = f"maze|{text}"
        info = {"grid": text.split("\n"), "start": list(start), "goal": list(goal),
                "solution": path}
        return key, Problem(id=content_id(f"maze{n}", key), prompt=prompt, answer=path, info=info)

    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        family = f"maze{self.size}-{self.wall_prob}-{self.min_moves}"
        return sample_problems(family, n, seed, split, self._make)

    # --- answers ---
    def extract_answer(self, text: str) -> str | None:
        segment = answer_segment(text)
        moves = []
        for token in re.findall(r"[A-Za-z]+", segment):
            if token.upper() in _WORDS:
                moves.append(_WORDS[token.upper()])
            elif re.fullmatch(r"[UDLR]+", token):
                moves.append(token)
        return "".join(moves) or None

    def _walk(self, moves: str, problem: Problem):
        grid = problem.info["grid"]
        start, goal = tuple(problem.info["start"]), tuple(problem.info["goal"])
        end, bad, why = simulate(grid, start, moves)
        return grid, goal, end, bad, why

    def verify(self, text: str, problem: Problem) -> Verdict:
        moves = self.extract_answer(text)
        if moves is None:
            return Verdict(False, None, "no move string found")
        grid, goal, end, bad, why = self._walk(moves, problem)
        if bad is not None:
            return Verdict(False, moves, f"move {bad + 1} ({moves[bad]}) from {end} hits "
                                         f"{'a wall' if why == 'wall' else 'the edge'}")
        if end != goal:
            return Verdict(False, moves, f"ends at {end}, not at the goal {goal}")
        return Verdict(True, moves, f"reaches the goal in {len(moves)} moves "
                                    f"(shortest {len(problem.answer)})")

    def hint(self, problem: Problem, attempt: str, verdict: Verdict) -> str:
        moves = self.extract_answer(attempt)
        if moves is None:
            return ("I could not find your moves. End with a line 'Answer: ' followed by "
                    "letters U, D, L or R.")
        grid, goal, end, bad, why = self._walk(moves, problem)
        where = f"row {end[0] + 1}, column {end[1] + 1}"
        if bad is not None:
            obstacle = "runs into a wall" if why == "wall" else "leaves the grid"
            return f"Move {bad + 1} ({moves[bad]}) {obstacle}: you were at {where}."
        if end == goal:  # a correct attempt: nothing to fix
            return "Your moves reach G."
        left = len(_bfs(grid, end).get(goal, ""))
        passed = self._passes_goal(moves, problem)
        msg = f"Your moves end at {where}, {left} moves away from G."
        if passed is not None:
            msg += f" You were on G after move {passed} but kept going."
        return msg

    def _passes_goal(self, moves: str, problem: Problem) -> int | None:
        for i in range(1, len(moves)):
            end, bad, _ = simulate(problem.info["grid"], tuple(problem.info["start"]), moves[:i])
            if bad is None and end == tuple(problem.info["goal"]):
                return i
        return None

    def answer_forms(self, problem: Problem) -> list[str]:
        path = problem.answer
        return [path, " ".join(path), ", ".join(path), ",".join(path)]
