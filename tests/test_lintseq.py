"""lintseq.py on real programs: MBPP reference solutions (CRLF + tabs as published) and stdlib modules."""
import difflib
import json
import os
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import pytest

import lintseq as ls

STDLIB = Path(sysconfig.get_paths()["stdlib"])
LINTER = ls.PyflakesLinter()
MODULES = ["bisect.py", "colorsys.py", "shlex.py", "json/decoder.py"]    # ~110-360 lines each

# Every construct the structural deletion has to respect, in one program.
TRICKY = '''#!/usr/bin/env python
"""Module docstring.

# not a comment
"""
from __future__ import annotations
import os, sys
from collections import *

__all__ = ["outer", "Klass", "VALUE"]
VALUE = 1; OTHER = 2  # semicolons
x = (1 +
     2)  # continuation

y = 1 + \\
    2


def deco(f):
    return f


def make():
    @deco
    def wrapped():
        return 1
    return wrapped


@deco
@deco
def outer(a, b=VALUE, *args, **kw) -> "Klass":
    total = 0
    def inner():
        nonlocal total
        total += 1
        return total
    for i in range(3):
        if i == 0: continue
        elif i == 1:
            pass
        elif i == 2:
            # comment
            total += i
        else:
            break
    else:
        total -= 1
    while total > 10:
        total -= 1
    else:
        pass
    try:
        inner()
    except (ValueError, TypeError) as e:
        print(e)
    except OSError:
        raise
    else:
        total += 1
    finally:
        total += 0
    try:
        pass
    finally:
        print("done")
    with open(os.devnull) as fh, open(os.devnull) as gh:
        fh.read(); gh.read()
    match total:
        case 0:
            return None
        case [first, *rest]:
            return first
        case {"k": val, **others}:
            return val
        case Klass(attr=z) if z:
            return z
        case _:
            pass
    squares = [k * k for k in range(total) if (m := k)]
    g = lambda q: q + total
    return g(total) + m + len(squares)
        # odd trailing comment


class Klass(object):
    """Doc."""
    attr: int = 0

    def __init__(self):
        super().__init__()
        self.v = deque()

    @property
    def prop(self): return self.v

    async def run(self):
        async with self.lock() as lk:
            async for item in lk:
                await item
        global GLOBAL_NAME
        GLOBAL_NAME = 3


if __name__ == "__main__":
    text = \'\'\'multi
line
string\'\'\'
    print(outer(1), text, sys.argv, GLOBAL_NAME, OTHER, x, y)
# trailing comment
'''

# Code lines that really start with '+', '-', '@@' or a space once indentation is gone.
PLUS_MINUS = '''x = 1
-x
+x
s = """
--- a
+++ b
-removed
+added
@@ -1 +1 @@
 context
"""
y = (x
-1
+2)
'''


@pytest.fixture(scope="module")
def mbpp(mbpp_path):
    with open(mbpp_path) as f:
        return [json.loads(line) for line in f if line.strip()]


def full_lint_errors(text, baseline):
    """The reference check, no shortcuts: compile() to bytecode + every pyflakes error, minus the original's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # invalid escapes in MBPP code are not errors
        compile(text, "<state>", "exec", dont_inherit=True)
    return [e for e in LINTER.errors(text) if e[1] not in baseline]


def check_sequence(program, seed, linter="pyflakes"):
    """Sample one sequence and check every property; returns (normalized program, edits)."""
    text, lines, (rounds,) = ls.sample_rounds(program, seed, linter, 1)
    assert text == ls.normalize_program(program)
    states = ls.states_from_rounds(rounds, lines)
    edits = ls.edits_from_rounds(rounds, lines)
    assert states[0] == "" and states[-1] == text and len(edits) == len(states) - 1
    baseline = {key for _, key in LINTER.errors(text)}
    for state in states[1:-1]:
        assert full_lint_errors(state, baseline) == [], state
    for before, edit, after in zip(states, edits, states[1:]):
        rows = edit.split("\n")
        assert rows[0].startswith("@@ ")
        for row in rows:                                   # insert-only: '-0,0'-style headers and '+' lines
            assert row.startswith("+") or ls._HUNK.fullmatch(row).group(2) == "0", row
        assert any(r.startswith("+") for r in rows)
        assert ls.apply_edit(before.split("\n") if before else [], edit) == after.split("\n")
    assert ls.decode_edits(ls.format_completion(edits)) == text
    return text, edits


# ----------------------------------------------------------------------------- properties on real programs
def test_mbpp_sequences(mbpp):
    programs = [rec["code"] for rec in mbpp[::3]]
    assert sum("\r\n" in p for p in programs) > 250 and sum("\t" in p for p in programs) > 30   # as published
    for i, p in enumerate(programs):
        check_sequence(p, i)


@pytest.mark.parametrize("module", MODULES)
def test_stdlib_sequences(module):
    text, edits = check_sequence((STDLIB / module).read_text(encoding="utf-8"), 0)
    assert len(edits) > 10


def test_tricky_constructs_many_seeds():
    for seed in range(10):
        check_sequence(TRICKY, seed)


def test_skipping_lints_changes_nothing(mbpp):
    """The default skips lints that cannot find anything and lints only the affected functions; the
    sequences must be exactly those of linting every state in full."""
    programs = [r["code"] for r in mbpp[1::7]] + [TRICKY] + [(STDLIB / m).read_text() for m in MODULES[:2]]
    for i, p in enumerate(programs):
        fast = ls.sample_rounds(p, i, "pyflakes", 2, incremental=True)[2]
        slow = ls.sample_rounds(p, i, "pyflakes", 2, incremental=False)[2]
        assert fast == slow


def test_same_seed_same_sequences(mbpp):
    programs = [r["code"] for r in mbpp[:60]] + [TRICKY]
    a = [ls.sample_rounds(p, "seed-1", "pyflakes", 3)[2] for p in programs]
    b = [ls.sample_rounds(p, "seed-1", "pyflakes", 3)[2] for p in programs]
    c = [ls.sample_rounds(p, "seed-2", "pyflakes", 3)[2] for p in programs]
    assert a == b
    assert a != c                                         # the seed matters (somewhere in 61 programs)


def test_units_and_blank_comment_lines():
    prog = ls.Program(ls.normalize_program(TRICKY))
    rows = prog.rows
    code_rows = {r for k in range(len(prog.start)) for r in range(prog.start[k], prog.end[k] + 1)}
    for r, row in enumerate(rows):                       # comment/blank rows outside statements are no unit
        if not row.strip() or row.lstrip().startswith("#"):
            if r not in code_rows:
                assert prog.row_unit[r] == -1
    assert sorted(r for own in prog.own for r in own) == list(range(len(rows)))   # every row goes somewhere
    x0 = rows.index("x = (1 +")
    assert prog.row_unit[x0] == prog.row_unit[x0 + 1]     # a multi-line statement is one unit
    doc = rows.index('"""Module docstring.')
    assert prog.row_unit[doc] == prog.row_unit[doc + 3]   # so is a docstring, '# not a comment' included
    for seed in range(5):                                  # never an edit of only blank/comment lines
        for edit in ls.sample_edits(TRICKY, seed):
            added = [r[1:] for r in edit.split("\n") if r.startswith("+")]
            assert any(a.strip() and not a.lstrip().startswith("#") for a in added)


def test_normalization_crlf_blank_lines():
    src = "\r\n\r\n  \r\n# c\r\ndef f(a):\t\r\n\treturn -a  \r\n\r\n\r\n"
    norm = ls.normalize_program(src)
    assert norm == "# c\ndef f(a):\t\n\treturn -a  "     # LF, outer blank lines and final newline gone
    assert ls.sample_states(src, 1)[-1] == norm
    assert ls.decode_edits(ls.format_completion(ls.sample_edits(src, 1))) == norm


def test_training_text_format(mbpp):
    rec = mbpp[0]
    recs = ls.make_records(rec["text"], rec["code"], seed=3, s=2)
    edits = ls.sample_edits(rec["code"], seed=3)
    assert len(recs) == 2
    for r in recs:
        assert r["prompt"] == rec["text"] + "\n<|diff|>"
        assert r["completion"].startswith("@@ -0,0 +1")
        assert r["completion"].endswith("\n<|diff|>\n<|diff|>")
        assert ls.decode_edits(r["completion"]) == ls.normalize_program(rec["code"])
    text = rec["text"] + "".join("\n<|diff|>" + e for e in edits) + "\n<|diff|>\n<|diff|>"
    assert recs[0]["prompt"] + recs[0]["completion"] == text
    assert ls.make_records("Do it.\n\n", "x = 1", s=1)[0]["prompt"] == "Do it.\n<|diff|>"   # as eval.py's prompts
    base = ls.make_records(rec["text"], rec["code"], baseline=True)
    assert base == [{"prompt": rec["text"] + "\n", "completion": ls.normalize_program(rec["code"])}]


def test_edits_are_difflib_hunks(mbpp):
    """Our hunks are difflib's zero-context unified diff (header lines dropped), and difflib's diffs decode."""
    checked = 0
    for i, rec in enumerate(mbpp[:40]):
        states = ls.sample_states(rec["code"], i)
        edits = ls.sample_edits(rec["code"], i)
        ours_decode = []
        for a, b, e in zip(states, states[1:], edits):
            diff = difflib.unified_diff(a.split("\n") if a else [], b.split("\n"), n=0, lineterm="")
            theirs = "\n".join(list(diff)[2:])
            ours_decode.append(theirs)
            if len(set(b.split("\n"))) == len(b.split("\n")):   # unique lines: one possible alignment
                assert e == theirs
                checked += 1
        assert ls.decode_edits(ls.format_completion(ours_decode)) == states[-1]
    assert checked > 50


# ----------------------------------------------------------------------------- decoding
def test_decode_keeps_plus_minus_lines():
    text, edits = check_sequence(PLUS_MINUS, 0)
    assert "\n-x\n+x\n" in text and "--- a\n+++ b\n-removed\n+added\n@@ -1 +1 @@\n context" in text
    assert ls.decode_edits(ls.format_completion(edits)) == text
    # one hand-written edit: exactly one '+' is the diff's; the rest is code
    assert ls.decode_edits("@@ -0,0 +1,3 @@\n+-x\n++y\n+--- z\n<|diff|>\n<|diff|>") == "-x\n+y\n--- z"


def test_decode_end_marker_and_general_hunks():
    assert ls.decode_edits("") == ""
    assert ls.decode_edits("@@ -0,0 +1 @@\n+a\n<|diff|>\n<|diff|>anything after the end") == "a"
    assert ls.decode_edits("@@ -0,0 +1,2 @@\n+a\n+c\n<|diff|>@@ -1,0 +2 @@\n+b") == "a\nb\nc"   # no end marker: fine
    # several hunks in one edit, positions in the old text (as patch reads them)
    seq = "@@ -0,0 +1,2 @@\n+a\n+d\n<|diff|>@@ -0,0 +1 @@\n+0\n@@ -1,0 +3,2 @@\n+b\n+c\n@@ -2,0 +6 @@\n+e"
    assert ls.decode_edits(seq) == "0\na\nb\nc\nd\ne"
    # '-' and ' ' lines are checked against the text
    assert ls.decode_edits("@@ -0,0 +1,2 @@\n+a\n+b\n<|diff|>@@ -1,2 +1,2 @@\n a\n-b\n+B") == "a\nB"


@pytest.mark.parametrize("bad", [
    "not a hunk",
    "@@ -0,0 +1,2 @@\n+a",                               # cut short
    "@@ -0,0 +1 @@\n+a\n+b",                             # a line after the hunk that is no header
    "@@ -0,0 +1 @@\nx",                                  # no +/-/space prefix
    "@@ -3,0 +4 @@\n+a",                                 # past the end
    "@@ -0,0 +3 @@\n+a",                                 # new position inconsistent
    "@@ -0,0 +0,0 @@",                                   # empty hunk
    "@@ -0,0 +1 @@\n+a\n<|diff|>@@ -1,1 +1 @@\n-zzz\n+b",  # '-' line does not match
    "@@ -0,0 +1,2 @@\n+a\n+b\n<|diff|>@@ -2,0 +3 @@\n+c\n@@ -0,0 +1 @@\n+d",   # hunks out of order
    "@@ -0,0 +1 @@\n+a\n<|diff|>garbage",
    "@@ -0,0 +1 @@ trailing\n+a",
])
def test_malformed_hunk_fails(bad):
    with pytest.raises(ValueError):
        ls.decode_edits(bad)


# ----------------------------------------------------------------------------- other modes
def test_randseq_mode(mbpp):
    for i, rec in enumerate(mbpp[:30]):
        text, lines, runs = ls.sample_rounds(rec["code"], i, None, 2, random_mode=True)
        for rounds in runs:
            assert sorted(r for c in rounds for r in c) == list(range(len(lines)))
            edits = ls.edits_from_rounds(rounds, lines)
            assert all(row.startswith(("@@", "+")) for e in edits for row in e.split("\n"))
            assert ls.decode_edits(ls.format_completion(edits)) == text


def test_pylint_mode(mbpp):
    pytest.importorskip("pylint")
    linter = ls.make_linter("pylint")
    for i, rec in enumerate(mbpp[10:13]):
        text, lines, (rounds,) = ls.sample_rounds(rec["code"], i, linter, 1)
        states = ls.states_from_rounds(rounds, lines)
        baseline = {key for _, key in linter.errors(text)}
        for state in states[1:-1]:
            ls._compile(state)
            assert [e for e in linter.errors(state) if e[1] not in baseline] == []
        assert ls.decode_edits(ls.format_completion(ls.edits_from_rounds(rounds, lines))) == text


def test_pylint_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pylint", None)            # import pylint -> ImportError
    monkeypatch.setitem(sys.modules, "pylint.lint", None)
    with pytest.raises(ls.LintseqError, match="pip install pylint"):
        ls.make_linter("pylint")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "i", "response": "x = 1"}) + "\n")
    for flag in ("--reference", "--linter=pylint"):
        with pytest.raises(ls.LintseqError, match="package pylint.*pip install pylint"):
            ls.main(["--src", str(src), "--out", str(tmp_path / "o.jsonl"), flag, "--workers", "1"])
    assert not (tmp_path / "o.jsonl").exists()


def test_extract_code():
    assert ls.extract_code("Sure:\n```python\ndef f():\n    return 1\n```\nand\n```py\nx = f()\n```\nbye") == \
        "def f():\n    return 1\n\nx = f()\n"
    assert ls.extract_code("x = 1\ny = 2\n") == "x = 1\ny = 2\n"          # no fence: the whole text
    assert ls.extract_code("```\nz = 3\n```") == "z = 3\n"                 # untagged block
    assert ls.extract_code("```python\nunclosed = 1\n") == "unclosed = 1\n"


# ----------------------------------------------------------------------------- CLI
def write_jsonl(path, mbpp):
    """Good records in chat form plus every kind of bad line; returns {kind: line number}."""
    lines, where = [], {}
    for i, rec in enumerate(mbpp[:8]):
        lines.append(json.dumps({"instruction": rec["text"], "response": f"Here:\n```python\n{rec['code']}\n```\n"}))
        extra = {2: ("not_json", "{not json"), 3: ("not_object", "[1, 2]"),
                 4: ("missing", json.dumps({"instruction": "x"})),
                 5: ("not_string", json.dumps({"instruction": "x", "response": 3})),
                 6: ("syntax", json.dumps({"instruction": "x", "response": "def f(:\n    pass"})),
                 7: ("no_code", json.dumps({"instruction": "x", "response": "# just a comment\n"}))}.get(i)
        if extra:
            lines.append(extra[1])
            where[extra[0]] = len(lines)
        if i == 1:
            lines.append("")                                   # blank lines are not records
    path.write_text("\n".join(lines) + "\n")
    return where


def run_cli(*argv):
    ls.main([str(a) for a in argv])


def test_cli_end_to_end(tmp_path, mbpp, capsys):
    src = tmp_path / "in.jsonl"
    where = write_jsonl(src, mbpp)
    out2, out1 = tmp_path / "out" / "w2.jsonl", tmp_path / "out" / "w1.jsonl"
    run_cli("--src", src, "--out", out2, "-s", 3, "--workers", 2, "--seed", 7)
    err = capsys.readouterr().err
    run_cli("--src", src, "--out", out1, "-s", 3, "--workers", 1, "--seed", 7)
    assert out1.read_bytes() == out2.read_bytes()             # deterministic for any --workers
    recs = [json.loads(x) for x in out2.read_text().splitlines()]
    assert len(recs) == 8 * 3
    for j, rec in enumerate(mbpp[:8]):
        for r in recs[3 * j:3 * j + 3]:
            assert r["prompt"] == rec["text"] + "\n<|diff|>"
            assert ls.decode_edits(r["completion"]) == ls.normalize_program(rec["code"])
    assert f"bad lines (not JSON): 1 (lines {where['not_json']})" in err
    assert f"bad lines (not a JSON object): 1 (lines {where['not_object']})" in err
    assert f"bad lines (missing field 'response'): 1 (lines {where['missing']})" in err
    assert f"bad lines (field 'response' is not a string): 1 (lines {where['not_string']})" in err
    assert f"skipped (syntax error): 1 (lines {where['syntax']})" in err
    assert f"skipped (no code lines): 1 (lines {where['no_code']})" in err
    assert "8 programs -> 24 lintseq" in err
    assert sorted(p.name for p in out2.parent.iterdir()) == ["w1.jsonl", "w2.jsonl"]   # no temp files left

    base = tmp_path / "base.jsonl"
    run_cli("--src", src, "--out", base, "--baseline", "--workers", 1)
    brecs = [json.loads(x) for x in base.read_text().splitlines()]
    assert [r["completion"] for r in brecs] == [ls.normalize_program(r["code"]) for r in mbpp[:8]]
    assert all(r["prompt"] == m["text"] + "\n" for r, m in zip(brecs, mbpp))

    rand = tmp_path / "rand.jsonl"
    run_cli("--src", src, "--out", rand, "--random", "-s", 1, "--workers", 1, "--limit", 3)
    rrecs = [json.loads(x) for x in rand.read_text().splitlines()]
    assert len(rrecs) == 3                                   # --limit counts records read (first 3 are good)
    assert [ls.decode_edits(r["completion"]) for r in rrecs] == [ls.normalize_program(r["code"]) for r in mbpp[:3]]


def test_cli_bad_inputs(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ls.LintseqError, match="empty input"):
        run_cli("--src", empty, "--out", tmp_path / "o.jsonl", "--workers", 1)
    with pytest.raises(ls.LintseqError, match="no such file"):
        run_cli("--src", tmp_path / "missing.jsonl", "--out", tmp_path / "o.jsonl")
    allbad = tmp_path / "bad.jsonl"
    allbad.write_text("nope\n" + json.dumps({"instruction": "x", "response": "def (:"}) + "\n")
    with pytest.raises(ls.LintseqError, match="no usable records"):
        run_cli("--src", allbad, "--out", tmp_path / "o.jsonl", "--workers", 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "empty.jsonl"]   # nothing half-written


def test_cli_help_and_bad_input_line(repo_root, tmp_path):
    r = subprocess.run([sys.executable, str(repo_root / "lintseq.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--linter" in r.stdout and "--baseline" in r.stdout and "--reference" in r.stdout
    r = subprocess.run([sys.executable, str(repo_root / "lintseq.py"), "--src", str(tmp_path / "missing.jsonl"),
                        "--out", str(tmp_path / "o.jsonl")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == f"lintseq.py: error: {tmp_path / 'missing.jsonl'}: no such file\n"


def test_reference_pylint_missing_exits_2_naming_the_package(repo_root, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "i", "response": "x = 1"}) + "\n")
    hide = tmp_path / "hide"                       # a pylint package that cannot be imported shadows the real one
    (hide / "pylint").mkdir(parents=True)
    (hide / "pylint" / "__init__.py").write_text("raise ImportError('hidden for this test')\n")
    r = subprocess.run([sys.executable, str(repo_root / "lintseq.py"), "--src", str(src), "--out",
                        str(tmp_path / "o.jsonl"), "--reference"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": f"{hide}{os.pathsep}{repo_root}"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("lintseq.py: error: ") and "package pylint" in r.stderr
    assert not (tmp_path / "o.jsonl").exists()


# ----------------------------------------------------------------------------- the paper's sampler (--reference)
def test_reference_candidates_and_indents():
    lines = ["import os", "# a comment", "", "NAMES = [", "    'a',", "]", "def f(x):", "    if x:",
             "        return 1", "    )", "    return 2"]
    assert ls._reference_candidates(lines) == [0, 3, 6, 7, 8, 9, 10]     # no comment, blank or global-def body
    assert ls._reference_indents(lines) == [0, 0, 0, 0, 4, 4, 0, 4, 8, 8, 4]  # "]", ")" keep the previous indent


@pytest.fixture(scope="module")
def pylint_linter():
    pytest.importorskip("pylint")
    return ls.make_linter("pylint")


def test_reference_mode_on_mbpp(mbpp, pylint_linter):
    """Every intermediate state compiles and is pylint-clean (the paper's message set) with nothing
    ignored, edits only insert and rebuild the program; comments and blank lines come in the first edit."""
    edits_ref, edits_ours = 0, 0
    for rec in mbpp[:6]:
        text, lines, (rounds,) = ls.sample_rounds(rec["code"], 3, pylint_linter, 1, reference=True)
        states = ls.states_from_rounds(rounds, lines)
        for state in states[1:-1]:
            ls._compile(state)
            assert pylint_linter.errors(state) == [], state
        edits = ls.edits_from_rounds(rounds, lines)
        for e in edits:
            assert all(row.startswith(("@@ ", "+")) for row in e.split("\n"))
        assert ls.decode_edits(ls.format_completion(edits)) == text
        assert sorted(r for rd in rounds for r in rd) == list(range(len(lines)))
        edits_ref += len(edits)
        edits_ours += len(ls.sample_edits(rec["code"], 3))
    assert edits_ref < edits_ours          # MBPP's tab indentation is pylint's W0311: blocks go in one edit
    code = "import os\n# set up\n\ndef f(x):\n    # double\n    return 2 * x\n"
    text, lines, (rounds,) = ls.sample_rounds(code, 0, pylint_linter, 1, reference=True)
    first = ls.states_from_rounds(rounds, lines)[1]
    assert first == "# set up\n"     # never sampled: left for the first forward edit (the indented comment
    assert any(4 in rd and 3 in rd for rd in rounds)  # goes with `def f`, the block it is indented under)


def test_reference_sweeps_existing_errors_into_the_first_deletion(pylint_linter):
    code = "import not_a_module_anywhere\nx = 1\ny = x + 1\nprint(y)"
    for seed in range(3):
        text, lines, (rounds,) = ls.sample_rounds(code, seed, pylint_linter, 1, reference=True)
        assert 0 in rounds[0]                              # the unresolvable import goes with the first deletion
    _, _, (ours,) = ls.sample_rounds(code, 0, "pyflakes", 1)
    assert [0] in ours                                    # the default ignores errors already there
