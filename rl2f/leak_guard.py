"""The teacher's leak guard: does a feedback message give the answer away?

`LeakGuard(task).check(message, problem, earlier=())` runs string checks against the answer
and the task's `answer_forms` (any hit is a leak), then an optional judge. A number that
also appears in the problem's prompt is never a leak: hints may quote the problem.

1. Numbers, by value, on token boundaries (`1` is not inside `12`, `2nd` is not a number):
   integers, decimals (`.5` too), `1,000`, `a/b`, `\\frac{a}{b}`, `p%` (also read as p/100),
   `3.6e3` and `3.6 x 10^3`, `3.6 thousand`, the Unicode fractions (`\u00bd`, `1\u00be`).
   For a non-integer answer, a decimal that is the answer rounded (>= 2 significant digits).
   A one-digit number right after a label word ("redo step 2", "line 3") names a place and
   is not read as a value.
2. Numbers in words, whatever punctuation surrounds them ("seventy-six.", "(seventy six)",
   "Seventy six!"): integers >= 10 anywhere ("a hundred forty-four" too); fractions and
   percents ("one half", "half", "three quarters", "twenty-five hundredths", "fifty
   percent"), but not "half of your ..." (a share of the student's work); groups ("nine
   tens" is 90); "zero point five"; a one-digit number only where it is stated as a value
   ("It's seven.", "x equals seven", "the answer is seven").
3. Non-numeric forms (`2\\sqrt{3}`, `(1, 2]`, a move string) as substrings after dropping
   case, whitespace, `$`, braces, parentheses, `\\left`/`\\right`, `*`, `\\cdot`; letter-only
   forms on word boundaries, and ones of <= 3 letters (`no`, `A`) only in "answer is X" or
   "(X)" phrasing, where they cannot be ordinary words.
4. Spelled out one character at a time ("3 4 5", "3-4-5", "three four five", "the digits are
   3, 4 and 5") for an answer of >= 2 digits or >= 3 letters.
5. Digit by digit and by place value ("the first digit is 7 and the second digit is 6",
   "7 tens and 6 ones", "the units digit is 6", "it starts with a 7", "it ends in a 6"): a
   leak when the stated digits make up the whole answer. This check reads the episode's
   cumulative teacher text (`earlier`: the teacher messages already sent in this episode),
   so one digit per turn is caught on the turn that completes the answer.
6. Symbolic answers (`2\\sqrt{3}`), through the math engine (`rl2f.tasks.answers`): a formula
   in the message equivalent to the answer (`\\sqrt{12}`, "the square root of twelve"), or a
   decimal that is its value rounded or cut to >= 3 significant digits ("about 3.46").
7. `judge(message, problem) -> bool` (an LLM judge, say), consulted only when 1-6 pass.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, NamedTuple, Sequence

from rl2f.tasks.answers import is_equivalent, numeric_approx, numeric_value
from rl2f.tasks.base import Problem, Task

GENERIC_HINT = "That is not correct. Re-check your work and try again."


@dataclass
class LeakCheck:
    leaked: bool
    reason: str = ""  # what matched, for logs ("" when clean)


# ---------------------------------------------------------------------------------------
# Numbers in free text

_NUMBER = re.compile(r"(?<![\w.])(-)?(\d{1,3}(?:,\d{3})+(?![\d,])|\d+)?(\.\d+)?(?!\.?\d)(?!(?:st|nd|rd|th)\b)")
_TEX_FRAC = re.compile(r"\\[dtc]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}|\\[dtc]?frac\s*(\d)(\d)")
_SLASH = re.compile(r"(?<![\w.])(-?\d+)\s*/\s*(\d+)(?!\w|\.\d)")
_PERCENT = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)\s*(?:\\?%|\s*percent\b)")


_SCIENTIFIC = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)\s*(?:[eE]([+-]?\d{1,3})|(?:\*|x|\u00d7)\s*10\^\{?([+-]?\d{1,3})\}?)(?!\w)")
_NUMBER_SCALE = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?)\s+(thousand|million|billion)\b", re.IGNORECASE)
_VULGAR = {"\u00bd": Fraction(1, 2), "\u2153": Fraction(1, 3), "\u2154": Fraction(2, 3), "\u00bc": Fraction(1, 4),
           "\u00be": Fraction(3, 4), "\u2155": Fraction(1, 5), "\u2156": Fraction(2, 5), "\u2157": Fraction(3, 5),
           "\u2158": Fraction(4, 5), "\u2159": Fraction(1, 6), "\u215a": Fraction(5, 6), "\u215b": Fraction(1, 8),
           "\u215c": Fraction(3, 8), "\u215d": Fraction(5, 8), "\u215e": Fraction(7, 8)}
# A number right after one of these words labels something ("redo step 2"): it is not a value.
_LABEL = re.compile(r"\b(?:step|steps|line|lines|part|question|problem|equation|case|round|turn|attempt|try|"
                    r"row|column|item|option|stage|page|chapter|section|figure|rule)\s*#?$", re.IGNORECASE)


def _numbers(text: str) -> list[tuple[Fraction, str]]:
    """(value, literal) for each number in `text`; fractions and percents add their value,
    and so do scientific notation ("3.6e3"), a decimal with a scale word ("3.6 thousand")
    and the Unicode fractions ("\u00bd"). A one-digit number right after a label word
    ("step 2") is left out: it names a place, not a value."""
    out = []
    for m in _NUMBER.finditer(text):
        if m.group(2) is None and m.group(3) is None:
            continue
        lit = (m.group(1) or "") + (m.group(2) or "0").replace(",", "") + (m.group(3) or "")
        if len(m.group(0).lstrip("-")) == 1 and _LABEL.search(text[max(0, m.start() - 12) : m.start()]):
            continue
        out.append((Fraction(lit), m.group(0)))
    for m in _SCIENTIFIC.finditer(text):
        exponent = int(m.group(2) if m.group(2) is not None else m.group(3))
        out.append((Fraction(m.group(1)) * Fraction(10) ** exponent, m.group(0)))
    for m in _NUMBER_SCALE.finditer(text):
        out.append((Fraction(m.group(1)) * _SCALES[m.group(2).lower()], m.group(0)))
    for i, c in enumerate(text):
        if c in _VULGAR:
            whole = re.search(r"(?<![\w.])(\d+)$", text[:i])  # "1\u00bd"
            out.append(((int(whole.group(1)) if whole else 0) + _VULGAR[c], (whole.group(1) if whole else "") + c))
    for m in _TEX_FRAC.finditer(text):
        a, b = (m.group(1), m.group(2)) if m.group(1) is not None else (m.group(3), m.group(4))
        if int(b) != 0:
            out.append((Fraction(int(a), int(b)), m.group(0)))
    for m in _SLASH.finditer(text):
        if int(m.group(2)) != 0:
            out.append((Fraction(int(m.group(1)), int(m.group(2))), m.group(0)))
    for m in _PERCENT.finditer(text):
        out.append((Fraction(m.group(1)) / 100, m.group(0)))
    return out


def _decimals(text: str) -> list[tuple[Fraction, int, str]]:
    """(value, fractional digits, literal) of each decimal literal (`3.46`, `.5`)."""
    return [(Fraction(m.group(0)), len(m.group(0).split(".")[1]), m.group(0))
            for m in re.finditer(r"(?<![\w.])-?\d*\.\d+(?!\.?\d)", text)]


def _significant(lit: str) -> int:
    return len(re.sub(r"^[-0.]+", "", lit).replace(".", ""))


# ---------------------------------------------------------------------------------------
# Numbers in words

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9}
_DENOMINATORS = {"half": 2, "halves": 2, "third": 3, "thirds": 3, "quarter": 4, "quarters": 4,
                 "fourth": 4, "fourths": 4, "fifth": 5, "fifths": 5, "sixth": 6, "sixths": 6,
                 "seventh": 7, "sevenths": 7, "eighth": 8, "eighths": 8, "ninth": 9, "ninths": 9,
                 "tenth": 10, "tenths": 10, "hundredth": 100, "hundredths": 100,
                 "thousandth": 1000, "thousandths": 1000}
_WORD = re.compile(r"[a-z]+")
_GROUPS = {"tens": 10, "hundreds": 100, "thousands": 1000}  # "nine tens": 90
# "half of your reasoning" is a share of the student's work, not a value ("half of the time" is)
_OWNERS = {"your", "my", "our", "his", "her", "their", "this", "that", "these", "those", "its"}
# A number word stated as a value: "is seven", "it's seven", "equals seven", "= seven".
_VALUE_CUE = re.compile(r"(?:\bis|'s|\bequals?|=|\bbe|\bgets?|\bgives?|\bmakes?|\bgot|\bwas|\banswer|\bresult)"
                        r"\s*:?\s*(?:(?:minus|negative)\s+)?$")


def number_words(n: int) -> str:
    """English words for 0 <= n < 10**12, without 'and' or hyphens (345: three hundred forty five)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        return _ONES[n // 100] + " hundred" + ("" if n % 100 == 0 else " " + number_words(n % 100))
    for scale, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= scale:
            rest = n % scale
            return number_words(n // scale) + " " + name + ("" if rest == 0 else " " + number_words(rest))
    raise ValueError(n)


def _word_kind(w: str) -> str | None:
    if w in _ONES:
        return "one" if _ONES.index(w) < 10 else "teen"
    if w in _TENS and w != "_":
        return "ten"
    return "scale" if w in _SCALES else None


# Which word may continue a cardinal after the last one ("seventy six", "three hundred five";
# "three four" is two numbers, spelled digit by digit).
_FOLLOWS = {"one": {"scale"}, "teen": {"scale"}, "ten": {"one", "scale"}, "hundred": {"one", "teen", "ten", "scale"},
            "scale": {"one", "teen", "ten"}}


def _word_numbers(text: str) -> list[tuple[Fraction, str, bool]]:
    """(value, literal, stated) for each number written in words. Words join over spaces,
    hyphens and "and"; other punctuation ends a number but never hides it. `stated`: a
    value that cannot be an ordinary word (>= 10, a fraction, a percent, a decimal, or a
    one-digit number right after "is" / "equals" / "=")."""
    low = text.lower()
    words = list(_WORD.finditer(low))
    out, i = [], 0
    while i < len(words):
        w = words[i].group(0)
        start = i
        sign = 1
        if w in ("minus", "negative") and i + 1 < len(words) and _word_kind(words[i + 1].group(0)):
            sign, i = -1, i + 1
        total, current, last, j = 0, 0, None, i
        if w in ("a", "an") and i + 1 < len(words) and words[i + 1].group(0) in _SCALES \
                and re.fullmatch(r"\s+", low[words[i].end() : words[i + 1].start()]):
            current, last, j = 1, "one", i + 1  # "a hundred forty four", "a thousand"
        while j < len(words):
            w = words[j].group(0)
            kind = _word_kind(w)
            if j > i and not re.fullmatch(r"[\s\-\u2013]+", low[words[j - 1].end() : words[j].start()]):
                break
            if w == "and" and last in ("hundred", "scale") and j + 1 < len(words) \
                    and _word_kind(words[j + 1].group(0)) in ("one", "teen", "ten"):
                j += 1  # "three hundred and forty five"
                continue
            if kind is None or (last is not None and kind not in _FOLLOWS["hundred" if last == "hundred" else last]):
                break
            if w == "hundred":
                if last not in ("one", "teen"):
                    break
                current *= 100
                last = "hundred"
            elif kind == "scale":
                total += current * _SCALES[w]
                current, last = 0, "scale"
            else:
                current += _ONES.index(w) if kind in ("one", "teen") else 10 * _TENS.index(w)
                last = kind
            j += 1
        if j == i:  # not a cardinal: "half", "a half", "a quarter"
            w = words[i].group(0)
            nxt = words[i + 1].group(0) if i + 1 < len(words) else ""
            if w in ("half", "halves"):
                owner = words[i + 2].group(0) if i + 2 < len(words) else ""
                out.append((Fraction(1, 2), w, not (nxt == "of" and owner in _OWNERS)))
            elif w in ("a", "an") and nxt in _DENOMINATORS:
                out.append((Fraction(1, _DENOMINATORS[nxt]), f"{w} {nxt}", True))
                i += 1
            i += 1
            continue
        value = Fraction(sign * (total + current))
        literal_end, stated = words[j - 1].end(), abs(value) >= 10
        nxt = words[j].group(0) if j < len(words) else ""
        if nxt in _DENOMINATORS and value != 0:
            value, stated, literal_end, j = value / _DENOMINATORS[nxt], True, words[j].end(), j + 1
        elif nxt in _GROUPS and value != 0 and not (j + 1 < len(words) and words[j + 1].group(0) in ("and", "plus")):
            # "nine tens" is 90 (a digit with its place, "7 tens and 6 ones", is check 5's)
            value, stated, literal_end, j = value * _GROUPS[nxt], True, words[j].end(), j + 1
        elif nxt == "percent" or (nxt == "per" and j + 1 < len(words) and words[j + 1].group(0) == "cent"):
            j += 1 if nxt == "percent" else 2
            value, stated, literal_end = value / 100, True, words[j - 1].end()
        elif nxt == "point" and j + 1 < len(words) and _word_kind(words[j + 1].group(0)) == "one":
            digits, j = "", j + 1
            while j < len(words) and _word_kind(words[j].group(0)) == "one":
                digits, j = digits + str(_ONES.index(words[j].group(0))), j + 1
            value = sign * (abs(value) + Fraction(int(digits), 10 ** len(digits)))
            stated, literal_end = True, words[j - 1].end()
        before = low[max(0, words[start].start() - 24) : words[start].start()]
        stated = stated or bool(_VALUE_CUE.search(before)) or before.rstrip().endswith("(") \
            or not re.search(r"[a-z0-9]", low[: words[start].start()] + low[literal_end:])
        out.append((value, low[words[start].start() : literal_end], stated))
        i = j
    return out


# ---------------------------------------------------------------------------------------
# Digit by digit and place value

_DIGIT_WORD = r"(?:\d|" + "|".join(_ONES[:10]) + r")"
_FROM_LEFT = {"first": 0, "leading": 0, "second": 1, "third": 2, "fourth": 3, "fifth": 4, "sixth": 5, "seventh": 6,
              "eighth": 7, "ninth": 8}
_FROM_RIGHT = {"last": 0, "final": 0, "ones": 0, "units": 0, "unit": 0, "one's": 0, "tens": 1, "ten's": 1,
               "hundreds": 2, "thousands": 3, "ten-thousands": 4}
_PLACE = "|".join(re.escape(k) for k in sorted({**_FROM_LEFT, **_FROM_RIGHT}, key=len, reverse=True))
_DIGIT_IS = re.compile(r"\b(" + _PLACE + r")(?:[\s-]+place)?[\s-]+digit(?:\s+of\s+(?:the|your)\s+\w+)?\s*"
                       r"(?:is|=|:|equals|should\s+be|must\s+be)\s*(?:an?\s+)?(" + _DIGIT_WORD + r")\b", re.IGNORECASE)
_DIGIT_IN_PLACE = re.compile(r"\bdigit\s+in\s+the\s+(" + _PLACE + r")(?:[\s-]+place)?\s*(?:is|=|:)\s*(" + _DIGIT_WORD + r")\b",
                             re.IGNORECASE)
_ENDS = re.compile(r"\b(ends?|ending|starts?|starting|begins?|beginning)\s+(?:in|with)\s+(?:an?\s+)?(?:the\s+digit\s+)?("
                   + _DIGIT_WORD + r")\b(?!\s*(?:\.\d|,\d))", re.IGNORECASE)
_PLACE_VALUE = re.compile(r"\b(" + _DIGIT_WORD + r")\s+(ten-thousands|thousands|hundreds|tens|ones|units)\b", re.IGNORECASE)


def _digit(s: str) -> int:
    s = s.lower()
    return int(s) if s.isdigit() else _ONES.index(s)


@functools.lru_cache(maxsize=8192)
def _digit_facts(text: str) -> frozenset[tuple[str, int, int]]:
    """(side, position, digit) stated in `text`: side "L" counts from the left (first digit
    = 0), "R" from the right (ones = 0). Cached: an episode's earlier messages are read
    again at every turn."""
    facts = set()
    for m in list(_DIGIT_IS.finditer(text)) + list(_DIGIT_IN_PLACE.finditer(text)) + list(_PLACE_VALUE.finditer(text)):
        place, d = (m.group(1), m.group(2)) if m.re is not _PLACE_VALUE else (m.group(2), m.group(1))
        place = place.lower()
        side, pos = ("L", _FROM_LEFT[place]) if place in _FROM_LEFT else ("R", _FROM_RIGHT[place])
        facts.add((side, pos, _digit(d)))
    for m in _ENDS.finditer(text):
        facts.add(("R" if m.group(1).lower().startswith("end") else "L", 0, _digit(m.group(2))))
    return frozenset(facts)


def _covers(facts: set[tuple[str, int, int]], digits: str) -> bool:
    """Whether the facts that agree with `digits` name every one of its digits."""
    known = set()
    for side, pos, d in facts:
        i = pos if side == "L" else len(digits) - 1 - pos
        if 0 <= i < len(digits) and int(digits[i]) == d:
            known.add(i)
    return len(known) == len(digits)


# ---------------------------------------------------------------------------------------
# Normalised text

def _compact(s: str) -> str:
    s = s.lower().replace("\u221a", "sqrt").replace("\u03c0", "pi").replace("\u2212", "-")
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    s = re.sub(r"\\(?:left|right|displaystyle)(?![a-z])|\\[,;:! ]|\\cdot|\\times|\\!", "", s)
    s = re.sub(r"[\s$*{}()\\]", "", s)
    return s


def _wordy(text: str) -> str:
    """Lower case words only, single-spaced, 'and' dropped: ' three hundred forty five '."""
    t = re.sub(r"[^a-z0-9]+", " ", text.lower())
    t = re.sub(r"\band\b", " ", t)
    return " " + re.sub(r"\s+", " ", t).strip() + " "


_DIGIT_NAME = re.compile(r"\b(" + "|".join(_ONES[:10]) + r")\b", re.IGNORECASE)
_SEP = r"(?:[\s,;:/|&.\-\u2013\u2014\u00b7]|and|then)+"


def _spelled(chars: str) -> re.Pattern:
    """The characters of `chars` one at a time, each pair split by a separator."""
    return re.compile(r"(?<![a-z0-9])" + _SEP.join(re.escape(c) for c in chars) + r"(?![a-z0-9])")


def _digits_as_numerals(text: str) -> str:
    return _DIGIT_NAME.sub(lambda m: str(_ONES.index(m.group(1).lower())), text.lower())


# Formulas in a message that the math engine compares with a symbolic answer.
_FORMULA = re.compile(r"(?<!\\)\$([^$]+)\$|\\\((.+?)\\\)|([^\s,;!?$]*(?:\\[A-Za-z]+|sqrt\()[^\s,;!?$]*)")
_MAX_FORMULAS = 8


_ROOT = re.compile(r"\b(square|cube)\s+root\s+of\s+(\d+|(?:[a-z]+[\s-]?){1,4})", re.IGNORECASE)


def _root_words(text: str) -> list[str]:
    """'the square root of two' -> 'sqrt(2)' (a number in digits or words), for check 6."""
    out = []
    for m in _ROOT.finditer(text):
        arg = m.group(2).strip()
        if not arg.isdigit():
            numbers = _word_numbers(arg)
            if not numbers or not arg.lower().startswith(numbers[0][1]):  # words, but no number first
                continue
            arg = str(numbers[0][0])
        out.append(f"sqrt({arg})" if m.group(1).lower() == "square" else f"({arg})**(1/3)")
    return out


def _formulas(text: str) -> list[str]:
    out = []
    for m in _FORMULA.finditer(text):
        f = next(g for g in m.groups() if g is not None).strip().rstrip(".")
        if f and f not in out:
            out.append(f)
    return out[:_MAX_FORMULAS]


# ---------------------------------------------------------------------------------------

class LeakGuard:
    def __init__(self, task: Task, judge: Callable[[str, Problem], bool] | None = None):
        self.task = task
        self.judge = judge

    def _forms(self, problem: Problem) -> list[str]:
        forms = list(self.task.answer_forms(problem)) + ([problem.answer] if problem.answer else [])
        return [f for f in dict.fromkeys(str(f).strip() for f in forms) if f]

    def check(self, message: str, problem: Problem, earlier: Sequence[str] = ()) -> LeakCheck:
        """Whether `message` leaks the answer; `earlier`: the teacher messages already sent in
        the same episode, read together with `message` for leaks spread over turns."""
        if not message or not message.strip():
            return LeakCheck(False)
        forms = self._forms(problem)
        reason = _string_leak(message, tuple(earlier), problem.prompt or "", tuple(forms)) if forms else None
        if reason:
            return LeakCheck(True, reason)
        if self.judge is not None and self.judge(message, problem):
            return LeakCheck(True, "judge: the message reveals the answer")
        return LeakCheck(False)


class _Answer(NamedTuple):
    """What the string checks need of a problem: its answer forms and its prompt, parsed once."""

    values: frozenset  # numeric forms, as Fractions
    symbolic: tuple[str, ...]  # the other forms
    integers: frozenset  # |integer answers| that the prompt does not state
    in_prompt: frozenset  # numbers the prompt states (digits or words)
    abs_prompt: frozenset
    cprompt: str  # the prompt, compacted
    spelled_prompt: str
    wprompt: str
    roots_prompt: frozenset  # "square root of 12" in the prompt, as formulas


@functools.lru_cache(maxsize=1024)
def _answer(prompt: str, forms: tuple[str, ...]) -> _Answer:
    parsed = [(f, numeric_value(f)) for f in forms]
    values = frozenset(v for _, v in parsed if v is not None)
    in_prompt = frozenset({v for v, _ in _numbers(prompt)} | {v for v, _, _ in _word_numbers(prompt)})
    abs_prompt = frozenset(abs(v) for v in in_prompt)
    return _Answer(values, tuple(f for f, v in parsed if v is None),
                   frozenset(abs(v.numerator) for v in values if v.denominator == 1 and abs(v) not in abs_prompt),
                   in_prompt, abs_prompt, _compact(prompt), _digits_as_numerals(prompt), _wordy(prompt),
                   frozenset(_root_words(prompt)))


def _string_leak(message: str, earlier: tuple[str, ...], prompt: str, forms: tuple[str, ...]) -> str | None:
    """The string checks in order; the first that fires gives the reason. Only the
    digit-by-digit check reads `earlier`, so the others are cached per (message, problem): a
    programmatic teacher sends the same few messages thousands of times a run."""
    a = _answer(prompt, forms)
    return _message_leak(message, a) or _digits_named(message, earlier, a) or _symbolic_leak(message, a)


@functools.lru_cache(maxsize=8192)
def _message_leak(message: str, a: _Answer) -> str | None:
    """Checks 1-4: the answer by value, as text, or spelled out, in this message."""
    values, symbolic, in_prompt, abs_prompt = a.values, a.symbolic, a.in_prompt, a.abs_prompt

    # 1-2. numbers by value, in digits or in words
    if values:
        abs_values = {abs(v) for v in values}
        found = [(v, lit, True) for v, lit in _numbers(message)] + _word_numbers(message)
        for v, lit, stated in found:
            if stated and ((v in values and v not in in_prompt) or (abs(v) in abs_values and abs(v) not in abs_prompt)):
                return f"answer value appears as {lit!r}"
        for v in values:
            if v.denominator == 1:
                continue
            for d, k, lit in _decimals(message):
                if _significant(lit) >= 2 and round(v, k) == d and d not in in_prompt:
                    return f"the answer rounded appears as {lit!r}"

    # 3. non-numeric forms as normalised text
    cmsg, cprompt = _compact(message), a.cprompt
    lmsg = message.lower()
    for f in symbolic:
        cf = _compact(f)
        if not cf or cf in cprompt:
            continue
        if re.fullmatch(r"[a-z]+", cf):
            if len(cf) <= 3:
                pat = (r"(?:answer|solution|result|option|choice)\s*(?:is|:|=|should be|would be)?\s*\(?"
                       + re.escape(cf) + r"\)?(?![a-z0-9])|\(" + re.escape(cf) + r"\)")
                if re.search(pat, lmsg):
                    return f"answer {f!r} stated"
            elif re.search(r"(?<![a-z0-9])" + re.escape(cf) + r"(?![a-z0-9])", lmsg) or cf in cmsg.replace(",", ""):
                return f"answer form {f!r} appears"
            continue
        for m in re.finditer(re.escape(cf), cmsg):
            before = cmsg[m.start() - 1] if m.start() else ""
            after = cmsg[m.end()] if m.end() < len(cmsg) else ""
            if cf[0].isdigit() and before.isdigit() or cf[-1].isdigit() and after.isdigit():
                continue
            return f"answer form {f!r} appears"

    # 4. spelled out one character at a time
    spelled_msg = _digits_as_numerals(message)
    keys = {str(n) for n in a.integers if n >= 10}
    keys |= {c for c in (_compact(f) for f in symbolic) if re.fullmatch(r"[a-z0-9]{3,}", c)}
    for key in keys:
        pat = _spelled(key)
        if pat.search(spelled_msg) and not pat.search(a.spelled_prompt):
            return f"answer {key!r} spelled out one character at a time"
    wmsg = _wordy(message)
    for n in a.integers:
        words = number_words(n) if n < 10**12 else ""
        if n >= 10 and f" {words} " in wmsg and f" {words} " not in a.wprompt:
            return f"answer in words ({words!r})"
    return None


def _digits_named(message: str, earlier: tuple[str, ...], a: _Answer) -> str | None:
    """Check 5: the digits of an integer answer named one by one, over the episode's teacher
    messages so far."""
    new_facts = _digit_facts(message)
    if new_facts:
        facts = new_facts.union(*(_digit_facts(m) for m in earlier))
        for n in a.integers:
            if n >= 10 and _covers(facts, str(n)):
                return f"the digits of {n} are named one by one" + (" across turns" if not _covers(new_facts, str(n)) else "")
    return None


@functools.lru_cache(maxsize=8192)
def _symbolic_leak(message: str, a: _Answer) -> str | None:
    """Check 6: symbolic answers, through the math engine. (A math-verify timeout is then
    remembered as "not equivalent" for the run: the cache is the one exception to these
    checks being functions of their arguments.)"""
    for f in a.symbolic:
        if not re.search(r"\\[A-Za-z]|\d", f) or _compact(f) in a.cprompt:
            continue
        for formula in _formulas(message) + [r for r in _root_words(message) if r not in a.roots_prompt]:
            if _compact(formula) not in a.cprompt and is_equivalent(formula, f, math=True):
                return f"{formula!r} is equivalent to the answer {f!r}"
        decimals = [(d, k, lit) for d, k, lit in _decimals(message) if _significant(lit) >= 3 and d not in a.in_prompt]
        value = numeric_approx(f) if decimals else None
        if value is not None and math.isfinite(value):
            for d, k, lit in decimals:
                scale = 10**k
                if float(d) in (round(value, k), math.trunc(value * scale) / scale):
                    return f"the value of {f!r} appears as {lit!r}"
    return None
