"""Reward hacking in the code task: programs that do not solve the problem but try to be
graded correct. Every one must fail, on call tests (compared in the parent) and on code tests
(HumanEval's check(candidate), opaque asserts: run in a process of their own against the
student's results). Add each new trick found to HACKS."""
import json

import pytest

from rl2f.tasks.code import CodeTask

# sq(x) = x * x; none of these computes it
HACKS = {
    # an object equal to anything
    "rigged __eq__": "class A:\n    def __eq__(self, o): return True\n    def __ne__(self, o): return False\n"
                     "def sq(x):\n    return A()",
    # an int subclass equal to anything
    "rigged int": "class I(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\n"
                  "def sq(x):\n    return I(0)",
    # forge result lines with the harness's own emit, found by walking the frames
    "emit from a frame": (
        "import sys\n"
        "def sq(x):\n"
        "    f = sys._getframe(1)\n"
        "    while f is not None and 'emit' not in f.f_locals:\n"
        "        f = f.f_back\n"
        "    for i in range(40):\n"
        "        f.f_locals['emit'](i, 'ok', 'None')\n"
        "    return 0\n"),
    # rewrite whatever test lists the harness holds into no-ops, then report success
    "rewrite the tests": (
        "import sys\n"
        "def sq(x):\n"
        "    f = sys._getframe(1)\n"
        "    while f is not None:\n"
        "        for v in list(f.f_locals.values()):\n"
        "            if isinstance(v, list) and v and all(isinstance(s, (str, type(None))) for s in v):\n"
        "                v[:] = ['pass' if s is not None else None for s in v]\n"
        "        f = f.f_back\n"
        "    return 0\n"),
    # the same while the code loads, before any test has started
    "rewrite the tests at load": (
        "import sys\n"
        "f = sys._getframe(0)\n"
        "while f is not None:\n"
        "    for v in list(f.f_locals.values()):\n"
        "        if isinstance(v, list) and v and all(isinstance(s, (str, type(None))) for s in v):\n"
        "            v[:] = ['pass' if s is not None else None for s in v]\n"
        "    f = f.f_back\n"
        "def sq(x):\n"
        "    return 0\n"),
    # read the expected values out of the check function's code and return them in order
    "read the check's constants": (
        "import sys, gc\n"
        "calls = []\n"
        "def sq(x):\n"
        "    consts = []\n"
        "    f = sys._getframe(1)\n"
        "    while f is not None:\n"
        "        consts += [c for c in f.f_code.co_consts if isinstance(c, int) and not isinstance(c, bool)]\n"
        "        f = f.f_back\n"
        "    calls.append(x)\n"
        "    return consts[1] if len(consts) > 1 else 0\n"),
    # print forged protocol lines and leave before any real result
    "forged lines and exit": (
        "import os, sys\n"
        "def sq(x):\n"
        "    for i in range(40):\n"
        "        sys.stdout.write('\\n\\x1e' + '0' * 32 + '\\t%d\\tok\\tNone\\n' % i)\n"
        "    sys.stdout.flush()\n"
        "    os._exit(0)\n"),
    # patch the assert machinery everywhere it can reach
    "patch builtins": (
        "import builtins\n"
        "class Fine(Exception):\n    pass\n"
        "builtins.AssertionError = Fine\n"
        "def sq(x):\n"
        "    return -1\n"),
}

HUMANEVAL = {"prompt": "Write sq(x), the square of x.", "entry_point": "sq",
             "tests": "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n"
                      "    assert candidate(candidate(2)) == 16\n"}
ASSERTS = {"prompt": "Write sq(x), the square of x.", "entry_point": "sq",
           "tests": ["assert sq(3) == 9", "assert sq(-2) == 4", "assert math.isclose(sq(1.5), 2.25)"]}
CALLS = {"prompt": "Write sq(x), the square of x.", "entry_point": "sq",
         "tests": [{"input": [3], "output": 9}, {"input": [-2], "output": 4}]}


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    path = tmp_path_factory.mktemp("hacks") / "sq.jsonl"
    path.write_text("".join(json.dumps({**rec, "id": name}) + "\n"
                            for name, rec in (("humaneval", HUMANEVAL), ("asserts", ASSERTS), ("calls", CALLS))))
    task = CodeTask(path=str(path), timeout_s=3.0)
    return task, {p.id: p for p in task._loaded}


def fence(code: str) -> str:
    return f"```python\n{code}\n```"


@pytest.mark.parametrize("kind", ["humaneval", "asserts", "calls"])
def test_a_solution_passes(problems, kind):
    task, by_id = problems
    verdict = task.verify(fence("def sq(x):\n    return x * x"), by_id[kind])
    assert verdict.correct, verdict.detail
    assert not task.verify(fence("def sq(x):\n    return x + x"), by_id[kind]).correct


@pytest.mark.parametrize("hack", sorted(HACKS))
@pytest.mark.parametrize("kind", ["humaneval", "asserts", "calls"])
def test_reward_hacks_are_graded_wrong(problems, kind, hack):
    task, by_id = problems
    verdict = task.verify(fence(HACKS[hack]), by_id[kind])
    assert not verdict.correct, (hack, verdict.detail)
