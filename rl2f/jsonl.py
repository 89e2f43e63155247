"""Reading JSONL files of records (episode files, SFT dialogues, task problems) the one way:
every non-blank line a JSON object, a bad line one `UserError` naming the file and the line
(or skipped and counted)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, TypeVar

from rl2f.errors import UserError

T = TypeVar("T")
# What a record parser may raise on a malformed record: each becomes "FILE:LINE: not WHAT (...)".
BAD_RECORD = (json.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError)


class BadRecord(ValueError):
    """A record its parser refuses, with a message that says why whole: "FILE:LINE: MESSAGE"."""


def read_jsonl(path: str | Path, what: str, parse: Callable[[dict, int], T], skip_bad: bool = False,
               ) -> tuple[list[T], int]:
    """`parse(record, line_number)` for each record of `path`, in file order. Returns (parsed
    records, lines skipped). A malformed line raises a UserError naming file and line, or
    with `skip_bad` is skipped and counted. `parse` may return None to drop a good record."""
    path = Path(path)
    try:
        with path.open("rb") as f:  # bytes: a line that is not UTF-8 is a bad line like any other
            # iterating bytes cuts at "\n" only: str.splitlines() would also cut at U+2028,
            # U+0085 and the other separators a JSON string may hold as they are
            lines = list(f)
    except FileNotFoundError:
        raise UserError(f"{path}: cannot read: the file does not exist") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    out, skipped = [], 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
            if not isinstance(rec, dict):
                raise BadRecord(f"not {what} (expected a JSON object)")
            item = parse(rec, lineno)
        except UserError:
            raise
        except UnicodeDecodeError as e:
            why = f"not UTF-8 text (byte {e.start + 1} of the line)"
        except json.JSONDecodeError as e:
            why = f"not {what} (invalid JSON: {e.msg} at column {e.colno})"
        except BadRecord as e:
            why = str(e)
        except BAD_RECORD as e:
            why = f"not {what} ({type(e).__name__}: {e})"
        else:
            if item is not None:
                out.append(item)
            continue
        if not skip_bad:
            raise UserError(f"{path}:{lineno}: {why}") from None
        skipped += 1
    return out, skipped
