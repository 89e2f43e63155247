"""The sandbox's own side of the fence: the keeper process and the student's setup.

rl2f/tasks/sandbox.py reads this file as text and runs it as `python -I -S -B -c <text>
<config JSON>` (nothing on disk that the student could edit is executed), so it must stay
self-contained: standard library only, since `-I -S` sees no site-packages. The trainer
imports it only for `GUARDS`, `group_members`, `kill_leftovers` and `_UID_BASE`, which both
sides use.

Run as a program it is the keeper: it unshares the namespaces, forks the student, watches
both the student and the caller (a lifeline pipe whose write end only the caller holds, plus
a parent-death signal), and whichever ends first, kills the student, everything in its
process group and session and every orphan it adopted as a child subreaper, deletes the
working directory and reports the student's wait status to the caller on the status pipe;
it holds the caller's flock on the working directory until it exits. The forked student
makes its private root (mount-ns), sets its limits and guards, reports which guards are
active, and then runs main.py as `__main__`. rl2f/tasks/sandbox.py's docstring
says what each layer holds against.
"""
import builtins
import gc
import json
import os
import resource
import select
import shutil
import signal
import stat
import sys
import time
import types

# Kernel guards that can be switched on one by one (rl2f.tasks.sandbox: `kernel_guards`).
GUARDS = ("pid-ns", "uts-ns", "ipc-ns", "net-ns", "mount-ns", "creds", "landlock", "seccomp")
# the namespaces the keeper enters (the student's children are born in the pid namespace);
# the student makes its mount namespace itself, so that the keeper keeps the host's view
_CLONE = {"pid-ns": 0x20000000, "uts-ns": 0x04000000, "ipc-ns": 0x08000000,
          "net-ns": 0x40000000}
_CLONE_NEWUSER, _CLONE_NEWNS = 0x10000000, 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 1, 2, 4, 32
_MS_BIND, _MS_REC, _MS_PRIVATE, _MNT_DETACH = 4096, 16384, 1 << 18, 2
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}  # syscall numbers; glibc has no wrapper
# files (besides the folders of `_readable`) the private root holds, at these paths
_ROOT_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/dev/null", "/dev/urandom",
               "/dev/random", "/dev/zero")
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_CAPBSET_DROP = 1, 38, 24
_PR_SET_CHILD_SUBREAPER = 36
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
# Root callers run the student as a uid of its own (no file on the machine belongs to it,
# no other process runs as it); far above the ranges that passwd, LDAP and subuid use.
_UID_BASE = 2_000_000_000


# --- shared with the caller --------------------------------------------------------------


def group_members(pgid: int) -> list[int]:
    """Live pids (zombies excluded) whose process group or session is `pgid`, or whose parent
    is `pgid` (orphans that the keeper, a child subreaper, adopted), by /proc scan."""
    found = []
    me = os.getpid()
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = fields[fields.rfind(")") + 2:].split()  # comm may hold spaces and parens
        if len(fields) < 4 or fields[0] in ("Z", "X"):
            continue
        if pgid in (int(fields[1]), int(fields[2]), int(fields[3])):
            found.append(int(name))
    return found


def kill_leftovers(pgid: int) -> None:
    """SIGKILL every process of the group or session `pgid` but the caller, until none is
    left (bounded: a process stuck in the kernel cannot hang the sandbox)."""
    for _ in range(20):
        pids = group_members(pgid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


# --- the keeper --------------------------------------------------------------------------


class _CallerGone(Exception):
    pass


def _libc():
    """(libc, ctypes), or (None, None) where there is no libc to call (then every guard that
    needs it is inactive and reported so)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        return libc, ctypes
    except Exception:
        return None, None


def main() -> tuple:
    """Keeper: never returns. Student (the forked child): returns (code, globals) to run."""
    cfg = json.loads(sys.argv[1])
    keeper = os.getpid()
    status = {"wait": None, "cpu": None, "guards": [], "error": None}
    pid = None
    adopts = False  # whether orphans of the student become the keeper's children
    libc, ctypes = _libc()
    try:
        # the parent-death signal only wakes the watch loop up (no exception can strike in
        # the middle of reaping the student)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        signal.set_wakeup_fd(wake_w)
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            adopts = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        if os.getppid() != cfg["caller"]:  # died before the parent-death signal was armed
            raise _CallerGone
        status["guards"] = _unshare(libc, cfg["guards"])
        report_r, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:  # never fall through into the keeper's cleanup below
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                for fd in (report_r, wake_r, wake_w, cfg["lifeline"], cfg["status"], cfg["lock"]):
                    os.close(fd)
                return _student(cfg, libc, ctypes, report_w, keeper, "pid-ns" in status["guards"])
            except BaseException as e:
                sys.stderr.write(f"sandbox: setup failed: {e!r}\n")
                os._exit(70)
        del libc, ctypes
        os.close(report_w)
        # the student alone holds the caller's stdin/stdout/stderr: their EOF is its end
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        wait, rusage, report = _watch(pid, report_r, (cfg["lifeline"], wake_r))
        status.update(wait=wait, cpu=rusage.ru_utime + rusage.ru_stime)
        status["guards"] += json.loads(report or b"[]")
    except _CallerGone:
        status["error"] = "stopped"
    except Exception as e:
        status["error"] = f"keeper: {type(e).__name__}: {e}"
    if pid is not None and status["wait"] is None:  # not reaped: its pid cannot be reused
        try:
            os.kill(pid, signal.SIGKILL)  # in its own pid namespace this ends everything in it
        except ProcessLookupError:
            pass
        status["wait"] = _reap(pid)
    # none in a pid namespace, where the student's end ended everything in it
    if _children_left() or not adopts:
        kill_leftovers(keeper)
        _reap(-1)
    shutil.rmtree(cfg["dir"], ignore_errors=True)
    try:
        os.write(cfg["status"], json.dumps(status).encode())
    except OSError:  # the caller is gone: nobody to tell
        pass
    os._exit(0)


def _unshare(libc, wanted) -> list[str]:
    """Enter the new namespaces that `wanted` names and the kernel allows; the active ones.
    Without CAP_SYS_ADMIN (not root, or root in a restricted container) they go through a
    user namespace first, where the kernel lets anyone create one; it maps only the keeper's
    own uid and gid."""
    private_root = "mount-ns" in wanted
    wanted = [name for name in _CLONE if name in wanted]
    if libc is None or not (wanted or private_root):
        return []
    # probe for CAP_SYS_ADMIN with the first unshare; a mount namespace of the keeper's own
    # changes nothing for it (the student makes another one below it)
    if os.geteuid() == 0 and libc.unshare(_CLONE[wanted[0]] if wanted else _CLONE_NEWNS) == 0:
        active = wanted[:1]
    else:
        active = ["user-ns"] if _enter_user_ns(libc) else []
    for name in wanted:
        if name not in active and libc.unshare(_CLONE[name]) == 0:
            active.append(name)
    return active


def _enter_user_ns(libc) -> bool:
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(_CLONE_NEWUSER) != 0:
        return False
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"),
                           ("gid_map", f"{gid} {gid} 1")):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)
    except OSError:
        return False
    return True


def _watch(pid, report_r, stop):
    """(wait status, rusage, guard report) once the student exits; raises _CallerGone as soon
    as one of the `stop` fds is readable: the lifeline (EOF: the caller closed it to stop the
    run, or died) or the wakeup fd of the parent-death signal."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # old kernel: poll the student instead
        pidfd = None
    fds = [*stop, report_r] + ([] if pidfd is None else [pidfd])
    report = b""
    while True:
        ready = select.select(fds, [], [], None if pidfd is not None else 0.01)[0]
        if set(stop) & set(ready):
            raise _CallerGone
        if report_r in ready:
            chunk = os.read(report_r, 4096)
            report += chunk
            if not chunk:
                fds.remove(report_r)
        if pidfd is None or pidfd in ready:
            got, wait, rusage = os.wait4(pid, os.WNOHANG)
            if got:
                break
    if report_r in fds:  # the student wrote it before running any untrusted code
        while chunk := os.read(report_r, 4096):
            report += chunk
    return wait, rusage, report


def _children_left():
    """Whether the keeper has any child left (alive or a zombie), without reaping one."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _reap(pid, timeout_s=5.0):
    """Wait status of the SIGKILLed student (pid -1: every child, until none is left); None
    if that cannot be done in time (a process stuck in the kernel)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            got, wait = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if got and pid != -1:
            return wait
        if not got:
            time.sleep(0.005)
    return None


# --- the student's setup -----------------------------------------------------------------


def _student(cfg, libc, ctypes, report, keeper, in_pid_ns):
    tmp = cfg["dir"]
    main_file = os.path.join(tmp, cfg["main"])
    with open(main_file, "rb") as f:
        source = f.read()
    read_roots, read_files = _readable()
    # before creds, which drop CAP_SYS_ADMIN (and it may make a uid of its own possible), and
    # before the file-size limit, which the copies of the caller's files must not meet
    mount_ns = []
    if libc is not None and "mount-ns" in cfg["guards"] and _private_root(
            libc, ctypes, tmp, read_roots, cfg["fsize_mb"] << 20):
        mount_ns.append("mount-ns")

    # rlimits first: seccomp below refuses setrlimit/prlimit64 with a new limit.
    R = resource

    def lim(res, soft, hard=None):
        # never above the host's own hard limit (raising it would fail, not run unlimited)
        cur = R.getrlimit(res)[1]
        hard = soft if hard is None else hard
        if cur != R.RLIM_INFINITY:
            hard = min(hard, cur)
        R.setrlimit(res, (min(soft, hard), hard))
    try:
        # SIGXCPU at the soft limit; as pid 1 of its namespace the student ignores that, and
        # the SIGKILL at the hard limit ends it one CPU second later
        lim(R.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)
        lim(R.RLIMIT_AS, cfg["memory_mb"] << 20)
        lim(R.RLIMIT_FSIZE, cfg["fsize_mb"] << 20)
        lim(R.RLIMIT_NOFILE, cfg["nofile"])
        lim(R.RLIMIT_NPROC, cfg["nproc"])
        lim(R.RLIMIT_CORE, 0)
        lim(R.RLIMIT_NICE, 0)  # no lowering of the nice value without CAP_SYS_NICE
        lim(R.RLIMIT_RTPRIO, 0)  # no real-time policy without CAP_SYS_NICE
    except (ValueError, OSError) as e:  # fail closed: never run without limits
        sys.stderr.write(f"sandbox: cannot set resource limits: {e!r}\n")
        os._exit(70)

    guards, active, nnp = set(cfg["guards"]), mount_ns, False
    if libc is not None:
        if "creds" in guards:
            active += _drop_privileges(libc, ctypes, tmp, keeper)
        # required by Landlock and seccomp for a process without CAP_SYS_ADMIN
        nnp = libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
        if nnp and "landlock" in guards and _landlock(libc, ctypes, tmp, read_roots, read_files):
            active.append("landlock")
        # after every credential change, which would clear it
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if not in_pid_ns and os.getppid() != keeper:  # the keeper died before that was armed
        os._exit(70)
    if nnp and "seccomp" in guards and _seccomp(libc, ctypes, os.getpid()):
        active.append("seccomp")
    if cfg["audit_hook"]:
        active.append("hook")  # installed below, once the report is closed
    os.write(report, json.dumps(active).encode())
    os.close(report)
    del libc, ctypes
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]
    gc.collect()

    if cfg["audit_hook"]:
        _install_hook(tmp, read_roots, read_files, cfg["max_write_opens"], cfg["nproc"])

    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=main_file, __builtins__=builtins)
    sys.modules["__main__"] = main
    sys.argv = [main_file]
    return compile(source, main_file, "exec"), main.__dict__


def _readable():
    """(folders, files) untrusted code may read besides its working directory: the stdlib
    (sys.path), the shared libraries that stdlib extension modules load, time zones."""
    roots = []
    for p in sys.path + [os.path.join(sys.base_prefix, "lib")]:
        if p and os.path.isdir(p):
            roots.append(os.path.realpath(p))
    for p in ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib",
              "/usr/share/zoneinfo"):
        if os.path.isdir(p):
            roots.append(os.path.realpath(p))
    files = [os.path.realpath(p) for p in ("/etc/ld.so.cache", "/etc/localtime", "/dev/null",
                                           "/dev/urandom", "/dev/random", "/dev/zero")
             if os.path.exists(p)]
    return roots, files


def _private_root(libc, ctypes, tmp, read_roots, fsize):
    """A mount namespace whose root is a read-only tmpfs holding, each at its own path, the
    folders of `_readable` and `_ROOT_FILES` (read-only) and the working directory: a tmpfs
    of its own with a copy of the caller's files and room for `fsize` bytes more, gone with
    the namespace. No other host path exists for the student (home folders, the repository,
    the rest of /etc, /proc, /sys, /dev/shm, the host's Unix sockets); what it writes is
    memory, but bounded, and never reaches the host's disk; and, the new root's folders
    being searchable by anyone, a root caller's student can get a uid of its own. Whether
    it was set up."""
    nr = _PIVOT_ROOT.get(os.uname().machine)
    if nr is None or libc.unshare(_CLONE_NEWNS) != 0:
        return False

    def mount(src, dst, fstype, flags, data=None):
        args = [None if a is None else a.encode() for a in (src, dst, fstype, data)]
        if libc.mount(args[0], args[1], args[2], ctypes.c_ulong(flags), args[3]) != 0:
            raise OSError(ctypes.get_errno(), f"mount {dst}")
    umask = os.umask(0o022)
    work = None
    try:
        mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing here reaches the host's mounts
        work = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # the new root is mounted over the working directory, reached below through `work`
        new = tmp
        mount("tmpfs", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=1m,nr_inodes=4096")
        bound = []
        for root in sorted(read_roots):
            if any(root.startswith(b + "/") for b in bound):
                continue  # already there, within a recursive bind
            os.makedirs(new + root, exist_ok=True)
            mount(root, new + root, None, _MS_BIND | _MS_REC)
            bound.append(root)
            # read-only where the source's own locked flags let it be (landlock holds writes):
            # statvfs's ST_ flags are the MS_ ones, but for relatime
            flags = os.statvfs(root).f_flag
            keep = flags & (_MS_NOSUID | _MS_NODEV | 8 | 1024 | 2048) | (flags & 4096) << 9
            try:
                mount(None, new + root, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | keep)
            except OSError:
                pass
        for path in ("/lib", "/lib64", "/lib32"):  # merged /usr: the loader's paths
            if os.path.islink(path) and not os.path.lexists(new + path):
                os.symlink(os.readlink(path), new + path)
        for path in _ROOT_FILES:
            if os.path.exists(path) and not os.path.exists(new + path):
                os.makedirs(os.path.dirname(new + path), exist_ok=True)
                os.close(os.open(new + path, os.O_WRONLY | os.O_CREAT, 0o644))
                mount(path, new + path, None, _MS_BIND)
        os.makedirs(new + tmp)
        names = [n for n in os.listdir(work)
                 if stat.S_ISREG(os.stat(n, dir_fd=work, follow_symlinks=False).st_mode)]
        pages = sum(-(-os.stat(n, dir_fd=work).st_size // 4096) for n in names)
        mount("tmpfs", new + tmp, "tmpfs", _MS_NOSUID | _MS_NODEV,
              f"mode=0700,size={fsize + (pages + 16) * 4096},nr_inodes=4096")
        for name in names:
            src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=work)
            try:
                with open(os.path.join(new + tmp, name), "xb") as dst:
                    while chunk := os.read(src, 1 << 20):
                        dst.write(chunk)
            finally:
                os.close(src)
        mount(None, new, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        os.chdir(new)
        if libc.syscall(nr, b".", b".") != 0:
            raise OSError(ctypes.get_errno(), "pivot_root")
    except OSError:  # undone: the host's view again, reported inactive
        os.chdir("/")
        libc.umount2(tmp.encode(), _MNT_DETACH)
        os.chdir(tmp)
        return False
    finally:
        os.umask(umask)
        if work is not None:
            os.close(work)
    # the host's root now lies on top of the new one: detach it
    if libc.umount2(b".", _MNT_DETACH) != 0:
        sys.stderr.write("sandbox: cannot detach the host's root\n")
        os._exit(70)  # fail closed: it would stay reachable
    os.chdir(tmp)
    return True


def _reachable_by_others(path):
    """Whether a uid that owns nothing can reach `path`: every folder above it searchable."""
    path = os.path.realpath(path)
    while path != "/":
        path = os.path.dirname(path)
        if not os.stat(path).st_mode & stat.S_IXOTH:
            return False
    return True


def _drop_privileges(libc, ctypes, tmp, keeper):
    """Every capability gone (bounding, ambient, effective, permitted, inheritable) and, for
    a root caller whose interpreter and working directory other users can reach, a uid of
    the student's own. The active items ("creds" once no capability is left)."""
    active = []
    for cap in range(64):  # EINVAL past the last capability, EPERM without CAP_SETPCAP
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    if os.geteuid() == 0 and all(map(_reachable_by_others, (tmp, os.__file__))):
        uid = _UID_BASE + keeper
        try:
            for p in [tmp] + [os.path.join(tmp, n) for n in os.listdir(tmp)]:
                os.lchown(p, uid, uid)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            active.append("unprivileged-uid")
        except OSError:  # a container that maps few uids: stay root, without capabilities
            pass
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    libc.capset(ctypes.byref(header), data)
    if libc.capget(ctypes.byref(header), data) == 0 and not any(
            d.effective or d.permitted or d.inheritable for d in data):
        active.append("creds")
    return active


def _landlock(libc, ctypes, tmp, read_roots, read_files):
    """Landlock (syscalls 444-446 on every architecture): writes only under the working
    directory, reads only under the allowed folders, no TCP (ABI 4), no signals or abstract
    unix sockets out of the sandbox (ABI 6). Whether it was enforced."""
    abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        return False
    fs = (1 << 13) - 1
    if abi >= 2:
        fs |= 1 << 13  # REFER
    if abi >= 3:
        fs |= 1 << 14  # TRUNCATE
    net = 3 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, with no rule: none allowed
    scoped = 3 if abi >= 6 else 0  # abstract unix sockets, signals
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    rfd = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if rfd < 0:
        return False

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]
    READ = 1 | 4 | 8  # EXECUTE | READ_FILE | READ_DIR
    rules = [(tmp, fs)] + [(p, READ) for p in read_roots] + [(p, 4) for p in read_files]
    rules.append(("/dev/null", 2 | 4 | (fs & (1 << 14))))
    ok = True
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        rule = PathBeneath(access & fs, fd)
        if libc.syscall(445, rfd, 1, ctypes.byref(rule), 0) != 0 and path == tmp:
            ok = False
        os.close(fd)
    ok = ok and libc.syscall(446, rfd, 0) == 0
    os.close(rfd)
    return ok


# x86_64 syscall numbers the seccomp filter refuses outright (EPERM).
_DENY = (
    57, 58, 59, 322,  # fork vfork execve execveat
    101, 310, 311, 312,  # ptrace process_vm_readv/writev kcmp
    41, 42, 49, 50,  # socket connect bind listen (socketpair is checked below)
    # memory outside the address-space limit: memfd_create memfd_secret, System V shared
    # memory, message queues and semaphores, POSIX message queues
    319, 447, 29, 30, 31, 67, 68, 69, 70, 71, 64, 65, 66, 220, 240,
    160,  # setrlimit
    272, 308, 165, 166, 155, 161, 442, 429, 428, 430, 431, 432, 433,  # namespaces, mounts
    434, 424, 438,  # pidfd_open pidfd_send_signal pidfd_getfd
    200,  # tkill (no thread group id to check)
    112, 109,  # setsid setpgid: stay in the process group that is killed at the end
    144, 142, 314, 251,  # sched_setscheduler sched_setparam sched_setattr ioprio_set
    256, 279, 440, 448,  # migrate_pages move_pages process_madvise process_mrelease
    90, 91, 268, 452, 92, 93, 94, 260,  # chmod and chown families
    132, 235, 261, 280,  # utime utimes futimesat utimensat
    188, 189, 190, 197, 198, 199, 463, 466,  # setxattr and removexattr families
    170, 171, 164, 227, 159, 305, 163,  # host and domain name, clocks, process accounting
    425, 426, 427,  # io_uring (its requests would bypass this filter)
    303, 304, 321, 298, 323, 175, 313, 176, 169, 246, 320, 172, 173,  # handles, bpf, perf,
    248, 249, 250, 167, 168,  # userfaultfd, modules, reboot, kexec, ioports, keys, swap
)


def _seccomp(libc, ctypes, pid):
    """A seccomp-bpf filter on x86_64 (syscall numbers are per architecture): the calls in
    _DENY refused; clone only for threads; no socket(2), and socketpair(2) only for AF_UNIX
    SOCK_STREAM (a datagram socket, even a connected one, can sendto any socket path);
    fcntl never grows a pipe (F_SETPIPE_SZ); kill, tgkill and rt_(tg)sigqueueinfo only to
    itself; setpriority only on itself (PRIO_PROCESS, pid 0 or its own) and never to a
    negative nice; sched_setaffinity only on itself; prlimit64 only to read. Whether it was
    installed."""
    if os.uname().machine != "x86_64":
        return False
    EPERM, ENOSYS = 1, 38
    ALLOW, DENY, NOSYS = 0x7FFF0000, 0x00050000 | EPERM, 0x00050000 | ENOSYS
    A0, A1, A2 = 16, 24, 32  # low words of the arguments in struct seccomp_data
    # (op, k, jump-if-true label, jump-if-false label); labels resolve to relative offsets
    prog = [("ld", 4), ("jeq", 0xC000003E, None, "deny"),  # AUDIT_ARCH_X86_64 only
            ("ld", 0), ("jge", 0x40000000, "deny", None)]  # no x32 ABI
    prog += [("jeq", nr, "deny", None) for nr in _DENY]
    prog += [("jeq", 56, "clone", None), ("jeq", 435, "nosys", None),  # clone, clone3
             ("jeq", 53, "socketpair", None), ("jeq", 72, "fcntl", None),
             ("jeq", 302, "prlimit", None),
             ("jeq", 141, "setpriority", None), ("jeq", 203, "self_or_0", None)]
    prog += [("jeq", nr, "self", None) for nr in (62, 234, 129, 297)]
    prog += [("ret", ALLOW),
             ("label", "clone"), ("ld", A0), ("jset", 0x10000, "allow", "deny"),  # CLONE_THREAD
             ("label", "socketpair"), ("ld", A0), ("jeq", 1, None, "deny"),  # AF_UNIX
             ("ld", A1), ("and", 0xF), ("jeq", 1, "allow", "deny"),  # SOCK_STREAM, any flags
             ("label", "fcntl"), ("ld", A1), ("jeq", 1031, "deny", "allow"),  # F_SETPIPE_SZ
             ("label", "prlimit"), ("ld", A2), ("jeq", 0, None, "deny"),  # new_limit == NULL
             ("ld", A2 + 4), ("jeq", 0, "allow", "deny"),
             ("label", "setpriority"), ("ld", A0), ("jeq", 0, None, "deny"),  # PRIO_PROCESS
             ("ld", A2), ("jset", 0x80000000, "deny", None),  # nice >= 0
             ("ld", A1), ("jeq", 0, "allow", "self_pid"),
             ("label", "self_or_0"), ("ld", A0), ("jeq", 0, "allow", "self_pid"),
             ("label", "self"), ("ld", A0),
             ("label", "self_pid"), ("jeq", pid, "allow", "deny"),
             ("label", "allow"), ("ret", ALLOW), ("label", "deny"), ("ret", DENY),
             ("label", "nosys"), ("ret", NOSYS)]
    labels, n = {}, 0
    for ins in prog:
        if ins[0] == "label":
            labels[ins[1]] = n
        else:
            n += 1
    codes = {"ld": 0x20, "and": 0x54, "jeq": 0x15, "jge": 0x35, "jset": 0x45, "ret": 0x06}

    class Filter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]
    out = []
    for ins in prog:
        if ins[0] == "label":
            continue
        jt = jf = 0
        if ins[0].startswith("j"):
            jt = 0 if ins[2] is None else labels[ins[2]] - len(out) - 1
            jf = 0 if ins[3] is None else labels[ins[3]] - len(out) - 1
        if not (0 <= jt < 256 and 0 <= jf < 256):  # BPF jumps are forward, 8 bits
            return False
        out.append(Filter(codes[ins[0]], jt, jf, ins[1]))
    arr = (Filter * len(out))(*out)
    fprog = Prog(len(out), arr)
    # PR_SET_SECCOMP = 22, SECCOMP_MODE_FILTER = 2
    return libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) == 0


# --- the audit hook ----------------------------------------------------------------------


def _install_hook(tmp, read_roots, read_files, max_write_opens, nproc):
    # Everything the hook uses is bound here, so untrusted code cannot monkeypatch it
    # (builtins, os, posixpath are all mutable from the student's side).
    _str, _bytes, _int, _type, _len = str, bytes, int, type, len
    _PermissionError, _ImportError, _OSError = PermissionError, ImportError, OSError
    _getcwd, _stat, _lstat, _readlink = os.getcwd, os.stat, os.lstat, os.readlink
    _getpid = os.getpid
    _S_ISDIR, _S_ISLNK = stat.S_ISDIR, stat.S_ISLNK
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    read_roots = tuple(read_roots)
    read_files = frozenset(read_files)
    writes = [0]
    blocked = frozenset({
        "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
        "os.startfile", "subprocess.Popen", "pty.spawn", "os.killpg", "os.symlink", "os.link",
        "sys.addaudithook", "resource.setrlimit", "resource.prlimit", "gc.get_objects",
        "gc.get_referrers", "gc.get_referents", "socket.connect", "socket.bind",
        "socket.sendto", "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname",
        "socket.sethostname", "os.chroot", "sys.remote_exec", "os.add_dll_directory",
    })
    # native modules that open files or signal processes themselves, with no audit event:
    # SQLite (ATTACH, VACUUM INTO), readline history, dbm, POSIX shared memory and
    # semaphores (/dev/shm), syslog, and the test and debugging modules of CPython
    blocked_modules = frozenset({
        "ctypes", "_ctypes", "_posixsubprocess", "posix", "_xxsubinterpreters",
        "_xxinterpchannels", "_interpreters", "_sqlite3", "readline", "_dbm", "_gdbm",
        "_posixshmem", "_multiprocessing", "syslog", "_remote_debugging"})
    # path-modifying events -> positions of their path arguments
    modifying = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
                 "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
                 "os.chflags": (0,), "os.lchflags": (0,), "os.setxattr": (0,),
                 "os.removexattr": (0,)}
    reading = {"os.listdir": 0, "os.scandir": 0, "os.walk": 0, "os.fwalk": 0, "os.chdir": 0,
               "os.getxattr": 0, "os.listxattr": 0}

    def resolve(path):
        """(absolute path with symlinks resolved the way the kernel will, had "..")."""
        if _type(path) is _bytes:
            path = path.decode("utf-8", "surrogateescape")
        if _type(path) is not _str:
            raise _PermissionError("sandbox: unsupported path type")
        if not path.startswith("/"):
            path = _getcwd() + "/" + path
        parts, i, out, hops = path.split("/"), 0, "", 0
        dotdot = ".." in parts
        while i < _len(parts):
            seg = parts[i]
            i += 1
            if seg == "" or seg == ".":
                continue
            if seg == "..":  # physical parent: ".." after a symlink leaves its target
                out = out[: out.rfind("/")]
                continue
            cand = out + "/" + seg
            try:
                mode = _lstat(cand).st_mode
            except _OSError:  # does not exist (yet): nothing below it can be a link
                out = cand
                continue
            if _S_ISLNK(mode):
                hops += 1
                if hops > 40:
                    raise _PermissionError("sandbox: too many symbolic links")
                target = _readlink(cand)
                if target.startswith("/"):
                    out = ""
                parts, i = target.split("/") + parts[i:], 0
                continue
            out = cand
        return out or "/", dotdot

    def inside(p, root):
        return p == root or p.startswith(root + "/")

    def check_write(path, what):
        p, dotdot = resolve(path)
        # no "..": an fd-relative path (dir_fd) must not climb out of the folder it names
        if dotdot or not inside(p, tmp):
            raise _PermissionError(
                f"sandbox: {what} outside the working directory is not allowed: {path!r}")

    def check_read(path, opening):
        p, _ = resolve(path)
        if inside(p, tmp) or p in read_files:
            return
        for root in read_roots:
            if inside(p, root):
                if not opening:
                    return
                try:
                    is_dir = _S_ISDIR(_stat(p).st_mode)
                except _OSError:
                    return
                if is_dir:  # a directory fd would let dir_fd-relative writes escape
                    raise _PermissionError("sandbox: opening a directory outside the working "
                                           "directory is not allowed")
                return
        raise _PermissionError(f"sandbox: reading {path!r} is not allowed")

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if _type(path) is _int:  # an fd already open
                return
            if mode is None:
                write = (flags & WRITE_FLAGS) != 0
            else:
                write = "w" in mode or "a" in mode or "x" in mode or "+" in mode
            if write:
                check_write(path, "writing")
                writes[0] += 1
                if writes[0] > max_write_opens:
                    raise _PermissionError("sandbox: too many files opened for writing")
            else:
                check_read(path, True)
        elif event in modifying:
            for i in modifying[event]:
                path = args[i]
                if _type(path) is _int:
                    if event == "os.truncate":  # ftruncate needs a writable fd anyway
                        continue
                    raise _PermissionError(f"sandbox: {event} on a file descriptor is not allowed")
                check_write(path, event)
        elif event in reading:
            if _type(args[0]) is not _int and args[0] is not None:  # None: the cwd
                check_read(args[0], False)
        elif event == "import":
            name = args[0]
            if _type(name) is _str and (name.split(".")[0] in blocked_modules
                                        or name.startswith("_test")):
                raise _ImportError(f"sandbox: module {name!r} is not available")
        elif event == "socket.__new__":
            if args[1] != 1:  # AF_UNIX only (socketpair)
                raise _PermissionError("sandbox: network sockets are not allowed")
        elif event == "fcntl.fcntl":
            if args[1] == 1031:  # F_SETPIPE_SZ: pipe buffers are memory outside the limit
                raise _PermissionError("sandbox: growing a pipe is not allowed")
        elif event == "os.kill" or event == "signal.pthread_kill":
            if event == "os.kill" and args[0] != _getpid():
                raise _PermissionError("sandbox: signalling other processes is not allowed")
        elif event in blocked or event.startswith("ctypes."):
            raise _PermissionError(f"sandbox: {event} is not allowed")

    # importlib.import_module of a module built into the interpreter raises no audit event:
    # a None entry in sys.modules makes every import of it fail (until the code deletes it)
    for name in blocked_modules.union(
            m for m in sys.builtin_module_names if m.startswith("_test")):
        sys.modules.setdefault(name, None)

    def check_path(path, dir_fd):
        """check_read for the calls that only look at a path (os.stat and the like)."""
        if _type(path) is _int:  # an fd already open
            return
        if dir_fd is not None and not (path.startswith(b"/" if _type(path) is _bytes else "/")):
            # relative to a folder fd, which only the working directory can give (opening
            # any other folder is refused): it must not climb out with ".."
            if ".." in (path.decode("utf-8", "surrogateescape") if _type(path) is _bytes
                        else path).split("/"):
                raise _PermissionError(f"sandbox: {path!r} climbs out of its folder")
            return
        check_read(path, False)
    _patch_unaudited(_PermissionError, _getpid, check_path, nproc)
    sys.addaudithook(hook)


def _patch_unaudited(_PermissionError, _getpid, check_path, nproc):
    """Replace the os, signal and _thread functions that reach other processes or the host,
    or tell what exists there, without raising an audit event (the hook cannot see them):
    in os and in posix alike, since importing posix afresh is refused. Path queries (stat,
    lstat, access, readlink, statvfs, pathconf, and through them os.path and pathlib) see
    only what the student may read: elsewhere they raise PermissionError whether or not the
    path exists. A thread beyond `nproc` (counting the main one) fails as the kernel's own
    limit would, with RuntimeError."""
    import posix
    import _thread
    _getpriority = os.getpriority
    _type, _int, _fspath, _RuntimeError = type, int, os.fspath, RuntimeError
    _count = getattr(_thread, "_count", None)
    originals = {name: getattr(os, name) for name in (
        "setpriority", "sched_setaffinity", "nice", "pidfd_open") if hasattr(os, name)}

    def refuse(what):
        def refused(*args, **kwargs):
            raise _PermissionError(f"sandbox: {what} is not allowed")
        return refused

    def own(pid):
        return pid == 0 or pid == _getpid()

    def setpriority(which, who, prio):
        if which != os.PRIO_PROCESS or not own(who) or prio < _getpriority(os.PRIO_PROCESS, 0):
            raise _PermissionError("sandbox: setpriority may only raise its own nice value")
        return originals["setpriority"](which, who, prio)

    def sched_setaffinity(pid, mask):
        if not own(pid):
            raise _PermissionError("sandbox: sched_setaffinity on other processes is not allowed")
        return originals["sched_setaffinity"](pid, mask)

    def nice(increment):
        if increment < 0:
            raise _PermissionError("sandbox: lowering the nice value is not allowed")
        return originals["nice"](increment)

    def pidfd_open(pid, flags=0):
        if not own(pid):
            raise _PermissionError("sandbox: pidfd_open on other processes is not allowed")
        return originals["pidfd_open"](pid, flags)
    replaced = {"setpriority": setpriority, "sched_setaffinity": sched_setaffinity,
                "nice": nice, "pidfd_open": pidfd_open}
    for name in ("mkfifo", "mknod", "sched_setscheduler", "sched_setparam", "setsid",
                 "setpgid", "setpgrp", "setns", "unshare", "memfd_create"):
        replaced[name] = refuse(name)

    def path_query(original):
        def query(path, *args, dir_fd=None, **kwargs):
            path = path if _type(path) is _int else _fspath(path)  # once: no second answer
            check_path(path, dir_fd)
            if dir_fd is None:
                return original(path, *args, **kwargs)
            return original(path, *args, dir_fd=dir_fd, **kwargs)
        return query
    for name in ("stat", "lstat", "access", "readlink", "statvfs", "pathconf"):
        if hasattr(os, name):
            replaced[name] = path_query(getattr(os, name))
    for mod in (os, posix):
        for name, fn in replaced.items():
            if hasattr(mod, name):
                setattr(mod, name, fn)
    if hasattr(signal, "pidfd_send_signal"):
        signal.pidfd_send_signal = refuse("pidfd_send_signal")

    def bounded(start):
        def start_thread(*args, **kwargs):
            if _count() + 2 > nproc:  # the running ones, the main one, the new one
                raise _RuntimeError("can't start new thread (sandbox: max_procs threads)")
            return start(*args, **kwargs)
        return start_thread
    for name in ("start_new_thread", "start_new", "start_joinable_thread"):
        if _count is not None and hasattr(_thread, name):
            setattr(_thread, name, bounded(getattr(_thread, name)))


if __name__ == "__main__":
    _code, _globals = main()
    exec(_code, _globals)
