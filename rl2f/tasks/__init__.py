"""Verifiable tasks: `get_task(name, **options)`.

`name` is a built-in task (math, maze, puzzle, code, highlow: the hidden-information task of
the embedded demo; secret: its digit-sum predecessor; jsonl: problems from a data file;
reasoning_gym: reasoning-gym's datasets), a task an installed package registers under the
entry-point group
`rl2f.tasks`, or the task's class itself: "package.module:Class" or "path/to/file.py:Class"
(rl2f.plugins). A task class subclasses `rl2f.tasks.base.Task`.
"""
from __future__ import annotations

from rl2f.errors import UserError
from rl2f.plugins import SPEC_FORMS, TASK_PLUGINS, entry_point, entry_point_names, is_spec, load_object
from rl2f.tasks.base import Problem, Task, Verdict

# Built-in tasks, each imported when asked for: the math task pulls in sympy (half a second),
# which `rl2f --help` and the other tasks do without.
BUILTIN = {
    "math": "rl2f.tasks.math:MathTask",
    "maze": "rl2f.tasks.maze:MazeTask",
    "puzzle": "rl2f.tasks.puzzle:PuzzleTask",
    "code": "rl2f.tasks.code:CodeTask",
    "secret": "rl2f.tasks.secret:SecretNumberTask",
    "highlow": "rl2f.tasks.highlow:HighLowTask",
    "jsonl": "rl2f.tasks.data:JsonlTask",
    "reasoning_gym": "rl2f.tasks.gym:ReasoningGymTask",
}
TASKS = tuple(BUILTIN)


def task_class(name: str) -> type[Task]:
    """The Task subclass `name` stands for (see the module docstring), or one error line."""
    if name in BUILTIN:
        spec = BUILTIN[name]
    elif is_spec(name):
        spec = name
    else:
        spec = entry_point(TASK_PLUGINS, name)
        if spec is None:
            installed = entry_point_names(TASK_PLUGINS)
            raise UserError(f"unknown task '{name}' (known tasks: {', '.join(TASKS + tuple(installed))}; "
                            f"or give the task class as {SPEC_FORMS})")
    cls = load_object(spec, f"task '{name}'")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise UserError(f"task '{name}': {spec} is not a task class (a subclass of rl2f.tasks.base.Task)")
    return cls


def get_task(name: str, **options) -> Task:
    """A task by name; `options` go to its constructor (e.g. difficulty, path, size)."""
    cls = task_class(name)
    try:
        task = cls(**options)
    except UserError:
        raise
    except (TypeError, ValueError) as e:  # an unknown option, or a value its checks did not foresee
        raise UserError(f"task '{name}': bad option ({e})") from None
    if not task.name:  # episodes and reports key on it
        task.name = name
    return task


__all__ = ["Problem", "Task", "Verdict", "get_task", "task_class", "TASKS", "BUILTIN"]
