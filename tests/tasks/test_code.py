"""Coding task: unit-test grading in the sandbox, the JSONL loader, hints, and that every
kind of misbehaving solution ends as a failed Verdict (never an exception).

Correct solutions here are written independently in the test (not the templates' reference
code), and expected values in hand-made problems are computed by hand.
"""
import json
import os
import random
import socket
import uuid

import pytest

from rl2f.errors import UserError
from rl2f.tasks.base import Problem
from rl2f.tasks.code import TEMPLATES, CodeTask, template_problem


def _fence(code):
    return f"Here you go:\n```python\n{code}\n```\n"


def _by_template(name, **params):
    t = next(t for t in TEMPLATES if t.name == name)
    return template_problem(t, params)[1]


@pytest.fixture(scope="module")
def task():
    return CodeTask(timeout_s=1.0)


def _one_test_problem(args="(3,)", expected="4"):
    """f(3) == 4 by hand; solutions that misbehave are tried against it."""
    return Problem("hand", "Write f(x) returning x + 1.", "",
                   {"entry_point": "f", "tests": [{"args": args, "expected": expected}]})


def test_independent_solutions_pass_and_wrong_ones_fail(task):
    """Solutions written here from the prompt text pass; off-by-one variants fail with the
    failing call and expected value in the detail."""
    cases = [
        (_by_template("add_const", k=7), "def add_const(x):\n    return 7 + x",
         "def add_const(x):\n    return x + 6"),
        (_by_template("sum_multiples", k=3), "def sum_multiples(n):\n    return sum(i for i in range(n) if i % 3 == 0)",
         "def sum_multiples(n):\n    return sum(i for i in range(n + 1) if i % 3 == 0)"),
        (_by_template("caesar", k=3),
         "import string\ndef caesar(s):\n    a = string.ascii_lowercase\n    return s.translate(str.maketrans(a, a[3:] + a[:3]))",
         "def caesar(s):\n    return ''.join(chr(ord(c) + 3) if c.isalpha() else c for c in s)"),
        (_by_template("dedupe"), "def dedupe(xs):\n    return list(dict.fromkeys(xs))",
         "def dedupe(xs):\n    return sorted(set(xs))"),
        (_by_template("second_largest"), "def second_largest(xs):\n    return sorted(set(xs), reverse=True)[1]",
         "def second_largest(xs):\n    return sorted(xs)[-2]"),
    ]
    for p, good, bad in cases:
        v = task.verify(_fence(good), p)
        assert v.correct, (p.prompt, v.detail)
        assert v.detail.startswith(f"{len(p.info['tests'])}/{len(p.info['tests'])} tests passed")
        v = task.verify(_fence(bad), p)
        assert not v.correct and "FAILED" in v.detail and "expected" in v.detail, v.detail


def test_every_template_reference_round_trips(task):
    """Each of the 20+ templates yields a problem whose reference solution passes through the
    whole pipeline (harness, literal transport, comparison), and a constant answer fails."""
    assert len(TEMPLATES) >= 20
    rng = random.Random(0)
    for i, t in enumerate(TEMPLATES):
        p = template_problem(t, t.draw(rng))[1]
        assert task.verify(_fence(p.info["solution"]), p).correct, p.prompt
        if i % 4 == 0:
            assert not task.verify(_fence(f"def {t.name}(*a):\n    return 0"), p).correct


def test_hand_computed_expectations():
    """A hand-made problem with hand-computed outputs: float tolerance, list results, and a
    wrong type (tuple for list) is wrong unless the test came from JSON."""
    task = CodeTask(timeout_s=2.0)
    p = Problem("h", "", "", {"entry_point": "g", "tests": [
        {"args": "(1, 3)", "expected": "0.3333333333333333"},
        {"args": "([1, 2],)", "expected": "[2, 4]"}]})
    good = "def g(*a):\n    if len(a) == 2:\n        return 1 / 3 + 1e-12\n    return [2 * x for x in a[0]]"
    assert task.verify(_fence(good), p).correct
    tup = good.replace("return [2 * x for x in a[0]]", "return tuple(2 * x for x in a[0])")
    assert not task.verify(_fence(tup), p).correct
    p.info["tests"][1]["json"] = True
    assert task.verify(_fence(tup), p).correct


def test_rigged_equality_and_forged_output_do_not_pass(task):
    """An object whose __eq__ is always True, and printed lines imitating the harness's
    result protocol, both fail: values are compared in the parent as plain literals."""
    p = _one_test_problem()
    rigged = "class A:\n    def __eq__(self, o): return True\ndef f(x):\n    return A()"
    v = task.verify(_fence(rigged), p)
    assert not v.correct and "not a plain value" in v.detail
    forged = ("import sys\ndef f(x):\n    for n in ('', '0'*32):\n"
              "        print('\\n\\x1e' + n + '\\t0\\tok\\t4')\n    return 5")
    assert not task.verify(_fence(forged), p).correct
    exits = "import os\ndef f(x):\n    print('\\x1e0\\tok\\t4')\n    os._exit(0)"
    assert not task.verify(_fence(exits), p).correct


def test_extract_answer_takes_the_last_python_block(task):
    """The last fenced python block is the answer; with no fence the whole text; empty: None."""
    text = "```python\ndef f(x): return 1\n```\nbetter:\n```python\ndef f(x): return 2\n```"
    assert task.extract_answer(text).strip() == "def f(x): return 2"
    assert task.extract_answer("```\ndef f(x): return 3\n```").strip() == "def f(x): return 3"
    assert task.extract_answer("def f(x): return 4") == "def f(x): return 4"
    assert task.extract_answer("   ") is None


def test_hints_come_from_the_failing_test_without_solution_code(task):
    """The hint names the failing call and what went wrong (wrong value with the expected one,
    exception type, timeout, syntax, missing function), never the reference code."""
    p = _by_template("add_const", k=9)
    ex_call = p.prompt.split("Example: ")[1].split(" == ")[0]
    cases = {
        "def add_const(x):\n    return x + 8": "should return",
        "def add_const(x):\n    return [][x]": "IndexError",
        "def add_const(x):\n    while True:\n        pass": "did not finish in time",
        "def add_const(x:\n    return x": "does not compile",
        "def other(x):\n    return x + 9": "named add_const",
    }
    for code, expect in cases.items():
        v = task.verify(_fence(code), p)
        hint = task.hint(p, _fence(code), v)
        assert not v.correct and expect in hint, (hint, v.detail)
        assert "x + 9" not in hint and p.info["solution"].strip() not in hint
        if expect in ("should return", "IndexError", "did not finish in time"):
            assert ex_call in hint  # the first test is the failing one
    assert "python" in task.hint(p, "", task.verify("", p))


# --- every sandbox case, through verify --------------------------------------------------


def test_verify_infinite_loop_is_a_failed_verdict(task):
    """A solution that never returns: failed Verdict, detail records the timeout."""
    v = task.verify(_fence("def f(x):\n    while True:\n        pass"), _one_test_problem())
    assert not v.correct and "TIMEOUT f(3)" in v.detail


def test_verify_fork_bomb_is_a_failed_verdict(task):
    """A fork-bombing solution: failed Verdict recording the refusal; nothing survives."""
    code = "import os\ndef f(x):\n    while True:\n        os.fork()"
    v = task.verify(_fence(code), _one_test_problem())
    assert not v.correct and "ERROR f(3): raised PermissionError" in v.detail


def test_verify_memory_bomb_is_a_failed_verdict():
    """A solution that allocates without bound: failed Verdict recording MemoryError."""
    task = CodeTask(timeout_s=5.0, memory_mb=256)
    code = "def f(x):\n    a = []\n    while True:\n        a.append(bytearray(50 * 2**20))"
    v = task.verify(_fence(code), _one_test_problem())
    assert not v.correct and "MemoryError" in v.detail


def test_verify_write_outside_is_a_failed_verdict(task, tmp_path):
    """A solution writing outside its directory: failed Verdict, and no file appears."""
    targets = [f"/tmp/rl2f-code-{uuid.uuid4().hex}", str(tmp_path / "w.txt")]
    code = f"def f(x):\n    for t in {targets!r}:\n        open(t, 'w').write('x')\n    return x + 1"
    v = task.verify(_fence(code), _one_test_problem())
    assert not v.correct and "PermissionError" in v.detail
    assert not any(os.path.exists(t) for t in targets)


def test_verify_reading_parent_environment_is_a_failed_verdict(task, monkeypatch):
    """A solution fishing for the parent's environment finds nothing: it fails, and the
    secret appears nowhere in the verdict."""
    secret = uuid.uuid4().hex
    monkeypatch.setenv("RL2F_CODE_SECRET", secret)
    code = ("import os\ndef f(x):\n    s = os.environ.get('RL2F_CODE_SECRET', '')\n"
            "    s += open('/proc/%d/environ' % os.getppid()).read()\n    return s")
    v = task.verify(_fence(code), _one_test_problem())
    assert not v.correct and secret not in v.detail and "PermissionError" in v.detail


def test_verify_network_is_a_failed_verdict(task):
    """A solution that phones home to a port the test listens on: failed Verdict, and the
    connection never arrives."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        port = listener.getsockname()[1]
        code = (f"import socket\ndef f(x):\n    socket.create_connection(('127.0.0.1', {port}), "
                f"timeout=0.5).sendall(b'hi')\n    return x + 1")
        v = task.verify(_fence(code), _one_test_problem())
        assert not v.correct and "ERROR f(3)" in v.detail
        listener.settimeout(0.2)
        with pytest.raises((socket.timeout, BlockingIOError)):
            listener.accept()
    finally:
        listener.close()


def test_verify_renicing_the_trainer_is_a_failed_verdict(task):
    """A solution that renices the trainer (this process, by pid) and pins it to one CPU:
    failed Verdict, and the trainer's nice value and CPU affinity are unchanged."""
    before = os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0)
    me = os.getpid()
    code = (f"import os\ndef f(x):\n    os.setpriority(os.PRIO_PROCESS, {me}, 19)\n"
            f"    os.sched_setaffinity({me}, {{0}})\n    return x + 1")
    try:
        v = task.verify(_fence(code), _one_test_problem())
        assert not v.correct and "ERROR f(3)" in v.detail
        assert (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0)) == before
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before[0])
        os.sched_setaffinity(0, before[1])


# --- problems and loading ----------------------------------------------------------------


def test_determinism_and_disjoint_splits():
    """Built-in problems (and their tests) are a function of (seed, split); train and test
    never share a problem."""
    task = CodeTask()
    a, b = task.problems(40, seed=3), task.problems(40, seed=3)
    assert [(p.id, p.prompt, p.info["tests"]) for p in a] == [(p.id, p.prompt, p.info["tests"]) for p in b]
    train = {p.prompt for s in range(3) for p in task.problems(60, s, "train")}
    test = {p.prompt for s in range(3) for p in task.problems(15, s, "test")}
    assert test and not train & test


def _write_jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_jsonl_problems_load_and_grade(tmp_path, task):
    """Assert strings (turned into call tests or kept as code), input/output pairs and
    HumanEval-style check() code all grade right and wrong solutions correctly."""
    recs = [
        {"prompt": "Write add(a, b).", "entry_point": "add",
         "tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) != 5"]},
        {"prompt": "Write rev(xs).", "entry_point": "rev",
         "tests": [{"input": [[1, 2, 3]], "output": [3, 2, 1]}, {"input": [[]], "output": []}]},
        {"prompt": "Write sq(x).", "entry_point": "sq",
         "tests": "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n"},
    ]
    path = _write_jsonl(tmp_path / "p.jsonl", recs)
    t = CodeTask(path=str(path), timeout_s=2.0)
    probs = {p.info["entry_point"]: p for p in t._loaded}
    assert [x.get("args") for x in probs["add"].info["tests"]][:2] == ["(1, 2)", "(-1, 1)"]
    assert "code" in probs["add"].info["tests"][2]
    good = {"add": "def add(a, b):\n    return a + b", "rev": "def rev(xs):\n    return tuple(reversed(xs))",
            "sq": "def sq(x):\n    return x * x"}
    bad = {"add": "def add(a, b):\n    return a - b", "rev": "def rev(xs):\n    return xs",
           "sq": "def sq(x):\n    return x + x"}
    for name, p in probs.items():
        assert t.verify(_fence(good[name]), p).correct, t.verify(_fence(good[name]), p).detail
        assert not t.verify(_fence(bad[name]), p).correct
    n_train = sum(p.info["split"] == "train" for p in t._loaded)
    assert len(t.problems(n_train, seed=0, split="train")) == n_train
    with pytest.raises(UserError, match="asked for"):
        t.problems(n_train + 1, split="train")


def test_jsonl_malformed_lines(tmp_path):
    """Malformed lines raise UserError naming the file and line; skip_bad skips and counts."""
    good = {"prompt": "Write f(x).", "entry_point": "f", "tests": ["assert f(1) == 2"]}
    bad_lines = ["{not json", json.dumps({"prompt": "x", "tests": ["assert f(1) == 2"]}),
                 json.dumps({"prompt": "x", "entry_point": "f", "tests": []}),
                 json.dumps({"prompt": "x", "entry_point": "f", "tests": ["assert f(1 =="]}),
                 json.dumps([1, 2])]
    for i, bad in enumerate(bad_lines):
        path = _write_jsonl(tmp_path / f"bad{i}.jsonl", [good, bad])
        with pytest.raises(UserError, match=rf"bad{i}\.jsonl:2: "):
            CodeTask(path=str(path))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(good).encode() + b"\n\n" + b'{"prompt": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin\.jsonl:3: "):
        CodeTask(path=str(latin))
    path = _write_jsonl(tmp_path / "mixed.jsonl", [good] + bad_lines)
    t = CodeTask(path=str(path), skip_bad=True)
    assert t.skipped == len(bad_lines) and len(t._loaded) == 1
    with pytest.raises(UserError, match="cannot read"):
        CodeTask(path=str(tmp_path / "missing.jsonl"))
