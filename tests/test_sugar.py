"""Token Sugar (sugar.py): exact round trips on real code, the hard cases, mining, scheduling, bad input."""
import itertools
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sugar
from sugar import (END_TOKEN, SugarError, cut_at_stops, desugarize, find_matches, join_fields, load_sugars,
                   mine, remove_docstrings, schedule, sugarize)

REPO = Path(__file__).resolve().parents[1]
STDLIB_DIRS = ("json", "collections", "email", "importlib", "logging", "unittest", "asyncio", "http", "xml", "ctypes")


def all_patterns_table(texts, limit=None):
    """A sugar for every candidate template of the programs: the hardest test of exactness (every
    span that can be sugarized is a candidate, and expr shorthand nests inside other shorthand)."""
    seen = {}
    for code in texts:
        for kind, t, *_ in sugar._file_patterns(code, texts=False) or []:
            seen.setdefault((kind, t), None)
    entries = [{"code": t, "type": k, "reward": 1.0 + (len(t) % 7)} for k, t in seen]
    table = []
    for e in entries[:limit]:
        try:
            table.append(sugar.Sugar(e["code"], e["type"], reward=e["reward"]))
        except (SyntaxError, ValueError):  # templates that do not parse alone are never mined either
            pass
    return sugar.SugarTable(table)


def stdlib_sample(n, seed=0):
    from data import stdlib_files

    files = [p for p in stdlib_files() if p.parent.name in STDLIB_DIRS and p.stat().st_size < 60_000]
    random.Random(seed).shuffle(files)
    return [(str(p), p.read_text(encoding="utf-8")) for p in files[:n]]


@pytest.fixture(scope="module")
def humaneval():
    return {"doc": sugar.humaneval_programs(True), "nodoc": sugar.humaneval_programs(False)}


@pytest.fixture(scope="module")
def mbpp(mbpp_path):
    rows = [json.loads(line) for line in open(mbpp_path, encoding="utf-8")]
    return rows


@pytest.fixture(scope="module")
def count(tokenizer_path):
    return sugar.TokenCounter(tokenizer_path)


@pytest.fixture(scope="module")
def mined(tokenizer_path, mbpp):
    """Sugars mined (as `python sugar.py mine` does) from stdlib files and MBPP's training programs."""
    texts = [t for _, t in stdlib_sample(40, seed=1)] + [r["code"] for r in mbpp if r["task_id"] > 510]
    table, report = mine(texts, tokenizer_path, threshold=3, min_reward=0.5, workers=1)
    assert report["sugars"] == len(table) > 50
    return table


def assert_round_trips(programs, table, count=None, expect_matches=True):
    total = 0
    for name, code in programs:
        info = {}
        s = sugarize(code, table, count, info)
        assert info["status"] in ("ok", "does not parse"), (name, info)
        assert desugarize(s, table) == code, name
        total += info["matches"]
    if expect_matches:
        assert total > 0
    return total


# ----------------------------------------------------------------------------- real corpora
def test_humaneval_round_trip_mined(humaneval, mined, count):
    n = assert_round_trips(humaneval["doc"] + humaneval["nodoc"], mined, count)
    assert n > 164  # more than one sugar per program on average


def test_implied_end_tokens_never_fall_back(humaneval, mined, count):
    """sugarize leaves out every implied end token (no program falls back to writing them all), and
    the form with every end token written desugars the same."""
    left_out = 0
    for name, code in humaneval["nodoc"]:
        chosen = sugar.select(find_matches(code, mined, count))
        full = sugar._render(code, 0, len(code), chosen, mined)
        short = sugarize(code, mined, count)
        assert short == sugar._IMPLIED_ENDS_RE.sub("", full), name
        assert desugarize(full, mined) == desugarize(short, mined) == code, name
        left_out += full.count(END_TOKEN) - short.count(END_TOKEN)
    assert left_out > 100, left_out


def test_humaneval_round_trip_all_patterns(humaneval):
    for key in ("doc", "nodoc"):
        table = all_patterns_table([c for _, c in humaneval[key]])
        assert_round_trips(humaneval[key], table)


def test_docstring_remover(humaneval):
    import ast

    for (name, doc), (_, nodoc) in zip(humaneval["doc"], humaneval["nodoc"]):
        tree = ast.parse(nodoc)  # still valid Python
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body:
                first = node.body[0]
                assert not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                            and isinstance(first.value.value, str)), name
        assert len(nodoc) <= len(doc)
    assert remove_docstrings('def f():\n    """only a docstring"""\n') == "def f():\n    pass\n"
    assert remove_docstrings("x = (\n") == "x = (\n"  # does not parse: unchanged


def test_mbpp_test_split_round_trip(mbpp, mined, count):
    test = [(str(r["task_id"]), r["code"]) for r in mbpp if 11 <= r["task_id"] <= 510]
    assert len(test) == 500 and any("\r\n" in c for _, c in test) and any("\t" in c for _, c in test)
    assert_round_trips(test, mined, count)
    table = all_patterns_table([c for _, c in test[:150]])
    assert_round_trips(test[:150], table)


def test_crlf_files_match_lf_templates(mbpp, mined, count):
    """CRLF files are mined and matched as LF, and multi-line templates expand with CRLF breaks: an
    MBPP program (CRLF) sugarizes exactly as its LF copy does, breaks aside."""
    crlf = [r["code"] for r in mbpp if sugar._crlf_only(r["code"])]
    assert len(crlf) > 900
    multi = same = 0
    for code in crlf[:300]:
        s = sugarize(code, mined, count)
        assert desugarize(s, mined) == code
        s_lf = sugarize(code.replace("\r\n", "\n"), mined, count)
        same += s == s_lf.replace("\n", "\r\n")
        tokens = [m.group() for m in sugar._TOKEN_RE.finditer(s) if m.group() != END_TOKEN]
        multi += any("\n" in mined.by_token[t].code for t in tokens)  # a multi-line template applied
    assert multi > 30 and same > 250, (multi, same)
    # mining a CRLF copy finds the same templates as the LF original
    lf = [c.replace("\r\n", "\n") for c in crlf[:40]]
    pats = lambda texts: {p[:2] for c in texts for p in sugar._file_patterns(c, texts=False)}  # noqa: E731
    assert pats(crlf[:40]) == pats(lf)
    code = "def f(a):\r\n    b = a + 1\r\n    return b\r\n"
    table = load_sugars([{"code": "SUGARWILDCARD_0 = SUGARWILDCARD_1 + 1\nreturn SUGARWILDCARD_0", "type": "stmt",
                          "reward": 5}])
    s = sugarize(code, table)
    assert s == f"def f(a):\r\n    b{table.sugars[0].token}a\r\n" and desugarize(s, table) == code


def test_stdlib_round_trip(mined, count):
    files = stdlib_sample(10, seed=2)
    assert_round_trips(files, mined, count)
    table = all_patterns_table([c for _, c in files[:4]], limit=4000)
    assert_round_trips(files[:4], table)


# ----------------------------------------------------------------------------- the hard cases
def table_for(code):
    return all_patterns_table([code])


def tokens_in(text):
    return sugar._TOKEN_RE.findall(text)


@pytest.mark.parametrize("code", [
    # elif is an If inside orelse: it must come back as elif
    "def f(a, b):\n    if a == b:\n        return 1\n    elif a > b:\n        return 2\n    elif a < b:\n        return 3\n    else:\n        return 4\n",
    # parentheses around a hole filler (the reference drops them)
    "counts = [0] * (max(lst) + 1)\ny = (a + b) * (c - d)\n",
    # hole-free heads
    "while True:\n    x = read()\n    if not x:\n        break\ntry:\n    pass\nexcept:\n    pass\n",
    # ';' and end-token text inside strings, '#' inside strings
    "x = f('a;b', \"c;d\")\ny = g('<\\\\expr_token>' + z, '# not a comment')\n",
    # comments inside spans and fillers
    "a = 1\n# a comment between statements\nb = 2  # trailing\nc = foo(a,  # inside a filler\n        b)\n",
    # a repeated name is one hole
    "x = x + 1\ncount = count + 1\n",
    # decorators, defaults, annotations, keyword-only and star args
    "@property\ndef f(self, a: int = 3, *args, b=None, **kw) -> int:\n    return a\n\n\nclass A(B, metaclass=M):\n    pass\n",
    # line continuations, tabs, CRLF, non-ASCII
    "total = a + \\\n    b\r\nif x:\r\n\ty = 'é' + nom_é\r\n\tz = f'{y}!'\r\n",
    # one-line compound statements, semicolons, walrus, lambda in a header
    "if x: return 1\na = 1; b = 2\nif (n := len(a)) > 10:\n    print(n)\nfor k in sorted(d, key=lambda v: v[1]):\n    pass\n",
    # multi-line header and with-items
    "def g(\n    a,\n    b,\n):\n    with open(a) as fa, open(b) as fb:\n        return fa.read() + fb.read()\n",
    # strings over several lines as fillers, nested calls
    'msg = """one;\ntwo"""\nprint(msg.replace(";", ","), len(msg.split("\\n")))\n',
    # no trailing newline
    "for i in range(len(xs)):\n    xs[i] += 1",
])
def test_hard_cases_round_trip(code):
    table = table_for(code)
    s = sugarize(code, table)
    assert tokens_in(s), s  # something was sugarized
    assert desugarize(s, table) == code


def test_elif_head_sugar():
    code = "if a == b:\n    x = 1\nelif a > b:\n    x = 2\n"
    table = load_sugars([{"code": "elif SUGARWILDCARD_0 > SUGARWILDCARD_1:", "type": "stmt_head", "reward": 5}])
    s = sugarize(code, table)
    tok = table.sugars[0].token
    assert s == f"if a == b:\n    x = 1\na b{tok}\n    x = 2\n" or s == f"if a == b:\n    x = 1\n{tok}a b\n    x = 2\n"
    assert desugarize(s, table) == code


def test_shorthand_format():
    table = load_sugars([
        {"code": "for SUGARWILDCARD_0 in range(len(SUGARWILDCARD_1)):", "type": "stmt_head", "reward": 4},
        {"code": "SUGARWILDCARD_0 = SUGARWILDCARD_0 + 1", "type": "stmt", "reward": 3},
        {"code": "SUGARWILDCARD_0 % 2 == 0", "type": "expr", "reward": 3},
        {"code": "while True:", "type": "stmt_head", "reward": 2},
        {"code": "SUGARWILDCARD_0 = SUGARWILDCARD_1.get(SUGARWILDCARD_2, None)", "type": "stmt", "reward": 3},
    ])
    t = [s.token for s in table.sugars]
    assert table.sugars[0].written == [0] and table.sugars[0].read == [1]
    assert table.sugars[1].holes == [0] and table.sugars[1].written == [0]  # x = x + 1: one hole
    code = ("for i in range(len(xs)):\n    n = n + 1\n    if xs[i] % 2 == 0:\n        pass\n"
            "while True:\n    v = d.get('a;b', None)\n    even = v % 2 == 0  # why\nodd = not (v % 2 == 0\n)")
    s = sugarize(code, table)
    assert s == (f"i{t[0]}xs\n    n{t[1]}\n    if {t[2]}xs[i]{END_TOKEN}:\n        pass\n"
                 f"{t[3]}\n    v{t[4]}d 'a;b'\n    even = {t[2]}v  # why\nodd = not ({t[2]}v\n)")
    assert desugarize(s, table) == code


def test_nested_expr_in_fields():
    table = load_sugars([
        {"code": "for SUGARWILDCARD_0 in SUGARWILDCARD_1:", "type": "stmt_head", "reward": 2},
        {"code": "range(len(SUGARWILDCARD_0))", "type": "expr", "reward": 3},
        {"code": "len(SUGARWILDCARD_0)", "type": "expr", "reward": 1},
    ])
    code = "for i in range(len(xs)):\n    pass\n"
    s = sugarize(code, table)
    t = [x.token for x in table.sugars]
    assert s == f"i{t[0]}{t[1]}xs\n    pass\n"  # the line end closes both shorthands
    assert desugarize(s, table) == code
    assert sugarize(code, table, nested=False) in (f"i{t[0]}range(len(xs))\n    pass\n", f"for i in {t[1]}xs{END_TOKEN}:\n    pass\n")


def test_join_fields_reads_back():
    table = load_sugars([])
    cases = [["a", "b"], ["x if y else z", "w"], ["not x", "y"], ["a", "not b"], ['"s"', '"t"'], ['"s"', 'f"t"'],
             ["f(x)", "y"], ["1.", "x"], ["'a;b'", "c"], ["x", "None", "3"], ["lambda v: v", "k"]]
    for values in cases:
        joined = join_fields(values)
        assert sugar._scan_fields(joined, 0, "all", table)[0] == values, joined
    # after a closed expr shorthand: no separator before a name, string or shorthand starting with one
    table = load_sugars([{"code": "len(SUGARWILDCARD_0)", "type": "expr"}, {"code": "''.join", "type": "expr"},
                         {"code": "(SUGARWILDCARD_0 for SUGARWILDCARD_1 in SUGARWILDCARD_2)", "type": "expr"}])
    ln, join, gen = (s.token for s in table.sugars)
    cases = {(f"{ln}a{END_TOKEN}", "b"): "", (f"{ln}a{END_TOKEN}", f"{ln}b{END_TOKEN}"): "", (join, "'x'"): "",
             (f"{ln}a{END_TOKEN}", f"{gen}x y z{END_TOKEN}"): ";", (f"{ln}a{END_TOKEN}", "(b)"): ";", ("a", f"{ln}b{END_TOKEN}"): ";"}
    for values, sep in cases.items():
        joined = join_fields(list(values), table)
        assert joined == sep.join(values) and sugar._scan_fields(joined, 0, "all", table)[0] == list(values), joined


# ----------------------------------------------------------------------------- mining and scheduling
def test_mining_finds_a_known_pattern(tokenizer_path):
    names = [("xs", "i"), ("items", "k"), ("data", "j"), ("rows", "r"), ("values", "n"), ("cells", "c")]
    texts = [f"def f{n}({a}):\n    total = 0\n    for {b} in range(len({a})):\n        total += {a}[{b}]\n    return total\n"
             for n, (a, b) in enumerate(names)]
    texts.append("this does not parse (\n")
    table, report = mine(texts, tokenizer_path, threshold=4, min_reward=1, workers=1)
    assert report["skipped"] == 1 and report["programs"] == 6
    head = table.by_key.get(("stmt_head", "for SUGARWILDCARD_0 in range(len(SUGARWILDCARD_1)):"))
    assert head is not None and head.file_freq == 6 and head.freq == 6 and head.reward >= 1
    assert all(s.file_freq >= 4 for s in table.sugars)
    savings = [s.saved for s in table.sugars]
    assert savings == sorted(savings, reverse=True)


def test_schedule_is_optimal_against_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 9)
        iv = []
        for _ in range(n):
            s = rng.randint(0, 20)
            iv.append((s, s + rng.randint(1, 8), rng.randint(1, 10)))
        best = 0
        for r in range(n + 1):
            for sub in itertools.combinations(range(n), r):
                ordered = sorted(sub, key=lambda k: iv[k][0])
                if all(iv[a][1] <= iv[b][0] for a, b in zip(ordered, ordered[1:])):
                    best = max(best, sum(iv[k][2] for k in sub))
        chosen = schedule(iv)
        assert all(iv[a][1] <= iv[b][0] for a, b in zip(chosen, chosen[1:]))
        assert sum(iv[k][2] for k in chosen) == best


def test_savings_count_sugar_tokens_as_one(tokenizer_path, count):
    from data import Tokenizer

    table = load_sugars([{"code": "for SUGARWILDCARD_0 in range(len(SUGARWILDCARD_1)):", "type": "stmt_head"},
                         {"code": "SUGARWILDCARD_0 % 2 == 0", "type": "expr"}])
    code = "for i in range(len(xs)):\n    if xs[i] % 2 == 0:\n        print(i)\n"
    s = sugarize(code, table, count)
    tok = Tokenizer(tokenizer_path)
    tok.add_tokens(table.tokens())
    assert sugar.count_sugarized(s, tok) == len(tok.encode(s)) < len(tok.encode(code))
    assert all(m.saving == int(m.saving) for m in find_matches(code, table, count))


# ----------------------------------------------------------------------------- files and bad input
REFERENCE_FORMAT = {
    "dataset_name": "leetcode", "num_sugar": 3,
    "sugar": [
        {"code": "for SUGARWILDCARD_0 in range(len(SUGARWILDCARD_1)):", "reward": 4, "saved": 6364, "freq": 1591,
         "file_freq": 1419, "type": "stmt_head", "id": "8b28d7838d2cdfb7b15ffb6ed7ec01cd"},
        {"code": "(SUGARWILDCARD_0, SUGARWILDCARD_1) = (SUGARWILDCARD_1, SUGARWILDCARD_0)", "reward": 22, "saved": 1584,
         "freq": 72, "file_freq": 63, "type": "stmt", "id": "2446e9eadc0464cb652d21fffd12f386"},
        {"code": "len(SUGARWILDCARD_0) - 1", "reward": 3, "saved": 3609, "freq": 1203, "file_freq": 1039,
         "type": "expr", "id": "119ae9a3ba86e680418729dd796971ee"},
    ]}


def test_reference_format_loads_and_applies(tmp_path):
    path = tmp_path / "mined_sugars.json"
    path.write_text(json.dumps(REFERENCE_FORMAT))
    table = load_sugars(path)
    assert [s.type for s in table.sugars] == ["stmt_head", "stmt", "expr"]
    assert table.sugars[0].token == "<8b28d7838d2cdfb7b15ffb6ed7ec01cd_stmt_token>"
    assert table.tokens()[-1] == END_TOKEN
    code = "def f(a):\n    for i in range(len(a)):\n        (x, y) = (y, x)\n    return a[len(a) - 1]\n"
    s = sugarize(code, table)
    head, stmt, expr = table.tokens()[:3]
    assert s == f"def f(a):\n    i{head}a\n        x y{stmt}\n    return a[{expr}a]\n"  # `]` implies the end token
    assert desugarize(s, table) == code
    # and ours writes the same format, which loads again
    again = load_sugars(json.loads(json.dumps(table.to_json("x"))))
    assert [s.id for s in again.sugars] == [s.id for s in table.sugars]
    # a checkpoint's postprocess block loads too (eval.py passes it as is)
    post = {"sugars": REFERENCE_FORMAT["sugar"], "start_id": None, "token_ids": {}}
    assert desugarize(s, post) == code


@pytest.mark.parametrize("content, message", [
    ("{not json", "not JSON"),
    ('{"sugars_missing": []}', "no 'sugar' list"),
    ('{"sugar": [{"code": "x = 1", "type": "statement"}]}', "sugar[0]"),
    ('{"sugar": [{"code": "x = 1", "type": "stmt"}, {"code": "x = (", "type": "stmt"}]}', "sugar[1]"),
    ('{"sugar": [{"code": "if x", "type": "stmt_head"}]}', "malformed pattern"),
    ('{"sugar": [{"code": "a + 1", "type": "expr", "reward": "many"}]}', "'reward'"),
    ('{"sugar": [{"code": "a + 1", "type": "expr", "id": "x"}, {"code": "a + 2", "type": "expr", "id": "x"}]}', "same id"),
])
def test_bad_sugars_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SugarError, match=re.escape(message)) as e:
        load_sugars(path)
    assert str(path) in str(e.value)
    if "unknown" in message:
        assert "unknown type" in str(e.value)


def test_unknown_type_is_named(tmp_path):
    with pytest.raises(SugarError, match=r"sugar\[0\].*unknown type 'statement'"):
        load_sugars([{"code": "x = 1", "type": "statement"}])


def test_bad_generations_raise_value_errors():
    table = load_sugars(REFERENCE_FORMAT)
    head, stmt, expr = (s.token for s in table.sugars)
    bad = {
        "unknown sugar token": "x = <0123abcd_expr_token>y<\\expr_token>\n",
        "takes 1 read field": f"i{head}a;b\n    pass\n",
        "takes 1 written field": f"i;j{head}xs\n    pass\n",
        "statement token": f"{expr}a b{stmt}\n",  # expr shorthand only in read fields
        "without an expr token": f"y = a{END_TOKEN}\n",
        "text follows": f"a b{stmt}junk\n",
        "unterminated string": f"i{head}'abc\n",
        "unbalanced": f"i{head}f(a))\n",
    }
    for reason, text in bad.items():
        with pytest.raises(ValueError, match=reason):
            desugarize(text, table)
    assert desugarize("plain code, no sugar\n", table) == "plain code, no sugar\n"


def test_implied_end_tokens():
    """An expr shorthand also closes at the end of the logical line (newline, comment, end of text)
    and at a closing bracket it did not open; sugarize then leaves its end token out. After a closed
    shorthand a field starting with a name, string or shorthand needs no separator."""
    table = load_sugars(REFERENCE_FORMAT["sugar"] + [{"code": "SUGARWILDCARD_0 + SUGARWILDCARD_1", "type": "expr", "reward": 1}])
    head, stmt, expr, plus = (s.token for s in table.sugars)
    cases = {
        f"y = {expr}a\n": "y = len(a) - 1\n",
        f"y = {expr}a": "y = len(a) - 1",
        f"y = {expr}a  # note; x\r\n": "y = len(a) - 1  # note; x\r\n",
        f"y = {expr}{expr}f(a,\n b)\n": "y = len(len(f(a,\n b)) - 1) - 1\n",
        f"y = f({expr}a\n  , b)\n": "y = f(len(a) - 1\n  , b)\n",  # inside outer brackets: still closes
        f"i{head}{expr}xs\n    pass\n": "for i in range(len(len(xs) - 1)):\n    pass\n",
        f"y = {expr}a{END_TOKEN} + 1\n": "y = len(a) - 1 + 1\n",
        f"y = f({expr}a)[{expr}b ]\n": "y = f(len(a) - 1)[len(b) - 1 ]\n",
        f"y = {plus}f({expr}a);{expr}b\n": "y = f(len(a) - 1) + len(b) - 1\n",  # `)` closes the inner one only
        f"y = {plus}{expr}a{END_TOKEN}b\n": "y = len(a) - 1 + b\n",  # no separator after a closed shorthand
        f"y = {plus}{expr}a{END_TOKEN}{expr}b\n": "y = len(a) - 1 + len(b) - 1\n",
        f"y = {plus}{expr}a{END_TOKEN}[0];b\n": "y = len(a) - 1[0] + b\n",  # `[` continues the field
    }
    for text, code in cases.items():
        assert desugarize(text, table) == code, text
    code = "n = len(xs) - 1\nm = g(len(ys) - 1) + 1\nk = len(a) - 1 + b\n"
    s = sugarize(code, table)
    assert s == f"n = {expr}xs\nm = g({expr}ys) + 1\nk = {plus}{expr}a{END_TOKEN}b\n"
    assert desugarize(s, table) == code


def test_damaged_generations_fail_cleanly(humaneval, mined, count):
    """What a model writes may be any mutation of shorthand: desugarize returns text or raises
    SugarError (eval counts a failed sample), cut_at_stops never raises."""
    outs = [sugarize(c, mined, count) for _, c in humaneval["nodoc"][:60]]
    tokens = [s.token for s in mined.sugars[:200]] + [END_TOKEN] * 20
    rng = random.Random(0)
    results = {"text": 0, "error": 0}
    for _ in range(3000):
        s = rng.choice(outs)
        i = rng.randrange(len(s) + 1)
        j = min(len(s), i + rng.randrange(12))
        s = rng.choice([s[:i], s[:i] + s[j:], s[:i] + rng.choice(tokens) + s[i:],
                        s[:i] + rng.choice(" ;\n)(#'\"<>,x") + s[i:],
                        s[:i] + rng.choice(tokens) + rng.choice(["a", " b", ")", "\n"]) + END_TOKEN + s[j:]])
        cut_at_stops(s, mined, ["\ndef ", "\nclass ", "\nif ", "\nprint("], rng.random() < 0.5)
        try:
            assert isinstance(desugarize(s, mined), str)
            results["text"] += 1
        except SugarError:
            results["error"] += 1
    assert min(results.values()) > 500, results


def test_cut_at_stops_matches_desugar_then_truncate(humaneval, mined):
    """cut_at_stops keeps exactly the sugared text whose desugaring, cut at the first column-0 stop,
    equals the whole completion's desugaring cut there; junk after the stop line is dropped."""
    stops = ["\ndef", "\nclass", "\nif", "\nprint", "\n#", "\n@"]

    def truncate(text):
        probe = "\n" + text
        cut = min((i for i in (probe.find(s) for s in stops) if i >= 0), default=-1)
        return text if cut < 0 else probe[:cut][1:]

    heads = sugar.stop_tokens(mined, stops)
    starts = {t: mined.by_token[t].code for t in mined.by_token if not t.endswith("_expr_token>")}
    assert heads == {t for t, code in starts.items() if code.startswith(("def", "class", "if", "print", "@"))}
    assert 0 < len(heads) < len(starts)
    checked = 0
    programs = [code for _, code in humaneval["nodoc"]]
    for code, after in zip(programs, programs[1:] + programs[:1]):
        lines = sugarize(code, mined).splitlines(keepends=True)
        first = next(i for i, line in enumerate(lines) if desugarize(line, mined).startswith("def "))
        # what a model writes after the prompt's def line, running on into another program
        completion = "".join(lines[first + 1:]) + "\n" + sugarize(after, mined)
        cut = sugar.cut_at_stops(completion, mined, stops)
        assert truncate(desugarize(cut, mined)) == truncate(desugarize(completion, mined))
        if len(cut) < len(completion):  # junk after the stop (half a shorthand) changes nothing
            assert sugar.cut_at_stops(completion + "\n<zzz_stmt_token>;(", mined, stops) == cut
            checked += 1
    assert checked > 150


def test_files_that_do_not_parse_are_left_alone():
    table = load_sugars(REFERENCE_FORMAT)
    info = {}
    code = "for i in range(len(xs)):\n  print i\n"
    assert sugarize(code, table, info=info) == code and info["status"] == "does not parse"
    code = "x = '<8b28d7838d2cdfb7b15ffb6ed7ec01cd_stmt_token>'\n"
    assert sugarize(code, table, info=info) == code and info["status"] == "has sugar text"


# ----------------------------------------------------------------------------- command line
def test_cli_help():
    for cmd in ([], ["mine"], ["apply"], ["stats"]):
        r = subprocess.run([sys.executable, str(REPO / "sugar.py"), *cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0 and "usage" in r.stdout


def test_cli_bad_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    r = subprocess.run([sys.executable, str(REPO / "sugar.py"), "stats", "--sugars", str(bad), "--src", "humaneval"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "not JSON" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_continued_pretraining_on_sugar_then_eval(tmp_path, tiny_ckpt, mined, mbpp):
    """config/sugar_150m.py at toy scale, as its header says: `apply` with the checkpoint's tokenizer,
    continued pretraining (the embedding grows by the sugar tokens, the table goes into config.json),
    then eval.py reads the table from the checkpoint and desugars what the model writes."""
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"text": r["code"]}) + "\n" for r in mbpp[:80]))
    sugars = tmp_path / "sugars.json"
    small = sugar.SugarTable(mined.sugars[:30])
    sugars.write_text(json.dumps(small.to_json("test")))
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    run = lambda *a: subprocess.run([sys.executable, *map(str, a)], capture_output=True, text=True, cwd=REPO,  # noqa: E731
                                    env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    r = run(REPO / "sugar.py", "apply", "--sugars", sugars, "--src", src, "--out", corpus, "--tokenizer", tiny_ckpt,
            "--workers", "1")
    assert r.returncode == 0, r.stderr
    r = run(REPO / "train.py", REPO / "config" / "sugar_150m.py", f"--init_from={tiny_ckpt}", f"--data_dir={corpus}",
            f"--out_dir={out}", "--device=cpu", "--compile=False", "--batch_size=2", "--block_size=64",
            "--gradient_accumulation_steps=1", "--max_iters=3", "--warmup_iters=1", "--eval_interval=3",
            "--eval_iters=1", "--eval_humaneval_interval=0", "--log_interval=1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    base = json.loads((tiny_ckpt / "config.json").read_text())["model"]["vocab_size"]
    ids = config["postprocess"]["sugar"]["token_ids"]
    assert len(ids) == len(small) + 1 and min(ids.values()) == base and config["model"]["vocab_size"] > max(ids.values())
    r = run(REPO / "eval.py", "--ckpt", out, "--tasks", "humaneval", "--limit", "2", "--max_new_tokens", "24",
            "--out", tmp_path / "eval")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["postprocess"]["sugar"] is True and metrics["tasks"]["humaneval"]["n_samples"] == 2


def test_apply_writes_a_corpus_that_desugars_back(tmp_path, tokenizer_path, mined, mbpp):
    import numpy as np

    from data import Tokenizer, load_corpus_meta

    programs = [r["code"] for r in mbpp[:40]]
    src = tmp_path / "src.jsonl"
    src.write_text("".join(json.dumps({"text": c}) + "\n" for c in programs))
    sugars = tmp_path / "sugars.json"
    small = sugar.SugarTable(mined.sugars[:40])  # (adding tokens is slow in data.Tokenizer for thousands)
    sugars.write_text(json.dumps(small.to_json("test")))
    out = tmp_path / "corpus"
    r = subprocess.run([sys.executable, str(REPO / "sugar.py"), "apply", "--sugars", str(sugars), "--src", str(src),
                        "--out", str(out), "--tokenizer", str(tokenizer_path), "--joint_ratio", "0.25", "--workers", "1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    meta = load_corpus_meta(out)
    post = meta["postprocess"]["sugar"]
    assert len(post["sugars"]) == len(small) and post["token_ids"][END_TOKEN] == max(post["token_ids"].values())
    tok = Tokenizer.load(out)
    assert tok.added_tokens == post["token_ids"]
    ids = np.concatenate([np.fromfile(out / s["file"], dtype=meta["dtype"]) for split in ("train", "val")
                          for s in meta[split]["shards"]])
    docs, cur = [], []
    for i in ids.tolist():
        if i == tok.eos_id:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(i)
    assert sorted(desugarize(d, post) for d in docs) == sorted(programs)
    sugared = [d for d in docs if tokens_in(d)]
    assert 0 < len(sugared) < len(docs)  # a mix: some programs stay plain


# ----------------------------------------------------------------------------- the paper's sugars and matching
PAPER_SUGARS = {  # the released mined_sugars.json format; templates in ast.unparse spelling, like the paper's
    "dataset_name": "leetcode", "num_sugar": 7,
    "sugar": [dict(e, id=sugar.sugar_id(e["code"]), saved=e["reward"] * e["freq"], file_freq=e["freq"] // 2) for e in [
        {"code": "for SUGARWILDCARD_0 in range(len(SUGARWILDCARD_1)):", "type": "stmt_head", "reward": 4, "freq": 1591},
        {"code": "SUGARWILDCARD_0 = []", "type": "stmt", "reward": 2, "freq": 2900},
        {"code": "SUGARWILDCARD_0 += 1", "type": "stmt", "reward": 2, "freq": 2500},
        {"code": "len(SUGARWILDCARD_0) - 1", "type": "expr", "reward": 3, "freq": 1203},
        {"code": "SUGARWILDCARD_0.split()", "type": "expr", "reward": 2, "freq": 300},
        {"code": "return ''.join(SUGARWILDCARD_0)", "type": "stmt", "reward": 4, "freq": 350},
        {"code": "if SUGARWILDCARD_0 % 2 == 0:", "type": "stmt_head", "reward": 5, "freq": 700}]]}


def test_paper_format_round_trips_in_both_matching_modes(tmp_path):
    path = tmp_path / "mined_sugars.json"
    path.write_text(json.dumps(PAPER_SUGARS))
    table = load_sugars(path)
    assert len(table) == 7 and [s.id for s in table.sugars] == [e["id"] for e in PAPER_SUGARS["sugar"]]
    code = ('def f(words, n):\n    out=[]\n    for i in range(len(words)):\n        if i%2 == 0:\n'
            '            n+=1\n    return "".join(words[len(words)-1:])  # the last\n')
    info = {}
    s = sugarize(code, table, info=info)                        # text mode: exact, only the `for` head matches
    assert desugarize(s, table) == code and info["matches"] == 1
    n = sugarize(code, table, info=info, match="normalized")    # the reference's mode
    norm = sugar.normalize_code(code)
    assert norm == ('def f(words, n):\n    out = []\n    for i in range(len(words)):\n        if i % 2 == 0:\n'
                    "            n += 1\n    return ''.join(words[len(words) - 1:])")
    assert desugarize(n, table) == norm and info["matches"] == 6      # every sugar, one nested in another
    assert sugarize("def f(:\n", table, match="normalized") == "def f(:\n"


def test_normalized_matching_applies_at_least_as_many_sugars_on_humaneval():
    table = load_sugars(PAPER_SUGARS)
    per_mode = {}
    for mode in sugar.MATCH_MODES:
        total = 0
        for _, code in sugar.humaneval_programs(docstrings=False):
            info = {}
            out = sugarize(code, table, info=info, match=mode)
            assert desugarize(out, table) == (code if mode == "text" else sugar.normalize_code(code))
            total += info["matches"]
        per_mode[mode] = total / 164
    assert per_mode["normalized"] >= per_mode["text"] > 0


def test_markdown_sources_take_the_first_python_fence(tmp_path, tokenizer_path):
    posts = [f"# Intuition\nCount.\n\n# Code\n```python3 []\nclass Solution:\n    def f{i}(self, nums):\n"
             f"        ans = []\n        for i in range(len(nums)):\n            ans.append(nums[i])\n        return ans\n```\n"
             "```python\nprint('second fence')\n```\n" for i in range(6)] + ["no code here", "```java\nint x;\n```"]
    src = tmp_path / "leetcode.jsonl"
    src.write_text("".join(json.dumps({"content": p}) + "\n" for p in posts))
    st = {}
    texts = [t for _, t in sugar.iter_texts(str(src), "content", st, markdown=True)]
    assert len(texts) == 6 and all(t.startswith("class Solution:\n") and "second fence" not in t for t in texts)
    assert st["skipped"]["no ```python fence"] == 2
    out = tmp_path / "sugars.json"
    r = subprocess.run([sys.executable, str(REPO / "sugar.py"), "mine", "--src", str(src), "--text_field", "content",
                        "--markdown", "--out", str(out), "--tokenizer", str(tokenizer_path), "--threshold", "3",
                        "--min_reward", "0", "--workers", "1"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    mined_ = load_sugars(out)
    assert any(s.code == "for SUGARWILDCARD_0 in range(len(SUGARWILDCARD_1)):" for s in mined_.sugars)
    assert json.loads(out.read_text())["mined"]["markdown"] is True


@pytest.mark.parametrize("content", ['{"patterns": []}', '"just a string"'])
def test_a_file_in_neither_format_exits_2_in_one_line(tmp_path, content):
    bad = tmp_path / "sugars.json"
    bad.write_text(content)
    r = subprocess.run([sys.executable, str(REPO / "sugar.py"), "stats", "--sugars", str(bad), "--src", "humaneval"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith(f"sugar.py: error: {bad}: not a sugars file")
    assert r.stderr.count("\n") == 1
