"""Problems from a JSONL file's records, shared by the math task's files and the `jsonl`
task (rl2f/tasks/data.py): the record loop, the answer check at load, the hash split and the
seeded draw.

Answers are checked at load: the leak guard tests each teacher message against the reference
answer, so a worked solution in its place (GSM8K's raw `answer`) would let "The total is 72
clips." through. A multi-line answer, or one over `MAX_ANSWER_CHARS`, is a bad line unless
`answer_regex` extracts a short one.
"""
from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rl2f.errors import UserError
from rl2f.jsonl import BadRecord, read_jsonl
from rl2f.tasks.base import Problem, check_option

MAX_ANSWER_CHARS = 100  # longer than a final answer is, shorter than a worked solution
GSM8K_REGEX = r"####\s*(.+)$"  # as a TOML literal string: answer_regex = '####\s*(.+)$'


def hash_bucket(text: str) -> int:
    """Stable 0..99 bucket of a problem's text: the split depends on the problem alone."""
    return int(hashlib.sha256(" ".join(text.split()).encode()).hexdigest()[:8], 16) % 100


def answer_pattern(task: str, regex) -> re.Pattern | None:
    """The `answer_regex` option compiled (None stays None), or one error line."""
    if regex is None:
        return None
    check_option(task, "answer_regex", regex, str)
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise UserError(f"task '{task}': option answer_regex {regex!r} is not a regular expression ({e})") from None
    if pattern.groups < 1:
        raise UserError(f"task '{task}': option answer_regex must capture the answer in a group, "
                        f"as {GSM8K_REGEX!r} does; got {regex!r}")
    return pattern


@dataclass(frozen=True)
class Fields:
    """Where a record keeps each part of a problem."""

    prompt: str = "problem"
    answer: str | None = "answer"  # None: no answer (code: the tests are the truth)
    answer_regex: re.Pattern | None = None  # the answer is its first group's match in the field
    id: str | None = "id"  # None, or a record without it: `make_id(prompt, line)`


def reference_answer(value, fields: Fields) -> str:
    """The short answer a record's answer field holds (extracted by `answer_regex` if given),
    or BadRecord naming the field."""
    field = fields.answer
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise BadRecord(f"missing or empty '{field}'")
    text = str(value).strip()
    pattern = fields.answer_regex
    if pattern is not None:
        m = pattern.search(text)
        if m is None or not (m.group(1) or "").strip():
            raise BadRecord(f"answer_regex {pattern.pattern!r} does not match field '{field}'")
        text = m.group(1).strip()
    lines = text.count("\n") + 1
    if lines > 1 or len(text) > MAX_ANSWER_CHARS:
        size = f"{lines} lines" if lines > 1 else f"{len(text)} characters"
        if pattern is not None:
            raise BadRecord(f"answer_regex {pattern.pattern!r} extracts {size} from field '{field}', not an answer")
        raise BadRecord(f"field '{field}' holds a worked solution ({size}), not an answer: give answer_regex "
                        f"to extract it (GSM8K: answer_regex = '{GSM8K_REGEX}')")
    return text


def read_problems(path: Path, fields: Fields, make_id: Callable[[str, int], str],
                  info: Callable[[dict], dict], skip_bad: bool) -> tuple[list[Problem], int]:
    """The problems of a JSONL file in file order, and the number of bad lines skipped.
    `info(record)`: the problem's other privileged data (BadRecord: a bad line), to which the
    line number is added as `info["line"]`. Ids must be unique."""
    first_line: dict[str, int] = {}

    def parse(rec: dict, lineno: int) -> Problem:
        prompt = rec.get(fields.prompt)
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRecord(f"missing or empty '{fields.prompt}'")
        answer = "" if fields.answer is None else reference_answer(rec.get(fields.answer), fields)
        pid = rec.get(fields.id) if fields.id is not None else None
        if pid is None:
            pid = make_id(prompt, lineno)
        elif isinstance(pid, bool) or not isinstance(pid, (str, int)):
            raise BadRecord(f"'{fields.id}' must be a string or an integer")
        pid = str(pid)
        if pid in first_line:
            raise BadRecord(f"duplicate id {pid!r} (first on line {first_line[pid]})")
        extra = info(rec)
        first_line[pid] = lineno
        return Problem(pid, prompt.strip(), answer, {**extra, "line": lineno})

    return read_jsonl(path, "a problem record", parse, skip_bad)


def draw(pool: list[Problem], n: int, split: str, rng_key: str, path: Path, how: str) -> list[Problem]:
    """`n` problems of file `path`'s `split` (`pool`) in an order fixed by `rng_key`; `how`
    says in the error how the file was split."""
    if n > len(pool):
        raise UserError(f"{path}: asked for {n} {split} problems but the file has {len(pool)} in that split ({how})")
    order = list(range(len(pool)))
    random.Random(rng_key).shuffle(order)
    return [pool[i] for i in order[:n]]


# ---------------------------------------------------------------------------------------
# The exact verifier
