"""No top-level folder of the repository shadows an installed distribution's import name.

Whenever the repository root is on sys.path (`python -m pytest`, `python -m benchmarks.X`),
a top-level folder is found before site-packages. The top-level `kernels/` once shadowed
Hugging Face's `kernels` (a transformers dependency) and stopped the whole suite at
collection: these tests import, from the repository root in a fresh interpreter, every
import name that a top-level folder shares with an installed distribution, and require that
it resolves outside the repository (rl2f.toplevel says how kernels/ and cli/ give way)."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import packages_distributions, version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Imports, from `root`, each name in argv; prints where each one resolved (its files).
RESOLVE = """
import importlib, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        module = importlib.import_module(name)
        out[name] = [getattr(module, "__file__", None) or "", *getattr(module, "__path__", [])]
    except Exception as e:
        out[name] = "error: " + type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"""


def top_level_names(root: Path) -> set[str]:
    """The import names the root's entries would answer: folders and `.py` modules."""
    names = set()
    for entry in root.iterdir():
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir():
            names.add(entry.name)
        elif entry.suffix == ".py":
            names.add(entry.stem)
    return names


def installed_clashes(root: Path) -> dict[str, list[str]]:
    """Top-level names of `root` that an installed distribution other than rl2f provides."""
    provided = packages_distributions()
    return {
        name: provided[name]
        for name in sorted(top_level_names(root))
        if name in provided and set(provided[name]) != {"rl2f"}
    }


def shadowed(root: Path) -> dict[str, object]:
    """Each clashing name that, imported from `root`, resolves into `root` or fails to import."""
    clashes = installed_clashes(root)
    if not clashes:
        return {}
    run = subprocess.run(
        [sys.executable, "-c", RESOLVE, *clashes], cwd=root, capture_output=True, text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    resolved = json.loads(run.stdout.strip().splitlines()[-1])
    bad = {}
    for name, where in resolved.items():
        inside = isinstance(where, list) and any(
            w and Path(w).resolve().is_relative_to(root.resolve()) for w in where
        )
        if isinstance(where, str) or inside:
            bad[name] = {"distributions": clashes[name], "resolved": where}
    return bad


def test_no_top_level_folder_shadows_an_installed_distribution():
    assert shadowed(ROOT) == {}


def test_the_check_sees_a_shadowing_folder(tmp_path):
    """A root with a regular package named like an installed distribution (peft, a test
    dependency) is reported; the same name as a folder without __init__.py (a PEP 420
    portion, which never beats an installed regular package) is not."""
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "__init__.py").write_text("")
    (tmp_path / "numpy").mkdir()
    assert installed_clashes(tmp_path).keys() == {"numpy", "peft"}
    bad = shadowed(tmp_path)
    assert list(bad) == ["peft"]
    assert bad["peft"]["resolved"][0] == str(tmp_path / "peft" / "__init__.py")


def test_kernels_is_a_real_clash():
    """The case this file exists for is live: Hugging Face's `kernels` is installed (the
    test extra pins it), so the first test does check the kernels/ folder."""
    assert version("kernels")
    assert "kernels" in installed_clashes(ROOT)


def test_transformers_and_peft_import_from_the_repository_root():
    """transformers' hub-kernels integration does `from kernels import CUDAProperties, ...`
    when HF `kernels` is installed; from the root it must get HF's, while `rl2f.kernels`
    (the same folder under its installed name) still works in the same process."""
    code = """
import json, kernels, peft, transformers
import transformers.integrations.hub_kernels
from transformers import LlamaForCausalLM
import rl2f.kernels
print(json.dumps([kernels.__file__, rl2f.kernels.__file__, hasattr(rl2f.kernels, "token_logprobs")]))
"""
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    hub, ours, has_op = json.loads(run.stdout.strip().splitlines()[-1])
    assert not Path(hub).resolve().is_relative_to(ROOT)
    assert Path(ours).resolve() == ROOT / "kernels" / "__init__.py" and has_op


@pytest.mark.parametrize("name", ["kernels", "cli"])
def test_folder_gives_way_when_nothing_else_provides_the_name(tmp_path, name):
    """With no other provider on sys.path, `import kernels` / `import cli` from the root gives
    what Python makes of a stray empty folder: an empty namespace package (no `__file__`, no
    submodules, none of the repository's code). Not an ImportError: transformers 5.19 probes
    `kernels` with find_spec (which sees the folder), imports it, and reads a module without
    `__file__` as not installed; an ImportError there broke `import transformers`."""
    code = f"""
import sys
sys.path[:] = [p for p in sys.path if 'site-packages' not in p] + [{str(ROOT)!r}]
import {name}
print(getattr({name}, '__file__', None), list({name}.__path__), sorted(vars({name})))
try:
    import {name}.main, {name}.grpo_loss
    print('submodule imported')
except ModuleNotFoundError:
    print('no submodules')
"""
    run = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    first, second = run.stdout.strip().splitlines()
    file, path, names = first.split(" ", 2)
    assert (file, path) == ("None", "[]")
    assert not {"token_logprobs", "cli", "give_way", "__all__"} & set(eval(names))
    assert second == "no submodules"
