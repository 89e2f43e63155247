"""Math answers: extraction from free text, plain-number values, and equivalence by
math-verify in a killable worker process. A leaf module: the math task and the leak guard
both import it, and it imports nothing of theirs.

- `extract_answer(text)`: the final answer of a student's attempt, by the conventions of
  Math-Verify (Hugging Face's verifier, used by TRL's and open-r1's math rewards): the last
  `\\boxed{}` first (several boxed answers that end the text together are one list), then the
  last "final answer" / "answer is" / "Answer:" / `####` line, then the last math span
  (`$...$`, `\\(...\\)`, `\\[...\\]`), arithmetic expression or plain number of the text.
  The last one wins. An expression is read whole: "18 * 6" is 108, never its 18 or its 6.
- `numeric_value(answer)`: the exact rational value of a plain number (`3/4`, `0.75`, `.75`,
  `\\frac{3}{4}`, `75\\%`, `1,000`), else None; pure Python, for hints and the leak guard.
- `stated_value(answer)`: the same for a number written with currency, units or a percent word
  (`19 cm`, `$19`, `28 percent`), as the grader reads it; for hints.
- `is_equivalent(prediction, reference)`: math-verify's parse and verify, run in one reusable
  subprocess that is killed when a comparison exceeds `timeout` (math-verify's own timeout is
  signal-based and works only in a main thread; a giant power like `9^{9^{9^9}}` is one C call
  that no signal interrupts). A reference is parsed once per worker process (cached there).
- `numeric_approx(answer)`: the float value of an exact answer such as `2\\sqrt{3}` (worker).

How an answer string is read (`_engine_parse`): with math delimiters or `\\boxed` it goes to
math-verify as is (LaTeX first, then plain expressions); a plain number in text conventions
(`7,425,000`, `1 000`, decimal comma `2,74`, `.5`, `28 percent`, `$5`, `12 apples`) is read
by math-verify's plain-number grammar; anything else is read as LaTeX between `$...$`.
Answers that are words (`\\text{No solution}`, `yes`) are compared in-process, ignoring case,
spacing and punctuation, and two plain numbers of equal value are equal without the worker.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

MAX_ANSWER_CHARS = 1000  # longer "answers" are not answers; also bounds parsing work

# ---------------------------------------------------------------------------------------
# Extraction


class Answer(NamedTuple):
    text: str  # the answer as written, math delimiters and \boxed{} removed
    math: bool  # it was written in math mode (boxed or between $...$): commas separate a list


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_MAX_BOXES = 32
# Between two boxed answers that form one list: spacing, commas, "and"/"or", math delimiters.
_LIST_GLUE = re.compile(r"(?:\s|[,;$.]|\\[,;:! ]|\\q?quad|\\text\{\s*(?:and|or|,)?\s*\}|\band\b|\bor\b|\\\(|\\\)|\\\[|\\\])*")
# "final answer ... is X" (X right after "is"), "final answer: X", then the weaker markers.
_FINAL_IS = re.compile(r"final\s+answer.{0,100}?\s+is\b\s*:?\s*", re.IGNORECASE | re.S)
_FINAL = re.compile(r"final\s+answer\s*[:=]\s*", re.IGNORECASE)
_MARKER = re.compile(r"\banswer[ \t*_]*(?:(?:is|should\s+be|would\s+be)\s*[:=]?|[:=])\s*|(?:^|\n)[ \t]*####\s*", re.IGNORECASE)
_SPAN = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|\\\[(.+?)\\\]|(?<![\\\d])\$((?:\\\$|[^\n$])+?)(?<!\\)\$|\\\((.+?)\\\)"
                   r"|(-?\\[dtc]?frac\{-?\d+(?:\.\d+)?\}\{-?\d+(?:\.\d+)?\})", re.S)
# A plain number as math-verify's plain-expression grammar reads it: thousands separators
# (comma or space), a decimal point or comma, a bare leading-dot decimal, a sign.
_PLAIN_NUMBER = r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?|-?[1-9]\d{0,2}(?: \d{3})+(?![\d,])|-?\d+[.,]\d+|-?\.\d+|-?\d+"
_NUMBER_IN_TEXT = re.compile(r"(?<![\w.])(?:" + _PLAIN_NUMBER + r")(?:\s*/\s*\d+)?(?:\s*(?:\\?%|percent\b|pct\b))?")
# Arithmetic that a student writes as the answer ("18 * 6", "(3 + 4) / 2"): math-verify's
# expression (digits joined by operators) is read whole, so that "indeed 18 * 6" is 108, not
# the 18 it starts with. Unlike math-verify's, it stays on one line, and a parenthesis alone
# does not join two numbers ("is 18 (from 3 * 6)" states 18, then shows the work).
_OPERAND = r"\(*-?\d+(?:\.\d+)?\)*"
_EXPR_IN_TEXT = r"(?<![\w.,])-?" + _OPERAND + r"(?:[ \t]*[-+*/^\u00d7\u00f7][ \t]*" + _OPERAND + r")+"
_VALUE_IN_TEXT = re.compile(_EXPR_IN_TEXT + "|" + _NUMBER_IN_TEXT.pattern)
_SENTENCE_END = re.compile(r"(?<!\d)\.(?!\d)|\bI hope\b|<\|")
_MATH_WORDS = {"sqrt", "pi", "inf", "infty", "infinity", "ln", "log", "exp", "sin", "cos", "tan", "cot",
               "sec", "csc", "frac", "dfrac", "cdot", "times", "pm", "cup", "cap", "in", "le", "ge", "leq",
               "geq", "text", "boxed", "left", "right", "circ", "or", "and"}


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the balanced `{...}` opening at `start`, and the index after it."""
    if start >= len(text) or text[start] != "{":
        return None
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2  # \{ and \} do not open or close a group
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def _boxed_answer(text: str) -> tuple[int, Answer] | None:
    """(end, answer) of the last balanced `\\boxed{}`, joined with the boxed answers just
    before it when only list glue separates them (`\\boxed{-2} and \\boxed{1}` is `-2, 1`)."""
    boxes = []  # (start, end, content), the last _MAX_BOXES only: each scan is linear
    for m in list(_BOXED.finditer(text))[-_MAX_BOXES:]:
        got = _braced(text, m.end())
        if got is not None:
            boxes.append((m.start(), got[1], got[0].replace("$", " ").strip()))
    if not boxes:
        return None
    group = [boxes[-1]]
    for box in reversed(boxes[:-1]):
        if box[1] <= group[0][0] and _LIST_GLUE.fullmatch(text[box[1] : group[0][0]]):
            group.insert(0, box)
        else:
            break
    return group[-1][1], Answer(", ".join(c for _, _, c in group if c), True)


_QUOTES = {"'": "'", '"': '"', "`": "`", "\u2018": "\u2019", "\u201c": "\u201d"}


def _strip_decoration(s: str) -> str:
    for _ in range(3):  # "$5$.", "**$5$**", "\(5\)", "'5'"
        s = re.sub(r"[.;,]+$", "", s.strip()).strip()
        s = re.sub(r"^\*+|\*+$", "", s).strip()
        if len(s) >= 2 and _QUOTES.get(s[0]) == s[-1]:
            s = s[1:-1].strip()
        if s.startswith("$") and s.endswith("$") and "$" not in s.strip("$"):
            s = s.strip("$").strip()
        if s.startswith("\\(") and s.endswith("\\)") or s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2].strip()
    return s


def _span_text(m: re.Match) -> str:
    return next(g for g in m.groups() if g is not None).strip()


def _is_prose(s: str) -> bool:
    return any(len(w) >= 3 and w.lower() not in _MATH_WORDS for w in re.findall(r"[A-Za-z]+", s))


def _stated_value(sentence: str, window: int) -> str | None:
    """The value a sentence of prose states, as math-verify's "answer ..." patterns read it:
    the one right after the last "=" (a restated computation: "clearly 3 * 6 = 18"), else the
    first number or whole expression starting within `window` characters."""
    eq = sentence.rfind("=")
    if eq >= 0:
        m = _VALUE_IN_TEXT.match(sentence[eq + 1 :].lstrip())
    else:
        m = _VALUE_IN_TEXT.search(sentence)
        if m is not None and m.start() > window:
            return None
    return m.group(0).strip() if m is not None else None


def _read_after(text: str, pos: int, skip: int) -> Answer | None:
    """The answer stated at `pos`: a math span starting within `skip` characters (with the
    spans chained to it by commas or and/or), else the rest of the sentence: a formula or a
    phrase as written, or the value a sentence of prose states."""
    rest = text[pos:].lstrip(" \t*_:")
    spans = []
    for m in _SPAN.finditer(rest):
        if not spans and (m.start() > skip or "\n" in rest[: m.start()]):
            break
        if spans and not re.fullmatch(r"\s*(?:,|,?\s*and|,?\s*or)?\s*", rest[spans[-1].end() : m.start()]):
            break
        spans.append(m)
    if spans:
        return Answer(", ".join(_span_text(m) for m in spans), True)
    line = rest.split("\n")[0]
    cut = _SENTENCE_END.search(line)
    line = _strip_decoration(line[: cut.start()] if cut else line)
    if not line or len(line) > 200:
        return None
    if _is_prose(line):
        value = _stated_value(line, skip + 20)
        if value is not None:
            return Answer(value, False)
        return Answer(line, False) if skip and len(line) <= 60 else None
    return Answer(line, False)


def read_answer(text: str | None) -> Answer | None:
    """The final answer of an attempt and whether it was written in math mode, or None.
    Priority as in Math-Verify: boxed answers and "final answer" statements (the last one
    wins), then "answer is" / "Answer:" / "####" lines (the last), then the last math span or
    plain number of the text."""
    if not text:
        return None
    found: list[tuple[int, Answer]] = []
    boxed = _boxed_answer(text)
    if boxed is not None and boxed[1].text:
        found.append(boxed)
    for pattern, skip in ((_FINAL_IS, 0), (_FINAL, 50)):
        for m in reversed(list(pattern.finditer(text))):
            ans = _read_after(text, m.end(), skip)
            if ans is not None:
                found.append((m.start(), ans))
                break
    if found:
        return max(found, key=lambda f: f[0])[1]
    for m in reversed(list(_MARKER.finditer(text))):
        ans = _read_after(text, m.end(), 50)
        if ans is not None:
            return ans
    last = max(list(_SPAN.finditer(text)) + list(_VALUE_IN_TEXT.finditer(text)),
               key=lambda m: (m.end(), -m.start()), default=None)
    if last is None:
        return None
    return Answer(_span_text(last), True) if last.re is _SPAN else Answer(last.group(0).strip(), False)


def extract_answer(text: str | None) -> str | None:
    """The final answer of an attempt as written (`read_answer`'s text), or None."""
    ans = read_answer(text)
    return ans.text if ans is not None else None


# ---------------------------------------------------------------------------------------
# Plain numbers, in-process

_NUM_BODY = re.compile(
    r"(?P<sign>[-+])?(?:\\\$|\$)?(?:"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<dec>\.\d*)?|(?P<lead>\.\d+)"
    r"|\\frac\s*\{\s*(?P<fn>-?\d+)\s*\}\s*\{\s*(?P<fd>-?\d+)\s*\}|\\frac\s*(?P<fn1>\d)(?P<fd1>\d)"
    r"|(?P<sn>\d+)\s*/\s*(?P<sd>\d+))"
    r"\s*(?P<pct>\\?%|percent)?"
)


def _unwrap(s: str) -> str:
    """Drop `$`, `\\boxed{}`, `\\left`/`\\right`, `{,}` and `\\dfrac` spellings around a value."""
    s = s.strip()
    for _ in range(3):
        s = _strip_decoration(s)
        m = _BOXED.match(s)
        got = _braced(s, m.end()) if m else None
        if got is None or got[1] != len(s):
            break
        s = got[0].strip()
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\\(?:left|right)(?![A-Za-z])|\\[,!]|\{,\}", lambda m: "," if m.group(0) == "{,}" else "", s)
    s = s.replace("\u2212", "-")
    while len(s) > 1 and s[0] == "(" and s[-1] == ")" and "," not in s:
        s = s[1:-1].strip()
    return s


def numeric_value(answer: str | None) -> Fraction | None:
    """The exact rational value of a plain numeric answer, else None (never imports sympy)."""
    if answer is None or len(str(answer)) > MAX_ANSWER_CHARS:
        return None
    m = _NUM_BODY.fullmatch(_unwrap(str(answer)))
    if m is None:
        return None
    if m.group("int") is not None:
        v = Fraction(m.group("int").replace(",", "") + (m.group("dec") or "").rstrip("."))
    elif m.group("lead") is not None:
        v = Fraction(m.group("lead"))
    else:
        num, den = (m.group("fn"), m.group("fd")) if m.group("fn") is not None else \
            (m.group("fn1"), m.group("fd1")) if m.group("fn1") is not None else (m.group("sn"), m.group("sd"))
        if int(den) == 0:
            return None
        v = Fraction(int(num), int(den))
    if m.group("sign") == "-":
        v = -v
    return v / 100 if m.group("pct") else v


# A plain number as running text writes an answer, with its currency, percent and units: how
# math-verify's plain-number grammar reads `$5`, `1 000 €`, `28 percent` or `12 apples`.
_CURRENCY = "$\u20ac\u00a3\u00a5\u20b9"
_PLAIN_ANSWER = re.compile(
    r"\s*(?:\\\$|[" + re.escape(_CURRENCY) + r"])?\s*(?P<num>" + _PLAIN_NUMBER + r")\s*"
    r"(?P<pct>%|\\%|percent|percentage|pct)?\s*[" + re.escape(_CURRENCY) + r"]?"
    r"(?P<unit>(?:\s+[A-Za-z]+\.?(?:\^?[23])?)*)\s*", re.IGNORECASE)


def stated_value(answer: str | None) -> Fraction | None:
    """The exact value of an answer that states one number: a plain number (`numeric_value`),
    or one with the currency, units or percent word that the grader reads past (`19 cm`,
    `19\u20ac`, `19 \\text{ apples}`, `28 percent`, `1 000`, `2,74`), else None."""
    v = numeric_value(answer)
    if v is not None or answer is None or len(str(answer)) > MAX_ANSWER_CHARS:
        return v
    m = _PLAIN_ANSWER.fullmatch(_TEXT_CMD.sub(lambda t: " " + t.group(1) + " ", _unwrap(str(answer))))
    if m is None:
        return None
    num = m.group("num").replace(" ", "")
    # a comma that does not separate thousands is a decimal comma (`2,74`), as in the grader
    thousands = re.fullmatch(r"-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?", num)
    v = Fraction(num.replace(",", "") if thousands else num.replace(",", "."))
    return v / 100 if m.group("pct") else v


# ---------------------------------------------------------------------------------------
# Text answers, in-process

_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mbox|emph)\s*\{([^{}]*)\}")


def text_answer(answer: str) -> str | None:
    """A key for an answer that is words (`\\text{No solution}`, `yes`): lower case letters
    and digits only. None for anything mathematical."""
    s = _TEXT_CMD.sub(lambda m: " " + m.group(1) + " ", _unwrap(answer))
    if not re.fullmatch(r"[A-Za-z][A-Za-z\s'.,!-]*", s):
        return None
    words = re.findall(r"[A-Za-z]+", s)
    if not any(len(w) >= 3 and w.lower() not in _MATH_WORDS for w in words):
        return None  # `x`, `E`, `ab`: symbols, for the math engine
    return "".join(w.lower() for w in words)


# ---------------------------------------------------------------------------------------
# The math engine (math-verify), inside the worker process only

_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox")
# Plain-text and unicode spellings that LaTeX would misread (`pi` is p*i in LaTeX).
_PLAIN_NAMES = [(re.compile(r"\u221a"), r"\\sqrt "), (re.compile(r"\u03c0|(?<![\\A-Za-z])pi(?![A-Za-z])"), r"\\pi "),
                (re.compile(r"\u221e|(?<![\\A-Za-z])(?:infinity|inf)(?![A-Za-z])"), r"\\infty "),
                (re.compile(r"\u00b0"), r"^\\circ "), (re.compile(r"[\u2212\u2013]"), "-"), (re.compile(r"\u00d7"), r"\\times ")]
_GOLD_CACHE_SIZE = 4096


def _engine_parse(s: str, plain: bool) -> list:
    """math-verify's reading of one answer string (rules in the module docstring); `plain`:
    written in running text, where `2,74` and `1 000` are numbers, not lists."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    latex = [LatexExtractionConfig(boxed_match_priority=0)]
    expr = [ExprExtractionConfig()]
    if _DELIMITED.search(s):
        return parse(s, latex + expr, parsing_timeout=None)
    number = _PLAIN_ANSWER.fullmatch(s) if plain else None
    if number is not None:
        number = number.group("num") + (" percent" if number.group("pct") else "")
        return parse(number, expr, parsing_timeout=None)
    for pattern, latex_name in _PLAIN_NAMES:
        s = pattern.sub(latex_name, s)
    return parse(f"${s}$", latex, parsing_timeout=None) or parse(s, expr, parsing_timeout=None)


def _engine_value(parsed: list) -> float | None:
    import sympy

    for e in parsed:
        if isinstance(e, sympy.Expr) and not e.free_symbols:
            v = complex(sympy.N(e.doit(), 30))
            if v.imag == 0 and abs(v.real) != float("inf"):
                return v.real
    return None


def _worker_main() -> None:
    """Loop of the worker process: one JSON request per line, one JSON reply per line."""
    try:
        import resource

        cap = 3 << 30  # a giant integer should fail with MemoryError, not swap the machine
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (ImportError, ValueError, OSError):
        pass
    out = sys.stdout
    sys.stdout = sys.stderr  # the protocol owns stdout; a library's print must not corrupt it
    import logging

    logging.disable(logging.CRITICAL)  # math-verify logs every parse failure
    from math_verify import verify

    golds: OrderedDict[str, list] = OrderedDict()

    def gold(s: str) -> list:
        if s not in golds:
            golds[s] = _engine_parse(s, plain=False)
            if len(golds) > _GOLD_CACHE_SIZE:
                golds.popitem(last=False)
        return golds[s]

    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if req["op"] == "value":
                reply = {"value": _engine_value(gold(req["gold"]))}
            else:
                reply = {"eq": bool(verify(gold(req["gold"]), _engine_parse(req["pred"], req["plain"]), timeout_seconds=None))}
        except BaseException as e:  # MemoryError, RecursionError, sympy errors: not equal
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            reply = {"eq": False, "value": None, "error": repr(e)[:200]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


class _Worker:
    """One math-verify subprocess per parent process, killed and restarted on a timeout."""

    START_TIMEOUT = 120.0  # importing sympy on a slow CI machine; not part of a comparison

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.owner = -1
        self.buf = b""

    def _start(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from rl2f.tasks.answers import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        )
        self.owner = os.getpid()
        self.buf = b""
        deadline = time.monotonic() + self.START_TIMEOUT
        line = self._readline(self.START_TIMEOUT)
        while line is not None and line != "ready":  # stray output before the handshake
            line = self._readline(max(0.0, deadline - time.monotonic()))
        if line != "ready":
            self._kill()
            raise RuntimeError("the math-verify worker process did not start (is math-verify installed?)")

    def _kill(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.proc, self.buf = None, b""

    def _readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # the worker died (e.g. killed by the memory cap)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def ask(self, request: dict, timeout: float) -> dict:
        """The worker's reply, or {} when it took longer than `timeout` (it is then killed)."""
        with self.lock:
            if self.owner != os.getpid():
                self.proc = None  # a forked child must not drive (or kill) its parent's worker
            if self.proc is None or self.proc.poll() is not None:
                self._kill()
                self._start()
            try:
                self.proc.stdin.write((json.dumps(request) + "\n").encode())
                self.proc.stdin.flush()
            except OSError:
                self._kill()
                return {}
            line = self._readline(timeout)
            if line is None:  # too slow (or died): the answer counts as wrong
                self._kill()
                return {}
            try:
                return json.loads(line)
            except ValueError:
                self._kill()
                return {}

    def close(self) -> None:
        with self.lock:
            if self.owner == os.getpid():
                self._kill()


_WORKER = _Worker()
atexit.register(_WORKER.close)


def is_equivalent(prediction: str | None, reference: str | None, timeout: float = 2.0, math: bool = False) -> bool:
    """Whether a student's answer equals the reference (math-verify's verdict, with the
    reference as gold). `math`: the prediction was written in math mode (`Answer.math`); a
    reference is always read as LaTeX. Never raises on odd input and never takes much longer
    than `timeout` seconds."""
    if prediction is None or reference is None:
        return False
    p, r = str(prediction).strip(), str(reference).strip()
    if not p or not r or len(p) > MAX_ANSWER_CHARS:  # a reference is trusted data, any length
        return False
    return _is_equivalent(p, r, float(timeout), bool(math))


@lru_cache(maxsize=8192)
def _is_equivalent(p: str, r: str, timeout: float, math: bool) -> bool:
    tp, tr = text_answer(p), text_answer(r)
    if tp is not None and tr is not None:
        return tp == tr
    vp, vr = numeric_value(p), numeric_value(r)
    if vp is not None and vp == vr:
        return True  # equal plain numbers (math-verify agrees); no round trip to the worker
    return bool(_WORKER.ask({"op": "eq", "pred": p, "gold": r, "plain": not math}, timeout).get("eq", False))


@lru_cache(maxsize=1024)
def numeric_approx(answer: str, timeout: float = 2.0) -> float | None:
    """The real value of an exact answer with no variables (`2\\sqrt{3}` -> 3.4641...), else None."""
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return None
    v = numeric_value(answer)
    if v is not None:
        return float(v)
    return _WORKER.ask({"op": "value", "gold": answer}, timeout).get("value")
