"""Reading JSONL files of records (episode files, SFT dialogues) the one way: every non-blank
line a JSON object, a bad line one `UserError` naming the file and the line (or skipped and
counted)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, TypeVar

from rl2f.errors import UserError

T = TypeVar("T")
# What a record parser may raise on a malformed record: each becomes "FILE:LINE: not WHAT (...)".
BAD_RECORD = (json.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError)


def read_jsonl(path: str | Path, what: str, parse: Callable[[dict, int], T], skip_bad: bool = False,
               ) -> tuple[list[T], int]:
    """`parse(record, line_number)` for each record of `path`, in file order. Returns (parsed
    records, lines skipped). A malformed line raises a UserError naming file and line, or
    with `skip_bad` is skipped and counted. `parse` may return None to drop a good record."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    out, skipped = [], 0
    with path.open("rb") as f:  # bytes: a line that is not UTF-8 is a bad line like any other
        lines = list(f)
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)  # UnicodeDecodeError is a ValueError
            if not isinstance(rec, dict):
                raise ValueError("expected a JSON object")
            item = parse(rec, lineno)
        except UserError:
            raise
        except BAD_RECORD as e:
            if skip_bad:
                skipped += 1
                continue
            raise UserError(f"{path}:{lineno}: not {what} ({type(e).__name__}: {e})") from None
        if item is not None:
            out.append(item)
    return out, skipped
