"""Where rl2f writes, and the promise that goes with it: an output rl2f did not write is
never deleted or overwritten, and no two processes write one output at once.

- A run directory (`rl2f train --out`, `evaluate --out`, `demo --out`) carries a marker,
  `.rl2f-run` (JSON: its kind, when and by which process it was made). rl2f writes into a
  directory that is new, empty, or marked with the same kind; a non-empty directory without
  the marker is refused before any work, naming what is in it (a typo in --out, `--out .`,
  a folder of the user's own checkpoints). A marked directory's other files are never
  touched: a fresh run there only removes the entries rl2f itself writes (`own` names).
- One writer: the process holds an advisory lock (`flock`) on the marker (a directory) or on
  the file itself (an episode file) until it exits; a second process is one line naming the
  holder's pid. The kernel drops the lock when its holder dies, so a killed run never leaves
  a stale lock behind.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import shutil
from pathlib import Path

from rl2f.errors import UserError

MARKER = ".rl2f-run"
_held: dict[str, int] = {}  # path -> descriptor of the locks this process holds (for its lifetime)


def lock(path: Path, what: str) -> None:
    """Take the exclusive advisory lock on `path` (created if missing) for the rest of this
    process, and leave this process's pid beside it (`PATH.pid`); refuse, naming the holder,
    when another process has it. Idempotent."""
    key = str(path.resolve())
    if key in _held:
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"{what}: cannot write there ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        raise UserError(f"{what}: another rl2f process{_holder(path)} is writing there; wait for it to end "
                        "or choose another output") from None
    _held[key] = fd
    try:
        (path.parent / (path.name + ".pid")).write_text(json.dumps({"pid": os.getpid()}))
    except OSError:
        pass  # the lock holds without it; a refused process then names no pid


def _holder(path: Path) -> str:
    """' (pid N)' from the holder's lock note, when it left one."""
    try:
        pid = json.loads((path.parent / (path.name + ".pid")).read_text())["pid"]
        return f" (pid {int(pid)})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def claim_dir(out_dir: Path, kind: str, lock_it: bool = True, adopt: bool = False) -> None:
    """Make `out_dir` this process's `kind` run directory, or refuse by name: new or empty,
    it is created and marked; marked with `kind`, it is kept as it is; non-empty and
    unmarked, or marked with another kind, it is refused and nothing is touched. `adopt=True`
    takes an unmarked directory as this kind's (a run rl2f wrote before markers existed, which
    the caller recognised). `lock_it=False` only checks (the non-zero ranks of a torchrun
    job, whose rank 0 holds the lock)."""
    what = f"--out {out_dir}"
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{what}: is a file, not a directory")
    marker = out_dir / MARKER
    entries = sorted(e.name for e in out_dir.iterdir()) if out_dir.is_dir() else []
    if not marker.is_file() and not adopt:
        foreign = [e for e in entries if not e.startswith(MARKER)]
        if foreign:
            shown = ", ".join(foreign[:4]) + (f" and {len(foreign) - 4} more" if len(foreign) > 4 else "")
            raise UserError(f"{what}: holds files rl2f did not write ({shown}); rl2f writes only into a new or "
                            "empty directory or one of its own runs: choose another --out")
    elif marker.is_file():
        marked = _read_marker(marker)
        if marked != kind:
            raise UserError(f"{what}: is an rl2f {marked or 'unknown'} directory, not a {kind} one: "
                            "choose another --out")
    if not lock_it:
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what}: cannot write there ({e.strerror or e}); nothing was written") from None
    lock(marker, what)
    _write_marker(marker, kind)


def remove_own(out_dir: Path, names: tuple[str, ...]) -> None:
    """Remove the entries named `names` (what rl2f writes there) from a claimed directory."""
    for name in names:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _read_marker(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text() or "{}").get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def _write_marker(marker: Path, kind: str) -> None:
    if _read_marker(marker) == kind:
        return
    note = {"kind": kind, "created": datetime.datetime.now().isoformat(timespec="seconds"), "pid": os.getpid()}
    # the marker is the lock file too: written in place (a rename would swap the locked inode)
    with open(marker, "r+") as f:
        f.write(json.dumps(note) + "\n")
        f.truncate()


def claim_file(out: Path, identity: dict, what: str = "--out") -> None:
    """Make episode file `out` this process's, tied to what makes its episodes (`identity`:
    config, adapter, sampling, problems), or refuse by name.

    The identity lives beside it in `OUT.rl2f.json`. A file with episodes but no identity, or
    with another identity, is refused, naming the first key that differs: resuming it would
    mix episodes of two settings under one summary."""
    what = f"{what} {out}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{what}: cannot write there ({e.strerror or e})") from None
    lock(out.parent / f".{out.name}.lock", what)
    sidecar = out.parent / (out.name + ".rl2f.json")
    has_episodes = out.is_file() and out.stat().st_size > 0
    if sidecar.is_file():
        try:
            saved = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            raise UserError(f"{what}: its identity file {sidecar.name} is damaged; move both away") from None
        if has_episodes and saved != identity:
            key = _first_difference(saved, identity)
            raise UserError(f"{what}: its episodes were made with {key}; this run differs there. Resuming would "
                            "mix the two: choose another --out")
    elif has_episodes:
        raise UserError(f"{what}: holds episodes with no record of what made them ({sidecar.name} is missing): "
                        "choose another --out")
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, sidecar)


def _first_difference(saved, now, prefix: str = "") -> str:
    if isinstance(saved, dict) and isinstance(now, dict):
        for key in sorted(set(saved) | set(now)):
            if saved.get(key) != now.get(key):
                return _first_difference(saved.get(key), now.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or 'the settings'} = {json.dumps(saved)} (now {json.dumps(now)})"
