"""
LintSeq (Piterbarg, Pinto, Fergus, "Training Language Models on Synthetic Edit Sequences Improves Code
Synthesis", ICLR 2025): refactor programs into sequences of linter-clean insertions, write them as SFT
data, and decode a model's edit sequence back into a program at eval time.

    python lintseq.py --src data.jsonl --out lintseq.jsonl                  # instruction/response records
    python lintseq.py --src benchmarks/mbpp.jsonl --prompt_field text --code_field code --out mbpp_ls.jsonl
    python lintseq.py --src data.jsonl --out plain.jsonl --baseline         # same programs, plain SFT format
    python lintseq.py --src data.jsonl --out randseq.jsonl --random         # RandSeq ablation (no linter)
    python lintseq.py --src data.jsonl --out paper.jsonl --reference        # the paper's sampler (needs pylint)
    python data.py sft --src lintseq.jsonl --edit_format lintseq ...        # then tokenize as SFT data

Backward sampling. A program is cut into deletion units: its logical lines (tokenize's NEWLINE-terminated
lines, so a multi-line call, a backslash continuation, a triple-quoted docstring or a multi-line `def`
header is one unit). Blank and comment lines are never chosen; each is attached to a unit (the next code
line, or the previous one for a trailing comment indented deeper than what follows) and goes with it.
Each round picks one live unit with weight max(1, d) at nesting depth d (the reference's indentation
bias: 1 at top level, deep lines tend to go first), deletes it with its block, and then
  - keeps the rest syntactically valid by structure (the reference instead deletes physical lines and
    lets pylint's syntax errors cascade): deleting a compound statement's header deletes the whole
    statement with its decorators and its elif/else/except/finally/case clauses; deleting a clause deletes
    that clause and its body; a suite left with no statement deletes its owner; a `try` left without a
    handler (or with `else` but no handler) and a `match` left without a case are deleted whole;
  - lints what remains and deletes every flagged unit the same way, until the linter is quiet.
All of that is one edit. The states, reversed, run from the empty program to the full one.

Linter (default, in process): compile() (syntax, indentation and compiler errors such as a lost
`nonlocal` binding) plus pyflakes' error-class messages, PYFLAKES_ERRORS below; warnings such as unused
imports never count. Errors already in the original program are ignored, compared by (message class,
names) and never by line number (lines move). Speed without changing results (tests check sequences
are identical with incremental=False, which lints every state in full): no lint after a deletion that
removed no binding of a name still looked up; otherwise only functions that mention such a name are
checked in full. `--linter pylint`: pylint's error mode (E, F, W0311, W0231) as in the paper, in process
on a temp file for every state (much slower; optional dependency).

--reference: the paper's sampler step for step (reference_backward_sample): physical lines are the
units; a pick takes the rows indented deeper below it; pylint (its message set above) lints each
state with nothing ignored, so errors already in the program (an uninstalled import, MBPP's tab
indentation as W0311) are swept into the first deletion; blank lines, comment lines and the bodies of
upper-case global definitions are never picked and arrive in the first forward edit.

Normalization (what the edits rebuild exactly): normalize_program(src) turns CRLF / CR line endings into
LF (as Python reads source files) and drops leading and trailing blank lines and the final newline (as
the reference does). Tabs, trailing spaces and everything else are kept byte for byte.

Edit format: zero-context unified diff hunks with the ---/+++ header lines dropped, insert-only:
    @@ -a,0 +c,d @@     (difflib's ranges: after old line a; new lines c..c+d-1; "+c" when d == 1)
    +line ...
Training text: instruction + "\\n<|diff|>" + edit_1 + "\\n<|diff|>" + ... + edit_N + "\\n<|diff|>\\n<|diff|>"
(+ eos, added by data.py). SFT records: prompt = instruction + "\\n<|diff|>", completion = the rest, so at
eval the prompt ends with "\\n<|diff|>" and decode_edits(generated text) gives the program.
"""
import argparse
import ast
import collections
import io
import json
import multiprocessing
import os
import random
import re
import sys
import tempfile
import time
import tokenize
import unicodedata
import warnings

from pyflakes.checker import Checker

from data import LINTSEQ_DIFF_TOKEN, format_eta, run_command

SEP = "\n" + LINTSEQ_DIFF_TOKEN             # between instruction and edits, and between edits
END = SEP + SEP                      # after the last edit: an empty edit marks the end
DEFAULT_SAMPLES = 5                  # s: edit sequences per program (the paper's TinyCodeLM data)

# pyflakes messages that are errors (the program would fail or behave wrongly), by class name; every
# other pyflakes message (unused import/variable, redefinition, f-string without placeholders, ...) is a
# warning and never triggers a deletion. ImportStarUsage is pyflakes' "undefined name" when a star
# import is present. Names missing from an older pyflakes are simply never produced.
PYFLAKES_ERRORS = frozenset({
    "UndefinedName", "UndefinedLocal", "UndefinedExport", "ImportStarUsage",
    "DuplicateArgument", "ReturnOutsideFunction", "YieldOutsideFunction", "ContinueOutsideLoop",
    "BreakOutsideLoop", "DefaultExceptNotLast", "TwoStarredExpressions", "TooManyExpressionsInStarredAssignment",
    "LateFutureImport", "FutureFeatureNotDefined", "ImportStarNotPermitted", "ForwardAnnotationSyntaxError",
    "InvalidPrintSyntax", "LazyImportNotAtModuleScope", "LazyImportStarNotPermitted",
    # format strings that raise at run time (pylint's E13xx)
    "PercentFormatInvalidFormat", "PercentFormatMixedPositionalAndNamed", "PercentFormatUnsupportedFormatCharacter",
    "PercentFormatPositionalCountMismatch", "PercentFormatMissingArgument", "PercentFormatExpectedMapping",
    "PercentFormatExpectedSequence", "PercentFormatStarRequiresSequence",
    "StringDotFormatMissingArgument", "StringDotFormatMixingAutomatic", "StringDotFormatInvalidFormat",
})
PYLINT_ENABLE = "E,F,W0311,W0231"     # the reference's: errors, fatals, bad-indentation, super-init-not-called
_FILENAME = "<lintseq>"
_IDENT = re.compile(r"[^\W\d]\w*")
_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


class SkipProgram(Exception):
    """A program that cannot be turned into edits; str(e) is the reason counted in the summary."""


# ----------------------------------------------------------------------------- programs
def normalize_program(src):
    """The exact text the edits rebuild: LF line endings, no leading/trailing blank lines, no final newline."""
    rows = src.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    lo, hi = 0, len(rows)
    while lo < hi and not rows[lo].strip():
        lo += 1
    while hi > lo and not rows[hi - 1].strip():
        hi -= 1
    return "\n".join(rows[lo:hi])


def extract_code(response, languages=("python", "py", "python3")):
    """The code in a chat-style response, like the reference: all ```python fenced blocks joined by a
    newline (an unclosed fence runs to the end); else all untagged ``` blocks; else the whole text."""
    blocks = _FENCE.findall(response)
    if not blocks:
        return response
    tagged = [code for lang, code in blocks if lang.lower() in languages]
    plain = [code for lang, code in blocks if not lang]
    picked = tagged or plain
    return "\n".join(picked) if picked else response


def _compile(text):
    """compile() the text (parser and compiler errors); returns its AST. Warnings (invalid escapes, ...)
    are not errors and stay quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tree = compile(text, _FILENAME, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
        compile(tree, _FILENAME, "exec", dont_inherit=True)
    return tree


def _indent(row):
    row = row.expandtabs(8)
    return len(row) - len(row.lstrip())


class Program:
    """A program cut into deletion units (logical lines) with the structure deletions must respect.

    unit k: rows own[k] (its physical lines + attached blank/comment lines), depth[k] (0 = top level),
    span[k] = (lo, hi): deleting k deletes units lo..hi (a statement: itself; a compound header: the
    whole statement; a clause: the clause). Suites (statement lists) know their owner unit, so an emptied
    suite deletes its owner; try/match groups know their clauses."""

    def __init__(self, text):
        self.text = text
        self.rows = text.split("\n") if text else []
        try:
            tree = _compile(text)
        except (SyntaxError, ValueError, OverflowError) as e:   # ValueError: null bytes (3.11)
            raise SkipProgram("syntax error") from e
        except (RecursionError, MemoryError) as e:
            raise SkipProgram("too deeply nested") from e
        self._logical_lines()
        m = len(self.start)
        if m == 0:
            raise SkipProgram("no code lines")
        self.depth = [0] * m
        self.span = [None] * m
        self.suite_of = [-1] * m          # the suite a unit is a direct statement of (-1: module or none)
        self.suite_owner, self.suite_size = [], []
        self.group_of = [-1] * m          # try/match group of a clause unit
        self.groups = []                  # ("try", header, handlers, else, finally) | ("match", header, cases)
        try:
            for s in tree.body:
                self._stmt(s, 0, -1)
        except RecursionError as e:
            raise SkipProgram("too deeply nested") from e
        if any(sp is None for sp in self.span):    # a logical line no statement explains: do not guess
            raise SkipProgram("unsupported structure")
        self._attach_free_rows()
        self._names(tree)

    # -- logical lines
    def _logical_lines(self):
        self.start, self.end = [], []
        self.row_unit = [-1] * len(self.rows)
        first = None
        skip = (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER)
        try:
            for tok in tokenize.generate_tokens(io.StringIO(self.text).readline):
                if tok.type == tokenize.NEWLINE:
                    if first is not None:
                        last = tok.start[0] - 1
                        for r in range(first, last + 1):
                            self.row_unit[r] = len(self.start)
                        self.start.append(first)
                        self.end.append(last)
                    first = None
                elif tok.type not in skip and first is None:
                    first = tok.start[0] - 1
        except (tokenize.TokenError, SyntaxError) as e:
            raise SkipProgram("tokenize error") from e

    def _unit(self, lineno):
        return self.row_unit[lineno - 1]

    # -- structure from the AST
    def _stmt(self, s, depth, suite):
        k = self._unit(s.lineno)
        if self.span[k] is None and suite >= 0:      # `a; b` is one unit: count it once
            self.suite_of[k] = suite
            self.suite_size[suite] += 1
        self.depth[k] = depth
        first, last = k, self._unit(s.end_lineno)
        for d in getattr(s, "decorator_list", ()):
            dk = self._unit(d.lineno)
            self.depth[dk], self.span[dk] = depth, (dk, dk)
            first = min(first, dk)
        self.span[k] = (first, last)
        if isinstance(s, ast.If):
            self._suite(s.body, k, depth)
            orelse, prev = s.orelse, s.body[-1].end_lineno
            while orelse:
                c = self._unit(prev) + 1                  # the clause line right after the previous body
                e = orelse[0]
                if (len(orelse) == 1 and isinstance(e, ast.If) and self._unit(e.lineno) == c
                        and re.match(r"elif\b", self.rows[self.start[c]].lstrip())):
                    self._clause(c, e.body, depth)        # elif: its header and its own body only
                    orelse, prev = e.orelse, e.body[-1].end_lineno
                else:
                    self._clause(c, orelse, depth)
                    break
        elif isinstance(s, (ast.For, ast.AsyncFor, ast.While)):
            self._suite(s.body, k, depth)
            if s.orelse:
                self._clause(self._unit(s.body[-1].end_lineno) + 1, s.orelse, depth)
        elif isinstance(s, (ast.With, ast.AsyncWith, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self._suite(s.body, k, depth)
        elif isinstance(s, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            self._suite(s.body, k, depth)
            g = len(self.groups)
            self.groups.append(None)                      # reserve: clause bodies may hold nested groups
            handlers = [self._clause(self._unit(h.lineno), h.body, depth, g) for h in s.handlers]
            prev = (s.handlers[-1] if s.handlers else s.body[-1]).end_lineno
            orelse = final = None
            if s.orelse:
                orelse = self._clause(self._unit(prev) + 1, s.orelse, depth, g)
                prev = s.orelse[-1].end_lineno
            if s.finalbody:
                final = self._clause(self._unit(prev) + 1, s.finalbody, depth, g)
            self.groups[g] = ("try", k, handlers, orelse, final)
        elif isinstance(s, getattr(ast, "Match", ())):
            g = len(self.groups)
            self.groups.append(None)
            cases = [self._clause(self._unit(c.pattern.lineno), c.body, depth, g) for c in s.cases]
            self.groups[g] = ("match", k, cases)

    def _clause(self, c, body, depth, group=-1):
        self.depth[c], self.span[c], self.group_of[c] = depth, (c, self._unit(body[-1].end_lineno)), group
        self._suite(body, c, depth)
        return c

    def _suite(self, body, owner, depth):
        if self._unit(body[0].lineno) == owner:       # `if x: a; b`: the body lives in the owner's line
            return
        sid = len(self.suite_owner)
        self.suite_owner.append(owner)
        self.suite_size.append(0)
        for s in body:
            self._stmt(s, depth + 1, sid)

    # -- blank and comment lines
    def _attach_free_rows(self):
        """Blank/comment rows go with the next unit; a comment indented deeper than the next unit (the tail
        of a block) goes with the previous one; rows after the last unit go with the last unit."""
        m = len(self.start)
        self.own = [list(range(self.start[k], self.end[k] + 1)) for k in range(m)]
        self.row_owner = list(self.row_unit)
        nxt = m
        for r in range(len(self.rows) - 1, -1, -1):
            if self.row_unit[r] >= 0:
                nxt = self.row_unit[r]
                continue
            row = self.rows[r]
            prev = self._prev_unit(r)
            k = nxt
            if k == m:
                k = prev
            elif row.strip() and not row.rstrip().endswith("\\") and prev >= 0 \
                    and _indent(row) > _indent(self.rows[self.start[nxt]]):
                k = prev
            self.row_owner[r] = k
            self.own[k].append(r)
        for rows in self.own:
            rows.sort()

    def _prev_unit(self, r):
        while r >= 0 and self.row_unit[r] < 0:
            r -= 1
        return self.row_unit[r] if r >= 0 else -1

    # -- names: what a unit binds and which words it mentions (for skipping needless lints)
    def _names(self, tree):
        """binds[k]: names unit k binds (or unbinds); words[k]: names a lookup in unit k could use (Name
        nodes, global/nonlocal, identifiers inside string constants other than docstrings and bare string
        statements: pyflakes reads __all__ entries and string annotations). Attributes and keyword names
        are not lookups, so deleting a method does not force a lint by itself."""
        m = len(self.start)
        self.binds = [set() for _ in range(m)]
        self.words = [set() for _ in range(m)]
        self.star = [False] * m
        unit, bare = self.row_unit, set()
        for node in ast.walk(tree):
            names = ()
            if isinstance(node, ast.Name):
                self.words[unit[node.lineno - 1]].add(node.id)
                if not isinstance(node.ctx, ast.Load):
                    names = (node.id,)
            elif isinstance(node, ast.Expr):
                if isinstance(node.value, ast.Constant):    # docstrings: pyflakes never reads them
                    bare.add(id(node.value))
            elif isinstance(node, ast.Constant):
                if isinstance(node.value, str) and hasattr(node, "lineno") and id(node) not in bare:
                    self.words[unit[node.lineno - 1]].update(
                        w if w.isascii() else unicodedata.normalize("NFKC", w) for w in _IDENT.findall(node.value))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = (node.name,)
            elif isinstance(node, ast.alias):
                if node.name == "*":
                    self.star[unit[node.lineno - 1]] = True
                names = (node.asname or node.name.split(".")[0],)
            elif isinstance(node, ast.arg):
                names = (node.arg,)
            elif isinstance(node, (ast.Global, ast.Nonlocal)):
                names = node.names
                self.words[unit[node.lineno - 1]].update(names)
            elif isinstance(node, ast.ExceptHandler) or type(node).__name__ in (
                    "MatchAs", "MatchStar", "TypeVar", "ParamSpec", "TypeVarTuple"):
                names = (node.name,) if getattr(node, "name", None) else ()
            elif type(node).__name__ == "MatchMapping":
                names = (node.rest,) if node.rest else ()
            if names:
                self.binds[unit[node.lineno - 1]].update(names)
        self.all_words = frozenset().union(*self.words)


# ----------------------------------------------------------------------------- linters
def _key(parts):
    """A message's identity without line numbers: (kind, string arguments...)."""
    return tuple(p for p in parts if isinstance(p, str))


class PyflakesLinter:
    """compile() + pyflakes error-class messages, in process.

    errors(text, focus=None, names=None) -> [(lineno, key)]. focus: the only names whose lookups can have
    become undefined since the last clean state (backward_sample knows them); function bodies that never
    mention one, and hold no global/nonlocal, are then linted as `pass` (a body is its own scope, so its
    messages cannot have changed). names: a superset of the names the text looks up; pyflakes then only
    binds those builtins (it would otherwise add ~160 bindings per call). Neither changes the result.
    The bytecode compile (compiler errors such as a nonlocal without binding, the only such error a
    deletion can introduce) runs when focus is None or the text has a nonlocal statement."""
    name = "pyflakes"

    def __init__(self):
        class _Checker(Checker):
            def __init__(self, tree, names=None, **kw):
                self._names = names
                super().__init__(tree, **kw)

            @property
            def builtIns(self):                 # pyflakes sets this once in __init__ and binds each one
                return self._builtins

            @builtIns.setter
            def builtIns(self, value):
                self._builtins = value if self._names is None else value & self._names

        self._checker = _Checker

    def errors(self, text, focus=None, names=None):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = compile(text, _FILENAME, "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
                if focus is None or "nonlocal" in text:
                    compile(tree, _FILENAME, "exec", dont_inherit=True)
        except SyntaxError as e:
            return [(e.lineno or 0, ("SyntaxError", type(e).__name__, str(e.msg)))]
        except (ValueError, OverflowError, RecursionError, MemoryError) as e:
            return [(0, ("SyntaxError", type(e).__name__, str(e)))]
        if focus and all(n.isascii() for n in focus):
            keep = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, sorted(focus))) + r")(?!\w)")
            _prune_bodies(tree.body, text.split("\n"), keep)
        out = []
        for msg in self._checker(tree, names=names, filename=_FILENAME).messages:
            kind = type(msg).__name__
            if kind in PYFLAKES_ERRORS:
                args = msg.message_args if isinstance(msg.message_args, tuple) else (msg.message_args,)
                out.append((msg.lineno, _key((kind,) + args)))
        return out


_SCOPE_DECL = re.compile(r"(?<!\w)(?:global|nonlocal)(?!\w)")


def _prune_bodies(stmts, rows, keep):
    """Replace the body of every function whose text cannot look up a name matched by `keep` (and has no
    global/nonlocal) with `pass`, in place."""
    for s in stmts:
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = "\n".join(rows[s.lineno - 1:s.end_lineno])   # header too: a body's decorators come first
            if keep.search(body) or _SCOPE_DECL.search(body):
                _prune_bodies(s.body, rows, keep)
            else:
                s.body = [ast.copy_location(ast.Pass(), s.body[0])]
            continue
        for field in ("body", "orelse", "finalbody"):
            sub = getattr(s, field, None)
            if sub and isinstance(sub, list) and isinstance(sub[0], ast.stmt):
                _prune_bodies(sub, rows, keep)
        for h in getattr(s, "handlers", None) or getattr(s, "cases", None) or ():
            _prune_bodies(h.body, rows, keep)


class PylintLinter:
    """pylint in error mode (E, F, W0311, W0231) as the paper used it, in process, on a temp file per call.
    Keys are (message id, message text)."""
    name = "pylint"

    def __init__(self):
        try:  # optional dependency, only for --linter pylint / --reference
            import astroid
            from pylint.lint import Run
            from pylint.reporters import CollectingReporter
        except ImportError as e:
            raise LintseqError("--reference and --linter pylint need the package pylint, which is not installed: "
                               "pip install pylint") from e
        self._astroid, self._run, self._reporter = astroid, Run, CollectingReporter
        self._module = f"lintseq_state_{os.getpid()}"

    def errors(self, text, focus=None, names=None):
        with tempfile.TemporaryDirectory(prefix="lintseq-") as d:
            path = os.path.join(d, self._module + ".py")
            rc = os.path.join(d, "pylintrc")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            open(rc, "w").close()                                # ignore any pylintrc around
            self._astroid.MANAGER.astroid_cache.pop(self._module, None)   # else astroid returns the last state
            rep = self._reporter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._run([path, f"--rcfile={rc}", "--disable=all", f"--enable={PYLINT_ENABLE}", "--persistent=n",
                           "--score=n", "--reports=n", "--jobs=1"], reporter=rep, exit=False)
        return [(m.line or 0, (m.msg_id, m.msg)) for m in rep.messages]


class LintseqError(Exception):
    """Bad input or setup; the message says what and where."""


def make_linter(name):
    if name == "pyflakes":
        return PyflakesLinter()
    if name == "pylint":
        return PylintLinter()
    raise LintseqError(f"unknown linter {name!r} (pyflakes | pylint)")


# ----------------------------------------------------------------------------- backward sampling
class _Fenwick:
    """Integer weights with O(log n) update and weighted draw (a big module has thousands of units)."""

    def __init__(self, weights):
        self.n = len(weights)
        self.tree = [0] + list(weights)
        for i in range(1, self.n + 1):
            j = i + (i & -i)
            if j <= self.n:
                self.tree[j] += self.tree[i]
        self.total = sum(weights)

    def add(self, i, delta):
        self.total += delta
        i += 1
        while i <= self.n:
            self.tree[i] += delta
            i += i & -i

    def find(self, u):
        """The index i where the prefix sums first exceed u (0 <= u < total)."""
        pos, step = 0, 1 << self.n.bit_length()
        while step:
            nxt = pos + step
            if nxt <= self.n and self.tree[nxt] <= u:
                pos, u = nxt, u - self.tree[nxt]
            step >>= 1
        return pos


def _weight(depth):
    """Sampling weight of a unit nested in `depth` blocks: 1 at top level, d at depth d (the reference's
    indentation bias: indent / tab width, 1 for unindented lines), so deep lines tend to go first."""
    return max(1, depth)


class _State:
    """One backward run's live units, suite sizes and word counts."""

    def __init__(self, prog):
        self.prog = prog
        m = len(prog.start)
        self.alive = bytearray([1]) * m
        self.suite_left = list(prog.suite_size)
        self.uses = {}
        for ws in prog.words:
            for w in ws:
                self.uses[w] = self.uses.get(w, 0) + 1
        self.weights = _Fenwick([_weight(d) for d in prog.depth])
        self.left = m

    def delete(self, seeds):
        """Delete units `seeds` with their spans and the cascades; returns the units deleted."""
        p, alive, out = self.prog, self.alive, []
        stack = list(seeds)
        while stack:
            k = stack.pop()
            if not alive[k]:
                continue
            lo, hi = p.span[k]
            for j in range(lo, hi + 1):
                if not alive[j]:
                    continue
                alive[j] = 0
                out.append(j)
                self.left -= 1
                self.weights.add(j, -_weight(p.depth[j]))
                for w in p.words[j]:
                    self.uses[w] -= 1
                s = p.suite_of[j]
                if s >= 0:
                    self.suite_left[s] -= 1
                    if self.suite_left[s] == 0:
                        stack.append(p.suite_owner[s])
                g = p.group_of[j]
                if g >= 0 and not self._group_ok(p.groups[g]):
                    stack.append(p.groups[g][1])
        return out

    def _group_ok(self, g):
        alive = self.alive
        if g[0] == "match":
            return any(alive[c] for c in g[2])
        _, _, handlers, orelse, final = g
        if any(alive[h] for h in handlers):
            return True
        return final is not None and alive[final] and not (orelse is not None and alive[orelse])

    def focus(self, deleted):
        """The names bound by `deleted` units that are still looked up somewhere: only lookups of these can
        have become errors (structural deletion keeps the syntax valid). None: anything may have broken
        (a star import went)."""
        p, uses, names = self.prog, self.uses, set()
        for k in deleted:
            if p.star[k]:
                return None
            names.update(n for n in p.binds[k] if uses.get(n, 0) > 0)
        return names

    def live_rows(self):
        owner, alive = self.prog.row_owner, self.alive
        return [r for r in range(len(owner)) if alive[owner[r]]]


def backward_sample(prog, rng, linter=None, baseline=frozenset(), incremental=True):
    """LintSeq's backward pass on a Program: a list of rounds, each the sorted rows deleted in that round
    (full program -> empty). `linter` None deletes by structure only; `baseline`: error keys to ignore."""
    st = _State(prog)
    rounds = []
    while st.left:
        k = st.weights.find(rng.randrange(st.weights.total))
        deleted = st.delete([k])
        pending = deleted
        while linter is not None and st.left:
            focus = st.focus(pending) if incremental else None
            if incremental and focus is not None and not focus:
                break                                       # no binding still in use went: still clean
            rows = st.live_rows()
            flagged = set()
            text = "\n".join(prog.rows[r] for r in rows)
            for lineno, key in linter.errors(text, focus=focus, names=prog.all_words):
                if key in baseline:
                    continue
                if 1 <= lineno <= len(rows):
                    flagged.add(prog.row_owner[rows[lineno - 1]])
                else:                                       # no usable line: drop the last live unit
                    flagged.add(prog.row_owner[rows[-1]])
            if not flagged:
                break
            pending = st.delete(sorted(flagged))
            deleted += pending
        rounds.append(sorted(r for u in deleted for r in prog.own[u]))
    return rounds


# -- the paper's sampler (--reference): physical lines, indentation blocks, pylint, nothing ignored
def _reference_candidates(lines):
    """Rows the paper's sampler may pick: not blank, not a comment, and not inside the bracketed body of
    an upper-case global (`NAMES = [` ... `]`, its `ignore_global_defs`)."""
    out, closer = [], None
    for i, line in enumerate(lines):
        code = line.strip()
        if not code or code.startswith("#"):
            continue
        if closer is not None:                      # inside a global definition's brackets
            if code[-1] == closer:
                closer = None
            continue
        out.append(i)
        head = line[:line.find("=")].replace(" ", "") if "=" in line else ""
        if head.isupper() and code[-1] in "([":
            closer = ")" if code[-1] == "(" else "]"
    return out


def _reference_indents(lines):
    """Indentation per row in characters; a blank or one-character row takes the previous row's."""
    out, ind = [], 0
    for line in lines:
        if len(line.lstrip()) > 1:
            ind = len(line) - len(line.lstrip())
        out.append(ind)
    return out


def reference_backward_sample(lines, rng, linter):
    """The paper's backward pass (its children_per_round = top_k = population = 1 settings): pick a
    candidate row with weight 1 at indent 0 and indent / (first indent seen) deeper, delete it and the
    rows indented under it, lint what is left and delete every flagged row with the rows under it until
    pylint is quiet; errors already in the program are not ignored (the first round sweeps them up).
    Rows never picked or flagged (comments, blank lines, global-definition bodies) are the last round,
    i.e. the first forward edit. Returns rounds of sorted rows (full program -> empty)."""
    n = len(lines)
    indents = _reference_indents(lines)
    tab = next((d for d in indents if d > 0), 1)
    weight = {i: 1.0 if indents[i] == 0 else indents[i] / tab for i in _reference_candidates(lines)}
    gone, rounds = set(), []
    remaining = list(weight)
    while remaining:
        pick = rng.choices(remaining, [weight[i] for i in remaining])[0]
        edit, affected = set(), [pick]
        while affected:
            for r in list(affected):
                j = r + 1
                while j < n and indents[j] > indents[r]:
                    affected.append(j)
                    j += 1
            edit.update(r for r in affected if r not in gone)
            live = [i for i in range(n) if i not in gone and i not in edit]
            if not live:
                break
            errors = linter.errors("\n".join(lines[i] for i in live))
            affected = sorted({live[ln - 1] if 1 <= ln <= len(live) else live[-1] for ln, _ in errors})
        gone |= edit
        rounds.append(sorted(edit))
        remaining = [i for i in remaining if i not in gone]
    leftover = [i for i in range(n) if i not in gone]
    if leftover:
        rounds.append(leftover)
    return rounds


def random_chunks(n_rows, rng):
    """RandSeq ablation (as the reference): each round deletes a random subset of the remaining rows, of
    size uniform in 1..remaining-1 (the last row alone at the end); no linter, no structure."""
    left, rounds = list(range(n_rows)), []
    while left:
        chunk = left if len(left) == 1 else rng.sample(left, rng.randint(1, len(left) - 1))
        rounds.append(sorted(chunk))
        gone = set(chunk)
        left = [r for r in left if r not in gone]
    return rounds


# ----------------------------------------------------------------------------- edits
def format_edit(rows_before, inserted, lines):
    """One insert-only edit as zero-context unified hunks. rows_before: sorted live rows; inserted: rows
    added (disjoint); lines: the program's lines by row."""
    new = sorted(set(rows_before) | set(inserted))
    ins = set(inserted)
    out, j, added = [], 0, 0
    while j < len(new):
        if new[j] not in ins:
            j += 1
            continue
        i = j
        while j < len(new) and new[j] in ins:
            j += 1
        d = j - i
        out.append(f"@@ -{i - added},0 +{i + 1}{'' if d == 1 else f',{d}'} @@")
        out.extend("+" + lines[new[t]] for t in range(i, j))
        added += d
    return "\n".join(out)


def edits_from_rounds(rounds, lines):
    """Backward deletion rounds -> forward edits (empty program first)."""
    edits, live = [], []
    for chunk in reversed(rounds):
        edits.append(format_edit(live, chunk, lines))
        live = sorted(live + chunk)
    return edits


def states_from_rounds(rounds, lines):
    """Backward deletion rounds -> forward program states, from "" to the full program."""
    states, live = [""], []
    for chunk in reversed(rounds):
        live = sorted(live + chunk)
        states.append("\n".join(lines[r] for r in live))
    return states


def format_completion(edits):
    """The completion after the prompt's "\\n<|diff|>": edit_1 ... edit_N and the end marker."""
    return SEP.join(list(edits) + ["", ""])


def apply_edit(lines, edit):
    """Apply one edit (zero-context unified hunks; '+' inserts, '-'/' ' must match) to a list of lines.
    Raises ValueError naming the problem for anything malformed."""
    rows = edit.split("\n")
    out, offset, old_end, i = list(lines), 0, 0, 0
    if not edit:
        raise ValueError("empty edit")
    while i < len(rows):
        m = _HUNK.fullmatch(rows[i])
        if not m:
            raise ValueError(f"line {i + 1}: expected a hunk header '@@ -a,b +c,d @@', got {rows[i][:60]!r}")
        a, b, c, d = (int(g) if g is not None else 1 for g in m.groups())
        i += 1
        if b == 0 and d == 0:
            raise ValueError(f"line {i}: empty hunk {rows[i - 1]!r}")
        old, new, need_old, need_new = [], [], b, d
        while need_old or need_new:
            if i >= len(rows):
                raise ValueError(f"hunk {m.group(0)!r} is cut short (expected {b} old and {d} new lines)")
            tag, text = rows[i][:1], rows[i][1:]
            if tag == "+" and need_new:
                new.append(text)
                need_new -= 1
            elif tag == "-" and need_old:
                old.append(text)
                need_old -= 1
            elif tag == " " and need_old and need_new:
                old.append(text)
                new.append(text)
                need_old, need_new = need_old - 1, need_new - 1
            else:
                raise ValueError(f"line {i + 1}: unexpected {rows[i][:60]!r} in hunk {m.group(0)!r}")
            i += 1
        at = a if b == 0 else a - 1                    # 0-based index in the old text
        if at < old_end or at + b > len(lines):
            raise ValueError(f"hunk {m.group(0)!r} is out of order or past the end ({len(lines)} lines)")
        if lines[at:at + b] != old:
            raise ValueError(f"hunk {m.group(0)!r}: its '-' lines do not match the text")
        pos = at + offset
        if c != (pos + 1 if d else pos):
            raise ValueError(f"hunk {m.group(0)!r}: new position {c} does not match old position {a}")
        out[pos:pos + b] = new
        offset += d - b
        old_end = at + b
    return out


def decode_edits(text):
    """A generated edit sequence (the text after a prompt ending in "\\n<|diff|>") -> the program.
    Edits are split on "\\n<|diff|>" and applied in order; decoding stops at the end marker (an empty
    edit) and ignores anything after it. A malformed hunk raises ValueError (the sample fails)."""
    lines = []
    for n, edit in enumerate(text.split(SEP)):
        if edit == "":
            break
        try:
            lines = apply_edit(lines, edit)
        except ValueError as e:
            raise ValueError(f"edit {n + 1}: {e}") from None
    return "\n".join(lines)


# ----------------------------------------------------------------------------- per program
def _rng(seed):
    return seed if isinstance(seed, random.Random) else random.Random(seed)


def sample_rounds(program, seed=0, linter="pyflakes", s=1, random_mode=False, incremental=True, reference=False):
    """(normalized program, lines, [rounds] * s) for one program. linter: 'pyflakes' | 'pylint' | a
    linter object | None (structure only). reference=True: the paper's sampler (physical lines, no
    baseline errors ignored; linter None means pylint). Raises SkipProgram."""
    text = normalize_program(program)
    rng = _rng(seed)
    if random_mode:
        if not text.strip():
            raise SkipProgram("no code lines")
        lines = text.split("\n")
        return text, lines, [random_chunks(len(lines), rng) for _ in range(s)]
    if reference:
        lines = text.split("\n")
        if not _reference_candidates(lines):
            raise SkipProgram("no code lines")
        lint = make_linter(linter or "pylint") if isinstance(linter, str) or linter is None else linter
        return text, lines, [reference_backward_sample(lines, rng, lint) for _ in range(s)]
    prog = Program(text)
    lint = make_linter(linter) if isinstance(linter, str) else linter
    baseline = frozenset(key for _, key in lint.errors(text, names=prog.all_words)) if lint is not None else frozenset()
    return text, prog.rows, [backward_sample(prog, rng, lint, baseline, incremental) for _ in range(s)]


def sample_edits(program, seed=0, linter="pyflakes", random_mode=False, incremental=True, reference=False):
    """One edit sequence (list of edit strings, empty program first) for a program."""
    _, lines, (rounds,) = sample_rounds(program, seed, linter, 1, random_mode, incremental, reference)
    return edits_from_rounds(rounds, lines)


def sample_states(program, seed=0, linter="pyflakes", random_mode=False, incremental=True, reference=False):
    """One sequence of program states, "" first and normalize_program(program) last."""
    _, lines, (rounds,) = sample_rounds(program, seed, linter, 1, random_mode, incremental, reference)
    return states_from_rounds(rounds, lines)


def make_records(instruction, program, seed=0, s=DEFAULT_SAMPLES, linter="pyflakes", random_mode=False,
                 baseline=False, reference=False):
    """SFT records for one (instruction, program): s edit sequences ({"prompt": instruction + "\\n<|diff|>",
    "completion": edits + end marker}; identical sequences are kept, so s * epochs stays the step count),
    or with baseline=True one {"prompt": instruction + "\\n", "completion": program}. Trailing newlines of
    the instruction are dropped first (eval.py's prompts end in exactly one). Raises SkipProgram."""
    instruction = instruction.rstrip("\n")   # eval.py builds its prompts the same way: exactly one newline
    if baseline:
        text = normalize_program(program)
        if not reference:
            Program(text)                   # the same programs are skipped as in the edit data
        return [{"prompt": instruction + "\n", "completion": text}]
    _, lines, runs = sample_rounds(program, seed, linter, s, random_mode, reference=reference)
    return [{"prompt": instruction + SEP, "completion": format_completion(edits_from_rounds(r, lines))} for r in runs]


# ----------------------------------------------------------------------------- CLI
_WORKER = {}


def _init_worker(opts):
    _WORKER.update(opts)
    if not opts["baseline"] and not opts["random"]:
        _WORKER["lint"] = make_linter(opts["linter"])


def _work(task):
    """One input line (bytes) -> ("ok", lineno, records) | ("skip", lineno, reason) | ("bad", lineno, reason)."""
    lineno, line = task
    o = _WORKER
    try:
        rec = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return "bad", lineno, "not UTF-8"
    except json.JSONDecodeError:
        return "bad", lineno, "not JSON"
    if not isinstance(rec, dict):
        return "bad", lineno, "not a JSON object"
    for field in (o["prompt_field"], o["code_field"]):
        if field not in rec:
            return "bad", lineno, f"missing field {field!r}"
        if not isinstance(rec[field], str):
            return "bad", lineno, f"field {field!r} is not a string"
        try:
            rec[field].encode("utf-8")
        except UnicodeEncodeError:
            return "bad", lineno, f"field {field!r} has a lone surrogate"
    code = extract_code(rec[o["code_field"]])
    seed = f"lintseq:{o['seed']}:{lineno}"          # per record: same output for any --workers
    try:
        recs = make_records(rec[o["prompt_field"]], code, seed, o["s"], o.get("lint"), o["random"], o["baseline"],
                            o["reference"])
    except SkipProgram as e:
        return "skip", lineno, str(e)
    except RecursionError:
        return "skip", lineno, "too deeply nested"
    except Exception as e:                       # one odd program must not end a long run; counted, with lines
        return "skip", lineno, f"internal error: {type(e).__name__}"
    return "ok", lineno, recs


def _work_chunk(chunk):
    return [_work(t) for t in chunk]


def _ordered_results(pool, tasks, window, chunk=16):
    """pool results in input order with at most `window` chunks in flight (bounded memory)."""
    pending, block = collections.deque(), []
    for t in tasks:
        block.append(t)
        if len(block) == chunk:
            pending.append(pool.apply_async(_work_chunk, (block,)))
            block = []
            if len(pending) >= window:
                yield from pending.popleft().get()
    if block:
        pending.append(pool.apply_async(_work_chunk, (block,)))
    while pending:
        yield from pending.popleft().get()


def _lines_list(nums, limit=10):
    return ", ".join(map(str, nums[:limit])) + (f", ... ({len(nums) - limit} more)" if len(nums) > limit else "")


def _check_args(args):
    """Bad input before any work; returns the number of records to process."""
    if args.baseline and args.random:
        raise LintseqError("choose one of --baseline and --random")
    if args.s < 1:
        raise LintseqError(f"-s must be >= 1, got {args.s}")
    if not os.path.isfile(args.src):
        raise LintseqError(f"{args.src}: no such file")
    if os.path.isdir(args.out):
        raise LintseqError(f"{args.out}: is a folder; --out names the output .jsonl file")
    args.linter = args.linter or ("pylint" if args.reference else "pyflakes")
    if args.linter == "pylint" and not args.baseline and not args.random:
        make_linter("pylint")                          # fail now, with the install hint, not in a worker
    with open(args.src, "rb") as f:
        total = sum(1 for line in f if line.strip())
    if total == 0:
        raise LintseqError(f"{args.src}: empty input (no records)")
    return min(total, args.limit) if args.limit else total


def _tasks(src, limit):
    """(line number, raw line) of the non-blank input lines, at most `limit` (0 = all)."""
    n = 0
    with open(src, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit and n >= limit:
                return
            n += 1
            yield lineno, line


def _write_results(results, tmp, total):
    """Write the workers' records to `tmp` in input order, with progress; returns the counts."""
    counts = {"read": 0, "programs": 0, "records": 0, "skipped": {}, "bad": {}}
    t0 = last = time.time()
    with open(tmp, "w", encoding="utf-8") as out:
        for status, lineno, payload in results:
            counts["read"] += 1
            if status == "ok":
                counts["programs"] += 1
                for r in payload:
                    out.write(json.dumps(r, ensure_ascii=False) + "\n")
                counts["records"] += len(payload)
            else:
                counts["skipped" if status == "skip" else "bad"].setdefault(payload, []).append(lineno)
            now = time.time()
            if now - last >= 2.0:
                last, n_done = now, counts["read"]
                rate = n_done / (now - t0)
                print(f"[lintseq] {n_done:,}/{total:,} ({100 * n_done / total:.1f}%) {rate:,.1f} programs/s "
                      f"ETA {format_eta((total - n_done) / max(rate, 1e-9))}", file=sys.stderr, flush=True)
    return counts


def run(args):
    """The CLI's work; returns the summary dict. Raises LintseqError for bad input."""
    total = _check_args(args)
    opts = {"prompt_field": args.prompt_field, "code_field": args.code_field, "seed": args.seed, "s": args.s,
            "linter": args.linter, "random": args.random, "baseline": args.baseline, "reference": args.reference}
    workers = max(1, args.workers or os.cpu_count() or 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = f"{args.out}.tmp-{os.getpid()}"
    t0 = time.time()
    pool = None
    try:
        if workers > 1:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(opts,))
            results = _ordered_results(pool, _tasks(args.src, args.limit), window=4 * workers)
        else:
            _init_worker(opts)
            results = map(_work, _tasks(args.src, args.limit))
        counts = _write_results(results, tmp, total)
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        if counts["records"] == 0:
            raise LintseqError(f"{args.src}: no usable records (read {counts['read']}, bad "
                               f"{sum(map(len, counts['bad'].values()))}, skipped "
                               f"{sum(map(len, counts['skipped'].values()))}); nothing written")
        os.replace(tmp, args.out)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if os.path.exists(tmp):
            os.remove(tmp)
    _print_summary(args, counts, time.time() - t0, workers)
    return {**counts, "skipped": {k: len(v) for k, v in counts["skipped"].items()}}


def _print_summary(args, counts, elapsed, workers):
    mode = ("baseline" if args.baseline else "randseq" if args.random
            else f"lintseq ({'reference, ' if args.reference else ''}{args.linter})")
    print(f"[lintseq] done: {counts['read']:,} records read, {counts['programs']:,} programs -> {counts['records']:,} "
          f"{mode} examples in {args.out} in {format_eta(elapsed)} ({counts['read'] / max(elapsed, 1e-9):,.1f} "
          f"programs/s, {workers} workers)", file=sys.stderr)
    for reason, nums in sorted(counts["skipped"].items()):
        print(f"[lintseq] skipped ({reason}): {len(nums)} (lines {_lines_list(nums)})", file=sys.stderr)
    for reason, nums in sorted(counts["bad"].items()):
        print(f"[lintseq] bad lines ({reason}): {len(nums)} (lines {_lines_list(nums)})", file=sys.stderr)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="input JSONL, one record per line")
    p.add_argument("--out", required=True, help="output JSONL of {prompt, completion} records")
    p.add_argument("--prompt_field", default="instruction", help="record field holding the instruction")
    p.add_argument("--code_field", default="response",
                   help="record field holding the code (```python blocks are extracted)")
    p.add_argument("-s", type=int, default=DEFAULT_SAMPLES, help="edit sequences sampled per program")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    p.add_argument("--seed", type=int, default=1, help="base seed; each record's seed is (seed, line number)")
    p.add_argument("--limit", type=int, default=0, help="process at most this many records (0 = all)")
    p.add_argument("--linter", choices=("pyflakes", "pylint"), default=None,
                   help="pyflakes: compile + pyflakes errors, in process (default); pylint: the paper's error mode "
                   "(the default with --reference)")
    p.add_argument("--reference", action="store_true",
                   help="the paper's sampler: physical-line units, pylint, errors already in the program swept into "
                   "the first deletion, comment/blank lines left for the first edit (needs pip install pylint)")
    p.add_argument("--random", action="store_true", help="RandSeq ablation: random chunked deletions, no linter")
    p.add_argument("--baseline", action="store_true",
                   help="plain SFT records: prompt = instruction + newline, completion = program")
    return p.parse_args(argv)


def main(argv=None):
    return run(parse_args(argv))


if __name__ == "__main__":
    run_command("lintseq.py", main, errors=(LintseqError,), kept="the output file was not written")
