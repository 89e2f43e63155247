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
import signal
import socket
import subprocess
import sys
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
}


def _variants(cls):
    return ["all", "hook", "kernel"] + [f"only-{g}" for g in HOLDS[cls]]


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
    (children and grandchildren sleeping forever) when the deadline passes."""
    code = """
import os, time
for _ in range(4):
    if os.fork() == 0:
        if os.fork() == 0:
            time.sleep(100)
        time.sleep(100)
time.sleep(100)
"""
    r = run_untrusted(code, timeout_s=1.0, kernel_guards=False, audit_hook=False)
    assert r.timed_out
    _assert_nothing_left(r)


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
    code = f"""
import os
def attempt(what, f):
    try:
        f()
        print("WROTE", what)
    except Exception as e:  # OSError, ImportError, sqlite3.OperationalError...
        print("refused", what, type(e).__name__)
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
    finally:
        for t in made:
            if os.path.isdir(t):
                os.rmdir(t)
            elif os.path.exists(t):
                os.remove(t)


def test_parent_environment_is_invisible():
    """A secret in the parent's environment reaches the child neither through os.environ nor
    through /proc/<parent>/environ (the parent is a real process started with the secret)."""
    secret = uuid.uuid4().hex
    code = """
import os
print(sorted(os.environ))
print(dict(os.environ))
for p in ("/proc/%d/environ" % os.getppid(), "/proc/self/environ", "/proc/1/environ"):
    try:
        print(open(p, "rb").read())
    except OSError as e:
        print("refused", type(e).__name__)
"""
    runner = ("import json, sys\nfrom rl2f.tasks.sandbox import run_untrusted\n"
              "r = run_untrusted(sys.stdin.read())\nprint(json.dumps(r.__dict__))")
    env = dict(os.environ, RL2F_SANDBOX_SECRET=secret)
    out = subprocess.run([sys.executable, "-c", runner], input=code, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["ok"], r["stderr"]
    assert secret not in r["stdout"] and secret not in r["stderr"]
    # only what the runner sets (LC_CTYPE: Python's own locale coercion on some hosts)
    assert set(json.loads(r["stdout"].split("\n")[0].replace("'", '"'))) <= {"LANG", "PATH", "LC_CTYPE"}
    assert r["stdout"].count("refused") >= 2  # the parent's and pid 1's environ at least


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
