"""The package's import graph: no cycles among rl2f's modules (function-local imports count:
they hide an edge, they do not remove it), and `rl2f.eval` never imports `rl2f.train`
(evaluation and training stand side by side above `rl2f.run`)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# installed name -> source folder (setup.py maps kernels/ and cli/ into rl2f)
PACKAGES = {"rl2f": ROOT / "rl2f", "rl2f.kernels": ROOT / "kernels", "rl2f.cli": ROOT / "cli"}


def modules() -> dict[str, Path]:
    out = {}
    for name, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mod = ".".join([name, *parts])
            if name == "rl2f" and parts and parts[0] in ("kernels", "cli"):
                continue
            out[mod] = path
    return out


def imports_of(mod: str, path: Path, known: set[str]) -> set[str]:
    """The rl2f modules `mod` imports anywhere in its body (the longest known prefix)."""
    is_pkg = path.name == "__init__.py"
    package = mod if is_pkg else mod.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import submodule` depends on the submodule; `from mod import name` on mod
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            names = subs if len(subs) == len(node.names) else [base] + subs
        for n in names:
            while n and n not in known:
                n = n.rpartition(".")[0]
            # a module's own parent packages are initialised before it whatever it imports
            if n and n != mod and not mod.startswith(n + "."):
                found.add(n)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_graph_sees_the_package():
    """The walk finds the modules and the edges it is meant to check (a guard against a test
    that passes because it looked at nothing)."""
    g = graph()
    assert {"rl2f.run", "rl2f.train.grpo", "rl2f.eval.evaluate", "rl2f.kernels", "rl2f.cli.main"} <= set(g)
    assert "rl2f.run" in g["rl2f.train.common"] and "rl2f.run" in g["rl2f.eval.evaluate"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_eval_does_not_import_train():
    g = graph()
    bad = {m: sorted(x for x in deps if x.startswith("rl2f.train")) for m, deps in g.items()
           if m.startswith("rl2f.eval")}
    assert {m: deps for m, deps in bad.items() if deps} == {}
