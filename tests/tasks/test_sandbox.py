"""The sandbox contains what untrusted student code can do: each class of misbehaviour is
its own test.

A class runs with every layer ("all"), with only the Python audit hook ("hook"), with only
the kernel guards ("kernel"), and with each single kernel guard that rl2f/tasks/sandbox.py's
docstring says holds against it alone ("only-<guard>", the hook off): `HOLDS` below mirrors
that docstring, so a claim there that does not hold turns a test red. The kernel variants
are skipped where the kernel or the privileges do not allow the guard (what the sandbox
reports as active, not assumed).
"""
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from rl2f.tasks.sandbox import GUARDS, group_members, run_untrusted

# class of hostile program -> the kernel guards documented to hold against it alone
HOLDS = {
    "spawn": ("seccomp",),
    "write": ("landlock",),
    "network": ("net-ns", "seccomp"),
    "metadata": ("seccomp",),
    "host scheduling": ("pid-ns", "seccomp"),
    "privilege": ("creds", "seccomp"),
    "signals": ("pid-ns", "seccomp"),
    "read": ("landlock",),
    "host paths": ("mount-ns",),
    "unix socket": ("mount-ns", "seccomp"),
    "shared memory": ("seccomp",),
}


def _variants(cls):
    return ["all", "hook", "kernel"] + [f"only-{g}" for g in HOLDS[cls]]


def _attempts(success: str, catch: str = "OSError") -> str:
    """The start of a hostile program: `attempt(what, f)` prints "<success> what" when f()
    goes through and "refused what <error type>" when it raises `catch`."""
    return f"""import os
def attempt(what, f):
    try:
        f()
        print("{success}", what)
    except {catch} as e:
        print("refused", what, type(e).__name__)
"""


@pytest.fixture(scope="module")
def active_guards():
    """The kernel guards this machine allows, as the sandbox reports them."""
    r = run_untrusted("pass", audit_hook=False, timeout_s=10)
    assert r.ok, r.stderr
    return set(r.guards)


def _layers(variant, active, cls):
    """run_untrusted's keyword arguments for a variant; skips what this machine cannot do."""
    if variant == "all":
        return {}
    if variant == "hook":
        return {"kernel_guards": False}
    wanted = GUARDS if variant == "kernel" else (variant.removeprefix("only-"),)
    if not set(HOLDS[cls]) & set(wanted) & active:
        pytest.skip(f"no kernel guard against {cls} among {wanted} is available here")
    return {"kernel_guards": wanted, "audit_hook": False}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _assert_nothing_left(result):
    """Neither the sandbox's keeper nor anything in its process group or session survives."""
    assert result.pgid is not None
    assert not _alive(result.pgid)
    assert group_members(result.pgid) == []


def test_runs_code_with_stdin_and_exit_status():
    """Normal code runs: stdin in, stdout out, exit status and stderr come back."""
    r = run_untrusted("import sys\nprint(sys.stdin.read()[::-1])", stdin="abc")
    assert r.ok and r.returncode == 0 and r.stdout == "cba\n" and not r.timed_out
    r = run_untrusted("import sys\nprint('oops', file=sys.stderr)\nsys.exit(3)")
    assert not r.ok and r.returncode == 3 and "oops" in r.stderr and r.killed_reason is None


def test_infinite_loop_is_killed_at_the_deadline():
    """A busy loop is stopped by the wall-clock timeout, its whole group killed."""
    r = run_untrusted("while True: pass", timeout_s=1.0, cpu_s=10)
    assert r.timed_out and r.killed_reason == "timeout" and r.returncode == -9 and not r.ok
    _assert_nothing_left(r)


def test_cpu_limit_kills_even_without_wall_deadline():
    """RLIMIT_CPU ends a spinning child before a generous wall-clock deadline."""
    r = run_untrusted("while True: pass", timeout_s=60, cpu_s=1)
    assert not r.ok and not r.timed_out and r.killed_reason == "cpu limit"


@pytest.mark.parametrize("layer", _variants("spawn"))
def test_fork_bomb_is_contained(layer, active_guards):
    """A fork bomb (errors swallowed, all spawn APIs tried) spawns nothing: the test process
    survives and no process of the sandbox's group or session is left afterwards."""
    code = """
import os, sys
def mark(name):  # a spawned process proves it ran by leaving a file behind
    return [sys.executable, "-c", "open(%r, 'w').close()" % name]
for i in range(50):
    for spawn in (lambda: os.fork() == 0 and (open("forked%d" % i, "w").close(), os._exit(0)),
                  lambda: os.system("echo > system%d" % i),
                  lambda: __import__("subprocess").run(mark("popen%d" % i)),
                  lambda: os.waitpid(os.posix_spawn(sys.executable, mark("spawn%d" % i), {}), 0)):
        try:
            spawn()
        except BaseException:
            pass
import time
time.sleep(0.1)
print("spawned", len([f for f in os.listdir(".") if f != "main.py"]), flush=True)
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    r = run_untrusted(code, timeout_s=2.0, **_layers(layer, active_guards, "spawn"))
    assert "spawned 0" in r.stdout
    assert r.timed_out and not r.ok
    _assert_nothing_left(r)


def test_process_group_kill_alone_reaps_spawned_children():
    """With both guards off, the outermost layer still kills everything the code spawned
    (children and grandchildren sleeping forever, some in a session of their own) when the
    deadline passes."""
    code = """
import os, time
for i in range(4):
    if os.fork() == 0:
        if i % 2:
            os.setsid()  # out of the sandbox's process group and session
        if os.fork() == 0:
            print(os.getpid(), flush=True)
            time.sleep(100)
        print(os.getpid(), flush=True)
        time.sleep(100)
time.sleep(100)
"""
    r = run_untrusted(code, timeout_s=1.0, kernel_guards=False, audit_hook=False)
    assert r.timed_out
    spawned = [int(pid) for pid in r.stdout.split()]
    assert len(spawned) == 8
    _assert_nothing_left(r)
    assert not [pid for pid in spawned if _alive(pid)]


def test_memory_bomb_fails_cleanly():
    """Allocating far past the address-space limit fails inside the child, not the host."""
    r = run_untrusted("x = []\nwhile True:\n    x.append(bytearray(50 * 2**20))",
                      memory_mb=256, timeout_s=10)
    assert not r.ok and not r.timed_out
    assert "MemoryError" in r.stderr or r.killed_reason is not None


def test_output_is_capped():
    """A flood of output is cut at the cap and the child stopped, not buffered without end."""
    r = run_untrusted("while True: print('x' * 1000)", max_output_bytes=10_000, timeout_s=5)
    assert r.killed_reason == "output limit" and not r.ok and not r.timed_out
    assert len(r.stdout) < 10_100 and r.stdout.endswith("[output truncated]")


@pytest.mark.parametrize("layer", _variants("write"))
def test_writes_outside_the_working_directory_are_refused(layer, active_guards, tmp_path):
    """Writing to /tmp, to the repository or to any other outside path fails, and no file
    appears, whether through open() or through native modules that write files themselves
    (SQLite, readline's history, POSIX shared memory and semaphores in /dev/shm); writing in
    the child's own directory works and vanishes with it."""
    tag = uuid.uuid4().hex
    targets = [f"/tmp/rl2f-sandbox-test-{tag}",
               str(Path(__file__).resolve().parent / f"written-{tag}"),
               str(tmp_path / "x.txt"), f"../escape-{tag}"]
    made = [f"/tmp/rl2f-sandbox-dir-{tag}", f"/tmp/rl2f-sandbox-sqlite-{tag}",
            f"/tmp/rl2f-sandbox-history-{tag}", f"/dev/shm/rl2f-shm-{tag}",
            f"/dev/shm/sem.rl2f-sem-{tag}"]
    # Exception: OSError, ImportError, sqlite3.OperationalError... all count as refused
    code = _attempts("WROTE", "Exception") + f"""
for path in {targets!r}:
    attempt(path, lambda: open(path, "w").write("pwned"))
attempt("mkdir", lambda: os.mkdir({made[0]!r}))
attempt("sqlite3", lambda: __import__("sqlite3").connect({made[1]!r}).execute("create table t(x)"))
attempt("readline", lambda: __import__("readline").write_history_file({made[2]!r}))
attempt("shared memory", lambda: __import__("multiprocessing.shared_memory").shared_memory
        .SharedMemory(name="rl2f-shm-{tag}", create=True, size=4096))
attempt("semaphore", lambda: __import__("_multiprocessing").SemLock(1, 1, 1, "/rl2f-sem-{tag}", False))
with open("mine.txt", "w") as f:
    f.write("ok")
print("cwd", os.getcwd(), open("mine.txt").read())
"""
    try:
        r = run_untrusted(code, **_layers(layer, active_guards, "write"))
        assert r.ok, r.stderr
        assert "WROTE" not in r.stdout and r.stdout.count("refused") == len(targets) + 5
        cwd = r.stdout.split("cwd ")[1].split()[0]
        parent_of_cwd = os.path.dirname(cwd)
        for t in targets + made:
            assert not os.path.exists(os.path.join(parent_of_cwd, t) if t.startswith("..") else t)
        assert not os.path.exists(cwd)  # the working directory is deleted afterwards
    finally:  # a failed guard leaves no litter behind
        for t in made + targets[:3]:
            if os.path.isdir(t):
                os.rmdir(t)
            elif os.path.exists(t):
                os.remove(t)


@pytest.mark.parametrize("layer", _variants("read"))
def test_parent_environment_is_invisible(layer, active_guards):
    """A secret in the caller's environment reaches the child neither through os.environ nor
    through /proc/<caller>/environ (the caller is a real process started with the secret)."""
    secret = uuid.uuid4().hex
    code = """
import os
print(sorted(os.environ))
print(dict(os.environ))
for p in ("/proc/CALLER/environ", "/proc/%d/environ" % os.getppid(), "/proc/1/environ"):
    try:
        print(open(p, "rb").read())
    except OSError as e:
        print("refused", type(e).__name__)
"""
    runner = ("import json, os, sys\nfrom rl2f.tasks.sandbox import run_untrusted\n"
              "code = sys.stdin.read().replace('CALLER', str(os.getpid()))\n"
              f"r = run_untrusted(code, **{_layers(layer, active_guards, 'read')!r})\n"
              "print(json.dumps(r.__dict__))")
    env = dict(os.environ, RL2F_SANDBOX_SECRET=secret)
    out = subprocess.run([sys.executable, "-c", runner], input=code, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["ok"], r["stderr"]
    assert secret not in r["stdout"] and secret not in r["stderr"]
    # only what the runner sets (LC_CTYPE: Python's own locale coercion on some hosts)
    names = json.loads(r["stdout"].split("\n")[0].replace("'", '"'))
    assert set(names) <= {"LANG", "PATH", "LC_CTYPE"}
    assert r["stdout"].count("refused") >= 2  # the caller's and pid 1's environ at least


@pytest.mark.parametrize("layer", _variants("network"))
def test_network_connection_never_arrives(layer, active_guards):
    """Connecting to a port the test listens on (loopback only) fails in the child, and the
    listener never sees a connection."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        code = f"""
import socket
for attempt in range(3):
    try:
        s = socket.create_connection(("127.0.0.1", {port}), timeout=0.5)
        s.sendall(b"hello")
        print("CONNECTED")
    except OSError as e:
        print("refused", type(e).__name__)
"""
        r = run_untrusted(code, timeout_s=5, **_layers(layer, active_guards, "network"))
        assert r.ok, r.stderr
        assert "CONNECTED" not in r.stdout and r.stdout.count("refused") == 3
        listener.settimeout(0.2)
        with pytest.raises((socket.timeout, BlockingIOError)):
            listener.accept()
    finally:
        listener.close()


@pytest.mark.parametrize("layer", _variants("metadata"))
def test_metadata_of_readable_files_cannot_change(layer, active_guards):
    """chmod, chown, utime and setxattr on a file the sandbox may read (a stdlib module that
    nothing imports) all fail, and its mode, owner and times are unchanged afterwards."""
    target = os.path.join(os.path.dirname(os.__file__), "antigravity.py")
    before = os.stat(target)
    code = _attempts("CHANGED") + f"""
path = {target!r}
attempt("chmod", lambda: os.chmod(path, 0o600))
attempt("chown", lambda: os.chown(path, 12345, 12345))
attempt("utime", lambda: os.utime(path, (0, 0)))
attempt("setxattr", lambda: os.setxattr(path, "user.rl2f", b"x"))
fd = os.open(path, os.O_RDONLY)
attempt("fchmod", lambda: os.fchmod(fd, 0o600))
"""
    try:
        r = run_untrusted(code, **_layers(layer, active_guards, "metadata"))
        assert r.ok, r.stderr
        assert "CHANGED" not in r.stdout and r.stdout.count("refused") == 5
        after = os.stat(target)
        assert (after.st_mode, after.st_uid, after.st_gid, after.st_mtime_ns) == \
            (before.st_mode, before.st_uid, before.st_gid, before.st_mtime_ns)
        with pytest.raises(OSError):
            os.getxattr(target, "user.rl2f")
    finally:  # undo a failed guard's damage to the shared interpreter, if there is any
        after = os.stat(target)
        if after.st_mode != before.st_mode:
            os.chmod(target, stat.S_IMODE(before.st_mode))
        if (after.st_uid, after.st_gid) != (before.st_uid, before.st_gid):
            os.chown(target, before.st_uid, before.st_gid)
        if after.st_mtime_ns != before.st_mtime_ns:
            os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
        if "user.rl2f" in os.listxattr(target):
            os.removexattr(target, "user.rl2f")


def _scheduling():
    return (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0),
            os.sched_getparam(0).sched_priority, os.sched_getaffinity(0))


@pytest.mark.parametrize("layer", _variants("host scheduling"))
def test_trainer_scheduling_is_untouched(layer, active_guards):
    """Renicing, pinning to one CPU, demoting to SCHED_IDLE / SCHED_BATCH and reprioritising
    the trainer (this test's process, named by pid, by process group and as the parent) all
    fail: its nice value, policy, priority and CPU affinity are the same afterwards."""
    before = _scheduling()
    me = os.getpid()
    code = _attempts("CHANGED") + f"""
# as pid 1 of its own namespace its parent is "pid 0", which these calls read as itself
targets = [pid for pid in ({me}, os.getppid()) if pid]
print("targets", len(targets))
for pid in targets:
    attempt("nice", lambda: os.setpriority(os.PRIO_PROCESS, pid, 19))
    attempt("affinity", lambda: os.sched_setaffinity(pid, {{0}}))
    attempt("idle", lambda: os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0)))
    attempt("batch", lambda: os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0)))
    attempt("param", lambda: os.sched_setparam(pid, os.sched_param(0)))
attempt("group nice", lambda: os.setpriority(os.PRIO_PGRP, {os.getpgid(0)}, 19))
"""
    try:
        r = run_untrusted(code, **_layers(layer, active_guards, "host scheduling"))
        assert r.ok, r.stderr
        assert _scheduling() == before
        # a refusal, or "no such process" where the trainer cannot be named at all
        n = int(r.stdout.split("targets ")[1].split()[0])
        assert "CHANGED" not in r.stdout and r.stdout.count("refused") == 5 * n + 1, r.stdout
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, before[0])
        os.sched_setaffinity(0, before[3])
        os.sched_setscheduler(0, before[1], os.sched_param(before[2]))


@pytest.mark.parametrize("layer", _variants("privilege"))
def test_no_real_time_priority_negative_nice_or_host_name(layer, active_guards):
    """The student cannot give itself SCHED_FIFO / SCHED_RR or a negative nice, nor rename
    the host: afterwards its own policy and nice value are ordinary, the host name unchanged."""
    host = socket.gethostname()
    code = _attempts("CHANGED") + """
import socket
attempt("fifo", lambda: os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1)))
attempt("rr", lambda: os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1)))
attempt("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, 0, -10))
attempt("nice", lambda: os.nice(-5))
attempt("hostname", lambda: socket.sethostname("rl2f-sandboxed"))
print("own", os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
"""
    try:
        r = run_untrusted(code, **_layers(layer, active_guards, "privilege"))
        assert r.ok, r.stderr
        assert "CHANGED" not in r.stdout and r.stdout.count("refused") == 5, r.stdout
        policy, nice = map(int, r.stdout.split("own ")[1].split())
        assert policy not in (os.SCHED_FIFO, os.SCHED_RR) and nice >= 0
        assert socket.gethostname() == host
    finally:
        if socket.gethostname() != host:
            socket.sethostname(host)


@pytest.mark.parametrize("layer", _variants("signals"))
def test_other_processes_cannot_be_signalled(layer, active_guards):
    """kill, killpg and a pidfd (opened by pid or through /proc) cannot reach a process
    outside the sandbox: the victim is still alive afterwards."""
    victim = subprocess.Popen(["sleep", "30"], start_new_session=True)
    code = _attempts("SENT") + f"""
import signal
attempt("kill", lambda: os.kill({victim.pid}, signal.SIGKILL))
attempt("killpg", lambda: os.killpg({victim.pid}, signal.SIGKILL))
attempt("pidfd", lambda: signal.pidfd_send_signal(os.pidfd_open({victim.pid}), signal.SIGKILL))
attempt("proc", lambda: signal.pidfd_send_signal(os.open("/proc/{victim.pid}", os.O_RDONLY),
                                                 signal.SIGKILL))
"""
    try:
        r = run_untrusted(code, **_layers(layer, active_guards, "signals"))
        assert r.ok, r.stderr
        assert "SENT" not in r.stdout and r.stdout.count("refused") == 4, r.stdout
        time.sleep(0.05)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every live descendant of `root` (start times tell a pid reused
    later from the same process)."""
    parents, starts = {}, {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in ("Z", "X"):
                parents[int(name)], starts[int(name)] = int(fields[1]), fields[19]
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = starts[pid]
                frontier.append(pid)
    return found


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


def _started(pid: int, cwd: str) -> bool:
    """Whether the student's "started" file is in `cwd`, as process `pid` sees its files (a
    student in a mount namespace writes in a working directory of its own)."""
    return os.path.exists(f"/proc/{pid}/root{cwd}/started")


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


@pytest.mark.parametrize("layer", ["all", "hook", "kernel", "none"])
def test_nothing_survives_a_caller_killed_by_sigkill(layer):
    """The caller (a child process running the sandbox) is SIGKILLed while the student sleeps
    (and, where forking is allowed, while its children and grandchildren sleep too, some in a
    session of their own): within a few seconds no process of the sandbox is left and its
    working directory is gone."""
    kwargs = {"all": {}, "hook": {"kernel_guards": False}, "kernel": {"audit_hook": False},
              "none": {"kernel_guards": False, "audit_hook": False}}[layer]
    code = """
import os, time
for i in range(2):
    try:
        if os.fork() == 0:
            if i:
                os.setsid()  # out of the sandbox's process group and session
            os.fork()
            time.sleep(60)
    except OSError:
        pass
open("started", "w").close()
time.sleep(60)
"""
    runner = ("import sys\nfrom rl2f.tasks.sandbox import run_untrusted\n"
              f"run_untrusted(sys.stdin.read(), timeout_s=60, cpu_s=60, **{kwargs!r})")
    caller = subprocess.Popen([sys.executable, "-c", runner], stdin=subprocess.PIPE, text=True)
    workdir, sandbox = None, {}
    try:
        caller.stdin.write(code)
        caller.stdin.close()
        end = time.monotonic() + 30
        while time.monotonic() < end and workdir is None:
            for pid in _descendants(caller.pid):
                try:
                    cwd = os.readlink(f"/proc/{pid}/cwd")
                except OSError:
                    continue
                if os.path.basename(cwd).startswith("rl2f-sandbox-") and _started(pid, cwd):
                    workdir = cwd
            time.sleep(0.02)
        assert workdir is not None, "the student never started"
        time.sleep(0.1)  # the student's children have forked theirs by now
        sandbox = _descendants(caller.pid)
        assert len(sandbox) >= 2  # the keeper and the student at least
        caller.kill()
        caller.wait()
        end = time.monotonic() + 5
        while time.monotonic() < end:
            left = [p for p, t in sandbox.items() if _start_time(p) == t]
            if not left and not os.path.exists(workdir):
                break
            time.sleep(0.05)
        assert left == [] and not os.path.exists(workdir)
    finally:  # a red run leaves nothing behind either
        caller.kill()
        caller.wait()
        for pid, started in sandbox.items():
            if _start_time(pid) == started:
                os.kill(pid, signal.SIGKILL)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


# A caller that restricts itself before it runs the sandbox (ctypes, x86_64 Linux): it drops
# CAP_SYS_ADMIN (from its bounding set too, so the exec'd keeper does not get it back) or
# installs a seccomp filter that refuses unshare(2), then prints the sandbox's result.
_RESTRICTED_CALLER = """
import ctypes, json, os, sys
from rl2f.tasks.sandbox import run_untrusted
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
if sys.argv[1] == "no-cap-sys-admin":
    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    header, data = Header(0x20080522, 0), (Data * 2)()
    assert libc.prctl(24, 21, 0, 0, 0) == 0  # PR_CAPBSET_DROP CAP_SYS_ADMIN
    assert libc.capget(ctypes.byref(header), data) == 0
    data[0].effective &= ~(1 << 21)
    data[0].permitted &= ~(1 << 21)
    assert libc.capset(ctypes.byref(header), data) == 0
else:  # ld nr; jeq unshare -> EPERM; allow
    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]
    code = (Filter * 4)(Filter(0x20, 0, 0, 0), Filter(0x15, 0, 1, 272),
                        Filter(0x06, 0, 0, 0x00050001), Filter(0x06, 0, 0, 0x7FFF0000))
    prog = Prog(4, code)
    assert libc.prctl(38, 1, 0, 0, 0) == 0
    assert libc.prctl(22, 2, ctypes.addressof(prog), 0, 0) == 0
r = run_untrusted(sys.stdin.read().replace("CALLER", str(os.getpid())))
print(json.dumps(r.__dict__))
"""

# Hostile to the caller: renice, pin and signal it by pid.
_HOSTILE_TO_CALLER = """
import os, signal
for what, f in [("nice", lambda: os.setpriority(os.PRIO_PROCESS, CALLER, 19)),
                ("affinity", lambda: os.sched_setaffinity(CALLER, {0})),
                ("kill", lambda: os.kill(CALLER, signal.SIGKILL))]:
    try:
        f()
        print("DONE", what)
    except OSError as e:
        print("refused", what, type(e).__name__)
"""


def _restricted_run(how):
    if os.geteuid() != 0 or os.uname().machine != "x86_64":
        pytest.skip("needs a root caller on x86_64 to restrict itself")
    out = subprocess.run([sys.executable, "-c", _RESTRICTED_CALLER, how],
                         input=_HOSTILE_TO_CALLER, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr  # the caller was neither killed nor refused
    r = json.loads(out.stdout)
    assert r["ok"], r["stderr"]
    assert "DONE" not in r["stdout"] and r["stdout"].count("refused") == 3, r["stdout"]
    return set(r["guards"])


def test_namespaces_through_a_user_namespace_without_cap_sys_admin(active_guards):
    """A caller without CAP_SYS_ADMIN (as any unprivileged user) still gets the namespaces
    through a user namespace, and the student still cannot touch the caller."""
    guards = _restricted_run("no-cap-sys-admin")
    if "user-ns" not in guards:
        pytest.skip("this kernel does not let this caller create a user namespace")
    assert {"pid-ns", "uts-ns", "ipc-ns", "net-ns"} <= guards
    assert {"creds", "seccomp"} & active_guards <= guards


def test_falls_back_cleanly_where_namespaces_are_refused(active_guards):
    """Where unshare(2) is refused altogether, the sandbox runs without any namespace, says
    so in `guards`, and the other guards still keep the student off the caller."""
    guards = _restricted_run("no-unshare")
    assert not {"user-ns", "pid-ns", "uts-ns", "ipc-ns", "net-ns", "mount-ns"} & guards
    assert {"creds", "landlock", "seccomp"} & active_guards <= guards


def test_guards_can_be_chosen_one_by_one(active_guards):
    """kernel_guards names the guards to try: only those (and the hook) are reported active,
    and an unknown name is a runner error, not a silently weaker sandbox."""
    for guard in GUARDS:
        r = run_untrusted("pass", kernel_guards=[guard])
        assert r.ok, r.stderr
        expected = {guard} & active_guards | {"hook"}
        assert set(r.guards) - {"user-ns", "unprivileged-uid"} == expected
    r = run_untrusted("pass", kernel_guards=["seccomp", "selinux"])
    assert not r.ok and r.killed_reason == "sandbox error" and "selinux" in r.stderr


def test_hook_survives_monkeypatching():
    """Patching builtins, os and posixpath from the student side does not open the hook."""
    target = f"/tmp/rl2f-sandbox-patch-{uuid.uuid4().hex}"
    code = f"""
import builtins, os, posixpath
builtins.isinstance = lambda *a: True
builtins.type = lambda *a: str
os.getcwd = lambda: "/tmp"
posixpath.realpath = lambda p, **k: "/nowhere"
open({target!r}, "w").write("x")
"""
    r = run_untrusted(code, kernel_guards=False)
    assert not r.ok and "PermissionError" in r.stderr and not os.path.exists(target)


def test_native_escape_hatches_are_closed():
    """ctypes, _posixsubprocess, re-imported posix, heap walking and rlimit raising are refused."""
    code = """
import sys, gc
for what, f in [
    ("ctypes", lambda: __import__("ctypes")),
    ("posixsubprocess", lambda: __import__("importlib").import_module("_posixsubprocess")),
    ("posix", lambda: (sys.modules.pop("posix"), __import__("posix"))),
    ("gc", lambda: gc.get_objects()),
    ("rlimit", lambda: __import__("resource").setrlimit(__import__("resource").RLIMIT_CPU, (99, 99))),
]:
    try:
        f()
        print("ALLOWED", what)
    except (ImportError, PermissionError, ValueError, OSError):
        print("refused", what)
"""
    r = run_untrusted(code)
    assert r.ok, r.stderr
    assert "ALLOWED" not in r.stdout and r.stdout.count("refused") == 5


def test_runner_error_is_a_result_not_an_exception():
    """A bad request to the runner comes back as a failed result (the runner never raises)."""
    r = run_untrusted("print(1)", files={"../evil.py": "x"})
    assert not r.ok and r.returncode is None and r.killed_reason == "sandbox error"


# --- memory outside the address space, threads, host metadata, unix sockets, stale dirs ---


@pytest.mark.parametrize("layer", _variants("shared memory"))
@pytest.mark.parametrize("how", ["memfd", "sysv", "pipes"])
def test_memory_outside_the_address_space_is_refused(how, layer, active_guards):
    """Memory the address-space limit does not count cannot be held: 59 memfds of 8 MiB
    each (472 MiB beside a 512 MiB limit: RLIMIT_FSIZE bounds each file, not their number),
    as many System V shared memory segments, each detached once filled, and pipe buffers
    grown to 1 MiB each. The first refusal is not caught, so the run fails (the grading
    records a failure), and what was held before it is printed."""
    code = {"memfd": """
import os
held = 0
try:
    for i in range(59):
        fd = os.memfd_create("x%d" % i)
        for _ in range(8):
            os.write(fd, b"x" * (1 << 20))
            held += 1
finally:
    print("held MiB", held)
""", "sysv": """
held = 0
try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    for i in range(59):
        seg = libc.shmget(0, 8 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
        if seg < 0:
            raise OSError(ctypes.get_errno(), "shmget")
        addr = libc.shmat(seg, None, 0)
        ctypes.memset(addr, 1, 8 << 20)
        libc.shmdt(ctypes.c_void_p(addr))  # still held, no longer in the address space
        held += 8
finally:
    print("held MiB", held)
""", "pipes": """
import fcntl, os
held = 0
try:
    for i in range(30):
        r, w = os.pipe()
        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
        os.set_blocking(w, False)
        os.write(w, b"x" * (1 << 20))
        held += 1
finally:
    print("held MiB", held)
"""}[how]
    r = run_untrusted(code, memory_mb=512, timeout_s=20, cpu_s=20,
                      **_layers(layer, active_guards, "shared memory"))
    assert not r.ok, r.stdout
    assert r.stdout.split() == ["held", "MiB", "0"], (r.stdout, r.stderr)


@pytest.mark.parametrize("layer", ["all", "hook", "kernel"])
def test_threads_are_bounded_by_max_procs(layer, active_guards):
    """752 threads with small stacks (so that the address-space limit does not stop them)
    when max_procs is 256: starting the 256th fails. The kernel layer alone bounds them only
    where the student runs as a uid other than 0 (RLIMIT_NPROC never binds uid 0): a uid of
    its own for a root caller (creds, with the mount namespace making the interpreter
    reachable), the caller's uid otherwise."""
    code = """
import os, threading
threading.stack_size(1 << 16)
stop = threading.Event()
n = 0
try:
    for _ in range(752):
        threading.Thread(target=stop.wait, daemon=True).start()
        n += 1
except (RuntimeError, OSError) as e:
    print("stopped", type(e).__name__)
stop.set()
print("threads", n, "uid", os.getuid())
"""
    kwargs = {"all": {}, "hook": {"kernel_guards": False},
              "kernel": {"audit_hook": False}}[layer]
    r = run_untrusted(code, max_procs=256, timeout_s=30, cpu_s=30, **kwargs)
    assert r.ok, r.stderr
    n, uid = int(r.stdout.split("threads ")[1].split()[0]), int(r.stdout.split("uid ")[1])
    if layer == "kernel" and uid == 0:
        pytest.skip("the student runs as uid 0 here, which RLIMIT_NPROC never binds")
    assert n < 256, r.stdout


def _hidden_targets(tmp_path):
    """Host paths that exist, each with a sibling that does not."""
    secret = tmp_path / "secret.txt"
    secret.write_text("x" * 12345)
    repo = Path(__file__).resolve().parents[2]
    home = os.path.realpath(os.path.expanduser("~"))
    base = os.path.realpath(sys.base_prefix)
    # an entry of the home folder that is not on the way to the interpreter (visible by design)
    in_home = [os.path.join(home, n) for n in sorted(os.listdir(home))
               if not (base + "/").startswith(os.path.join(home, n) + "/")][:1]
    existing = ["/etc/passwd", str(repo / "setup.py"), str(repo), str(secret)] + in_home
    return [(p, p + f"-missing-{uuid.uuid4().hex}") for p in existing]


@pytest.mark.parametrize("layer", _variants("host paths"))
def test_host_metadata_is_hidden(layer, active_guards, tmp_path):
    """os.stat, os.lstat, os.path.exists / getsize, os.access, os.chdir and pathlib on host
    paths outside what the sandbox may read (the password file, the repository, a test file
    of known size, the home folder) tell nothing: each call ends as it does on a path that
    does not exist, and no size comes back. The student's own files and the standard
    library still answer."""
    pairs = _hidden_targets(tmp_path)
    code = f"""
import os, pathlib
cwd = os.getcwd()
calls = {{
    "stat": lambda p: os.stat(p).st_size,
    "lstat": lambda p: os.lstat(p).st_size,
    "exists": lambda p: os.path.exists(p),
    "getsize": lambda p: os.path.getsize(p),
    "access": lambda p: os.access(p, os.F_OK),
    "chdir": lambda p: (os.chdir(p), os.chdir(cwd)),
    "pathlib": lambda p: pathlib.Path(p).stat().st_size,
}}
for path, missing in {pairs!r}:
    for name, call in calls.items():
        seen = []
        for p in (path, missing):
            try:
                seen.append(repr(call(p)))
            except OSError as e:
                seen.append(type(e).__name__)
        print("same" if seen[0] == seen[1] else "DIFFERS", name, path, *seen)
print("own", os.path.getsize("main.py") > 0, os.path.isdir(os.path.dirname(os.__file__)),
      pathlib.Path(os.__file__).is_file(), os.access(".", os.W_OK))
"""
    r = run_untrusted(code, **_layers(layer, active_guards, "host paths"))
    assert r.ok, r.stderr
    assert "DIFFERS" not in r.stdout and r.stdout.count("same") == 7 * len(pairs), r.stdout
    assert "12345" not in r.stdout and "own True True True True" in r.stdout


@pytest.mark.parametrize("layer", _variants("unix socket"))
def test_datagram_to_a_host_unix_socket_never_arrives(layer, active_guards):
    """A datagram sent to a Unix socket of the host (the caller's, world-writable as /dev/log
    is, in a folder anyone can search, so that file permissions do not decide) from an
    unbound socket, from a socketpair and through sendmsg: every send fails and the socket
    receives nothing."""
    folder = tempfile.mkdtemp(prefix="rl2f-test-sock-")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "host.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    os.chmod(path, 0o777)
    listener.settimeout(0.2)
    code = _attempts("SENT") + f"""
import socket
path = {path!r}
def unbound():
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"unbound", path)
def pair():
    socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0].sendto(b"pair", path)
def msg():
    socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)[0].sendmsg([b"msg"], [], 0, path)
attempt("unbound", unbound)
attempt("pair", pair)
attempt("sendmsg", msg)
"""
    try:
        r = run_untrusted(code, **_layers(layer, active_guards, "unix socket"))
        assert r.ok, r.stderr
        got = []
        with pytest.raises(OSError):
            while True:
                got.append(listener.recv(100))
        assert got == [] and "SENT" not in r.stdout and r.stdout.count("refused") == 3, \
            (got, r.stdout)
    finally:
        listener.close()
        shutil.rmtree(folder)


def _workdir_of(caller_pid, end):
    """(the sandbox's working directory, its keeper's pid) once the student has started."""
    while time.monotonic() < end:
        keeper = next((p for p in _descendants(caller_pid) if _parent(p) == caller_pid), None)
        for pid in _descendants(caller_pid):
            try:
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if os.path.basename(cwd).startswith("rl2f-sandbox-") and _started(pid, cwd):
                return cwd, keeper
        time.sleep(0.02)
    raise AssertionError("the student never started")


_SLEEPER = ("import sys\nfrom rl2f.tasks.sandbox import run_untrusted\n"
            "r = run_untrusted(\"open('started', 'w').close()\\nimport time\\ntime.sleep(60)\", "
            "timeout_s=float(sys.argv[1]), cpu_s=60)\nprint(r.ok, r.killed_reason)")


def test_directory_of_a_killed_caller_and_keeper_is_swept():
    """The caller and the keeper are both SIGKILLed (the caller stopped first, so that it
    cannot clean up either): the next sandbox start removes the working directory they
    left behind."""
    caller = subprocess.Popen([sys.executable, "-c", _SLEEPER, "60"])
    workdir = None
    try:
        workdir, keeper = _workdir_of(caller.pid, time.monotonic() + 30)
        os.kill(caller.pid, signal.SIGSTOP)
        os.killpg(keeper, signal.SIGKILL)
        caller.kill()
        caller.wait()
        time.sleep(0.2)
        assert os.path.isdir(workdir)  # nobody left to clean up
        r = run_untrusted("pass")
        assert r.ok, r.stderr
        assert not os.path.exists(workdir)
    finally:
        caller.kill()
        caller.wait()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def test_sweep_spares_a_running_sandbox():
    """A sandbox start while another caller's student is running leaves that one's working
    directory alone: it finishes normally."""
    caller = subprocess.Popen([sys.executable, "-c", _SLEEPER, "1.5"], stdout=subprocess.PIPE,
                              text=True)
    try:
        workdir, _ = _workdir_of(caller.pid, time.monotonic() + 30)
        assert run_untrusted("pass").ok
        assert os.path.exists(os.path.join(workdir, "main.py"))
        out, _ = caller.communicate(timeout=30)
        assert out.split() == ["False", "timeout"]  # stopped at its deadline, not broken
        assert not os.path.exists(workdir)
    finally:
        caller.kill()
        caller.wait()
