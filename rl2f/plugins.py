"""User code by name: a task or a teacher given as "package.module:Class", as
"path/to/file.py:Class", or by the name a pip-installed package registers under an entry-point
group (`[project.entry-points."rl2f.tasks"] mytask = "my_pkg.tasks:MyTask"`).

Whatever goes wrong while finding it (a missing file, a module that does not import, a name
that is not there) is one `UserError` naming the spec, never a traceback from importlib.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from rl2f.errors import UserError

SPEC_FORMS = "'package.module:Class' or 'path/to/file.py:Class'"
# the entry-point groups of pip-installed task and teacher packages
TASK_PLUGINS = "rl2f.tasks"
TEACHER_PLUGINS = "rl2f.teachers"


def is_spec(name: str) -> bool:
    """Whether `name` names code ("module:Class", "file.py:Class") rather than a registered name."""
    return ":" in name


def absolute_spec(spec: str) -> str:
    """"file.py:Class" with the file's absolute path, so that a run resumed or evaluated from
    another directory finds the same file; a module spec unchanged."""
    where, sep, attr = spec.rpartition(":")
    if sep and _is_file_spec(where):
        return f"{Path(where).expanduser().resolve()}:{attr}"
    return spec


def _is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def entry_point(group: str, name: str) -> str | None:
    """The "module:attr" that an installed package registers as `name` in `group`, or None."""
    for ep in importlib.metadata.entry_points(group=group):
        if ep.name == name:
            return ep.value
    return None


def entry_point_names(group: str) -> list[str]:
    return sorted({ep.name for ep in importlib.metadata.entry_points(group=group)})


def load_object(spec: str, what: str):
    """The object `spec` ("module:attr" or "file.py:attr", attr may be dotted) names; `what`
    ("task 'x'") starts every error line."""
    where, sep, attr = spec.rpartition(":")
    if not sep or not where or not attr:
        raise UserError(f"{what}: expected {SPEC_FORMS}, got {spec!r}")
    if _is_file_spec(where):
        module = _import_file(Path(where).expanduser(), what)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            if e.name and where.startswith(e.name) or e.name == where:
                raise UserError(f"{what}: no module named {where!r} (is its package installed, or on "
                                f"PYTHONPATH?)") from None
            raise UserError(f"{what}: importing {where} failed ({type(e).__name__}: {e})") from None
        except Exception as e:  # the user's module itself raised while importing
            raise UserError(f"{what}: importing {where} failed ({type(e).__name__}: {e})") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UserError(f"{what}: {where} has no {attr!r}") from None
    return obj


def _import_file(path: Path, what: str):
    """A Python file as a module of its own (named after its absolute path, so two files of
    one name do not collide), registered in sys.modules (dataclasses and pickle look there)."""
    if not path.is_file():
        raise UserError(f"{what}: {path}: no such file")
    path = path.resolve()
    name = f"rl2f_user_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a syntax error, a missing import, its own exception: one line
        del sys.modules[name]
        line = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
        raise UserError(f"{what}: importing {path} failed{line} ({type(e).__name__}: {e})") from None
    return module
