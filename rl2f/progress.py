"""Progress that reaches a log: a bar on a terminal, one plain line per update elsewhere.

click's progress bar draws nothing between its label and its end when its stream is not a
terminal, so a run under nohup, slurm or CI (`rl2f train ... > log 2>&1`) would log nothing
for hours. `Progress` keeps the bar on a terminal and otherwise writes one line per update:

    train 3/60 (5%) 0:00:42 elapsed, eta 0:13:18: reward 0.125 loss 0.0123
"""
from __future__ import annotations

import datetime
import sys
import time
from typing import IO

import click


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


class Progress:
    """`total` units of work, `start` of them done before (a resumed run). `update(n, item)`
    after each unit or batch; `item` says what was just done. `enabled=False` (ranks other
    than 0) shows nothing. A context manager; `close()` ends the bar."""

    def __init__(self, label: str, total: int, start: int = 0, file: IO[str] | None = None, enabled: bool = True):
        self.label, self.total, self.done, self.start = label, total, start, start
        self.file = file if file is not None else sys.stdout
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.bar = None
        if enabled and self.file.isatty():
            self.bar = click.progressbar(length=total, label=label, show_pos=True, show_eta=True,
                                         item_show_func=lambda s: s, file=self.file)
            self.bar.__enter__()
            self.bar.update(start)

    def update(self, n: int, item: str | None = None) -> None:
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n, item)
            return
        elapsed = time.perf_counter() - self.t0
        rate = (self.done - self.start) / elapsed if elapsed > 0 else 0.0
        eta = f", eta {_clock((self.total - self.done) / rate)}" if rate > 0 and self.done < self.total else ""
        pct = f" ({100 * self.done // self.total}%)" if self.total else ""
        line = f"{self.label} {self.done}/{self.total}{pct} {_clock(elapsed)} elapsed{eta}"
        click.echo(line + (f": {item}" if item else ""), file=self.file)  # echo flushes

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
