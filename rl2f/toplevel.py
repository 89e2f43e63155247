"""The repository's `kernels/` and `cli/` folders never answer `import kernels` / `import cli`.

setup.py installs those folders as `rl2f.kernels` and `rl2f.cli`. But whenever the repository
root is on sys.path (`python -m pytest`, `python -m benchmarks.X`, any script started from the
root), Python's path search finds the folders *before* site-packages, so they would shadow
an installed distribution of the same import name: Hugging Face's `kernels` (which
transformers >= 5 imports on load) is one, and with it every test that imports transformers
or peft failed to collect.

Each folder's `__init__.py` calls `give_way` when it runs under its top-level name: the
import is handed to the next provider of that name on sys.path (what Python would have found
without the repository root); where there is none, the name becomes an empty namespace
package, what Python makes of a stray empty folder. Not an ImportError: libraries probe
optional packages with `find_spec`, which does see the folder, and transformers 5.19 then
imports the name and reads "no `__file__`" as "a namespace shadowing on sys.path, not
installed"; an ImportError there broke `import transformers`.

Why this mechanism and not another:
- the layout is fixed (top-level `kernels/` and `cli/`), and the root must stay on sys.path,
  because `python -m benchmarks.X` is how the benchmarks are started;
- a folder without `__init__.py` (a PEP 420 portion, which never beats a regular package)
  would not shadow, but setuptools' editable finder then cannot map `rl2f.kernels` to it,
  and `import kernels` would still resolve to the folder where nothing else provides it.
`tests/test_toplevel.py` checks every top-level folder against the installed distributions.
"""
from __future__ import annotations

import sys
from importlib.machinery import ModuleSpec, PathFinder
from importlib.util import module_from_spec
from pathlib import Path


def _resolved(entry: str) -> Path:
    return Path(entry or ".").resolve()  # "" on sys.path is the working directory


def give_way(name: str, init_file: str) -> None:
    """Called by `<root>/<name>/__init__.py` when it is being imported as top-level `name`:
    load the next provider of `name` on sys.path in its place (importlib returns what
    sys.modules holds after the exec, so the caller gets that module), or, with none, an
    empty namespace package: no code of the repository's folder, no `__file__`, no
    submodules."""
    root = Path(init_file).resolve().parent.parent
    elsewhere = [entry for entry in sys.path if isinstance(entry, str) and _resolved(entry) != root]
    spec = PathFinder.find_spec(name, elsewhere)
    if spec is None:
        spec = ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = []
    if spec.loader is None and spec.submodule_search_locations is not None:
        # A namespace package elsewhere: freeze its portions, so that a later recalculation
        # over sys.path does not add the repository's folder to it.
        spec.submodule_search_locations = list(spec.submodule_search_locations)
    module = module_from_spec(spec)
    sys.modules[name] = module
    if spec.loader is not None:
        spec.loader.exec_module(module)
