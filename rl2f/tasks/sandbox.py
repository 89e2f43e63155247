"""Run untrusted (model-written) Python in a resource-limited, isolated subprocess (Linux).

`run_untrusted(code)` never raises for anything the code does and never hangs: the result
says how the run ended and which guards were active. The threat is buggy or reward-hacking
student code (infinite loops, fork bombs, memory bombs, writing files, reading secrets, the
network, slowing down or renicing the trainer), not a determined attacker with a kernel
exploit. The child side is rl2f/tasks/sandbox_prelude.py, passed to `python -I -S -B -c`.

Processes: the caller starts a keeper (`python -I -S -B`, a new session whose process group
is killed as a whole) in a fresh temporary directory with only PATH and LANG in its
environment; the keeper forks the student, which runs main.py. The keeper is a child
subreaper (orphans of the student become its children), holds the read end of a lifeline
pipe that only the caller can write to, and asks for SIGTERM when the caller dies
(PR_SET_PDEATHSIG): when the student exits, when the caller closes the lifeline (the
deadline, the output cap) or when the caller dies (even by SIGKILL), the keeper SIGKILLs the
student and every process left in its group, its session or among its children, deletes the
directory and reports the student's wait status on a status pipe the student never holds.
The caller and the keeper both hold a shared flock on the directory: one that nobody locks
was left by a caller and a keeper both killed (SIGKILL, the OOM killer), and the next start
of a sandbox deletes it.

Three layers; what each holds against **alone** (the tests in tests/tasks/test_sandbox.py
run each class of hostile program with every layer, with the hook alone, with the kernel
guards alone and with each single guard listed as holding alone):

- process (always on): the wall-clock deadline, capped output, a scrubbed environment, the
  working directory deleted afterwards (or swept, above), rlimits set by the student before
  any untrusted code (CPU seconds, one more as pid 1 of a pid namespace, which ignores
  SIGXCPU; address space, file size, open files, processes and threads, no core dumps, no
  lowering of the nice value and no real-time priority without CAP_SYS_NICE), the keeper
  above, and the student's own parent-death signal (SIGKILL when the keeper dies). Holds
  against: infinite loops, memory bombs, output floods, descendants (wherever their
  session), a caller killed by SIGKILL, a caller and keeper killed together (their
  directory). Partial: code that kills the keeper leaves the caller to kill the process
  group, so a descendant that left it survives (the pid namespace below holds there); the
  nice and real-time rlimits bind only code without CAP_SYS_NICE (a root caller's, before
  `creds`); RLIMIT_NPROC never binds uid 0, so a student left as uid 0 (no uid of its own,
  below) is bounded in threads only by the address space and the hook; RLIMIT_AS does not
  count memory that is not mapped (memfd, shared memory, pipe buffers, files on a tmpfs),
  which seccomp, mount-ns and the hook bound below.
- kernel guards (`kernel_guards=True`, or a subset of `GUARDS`), each best effort: skipped
  where the kernel or the privileges do not allow it, and `SandboxResult.guards` lists the
  ones that were active. A caller without CAP_SYS_ADMIN (any user but root) first enters a
  user namespace where the kernel lets it, reported as "user-ns".
  - pid-ns: the student is pid 1 of a new pid namespace: it cannot name any process outside
    (renicing, pinning, rescheduling, signalling or opening a pidfd of the trainer or any
    other host process fails), and everything in it dies with it. Partial: its own process
    group, which holds the keeper, can still be signalled (that only ends the run). As pid 1
    it ignores signals it has no handler for, even from itself.
  - uts-ns, ipc-ns, net-ns: its own host name, System V IPC and POSIX message queues, and
    network (no interface but a down loopback).
  - mount-ns: the student's root is an empty read-only tmpfs that holds, at their own
    paths, only the Python library and system library folders and a few files (read-only)
    and the working directory: a tmpfs of its own with a copy of the caller's files and room
    for `fsize_mb` more, gone with the student. No other host path exists for it (os.stat
    on the home folder, the repository or /etc/shadow fails as on a missing path; /proc,
    /sys, /dev/shm and the host's Unix sockets are absent), what it writes never reaches
    the host's disk, and, its folders being searchable by anyone, a root caller's student
    can get a uid of its own (creds). Partial: alone, a student that keeps CAP_SYS_ADMIN
    (no creds, no seccomp) could mount a /proc and, without pid-ns, reach the host's root
    through it.
  - creds: no capability left (bounding, ambient, effective, permitted, inheritable sets)
    and no_new_privs; for a root caller whose interpreter and temporary directory other
    users can reach (always so under mount-ns), also a uid of its own ("unprivileged-uid"),
    which RLIMIT_NPROC then binds to `max_procs` threads. Holds against: real-time
    policies, a negative nice, sethostname, chown to another user, raising rlimits. Partial:
    as the caller's own uid it may still change files that uid owns and raise the nice
    value of that uid's processes (seccomp and pid-ns hold there).
  - landlock: writes only under the working directory, reads only under the Python library
    and system library folders (so no /proc/<pid>/environ), no TCP (ABI 4), no signals to
    or abstract unix sockets of processes outside the sandbox (ABI 6).
  - seccomp (x86_64): no fork, vfork, exec, or non-thread clone; no socket(2), connect,
    bind or listen, and socketpair only AF_UNIX SOCK_STREAM (a datagram socket, even a
    connected one, can sendto any socket path: the host's /dev/log, say); no memfd_create,
    System V IPC, POSIX message queues or F_SETPIPE_SZ (memory that RLIMIT_AS does not
    count); no ptrace or cross-process memory access; kill, tgkill
    and sigqueue only to itself, no pidfds; setpriority and sched_setaffinity only on itself
    (and never a negative nice), no sched_setscheduler/setparam/setattr or ioprio_set; no
    chmod, chown, utime or xattr changes anywhere; no setsid/setpgid; no rlimit raising; no
    namespace, mount, host name, clock, module, keyring, io_uring or bpf calls.
- audit hook (`audit_hook=True`, always available): a Python PEP 578 hook plus replaced
  os/signal functions that have no audit event. Holds, through the ordinary Python APIs,
  against: spawning (fork, exec, spawn, subprocess), network sockets, writes and metadata
  changes outside the working directory, reads outside the allowed folders, symlinks and
  hard links, signalling other processes (kill, killpg, pidfd), setpriority/
  sched_setaffinity on other processes, lowering the nice value, sched_setscheduler,
  sethostname, raising rlimits, heap walking via gc, memfd_create and growing pipes, a
  thread beyond `max_procs` (RuntimeError, as from the kernel), path queries outside the
  allowed folders (os.stat, lstat, access, readlink, statvfs, pathconf, chdir, xattrs, and
  through them os.path and pathlib: PermissionError whether the path exists or not), and
  the native modules that do their own I/O or reach other processes (ctypes,
  _posixsubprocess, posix, SQLite, readline, dbm, POSIX shared memory, syslog, CPython's
  test modules). Partial: it is not a security boundary; code that deletes the entries it
  finds in sys.modules or rebuilds a native module through importlib internals gets the
  modules and the unpatched functions back. Refusals raise PermissionError (ImportError for
  modules), so they read as ordinary failures of the student's code.

Memory that RLIMIT_AS does not count and the student can still hold: what it writes in its
working directory, at most `fsize_mb` under mount-ns (elsewhere it is memory only where the
host's temporary folder is a tmpfs: `fsize_mb` per file, `max_write_opens` files through the
hook, unbounded with the kernel guards alone), pipe and socket buffers at their default
sizes (64 KiB a pipe, `net.core.wmem_default` a socket, for 64 open files and as many in
flight over a socketpair) and the kernel's own objects. A memory cgroup would bound the
total; rl2f does not make one.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rl2f.tasks.sandbox_prelude import _UID_BASE, GUARDS, group_members, kill_leftovers

__all__ = ["GUARDS", "SandboxResult", "group_members", "run_untrusted"]

# Read once; passed with -c, so nothing on disk that the student could edit is executed.
_PRELUDE = Path(__file__).with_name("sandbox_prelude.py").read_text(encoding="utf-8")
_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # nothing else from the parent
# tempfile.mkdtemp's names: the sweep removes no folder that another program made
_WORKDIR = re.compile(r"rl2f-sandbox-[a-z0-9_]{8}")


@dataclass
class SandboxResult:
    ok: bool  # exited 0 within every limit
    returncode: int | None  # negative: killed by that signal; None: unknown (sandbox error)
    stdout: str  # capped at max_output_bytes
    stderr: str  # capped at max_output_bytes
    timed_out: bool  # the wall-clock deadline passed
    killed_reason: str | None = None  # "timeout", "cpu limit", "output limit", "signal N", ...
    guards: tuple[str, ...] = ()  # active: GUARDS' names, "user-ns", "unprivileged-uid", "hook"
    pgid: int | None = None  # the sandbox's process group on the host (the keeper's pid)


def run_untrusted(
    code: str,
    stdin: str = "",
    timeout_s: float = 5.0,
    cpu_s: int = 5,
    memory_mb: int = 512,
    max_procs: int = 256,
    *,
    files: dict[str, str] | None = None,
    max_output_bytes: int = 64 * 1024,
    fsize_mb: int = 8,
    max_write_opens: int = 64,
    kernel_guards: bool | Iterable[str] = True,
    audit_hook: bool = True,
) -> SandboxResult:
    """Run `code` as the main script of a fresh sandboxed Python; see the module docstring.

    files: extra files (name -> text) placed in the working directory beside main.py.
    max_procs: RLIMIT_NPROC. It counts every process and thread of the user and uid 0
        ignores it, which is why forks are also refused by seccomp and the audit hook, and
        threads beyond it by the hook.
    fsize_mb: the largest file the student may write (RLIMIT_FSIZE) and, under mount-ns,
        all it may write in its working directory together.
    kernel_guards: True (all of GUARDS), False (none), or the names of the guards to try.
    audit_hook: False switches the hook off, for tests that check the other layers alone.
    """
    tmp = lock = proc = lifeline = status_r = None
    try:
        guards = (GUARDS if kernel_guards is True else () if kernel_guards is False
                  else tuple(kernel_guards))
        if set(guards) - set(GUARDS):
            raise ValueError(f"unknown kernel guards {sorted(set(guards) - set(GUARDS))}")
        _sweep(tempfile.gettempdir())
        tmp, lock = _workdir()
        with open(os.path.join(tmp, "main.py"), "w", encoding="utf-8") as f:
            f.write(code)
        for name, text in (files or {}).items():
            if os.path.basename(name) != name or name in ("", ".", "..", "main.py"):
                raise ValueError(f"sandbox file name must be a plain name: {name!r}")
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                f.write(text)
        lifeline_r, lifeline = os.pipe()
        status_r, status_w = os.pipe()
        cfg = {
            "main": "main.py",
            "dir": tmp,
            "caller": os.getpid(),
            "lifeline": lifeline_r,
            "status": status_w,
            "lock": lock,
            "guards": list(guards),
            "cpu_s": max(1, int(cpu_s)),
            "memory_mb": int(memory_mb),
            "fsize_mb": int(fsize_mb),
            "nofile": 64,
            "nproc": int(max_procs),
            "max_write_opens": int(max_write_opens),
            "audit_hook": bool(audit_hook),
        }
        argv = [sys.executable, "-I", "-S", "-B", "-c", _PRELUDE, json.dumps(cfg)]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=tmp,
                env=dict(_ENV),
                start_new_session=True,  # its own process group, killed as a whole at the end
                close_fds=True,
                pass_fds=(lifeline_r, status_w, lock),
            )
        finally:
            os.close(lifeline_r)
            os.close(status_w)
        lifeline_w, lifeline = lifeline, None  # _communicate closes it
        return _communicate(proc, lifeline_w, status_r, stdin.encode("utf-8"), timeout_s,
                            cpu_s, max_output_bytes)
    except Exception as e:  # the runner itself failed (no python, no /tmp, ...)
        return SandboxResult(False, None, "", f"sandbox error: {type(e).__name__}: {e}", False,
                             "sandbox error")
    finally:
        for fd in (lifeline, status_r):
            if fd is not None:
                os.close(fd)
        if proc is not None and proc.returncode is None:  # not reaped: its group id is safe
            _kill_group(proc.pid)
            _reap(proc)
            for s in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    if s is not None:
                        s.close()
                except OSError:
                    pass
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)  # the keeper's job, unless it was killed
        if lock is not None:
            os.close(lock)


def _workdir() -> tuple[str, int]:
    """A fresh working directory and an fd that holds a shared flock on it: the caller and the
    keeper keep it, so the lock lasts while either lives, and a folder that nobody locks
    was left by a caller and a keeper both killed (SIGKILL, the OOM killer) before they
    could delete it."""
    while True:
        tmp = os.path.realpath(tempfile.mkdtemp(prefix="rl2f-sandbox-"))
        fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits out a sweep that took it in between
        if os.fstat(fd).st_nlink:  # not swept meanwhile
            return tmp, fd
        os.close(fd)


def _sweep(parent: str) -> None:
    """Delete the working directories in `parent` that no live caller or keeper holds (see
    _workdir): made by this user, or by a student's own uid when the caller is root."""
    me = os.geteuid()
    try:
        entries = [e for e in os.scandir(parent) if _WORKDIR.fullmatch(e.name)]
    except OSError:
        return
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            uid = os.fstat(fd).st_uid
            if uid == me or (me == 0 and uid >= _UID_BASE):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: in use
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            pass
        finally:
            os.close(fd)


def _communicate(proc, lifeline: int, status_r: int, data: bytes, timeout_s: float,
                 cpu_s: float, cap: int) -> SandboxResult:
    deadline = time.monotonic() + timeout_s
    sel = selectors.DefaultSelector()
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray(), status_r: bytearray()}
    seen = {out_fd: 0, err_fd: 0}  # bytes produced, kept or not
    for fd in (out_fd, err_fd, status_r):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    in_fd = proc.stdin.fileno()
    if data:
        os.set_blocking(in_fd, False)
        sel.register(in_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    sent = 0
    timed_out = overflow = False
    kept_at = None  # when the keeper closed the status pipe: it has reported and is exiting
    try:
        while not overflow:
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if kept_at is not None:
                # a descendant that left the group may hold the pipes open: do not wait for it
                if now - kept_at > 0.2 or not ({out_fd, err_fd} & set(sel.get_map())):
                    break
            for key, _ in sel.select(min(deadline - now, 0.05)):
                fd = key.fd
                if fd == in_fd:
                    try:
                        sent += os.write(fd, data[sent:sent + 65536])
                    except BlockingIOError:
                        continue
                    except OSError:  # the child closed stdin: it will not read the rest
                        sent = len(data)
                    if sent >= len(data):
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(fd)
                    if fd == status_r:
                        kept_at = time.monotonic()
                    continue
                if fd == status_r:
                    bufs[fd] += chunk
                    continue
                seen[fd] += len(chunk)
                bufs[fd] += chunk[: max(0, cap - len(bufs[fd]))]
                overflow = overflow or seen[fd] > cap
        if kept_at is None:  # stop the run: the keeper kills everything, then reports
            os.close(lifeline)
            lifeline = None
            for fd in set(sel.get_map()) - {status_r}:
                sel.unregister(fd)
            end = time.monotonic() + 5.0
            while status_r in sel.get_map() and time.monotonic() < end:
                if sel.select(end - time.monotonic()):
                    chunk = os.read(status_r, 65536)
                    bufs[status_r] += chunk
                    if not chunk:
                        sel.unregister(status_r)
    finally:
        sel.close()
        if lifeline is not None:
            os.close(lifeline)

    # The keeper is exiting or exited: its zombie keeps the group id reserved until reaped,
    # so the kills below cannot hit a recycled group.
    _wait_exited(proc.pid, 1.0)
    _kill_group(proc.pid)
    try:
        status = json.loads(bytes(bufs[status_r]))
    except ValueError:  # the keeper was killed before its cleanup: do it here
        status = {"wait": None, "error": "the keeper ended without a report"}
        kill_leftovers(proc.pid)
    _reap(proc)
    wait = status.get("wait")
    returncode = None if wait is None else os.waitstatus_to_exitcode(wait)
    cpu_used = status.get("cpu") or 0.0
    reason = None
    if timed_out:
        reason = "timeout"
    elif overflow:
        reason = "output limit"
    elif returncode is None:
        reason = "sandbox error"
    elif returncode < 0:
        sig = -returncode
        # SIGXCPU at RLIMIT_CPU's soft limit, SIGKILL at the hard one (cpu_s + 1)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= cpu_s):
            reason = "cpu limit"
        else:
            try:
                reason = f"signal {signal.Signals(sig).name}"
            except ValueError:
                reason = f"signal {sig}"
    stderr = _decode(bufs[err_fd], seen[err_fd] > cap)
    if reason == "sandbox error":
        stderr += f"\nsandbox error: {status.get('error')}"
    return SandboxResult(
        ok=returncode == 0 and reason is None,
        returncode=returncode,
        stdout=_decode(bufs[out_fd], seen[out_fd] > cap),
        stderr=stderr,
        timed_out=timed_out,
        killed_reason=reason,
        guards=tuple(status.get("guards", ())),
        pgid=proc.pid,
    )


def _wait_exited(pid: int, timeout_s: float) -> None:
    """Wait (bounded) until the child has exited, without reaping it."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return
        time.sleep(0.002)


def _reap(proc, timeout_s: float = 5.0) -> None:
    """Reap the SIGKILLed keeper; bounded, so a process stuck in the kernel cannot hang the
    runner."""
    end = time.monotonic() + timeout_s
    while proc.returncode is None and time.monotonic() < end:
        try:
            pid, status = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return
        time.sleep(0.005)


def _decode(b: bytes, truncated: bool) -> str:
    s = bytes(b).decode("utf-8", errors="replace")
    return s + "\n... [output truncated]" if truncated else s


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
