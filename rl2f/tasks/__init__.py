"""Verifiable tasks: `get_task(name, **options)` for math, maze, puzzle, code and secret
(the hidden-information task of the embedded demo)."""
from __future__ import annotations

from rl2f.errors import UserError
from rl2f.tasks.base import Problem, Task, Verdict

TASKS = ("math", "maze", "puzzle", "code", "secret")


def get_task(name: str, **options) -> Task:
    """A task by name; `options` go to its constructor (e.g. difficulty, path, size). Each
    task module is imported when asked for: the math task pulls in sympy (half a second),
    which `rl2f --help` and the other tasks do without."""
    if name == "math":
        from rl2f.tasks.math import MathTask as cls
    elif name == "maze":
        from rl2f.tasks.maze import MazeTask as cls
    elif name == "puzzle":
        from rl2f.tasks.puzzle import PuzzleTask as cls
    elif name == "code":
        from rl2f.tasks.code import CodeTask as cls
    elif name == "secret":
        from rl2f.tasks.secret import SecretNumberTask as cls
    else:
        raise UserError(f"unknown task '{name}' (known tasks: {', '.join(TASKS)})")
    try:
        return cls(**options)
    except UserError:
        raise
    except (TypeError, ValueError) as e:  # an unknown option, or a value its checks did not foresee
        raise UserError(f"task '{name}': bad option ({e})") from None


__all__ = ["Problem", "Task", "Verdict", "get_task", "TASKS"]
