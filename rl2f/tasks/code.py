"""Coding problems graded by unit tests run in the sandbox (rl2f.tasks.sandbox).

Problems come from 27 built-in function-writing templates with parameters ("return x + 7",
"the sum of multiples of 3 below n", ...) or from a JSONL file with fields `prompt`,
`tests`, `entry_point` (optional `id`), given as `CodeTask(path=...)`. `tests` is one of:
- a list of assert statements (MBPP style); `assert f(<literals>) == <literal>` is turned
  into a call test, anything else runs as code;
- a list of {"input": [args...], "output": value} (JSON: lists and tuples compare equal);
- a string of test code (HumanEval style); if it defines `check`, `check(<entry_point>)` runs.

Grading: no test runs in the process that runs the student's code, and nothing the student's
process says is taken for more than the values its function returned. That process only
calls the function on argument tuples and prints each result as a literal of plain builtin
types (a subclass or any other object is an error, not a value). Call tests compare that
literal with the expected value in the parent; the expected value never enters the child.
Code tests (opaque asserts, HumanEval's `check(candidate)`) run in a second sandboxed process
without the student's code, where the entry point is a stand-in that answers each call from
the table of the student's results (see `_REPLAY`: a first run learns the arguments, later
rounds fill in calls whose arguments depend on results). So rigged `__eq__`, printed
"passed" lines, forged result lines and frame walking have no verdict to reach;
tests/tasks/test_reward_hacks.py keeps the tricks tried. Code tests see the stand-in under
the entry point's name and `math`, `re`, `string`, `itertools`, `functools`, `collections`,
`heapq` imported, not the student's other names; arguments must be plain values.

`Verdict.detail` is the test report (privileged: it holds expected values); `hint` turns the
first failure into one sentence (which input, what went wrong) without any solution code.
"""
from __future__ import annotations

import ast
import json
import math
import random
import re
import secrets
from dataclasses import dataclass
from typing import Any, Callable

from rl2f.errors import UserError
from rl2f.jsonl import BadRecord, read_jsonl
from rl2f.tasks.sandbox import run_untrusted
from rl2f.tasks.base import Problem, Task, Verdict, check_option
from rl2f.tasks.maze import content_id, sample_problems, split_of, split_rng

# --- built-in templates ------------------------------------------------------------------


@dataclass
class _Template:
    name: str
    signature: str  # "x" / "xs" / "a, b"
    draw: Callable[[random.Random], dict]  # parameters of one variant
    text: Callable[[dict], str]  # "returns ..." sentence for those parameters
    body: Callable[[dict], str]  # reference implementation (function body)
    inputs: Callable[[random.Random, dict], tuple]  # arguments of one random test
    edges: Callable[[dict], list] = lambda p: []  # argument tuples that are always tested


def _ints(rng, lo=-20, hi=20, n_lo=0, n_hi=7):
    return [rng.randint(lo, hi) for _ in range(rng.randint(n_lo, n_hi))]


def _word(rng, letters="abcdeiouxyz", lo=1, hi=7):
    return "".join(rng.choice(letters) for _ in range(rng.randint(lo, hi)))


def _with_top(rng, xs, above):
    """xs plus its maximum (+ `above`), once or twice: the edge cases of max-based tasks."""
    top = max(xs) + above
    xs = xs + [top] * rng.choice([1, 2])
    rng.shuffle(xs)
    return xs


def _sentence(rng, lo=1, hi=6):
    return " ".join(_word(rng, "abcdefghilmnoprstu") for _ in range(rng.randint(lo, hi)))


TEMPLATES = [
    _Template("add_const", "x", lambda r: {"k": r.randint(2, 40)},
              lambda p: f"returns x + {p['k']}", lambda p: f"return x + {p['k']}",
              lambda r, p: (r.randint(-50, 50),)),
    _Template("times_const", "x", lambda r: {"k": r.randint(2, 15)},
              lambda p: f"returns x multiplied by {p['k']}", lambda p: f"return x * {p['k']}",
              lambda r, p: (r.randint(-30, 30),)),
    _Template("quadratic", "x", lambda r: {"a": r.randint(1, 5), "b": r.randint(-9, 9)},
              lambda p: f"returns {p['a']}*x*x + {p['b']}",
              lambda p: f"return {p['a']} * x * x + {p['b']}", lambda r, p: (r.randint(-9, 9),)),
    _Template("clamp", "x", lambda r: {"lo": r.randint(-10, 0), "hi": r.randint(1, 10)},
              lambda p: f"returns x limited to the range {p['lo']} to {p['hi']} (inclusive)",
              lambda p: f"return max({p['lo']}, min({p['hi']}, x))",
              lambda r, p: (r.randint(p["lo"] - 6, p["hi"] + 6),)),
    _Template("count_letter", "s", lambda r: {"c": r.choice("abcdexyz")},
              lambda p: f"returns how many times the letter '{p['c']}' occurs in the string s",
              lambda p: f"return s.count({p['c']!r})",
              lambda r, p: (_word(r, "abcdexyz" + 3 * p["c"], lo=0, hi=9),), lambda p: [("",)]),
    _Template("sum_multiples", "n", lambda r: {"k": r.randint(2, 9)},
              lambda p: f"returns the sum of all multiples of {p['k']} from 0 up to but not "
                        f"including n (n >= 0)",
              lambda p: f"return sum(i for i in range(0, n, {p['k']}))",
              lambda r, p: (p["k"] * r.randint(0, 8) + r.choice([0, r.randint(0, p["k"] - 1)]),)),
    _Template("divisible", "n", lambda r: {"k": r.randint(2, 13)},
              lambda p: f"returns True if n is divisible by {p['k']}, else False",
              lambda p: f"return n % {p['k']} == 0",
              lambda r, p: (p["k"] * r.randint(-4, 9) + r.choice([0, 0, 1, r.randint(1, p["k"] - 1)]),),
              lambda p: [(0,)]),
    _Template("keep_greater", "xs", lambda r: {"k": r.randint(-5, 10)},
              lambda p: f"returns a list of the numbers in the list xs that are greater than "
                        f"{p['k']}, in their original order",
              lambda p: f"return [x for x in xs if x > {p['k']}]",
              lambda r, p: (_ints(r, p["k"] - 10, p["k"] + 10),),
              lambda p: [([p["k"] - 1, p["k"], p["k"] + 1],)]),
    _Template("spread", "xs", lambda r: {},
              lambda p: "returns the largest minus the smallest number in the non-empty list xs",
              lambda p: "return max(xs) - min(xs)", lambda r, p: (_ints(r, n_lo=1),)),
    _Template("count_vowels", "s", lambda r: {},
              lambda p: "returns the number of vowels (a, e, i, o, u) in the lowercase string s",
              lambda p: "return sum(ch in 'aeiou' for ch in s)",
              lambda r, p: (_word(r, "abcdefghijklmnopqrstuvwxyz", 0, 10),)),
    _Template("repeat_join", "s", lambda r: {"k": r.randint(2, 4), "sep": r.choice("-,+ ")},
              lambda p: f"returns {p['k']} copies of the string s joined by {p['sep']!r}",
              lambda p: f"return {p['sep']!r}.join([s] * {p['k']})",
              lambda r, p: (_word(r, lo=1, hi=4),)),
    _Template("digit_sum", "n", lambda r: {},
              lambda p: "returns the sum of the decimal digits of the integer n (n >= 0)",
              lambda p: "return sum(int(d) for d in str(n))", lambda r, p: (r.randint(0, 99999),)),
    _Template("fib_like", "n", lambda r: {"a": r.randint(0, 3), "b": r.randint(1, 4)},
              lambda p: f"returns f(n) where f(0) = {p['a']}, f(1) = {p['b']} and "
                        f"f(n) = f(n-1) + f(n-2)",
              lambda p: f"a, b = {p['a']}, {p['b']}\n    for _ in range(n):\n"
                        f"        a, b = b, a + b\n    return a",
              lambda r, p: (r.randint(0, 25),)),
    _Template("gcd", "a, b", lambda r: {},
              lambda p: "returns the greatest common divisor of the positive integers a and b",
              lambda p: "while b:\n        a, b = b, a % b\n    return a",
              lambda r, p: (r.randint(1, 200), r.randint(1, 200))),
    _Template("is_palindrome", "s", lambda r: {},
              lambda p: "returns True if the string s reads the same backwards, else False",
              lambda p: "return s == s[::-1]",
              lambda r, p: (r.choice([_word(r, "ab", 0, 6), (lambda w: w + w[::-1])(_word(r, "abc", 0, 3))]),)),
    _Template("running_sum", "xs", lambda r: {},
              lambda p: "returns the list of running totals of the list xs (e.g. [1, 2, 3] "
                        "gives [1, 3, 6])",
              lambda p: "out, t = [], 0\n    for x in xs:\n        t += x\n        out.append(t)"
                        "\n    return out",
              lambda r, p: (_ints(r),)),
    _Template("caesar", "s", lambda r: {"k": r.randint(1, 25)},
              lambda p: f"returns s with every lowercase letter moved {p['k']} places forward "
                        f"in the alphabet (z wraps to a); other characters stay the same",
              lambda p: "return ''.join(chr((ord(c) - 97 + %d) %% 26 + 97) if 'a' <= c <= 'z' "
                        "else c for c in s)" % p["k"],
              lambda r, p: (" ".join(_word(r, "abcmnvwxyz", 1, 5) for _ in range(r.randint(1, 3)))
                            + r.choice(["", "!", " 42"]),)),
    _Template("long_words", "s", lambda r: {"k": r.randint(2, 5)},
              lambda p: f"returns how many words of s (separated by single spaces) have more "
                        f"than {p['k']} letters",
              lambda p: f"return sum(len(w) > {p['k']} for w in s.split(' ') if w)",
              lambda r, p: (_sentence(r),)),
    _Template("power_mod", "a, b", lambda r: {"m": r.randint(5, 97)},
              lambda p: f"returns a to the power b, modulo {p['m']} (a, b >= 0)",
              lambda p: f"return pow(a, b, {p['m']})",
              lambda r, p: (r.randint(0, 30), r.randint(0, 30)), lambda p: [(p["m"] + 2, 0)]),
    _Template("index_of_max", "xs", lambda r: {},
              lambda p: "returns the index of the largest number in the non-empty list xs "
                        "(the first one on ties)",
              lambda p: "return xs.index(max(xs))",
              lambda r, p: (_with_top(r, _ints(r, -5, 5, 1, 7), 0),)),
    _Template("collatz_steps", "n", lambda r: {},
              lambda p: "returns how many steps it takes to reach 1 from n >= 1, where a step "
                        "maps even n to n // 2 and odd n to 3 * n + 1",
              lambda p: "steps = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else "
                        "3 * n + 1\n        steps += 1\n    return steps",
              lambda r, p: (r.randint(1, 60),)),
    _Template("dedupe", "xs", lambda r: {},
              lambda p: "returns the list xs without repeated values, keeping first occurrences "
                        "in order",
              lambda p: "out = []\n    for x in xs:\n        if x not in out:\n"
                        "            out.append(x)\n    return out",
              lambda r, p: (_ints(r, 0, 5, 0, 9),)),
    _Template("pairs_summing", "xs", lambda r: {"k": r.randint(0, 10)},
              lambda p: f"returns the number of index pairs i < j with xs[i] + xs[j] == {p['k']}",
              lambda p: f"return sum(xs[i] + xs[j] == {p['k']} for i in range(len(xs)) "
                        f"for j in range(i + 1, len(xs)))",
              lambda r, p: (_ints(r, 0, p["k"], 0, 8),),
              lambda p: [([p["k"] // 2, p["k"] - p["k"] // 2, 1 + p["k"]],)]),
    _Template("every_nth", "xs", lambda r: {"k": r.randint(2, 4)},
              lambda p: f"returns every {p['k']}th element of the list xs, starting with the first",
              lambda p: f"return xs[::{p['k']}]", lambda r, p: (_ints(r, 0, 9, 0, 10),)),
    _Template("count_between", "xs", lambda r: (lambda lo: {"lo": lo, "hi": lo + r.randint(0, 8)})(r.randint(-5, 5)),
              lambda p: f"returns how many numbers in the list xs are between {p['lo']} and "
                        f"{p['hi']} (inclusive)",
              lambda p: f"return sum({p['lo']} <= x <= {p['hi']} for x in xs)",
              lambda r, p: (_ints(r, p["lo"] - 5, p["hi"] + 5),),
              lambda p: [([p["lo"] - 1, p["lo"], p["hi"], p["hi"] + 1],)]),
    _Template("reverse_words", "s", lambda r: {},
              lambda p: "returns the words of s (separated by single spaces) in reverse order, "
                        "joined by single spaces",
              lambda p: "return ' '.join(s.split(' ')[::-1])", lambda r, p: (_sentence(r),)),
    _Template("second_largest", "xs", lambda r: {},
              lambda p: "returns the second largest distinct value in the list xs (it has at "
                        "least two distinct values)",
              lambda p: "return sorted(set(xs))[-2]",
              lambda r, p: (_with_top(r, _ints(r, -9, 9, 1, 6), 1),)),
]

N_TESTS = 6  # per built-in problem; the first is shown in the prompt as an example
_LOADING = "loading your code"  # the "call" of a failure before any test ran


def _reference(t: _Template, params: dict) -> tuple[str, Callable]:
    src = f"def {t.name}({t.signature}):\n    {t.body(params)}\n"
    ns: dict[str, Any] = {}
    exec(compile(src, f"<reference {t.name}>", "exec"), ns)  # our own trusted template code
    return src, ns[t.name]


def _lit_src(value) -> str:
    """Python literal source of `value`; ValueError when it does not read back (inf, nan,
    objects), since both the child and the parent parse it with ast.literal_eval."""
    src = repr(value)
    try:
        back = ast.literal_eval(src)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"not a plain literal: {src[:60]}") from None
    if back != value:
        raise ValueError(f"not a plain literal: {src[:60]}")
    return src


def _args_src(args: tuple) -> str:
    return _lit_src(tuple(args))


def _call_src(entry: str, args_src: str) -> str:
    return f"{entry}({args_src[1:-1].rstrip(',')})"  # "(3,)" -> "f(3)"


# --- loading -------------------------------------------------------------------------------


def _assert_to_test(line: str, entry: str) -> dict:
    """`assert entry(<literals>) == <literal>` -> call test; anything else -> code test."""
    try:
        tree = ast.parse(line)
    except SyntaxError as e:
        raise ValueError(f"test does not parse: {e.msg}") from None
    if (len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert)
            and isinstance(tree.body[0].test, ast.Compare)):
        cmp = tree.body[0].test
        if len(cmp.ops) == 1 and isinstance(cmp.ops[0], ast.Eq):
            for call, other in ((cmp.left, cmp.comparators[0]), (cmp.comparators[0], cmp.left)):
                if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                        and call.func.id == entry and not call.keywords):
                    try:
                        args = _args_src(tuple(ast.literal_eval(a) for a in call.args))
                        expected = _lit_src(ast.literal_eval(other))
                    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                        break  # not all literals: keep it as code
                    return {"args": args, "expected": expected}
    return {"code": line}


def _parse_record(rec: dict) -> tuple[str, str, list[dict], str | None]:
    prompt = rec.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRecord("'prompt' must be a non-empty string")
    entry, tests = read_tests(rec)
    pid = rec.get("id")
    if pid is not None and not isinstance(pid, (str, int)):
        raise BadRecord("'id' must be a string")
    return prompt, entry, tests, (str(pid) if pid is not None else None)


def read_tests(rec: dict) -> tuple[str, list[dict]]:
    """A record's `entry_point` and its `tests` (in any of the shapes the module docstring
    lists) as the tests `CodeTask.verify` runs; BadRecord says what is wrong."""
    entry, tests = rec.get("entry_point"), rec.get("tests")
    if not isinstance(entry, str) or not entry.isidentifier():
        raise BadRecord("'entry_point' must be a function name")
    out: list[dict] = []
    if isinstance(tests, str):
        try:
            ast.parse(tests)
        except SyntaxError as e:
            raise BadRecord(f"'tests' code does not parse: {e.msg} (line {e.lineno})") from None
        code = tests + (f"\ncheck({entry})\n" if re.search(r"^def check\(", tests, re.M) else "")
        out.append({"code": code})
    elif isinstance(tests, list) and tests:
        for i, t in enumerate(tests):
            if isinstance(t, str):
                try:
                    out.append(_assert_to_test(t, entry))
                except ValueError as e:
                    raise BadRecord(f"tests[{i}]: {e}") from None
            elif isinstance(t, dict) and "input" in t and "output" in t:
                if not isinstance(t["input"], list):
                    raise BadRecord(f"tests[{i}]: 'input' must be a list of arguments")
                try:
                    out.append({"args": _args_src(tuple(t["input"])),
                                "expected": _lit_src(t["output"]), "json": True})
                except ValueError as e:
                    raise BadRecord(f"tests[{i}]: {e}") from None
            else:
                raise BadRecord(f"tests[{i}]: expected an assert string or "
                                f"{{'input': [...], 'output': ...}}")
    else:
        raise BadRecord("'tests' must be a non-empty list or a string of test code")
    return entry, out


# --- the child programs ------------------------------------------------------------------
# The student's process loads the code, then calls the function on each argument tuple it is
# given; one marked line per event on stdout:
#   <nonce> <i> start | <nonce> <i> ok <literal> | <nonce> <i> err <message> | <nonce> load <message>
_ENC = r'''
    def enc(x, depth=0):
        # literal of plain builtins only: a subclass or custom object cannot pose as a value
        t = _type(x)
        if depth > 30:
            raise ValueError("nested too deeply")
        if x is None or t is bool or t is int or t is str or t is bytes or t is complex:
            return _repr(x)
        if t is float:
            if x != x:
                return "'<nan>'"
            if x == _inf or x == -_inf:
                return "1e999" if x > 0 else "-1e999"
            return _repr(x)
        if t is list:
            return "[" + ", ".join([enc(e, depth + 1) for e in x]) + "]"
        if t is tuple:
            return "(" + "".join([enc(e, depth + 1) + ", " for e in x]) + ")"
        if t is dict:
            return "{" + ", ".join([enc(k, depth + 1) + ": " + enc(v, depth + 1) for k, v in x.items()]) + "}"
        if t is set or t is frozenset:
            return ("{" + ", ".join([enc(e, depth + 1) for e in x]) + "}") if x else "set()"
        raise TypeError("returned a %s, not a plain value" % t.__name__)
'''

_HARNESS = r'''
def _rl2f_tests(ARGS, ENTRY):
    import sys, ast
    nonce = sys.stdin.readline().strip()
    args_list = [ast.literal_eval(a) for a in ARGS]
    # bound before the student's code can patch builtins; a patch can only lose results,
    # and the parent counts a missing result as a failure
    _type, _repr, _str, _len, _BaseException = type, repr, str, len, BaseException
    _write, _flush = sys.stdout.write, sys.stdout.flush
    _exec, _compile, _callable = exec, compile, callable
    _inf = float("inf")

    def emit(*fields):
        line = "\t".join([_str(f) for f in fields]).replace("\n", "\\n")
        _write("\n\x1e" + nonce + "\t" + line + "\n")
        _flush()

__ENC__    def describe(e):
        msg = _str(e)
        return _type(e).__name__ + (": " + msg[:300] if msg else "")

    try:
        with open("solution.py", encoding="utf-8") as f:
            src = f.read()
        code = _compile(src, "solution.py", "exec")
    except SyntaxError as e:
        emit("load", "SyntaxError: %s (line %s)" % (e.msg, e.lineno))
        return
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        _exec(code, ns)
    except _BaseException as e:
        emit("load", describe(e))
        return
    fn = ns.get(ENTRY)
    if not _callable(fn):
        emit("load", "NameError: no function named %s" % ENTRY)
        return
    for i in range(_len(ARGS)):
        emit(i, "start")
        try:
            out = enc(fn(*args_list[i]))
            emit(i, "ok", out[:20000] if _len(out) <= 20000 else "'<too large>'")
        except _BaseException as e:
            emit(i, "err", describe(e))
    emit("done")
'''.replace("__ENC__", _ENC.strip("\n") + "\n\n")


# Code tests (opaque asserts, HumanEval's check(candidate)) never run beside the student's code:
# they run in a process of their own where the entry point is a stand-in that answers each
# call from a table of the student's results. The table is filled by value: the student's
# process only calls the function on the arguments asked for (call tests, as above), and its
# results come back as literals. Round 0 (`discover`) answers every call with a placeholder
# equal to anything, to learn the arguments; later rounds answer from the table and report
# the calls it lacks ("need", when arguments depend on earlier results). So rigged objects,
# frame walking and forged result lines have nothing to reach: the verdicts are printed by a
# process the student never ran in.
_REPLAY = r'''
def _rl2f_replay(CODES, ENTRY, KNOWN, DISCOVER):
    import sys, ast, builtins
    nonce = sys.stdin.readline().strip()
    _type, _repr, _str, _len, _BaseException = type, repr, str, len, BaseException
    _write, _flush = sys.stdout.write, sys.stdout.flush
    _inf = float("inf")
__ENC__
    def emit(*fields):
        line = "\t".join([_str(f) for f in fields]).replace("\n", "\\n")
        _write("\n\x1e" + nonce + "\t" + line + "\n")
        _flush()

    def describe(e):
        msg = _str(e)
        return _type(e).__name__ + (": " + msg[:300] if msg else "")

    class _Need(_BaseException):
        pass

    class _Any:
        """Round 0's answer to every call: equal to anything, so a check runs on to its
        later calls."""
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        def __bool__(self): return True
        def __iter__(self): return iter(())
        def __len__(self): return 0
        def __hash__(self): return 0
        def __getattr__(self, name): return lambda *a, **k: self
        def __getitem__(self, key): return self
        def __float__(self): return 0.0
        def __int__(self): return 0
        def __index__(self): return 0
        def __abs__(self): return self
        __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __mod__ = __abs__
        __lt__ = __le__ = __gt__ = __ge__ = __eq__

    needed = []

    def candidate(*args, **kwargs):
        if kwargs:
            raise TypeError("keyword arguments to the function under test are not supported")
        try:
            key = enc(args)
        except (TypeError, ValueError):
            if DISCOVER:
                return _Any()
            raise TypeError("the test passes an argument that is not a plain value")
        if key in KNOWN:
            status, value = KNOWN[key]
            if status == "ok":
                return ast.literal_eval(value)
            name, _, message = value.partition(": ")
            kind = getattr(builtins, name, None)
            if not (_type(kind) is type and issubclass(kind, Exception)):
                kind = RuntimeError
            raise kind(message)
        if key not in needed:
            needed.append(key)
        if DISCOVER:
            return _Any()
        raise _Need()

    candidate.__name__ = ENTRY
    for i in range(_len(CODES)):
        ns = {"__name__": "__main__", ENTRY: candidate}
        exec("import math, re, string, itertools, functools, collections, heapq", ns)
        try:
            exec(compile(CODES[i], "test_%d" % i, "exec"), ns)
            emit(i, "ok")
        except _Need:
            emit(i, "need")
        except _BaseException as e:
            emit(i, "err", describe(e))
    emit("needed", "\x1f".join(needed))
'''.replace("__ENC__", _ENC.strip("\n") + "\n")
REPLAY_ROUNDS = 4  # answer-and-ask rounds before a test whose calls keep changing fails


def _replay_source(codes: list[str], entry: str, known: dict, discover: bool) -> str:
    return _REPLAY + f"\n_rl2f_replay({codes!r}, {entry!r}, {known!r}, {discover!r})\n"


def _harness_source(args: list[str], entry: str) -> str:
    return _HARNESS + f"\n_rl2f_tests({args!r}, {entry!r})\n"


def _same(got, expected, loose_seq: bool) -> bool:
    """Python equality, with float tolerance; list == tuple when the test came from JSON."""
    if isinstance(expected, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        if math.isinf(expected) or math.isinf(got):
            return got == expected
        return math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9)
    seq = (list, tuple)
    if isinstance(expected, seq) and isinstance(got, seq):
        if type(got) is not type(expected) and not loose_seq:
            return False
        return len(got) == len(expected) and all(_same(g, e, loose_seq) for g, e in zip(got, expected))
    if isinstance(expected, dict) and isinstance(got, dict):
        return got.keys() == expected.keys() and all(_same(got[k], expected[k], loose_seq) for k in got)
    return got == expected


def _key(t: _Template, params: dict) -> str:
    return f"code|{t.name}|{json.dumps(params, sort_keys=True)}"


def template_problem(t: _Template, params: dict) -> tuple[str, Problem]:
    """(split key, Problem) of one template variant; its tests depend on nothing else."""
    key = _key(t, params)
    src, ref = _reference(t, params)
    trng = random.Random(key)  # the tests are a function of the problem, not the seed
    edges = [tuple(a) for a in t.edges(params)]
    cands, seen = [], set()
    for args in edges + [t.inputs(trng, params) for _ in range(8 * N_TESTS)]:
        a = _args_src(args)
        if a not in seen:
            seen.add(a)
            cands.append({"args": a, "expected": _lit_src(ref(*args))})
    # edge cases, then distinct expected values, so a constant answer cannot pass most tests
    tests, outs = cands[: len(edges)], {c["expected"] for c in cands[: len(edges)]}
    for c in cands[len(edges):]:
        if c["expected"] not in outs and len(tests) < N_TESTS:
            outs.add(c["expected"])
            tests.append(c)
    tests += [c for c in cands if c not in tests][: N_TESTS - len(tests)]
    trivial = {"[]", "0", "''", "False", "None", "()"}
    ex = next((c for c in tests if c["expected"] not in trivial), tests[0])
    tests.remove(ex)
    tests.insert(0, ex)
    call = _call_src(t.name, ex["args"])
    prompt = (f"Write a Python function {t.name}({t.signature}) that {t.text(params)}.\n"
              f"Example: {call} == {ex['expected']}")
    info = {"entry_point": t.name, "tests": tests, "solution": src}
    return key, Problem(content_id("code", key), prompt, "", info)


@dataclass
class _Failure:
    kind: str  # "none" | "syntax" | "load" | "wrong" | "error" | "timeout" | "crash"
    call: str = ""  # "f(3, [1, 2])" or "test 2"
    message: str = ""  # exception text, or the value returned
    expected: str = ""


class CodeTask(Task):
    name = "code"
    system_prompt = "Write the complete Python function in a ```python code block."

    def __init__(self, path: str | None = None, skip_bad: bool = False, timeout_s: float = 5.0,
                 memory_mb: int = 512):
        """path: a JSONL file of problems (None: the built-in templates). skip_bad: skip
        malformed lines (counted in `self.skipped`) instead of raising UserError."""
        # 0 s would fail every program; memory_mb < 1 would lift the sandbox's memory limit
        self.timeout_s = check_option("code", "timeout_s", timeout_s, float, 0, 600, lo_open=True)
        self.memory_mb = check_option("code", "memory_mb", memory_mb, int, 64, 65536)
        check_option("code", "skip_bad", skip_bad, bool)
        self.skipped = 0
        self.path = None if path is None else str(path)
        self._loaded: list[Problem] | None = None
        if self.path is not None:
            self._loaded = self._load(self.path, skip_bad)

    # --- problems ---
    def _load(self, path: str, skip_bad: bool) -> list[Problem]:
        ids: dict[str, int] = {}

        def parse(rec: dict, lineno: int) -> Problem:
            prompt, entry, tests, pid = _parse_record(rec)
            pid = pid or content_id("code", f"code|{prompt}|{entry}")
            if pid in ids:
                raise BadRecord(f"same id (or same prompt and entry_point) as line {ids[pid]}: {pid!r}")
            ids[pid] = lineno
            return Problem(pid, prompt, "", {"entry_point": entry, "tests": tests, "split": split_of(f"code|{pid}")})

        out, self.skipped = read_jsonl(path, "a coding problem", parse, skip_bad)
        return out

    def _make(self, rng: random.Random):
        t = rng.choice(TEMPLATES)
        params = t.draw(rng)
        # building the tests is the slow part: only once the key is known to be in the split
        return _key(t, params), lambda: template_problem(t, params)[1]

    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        if self._loaded is None:
            return sample_problems("code", n, seed, split, self._make)
        rng = split_rng("code-file", seed, split)
        pool = [p for p in self._loaded if p.info["split"] == split]
        if n > len(pool):
            raise UserError(f"{self.path}: asked for {n} {split} problems but the file has "
                            f"{len(pool)} in that split (80% train / 10% val / 10% test by hash)")
        return rng.sample(pool, n)

    # --- answers ---
    def extract_answer(self, text: str) -> str | None:
        blocks = re.findall(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", text, re.S | re.I)
        code = blocks[-1] if blocks else text
        return code if code.strip() else None

    def _sandboxed(self, source: str, files: dict | None = None):
        """Run a child program; its marked event lines (split in at most 3 fields) and the
        sandbox result. The nonce only frames lines: no verdict is taken on the student's word."""
        nonce = secrets.token_hex(16)
        res = run_untrusted(source, stdin=nonce + "\n", timeout_s=self.timeout_s,
                            cpu_s=max(1, math.ceil(self.timeout_s)), memory_mb=self.memory_mb, files=files or {})
        tag = "\x1e" + nonce + "\t"
        return [ln[len(tag):].split("\t", 2) for ln in res.stdout.split("\n") if ln.startswith(tag)], res

    def _call_student(self, code: str, entry: str, args: list[str]):
        """The student's function on each argument tuple, in the sandbox: ({i: (status,
        value literal)}, load error or None, whether it loaded, the last call started, how
        the process ended as (failure kind, reason))."""
        events, res = self._sandboxed(_harness_source(args, entry), {"solution.py": code})
        results: dict[int, tuple[str, str]] = {}
        started, load_error, loaded = -1, None, False
        for ev in events:
            loaded = loaded or ev[0] != "load"
            if ev[0] == "load":
                load_error = ev[1] if len(ev) > 1 else "error"
            elif ev[0].isdigit():
                i = int(ev[0])
                if ev[1] == "start":
                    started = max(started, i)
                elif i not in results and len(ev) == 3:
                    results[i] = (ev[1], ev[2])
        stopped = "timeout" if res.timed_out or res.killed_reason == "cpu limit" else "crash"
        return results, load_error, loaded, started, (stopped, res.killed_reason or f"exit code {res.returncode}"), res

    def _replay(self, codes: list[str], entry: str, known: dict, discover: bool):
        """Code tests against the table of the student's results ({args literal: (status,
        value)}); returns ({test: (status, message)}, the argument tuples asked for)."""
        events, _ = self._sandboxed(_replay_source(codes, entry, known, discover))
        statuses, needed = {}, []
        for ev in events:
            if ev[0] == "needed":
                needed = [a for a in (ev[1] if len(ev) > 1 else "").split("\x1f") if a]
            elif ev[0].isdigit() and len(ev) >= 2:
                statuses.setdefault(int(ev[0]), (ev[1], ev[2] if len(ev) == 3 else ""))
        return statuses, needed

    def _run(self, code: str, problem: Problem) -> tuple[int, int, list[_Failure], str]:
        """(passed, total, failures, report) of `code` on the problem's tests."""
        tests = problem.info["tests"]
        entry = problem.info["entry_point"]
        code_tests = [i for i, t in enumerate(tests) if "code" in t]
        codes = [tests[i]["code"] for i in code_tests]
        # the arguments the code tests call the function with (no student code in this run)
        asked = self._replay(codes, entry, {}, discover=True)[1] if codes else []
        call_args = [t["args"] for t in tests if "args" in t]
        results, load_error, loaded, started, (stopped, why), res = self._call_student(code, entry, call_args + asked)
        failures: list[_Failure] = []
        if load_error is not None:
            kind = "syntax" if load_error.startswith("SyntaxError") else "load"
            failures.append(_Failure(kind, message=load_error))
        elif not loaded:  # hung or died while its top level ran
            failures.append(_Failure(stopped, _LOADING, why))
        ran = load_error is None and loaded
        replayed: dict[int, tuple[str, str]] = {}
        if ran and codes:
            known = {}

            def learn(args: list[str], results: dict, stopped: str, why: str) -> None:
                for j, a in enumerate(args):
                    known[a] = results.get(j, ("err", f"{'TimeoutError' if stopped == 'timeout' else 'RuntimeError'}: "
                                                      f"the function did not return ({why})"))

            learn(asked, {j - len(call_args): r for j, r in results.items() if j >= len(call_args)}, stopped, why)
            for _ in range(REPLAY_ROUNDS):
                statuses, needed = self._replay(codes, entry, known, discover=False)
                new = [a for a in needed if a not in known]
                if not new or not any(st == "need" for st, _ in statuses.values()):
                    break
                more, *_, (more_stopped, more_why), _ = self._call_student(code, entry, new)
                learn(new, more, more_stopped, more_why)
            for k, i in enumerate(code_tests):
                status, message = statuses.get(k, ("err", "the test did not finish"))
                replayed[i] = ("ok", "None") if status == "ok" else \
                    ("err", "its calls kept changing" if status == "need" else message)
        passed = 0
        position = {i: j for j, i in enumerate(i for i, t in enumerate(tests) if "args" in t)}
        for i, t in enumerate(tests if ran else []):
            call = _call_src(entry, t["args"]) if "args" in t else f"test {i + 1}"
            if "code" in t:
                status, value = replayed[i]
                if status == "ok":
                    passed += 1
                else:
                    failures.append(_Failure("error", call, value))
                continue
            j = position[i]
            if j not in results:
                failures.append(_Failure(stopped if j == started else "not run", call, why))
                continue
            status, value = results[j]
            if status == "err":
                failures.append(_Failure("error", call, value))
            else:
                exp = ast.literal_eval(t["expected"])
                try:
                    got = ast.literal_eval(value)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    failures.append(_Failure("error", call, "unreadable return value"))
                    continue
                if _same(got, exp, bool(t.get("json"))):
                    passed += 1
                else:
                    failures.append(_Failure("wrong", call, value, t["expected"]))
        lines = [f"{passed}/{len(tests)} tests passed."]
        for fl in failures:
            if fl.kind in ("syntax", "load"):
                lines.append(f"LOAD ERROR {fl.message}")
            elif fl.kind == "wrong":
                lines.append(f"FAILED {fl.call}: returned {fl.message}, expected {fl.expected}")
            elif fl.kind == "error":
                lines.append(f"ERROR {fl.call}: raised {fl.message}")
            elif fl.kind == "timeout":
                lines.append(f"TIMEOUT {fl.call}: no result ({fl.message})")
            elif fl.kind == "crash":
                lines.append(f"CRASH {fl.call}: the program stopped ({fl.message})")
        not_run = sum(fl.kind == "not run" for fl in failures)
        if not_run:
            lines.append(f"{not_run} later tests did not run.")
        if res.killed_reason == "sandbox error":
            lines.append(res.stderr)
        elif not res.ok and res.stderr.strip():
            lines.append("stderr (tail):\n" + res.stderr[-1500:])
        return passed, len(tests), failures, "\n".join(lines)

    def verify(self, text: str, problem: Problem) -> Verdict:
        code = self.extract_answer(text)
        if code is None:
            return Verdict(False, None, "no code found")
        passed, total, failures, report = self._run(code, problem)
        return Verdict(passed == total and not failures, code, report)

    def hint(self, problem: Problem, attempt: str, verdict: Verdict) -> str:
        """One sentence from the first failure in `verdict.detail` (the test report)."""
        entry = problem.info["entry_point"]
        detail = verdict.detail or ""
        if verdict.answer is None:
            return f"I could not find your code. Put the function {entry} in a ```python block."
        for line in detail.split("\n"):
            m = re.match(r"LOAD ERROR (.*)", line)
            if m:
                msg = m.group(1)
                if msg.startswith("SyntaxError"):
                    return f"Your code does not compile: {msg}."
                if msg.startswith("NameError: no function named"):
                    return f"Your code must define a function named {entry}."
                return f"Your code fails before any test runs: {msg}."
            m = re.match(r"FAILED (.*?): returned (.*), expected (.*)$", line)
            if m:
                return f"{m.group(1)} returned {m.group(2)}, but it should return {m.group(3)}."
            m = re.match(r"ERROR (.*?): raised (.*)$", line)
            if m:
                return f"{m.group(1)} raised {m.group(2)}."
            m = re.match(r"TIMEOUT (.*?): ", line)
            if m:
                what = "Your code" if m.group(1) == _LOADING else m.group(1)
                return (f"{what} did not finish in time: look for an infinite loop or a much "
                        f"too slow approach.")
            m = re.match(r"CRASH (.*?): the program stopped \((.*)\)", line)
            if m:
                what = "Your code" if m.group(1) == _LOADING else m.group(1)
                if m.group(2) == "output limit":
                    return f"{what} printed far too much output; do not print in a loop."
                return (f"{what} stopped the whole program ({m.group(2)}): do not exit, and do "
                        f"not use files, processes or the network.")
        return "Your function is not correct on all tests; check the edge cases."
