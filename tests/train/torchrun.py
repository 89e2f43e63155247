"""Launch torchrun for a test so that a hang is a test failure, not a stuck CI job.

Ranks that deadlock in a collective wait for gloo's timeout (30 minutes); `subprocess.run`'s
timeout would kill torchrun alone and leave its rank processes behind, and torchrun starts
each rank in a session of its own, so not even its process group reaches them. On timeout,
every descendant of torchrun (found in /proc before anything is killed) is killed. Before
that, each rank gets SIGABRT: with PYTHONFAULTHANDLER set, Python prints every thread's stack
to stderr, so the failure says where each rank waited.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def torchrun(args: list[str], timeout: float, nproc: int = 2, cwd=None, env=None) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=NPROC ARGS...`; a timeout kills every rank and
    fails the test with what the ranks printed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1",
           **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        ranks = _descendants(proc.pid)
        for pid in ranks:  # faulthandler prints each rank's Python stacks
            try:
                os.kill(pid, signal.SIGABRT)
            except ProcessLookupError:
                pass
        time.sleep(3)
        for pid in [proc.pid, *ranks, *_descendants(proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = proc.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout:.0f} s (a rank is stuck in a "
                             f"collective?); killed its process group.\n{out[-3000:]}\n{err[-12000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
