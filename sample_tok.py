"""
Tokenizer sampling from ZeTT (Minixhofer et al., "Zero-Shot Tokenizer Transfer", NeurIPS 2024,
Algorithm 1) and its token-statistics tool, in plain Python + numpy (no compiled extension).

Per batch: pick a language, take its next texts (documents joined with the eos token until they reach
16 x block_size = 2,048 characters, then a random 2,048-character span, as ZeTT's data loader packs
them), pre-tokenize them the GPT-2 way, count substrings of 1-15 byte-level characters starting at
offsets 0, 4, 8, ... of each pre-token (an occurrence scores the UTF-8 byte length of the byte-level
piece, as ZeTT's Rust sampler does: `str::len()`, so Ġ, Ċ and every non-ASCII byte count 2), keep a
running total over the language's last 16 batches, add Gaussian noise to the probabilities and keep
the top-ranked substrings next to the 256 byte characters and 135 whitespace runs, with the special
tokens of the config's tokenizer at their ids. A UnigramLM over the sampled pieces (`UnigramTokenizer`)
makes the sampled tokenizer usable. The older behaviour (texts used whole when shorter than a span, a
piece scoring its length in characters): "do_sequence_packing": false in the config and --score chars.

    python sample_tok.py --demo                                   # local files only, no download
    python sample_tok.py CONFIG.json [--num_batches 1000] [--output_file token_frequencies.json]
    python sample_tok.py CONFIG.json --exclude_always_present      # hide the tokens in every vocabulary

    from sample_tok import TokenizerSampler, sample_tokenizer, UnigramTokenizer
    pieces, scores = sample_tokenizer(texts, vocab_size=4096)      # one batch, no noise
    tok = UnigramTokenizer(pieces, scores); ids = tok.encode("def f(x):\\n    return x")
"""
import argparse
import collections
import importlib.util
import json
import math
import multiprocessing as mp
import os
import re
import signal
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

from data import (SPECIAL_PIECES, DataError, Tokenizer, check_output_path, iter_source_texts, progress, read_jsonl,
                  run_command, write_json)
from hf_tokenizer import byte_symbols

# ----------------------------------------------------------------------------- defaults
MAX_PIECE_LEN = 15          # substrings of 1..15 byte-level characters
STRIDE = 4                  # ...starting at offsets 0, 4, 8, ... inside a pre-token
WS_CHARS = "ĠĊĉ"            # byte-level space, newline, tab
NEG_SCORE = -100000.0       # score of a piece whose noised probability is <= 0
CHARS_PER_TOKEN = 16        # ZeTT's MAX_CHARS_PER_TOKEN: span length = 16 * block_size characters
MAX_IDS = 1_500_000         # intern table size that triggers a compaction (bounds memory)
CACHE_SIZE = 300_000        # distinct pre-tokens whose substring ids are kept (then the table starts over)
SHUFFLE_BUFFER = 10_000     # texts held per language to shuffle the file order
SCORES = ("bytes", "chars")  # what one occurrence of a piece scores: UTF-8 bytes (ZeTT) or characters
CONFIG_DEFAULTS = {         # ZeTT's config keys that this tool reads (others are accepted, ignored)
    "langs": None, "train_directory": None,                     # required
    "tokenizer_sample_mean": 32768, "tokenizer_sample_std": 0, "tokenizer_sample_min": 16384,
    "tokenizer_sample_max": 32768, "tokenizer_batch_size": 2048, "train_batch_size": 128,
    "tokenizer_noise_mean": 1e-5, "tokenizer_noise_std": 4, "block_size": 128,
    "model_name_or_path": None, "do_tokenizer_sampling": True, "sample_text_span": True,
    "do_sequence_packing": True,
}
CONFIG_HELP = {             # for --help
    "langs": "file of `lang,weight` lines, or languages separated by spaces (required)",
    "train_directory": "folder with {lang}.jsonl(.gz) or {lang}.parquet files of {\"text\": ...} (required)",
    "tokenizer_sample_mean/std/min/max": "vocabulary size of each sampled tokenizer (normal, clipped)",
    "tokenizer_batch_size": "texts in the running total (a queue of tokenizer_batch_size / train_batch_size batches)",
    "train_batch_size": "texts per batch",
    "tokenizer_noise_mean/std": "noise std per batch: lognormal(log(mean), std); 0 = no noise",
    "block_size": "span length = 16 x block_size characters",
    "model_name_or_path": "local tokenizer (tokenizer.model, checkpoint or Hugging Face folder): its special "
                          "tokens keep their ids and its eos joins packed documents; a hub name adds none",
    "sample_text_span": "true: a random span of each text; false: its start",
    "do_sequence_packing": "true: join documents with eos up to the span length (ZeTT); false: texts used whole",
}


class SampleTokError(Exception):
    """Bad input; the message names the file, key or line."""


# ----------------------------------------------------------------------------- GPT-2 byte-level characters
BYTE_TO_CHAR = byte_symbols()  # GPT-2's byte-level alphabet, as ZeTT's byte-level tokenizers use
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
BYTE_CHARS = [BYTE_TO_CHAR[b] for b in range(256)]
_LATIN1_TABLE = {b: c for b, c in BYTE_TO_CHAR.items() if chr(b) != c}  # str.translate on latin-1 text
assert BYTE_TO_CHAR[32] == "Ġ" and BYTE_TO_CHAR[10] == "Ċ" and BYTE_TO_CHAR[9] == "ĉ"


def to_byte_level(s):
    """'def f' -> 'defĠf': UTF-8 bytes of s, one byte-level character per byte."""
    if not s.isascii():
        s = s.encode("utf-8").decode("latin-1")
    return s.translate(_LATIN1_TABLE)


def from_byte_level(s):
    """Inverse of to_byte_level (bytes that are not valid UTF-8 become U+FFFD)."""
    return bytes(CHAR_TO_BYTE[c] for c in s).decode("utf-8", errors="replace")


def whitespace_runs(max_len=MAX_PIECE_LEN):
    """The 135 always-present whitespace pieces: one of Ġ/Ċ/ĉ followed by 1..15 copies of one of them
    (ZeTT's loop: for c1, for i in 1..15, for c2: c2 + c1 * i)."""
    return [c2 + c1 * i for c1 in WS_CHARS for i in range(1, max_len + 1) for c2 in WS_CHARS]


WS_RUNS = whitespace_runs()
N_FIXED = len(BYTE_CHARS) + len(WS_RUNS)  # 391 pieces in every sampled vocabulary


# ----------------------------------------------------------------------------- GPT-2 pre-tokenization
# GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# Python's re has no \p{..}. \s is spelled out as Unicode White_Space (Python's own \s adds U+001C-1F).
# Python's \w is exactly L + N + '_', and \d is exactly Nd, so for a text without No/Nl characters
# (superscripts, fractions, roman numerals: 1,131 code points) letters are [^\W\d_] and numbers \d.
# Texts that hold one go through the exact pattern, which moves No/Nl from letters to numbers.
_WS = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
_CONTRACTIONS = "'s|'t|'re|'ve|'m|'ll|'d"
_FAST_RE = re.compile(
    f"{_CONTRACTIONS}| ?[^\\W\\d_]+| ?\\d+| ?(?:[^\\w{_WS}]|_)+|[{_WS}]+(?![^{_WS}])|[{_WS}]+")
_exact = None  # (pattern, set of No/Nl characters), built on first need (0.2 s)


def _exact_pattern():
    global _exact
    if _exact is None:
        every = "".join(map(chr, range(0x110000)))
        other_numbers = [c for c in re.findall(r"[^\W\d_]", every) if not c.isalpha()]  # the No/Nl code points
        cls = "".join(re.escape(c) for c in other_numbers)
        pattern = re.compile(
            f"{_CONTRACTIONS}| ?(?:(?![{cls}])[^\\W\\d_])+| ?[\\d{cls}]+| ?(?:[^\\w{_WS}]|_)+"
            f"|[{_WS}]+(?![^{_WS}])|[{_WS}]+")
        _exact = (pattern, frozenset(other_numbers))
    return _exact


def pretokenize(text):
    """GPT-2 pre-tokens of text (no space is added here; Algorithm 1 prepends one)."""
    if not text.isascii():
        pattern, other_numbers = _exact_pattern()
        if not other_numbers.isdisjoint(text):
            return pattern.findall(text)
    return _FAST_RE.findall(text)


def pretoken_counts(texts):
    """{pre-token: occurrences} over a batch of texts, each with a space prepended (Algorithm 1).
    ASCII texts (most code) take a numpy path 2x faster than the regex; the result is the same."""
    plain = [t for t in texts if t.isascii()]
    counts = _ascii_pretoken_counts(plain) if plain else collections.Counter()
    if len(plain) < len(texts):
        for t in texts:
            if not t.isascii():
                counts.update(pretokenize(" " + t))
    return counts


_L, _N, _O, _S = 1, 2, 3, 4  # ASCII character classes: letter, digit, other, white space
_ASCII_CLASS = np.array([_L if chr(c).isalpha() else _N if chr(c).isdigit() else _S if chr(c) in "\t\n\x0b\x0c\r "
                         else _O for c in range(128)], np.uint8)
_MASKS = np.array([(1 << (7 * k)) - 1 for k in range(9)], np.uint64)


def _ascii_pretoken_starts(codes, text_starts):
    """Where GPT-2 pre-tokens start in concatenated ASCII texts (codes: uint8), plus len(codes) at the end.
    The pattern's rules as array operations: a token starts where the character class changes and at
    each text; a white-space run followed by a non-space ends one character early (\\s+(?!\\S)) and,
    when that character is a space, the space joins the next token ( ?\\p{L}+ etc.); a token that starts
    with an apostrophe followed by s, t, re, ve, m, ll or d is a contraction."""
    n = len(codes)
    cls = _ASCII_CLASS[codes]
    start = np.ones(n + 1, bool)
    start[1:n] = cls[1:] != cls[:-1]
    start[text_starts] = True
    text_first = np.zeros(n + 1, bool)
    text_first[text_starts] = True
    text_first[n] = True
    runs = np.flatnonzero(start[:n])
    ends = np.append(runs[1:], n)[cls[runs] == _S]
    ends = ends[~text_first[ends]]            # white-space runs followed by a non-space of the same text
    start[ends - 1] = True
    start[ends[codes[ends - 1] == 32]] = False
    padded = np.concatenate([codes, np.zeros(2, np.uint8)])
    apos = np.flatnonzero(start[:n] & (codes == 39))
    c1, c2 = padded[apos + 1], padded[apos + 2]
    two = np.isin(c1, np.frombuffer(b"stmd", np.uint8))
    three = (((c1 == 114) | (c1 == 118)) & (c2 == 101)) | ((c1 == 108) & (c2 == 108))  # re, ve, ll
    length = np.where(two, 2, np.where(three, 3, 0))
    apos, length = apos[length > 0], length[length > 0]
    start[apos + 1] = False
    start[apos + length] = True
    return np.flatnonzero(start)


def _ascii_pretoken_counts(texts):
    """Pre-token counts of ASCII texts. Pre-tokens of up to 8 characters are counted by a packed 7-bit
    key with np.unique (only distinct ones become strings); longer ones as strings."""
    big = "".join(" " + t for t in texts)
    lens = np.fromiter(map(len, texts), np.int64, len(texts)) + 1
    codes = np.frombuffer(big.encode("ascii"), np.uint8)
    bounds = _ascii_pretoken_starts(codes, np.cumsum(lens) - lens)
    s, length = bounds[:-1], np.diff(bounds)
    short = length <= 8
    n = len(codes)
    padded = np.zeros(n + 8, np.uint64)
    padded[:n] = codes
    word = padded[:n].copy()                  # word[j]: characters j..j+7, 7 bits each
    for k in range(1, 8):
        word |= padded[k:n + k] << np.uint64(7 * k)
    ss, sl = s[short], length[short]
    key = (word[ss] & _MASKS[sl]) | (sl.astype(np.uint64) << np.uint64(56))
    _, first, n_same = np.unique(key, return_index=True, return_counts=True)
    a = ss[first]
    counts = collections.Counter(dict(zip([big[i:j] for i, j in zip(a.tolist(), (a + sl[first]).tolist())],
                                          n_same.tolist())))
    counts.update([big[i:j] for i, j in zip(s[~short].tolist(), bounds[1:][~short].tolist())])
    return counts


# ----------------------------------------------------------------------------- Algorithm 1
def draw_vocab_size(rng, mean, std, lo, hi):
    """int(N(mean, std)) clipped to [lo, hi] (ZeTT's order: max with lo, then min with hi)."""
    n = int(rng.normal(mean, std)) if std > 0 else int(mean)
    return min(hi, max(lo, n))


def draw_noise_std(rng, mean, std):
    """Per-batch noise level: log-normal with median `mean` and log-sd `std`; 0 when mean <= 0."""
    return float(rng.lognormal(math.log(mean), std)) if mean > 0 else 0.0


class _Queue:
    """One language's last `n` batches: their sparse substring scores and the running total."""

    def __init__(self):
        self.batches = collections.deque()  # (ids, scores) per batch; an id may repeat
        self.total = np.zeros(0, np.int64)  # id -> summed score over the queue
        self.sum = 0                        # sum of total (exact)

    def fit(self, n):
        self.total = _fit(self.total, n)


def _fit(arr, n):
    """arr with room for n items (capacity doubles; contents kept)."""
    if len(arr) >= n:
        return arr
    out = np.zeros(max(n, 2 * len(arr)), arr.dtype)
    out[:len(arr)] = arr
    return out


class TokenizerSampler:
    """Algorithm 1 with a running total per language.

    push(texts, lang) counts one batch and adds it to the language's queue (the oldest batch beyond
    `queue_batches` is subtracted); sample(lang, vocab_size, noise_std, rng) -> (pieces, scores).

    Fast path: substrings are interned to ids; each distinct pre-token's substring ids are computed once
    and kept in one flat array (pre-token -> row -> slice), so a batch is a dict lookup per distinct
    pre-token, a ragged gather and an np.add.at into the running total (one more for the evicted
    batch); top-k is an argpartition over the noised probabilities. Memory is bounded: the
    pre-token table starts over when it passes `cache_size` rows, and the intern table is compacted to
    the substrings still in some queue when it passes `max_ids`."""

    def __init__(self, queue_batches=16, special_tokens=None, max_piece_len=MAX_PIECE_LEN, stride=STRIDE,
                 count_selected=False, max_ids=MAX_IDS, cache_size=CACHE_SIZE, score="bytes"):
        if queue_batches < 1:
            raise ValueError("queue_batches must be >= 1")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, not {score!r}")
        self.score = score
        self.queue_batches, self.max_piece_len, self.stride = queue_batches, max_piece_len, stride
        self.special_tokens = dict(special_tokens or {})  # piece -> id in the base vocabulary
        self._id = {}                       # substring -> id
        self._str = []                      # id -> substring
        self._len = np.zeros(1024, np.int64)  # id -> its score per occurrence (UTF-8 bytes or characters)
        self._ok = np.zeros(1024, bool)     # id -> may be ranked (> 1 char, < 2 of Ġ/Ċ/ĉ, not special)
        self.cache_size, self.max_ids = cache_size, max_ids
        self._reset_pretokens()
        self._next_compact = max_ids
        self._queues = {}
        self.count_selected = count_selected
        self._tally = np.zeros(0, np.int64)  # id -> times selected (count_selected)
        self._tally_flushed = collections.Counter()  # piece -> times selected, for compacted-away ids
        self.compactions = 0

    def _reset_pretokens(self):
        self._row = {}                          # pre-token -> row
        self._row_start = np.zeros(1024, np.int64)  # row -> start in _flat
        self._row_len = np.zeros(1024, np.int64)    # row -> number of its substring occurrences
        self._flat = np.zeros(1 << 16, np.int32)    # substring ids of all rows, back to back
        self._flat_n = 0

    # -- counting
    def count(self, texts):
        """Substring scores of one batch as (ids, scores); an id may repeat (its scores add up). Each
        text gets a space prepended."""
        return self.count_pretokens(pretoken_counts(texts))

    def count_pretokens(self, counts):
        """Substring scores from {pre-token: occurrences} (see pretoken_counts)."""
        if not counts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if len(self._row) + len(counts) > self.cache_size:
            self._reset_pretokens()
        rows = list(map(self._row.get, counts))
        if None in rows:
            keys = list(counts)
            at = [j for j, r in enumerate(rows) if r is None]
            for j, r in zip(at, self._add_rows([keys[j] for j in at])):
                rows[j] = r
        rows = np.array(rows, np.int64)
        lens = self._row_len[rows]
        ends = np.cumsum(lens)
        gather = np.repeat(self._row_start[rows] - (ends - lens), lens) + np.arange(ends[-1])
        ids = self._flat[gather]
        reps = np.repeat(np.fromiter(counts.values(), np.int64, len(counts)), lens)
        return ids, reps * self._len[ids]

    def _add_rows(self, pretokens):
        """Rows for new pre-tokens: intern their substrings, append the ids to _flat."""
        step, maxlen = self.stride, self.max_piece_len
        subs, sizes = [], []
        for pt in pretokens:
            b = to_byte_level(pt)
            n = len(b)
            k = len(subs)
            subs += [b[s:e] for s in range(0, n, step) for e in range(s + 1, min(s + maxlen, n) + 1)]
            sizes.append(len(subs) - k)
        ids_of = self._id
        new = [x for x in dict.fromkeys(subs) if x not in ids_of]  # first-seen order, deduplicated in C
        if new:
            ids_of.update(zip(new, range(len(self._str), len(self._str) + len(new))))
            self._add_properties(new)
            self._str += new
        r0, f0 = len(self._row), self._flat_n
        self._flat = _fit(self._flat, f0 + len(subs))
        self._flat[f0:f0 + len(subs)] = np.fromiter(map(ids_of.__getitem__, subs), np.int32, len(subs))
        self._flat_n += len(subs)
        self._row_start = _fit(self._row_start, r0 + len(sizes))
        self._row_len = _fit(self._row_len, r0 + len(sizes))
        sizes = np.array(sizes, np.int64)
        self._row_len[r0:r0 + len(sizes)] = sizes
        self._row_start[r0:r0 + len(sizes)] = f0 + np.cumsum(sizes) - sizes
        rows = range(r0, r0 + len(sizes))
        self._row.update(zip(pretokens, rows))
        return rows

    def _add_properties(self, new):
        """Score per occurrence and rankability of new substrings (ids from len(_str) on), vectorised.
        Byte scores: a byte-level character is one UTF-8 byte below U+0080 and two above (Ġ, Ċ, ĉ, ...)."""
        n0, n1 = len(self._str), len(self._str) + len(new)
        codes = np.frombuffer("".join(new).encode("utf-32-le"), np.uint32)
        lens = np.fromiter(map(len, new), np.int64, len(new))
        starts = np.cumsum(lens) - lens
        is_ws = np.isin(codes, [ord(c) for c in WS_CHARS]).astype(np.int64)
        ok = (lens > 1) & (np.add.reduceat(is_ws, starts) < 2)
        if self.special_tokens:
            ok &= np.array([x not in self.special_tokens for x in new], bool)
        score = lens
        if self.score == "bytes":
            score = lens + np.add.reduceat((codes >= 0x80).astype(np.int64), starts)
        self._len, self._ok = _fit(self._len, n1), _fit(self._ok, n1)
        self._len[n0:n1], self._ok[n0:n1] = score, ok

    # -- the queue
    def push(self, texts, lang="default"):
        """Count one batch and add it to lang's queue; drops the oldest batch beyond queue_batches."""
        self.push_counts(self.count(texts), lang)

    def push_pretokens(self, counts, lang="default"):
        """push() for a batch already pre-tokenized by pretoken_counts (e.g. in another process)."""
        self.push_counts(self.count_pretokens(counts), lang)

    def push_counts(self, batch, lang="default"):
        ids, scores = batch
        q = self._queues.get(lang)
        if q is None:
            q = self._queues[lang] = _Queue()
        q.fit(len(self._str))
        np.add.at(q.total, ids, scores)
        q.sum += int(scores.sum())
        q.batches.append((ids, scores))
        while len(q.batches) > self.queue_batches:
            old_ids, old_scores = q.batches.popleft()
            np.subtract.at(q.total, old_ids, old_scores)
            q.sum -= int(old_scores.sum())
        if len(self._str) > self._next_compact:
            self.compact()

    def queue_length(self, lang="default"):
        q = self._queues.get(lang)
        return len(q.batches) if q else 0

    def totals(self, lang="default"):
        """The running total as a dict piece -> score (for inspection and tests)."""
        q = self._queues[lang]
        t = q.total[:len(self._str)]
        return {self._str[i]: int(t[i]) for i in np.flatnonzero(t)}

    # -- sampling
    def sample_ids(self, lang, vocab_size, noise_std=0.0, rng=None, sort=True):
        """Rank lang's substrings; returns (ids, scores, byte_score): the top vocab_size - 391 - (special
        tokens) rankable ids by noised probability, best first, their scores ln(noised p) (NEG_SCORE
        when <= 0), and the score of the byte characters, ln(min score / total). sort=False leaves the
        ids unordered (same set, less work)."""
        q = self._queues.get(lang)
        if q is None or q.sum == 0:
            raise ValueError(f"no text pushed for language {lang!r}")
        n = len(self._str)
        q.fit(n)
        t = q.total[:n]
        positive = t > 0
        byte_score = math.log(int(t[positive].min()) / q.sum)
        cand = np.flatnonzero(positive & self._ok[:n])
        p = t[cand] / q.sum
        if noise_std > 0:
            if rng is None:
                raise ValueError("noise_std > 0 needs an rng (np.random.Generator)")
            noise = rng.standard_normal(len(cand), dtype=np.float32)  # float32 draws: half the time
            noise *= noise_std
            p += noise
        k = max(0, min(len(cand), vocab_size - N_FIXED - len(self.special_tokens)))
        top = np.argpartition(-p, k - 1)[:k] if 0 < k < len(cand) else np.arange(k)
        if sort:  # best first; ties by id (first seen), independent of argpartition's internals
            top.sort()
            top = top[np.argsort(-p[top], kind="stable")]
        best = p[top]
        scores = np.full(len(top), NEG_SCORE)
        pos = best > 0
        scores[pos] = np.log(best[pos])
        ids = cand[top]
        if self.count_selected:
            if len(self._tally) < n:
                self._tally = np.concatenate([self._tally, np.zeros(n - len(self._tally), np.int64)])
            self._tally[ids] += 1
        return ids, scores, byte_score

    def sample(self, lang="default", vocab_size=32768, noise_std=0.0, rng=None):
        """(pieces, scores), vocab_size of them: 256 byte characters, 135 whitespace runs, the top-ranked
        substrings, and the special tokens inserted at their ids (score 0; last when the id is past the
        end). Fewer substrings when the queue holds fewer rankable ones."""
        ids, scores, byte_score = self.sample_ids(lang, vocab_size, noise_std, rng)
        pieces = BYTE_CHARS + WS_RUNS + [self._str[i] for i in ids.tolist()]
        out_scores = [byte_score] * len(BYTE_CHARS) + [0.0] * len(WS_RUNS) + scores.tolist()
        for piece, i in sorted(self.special_tokens.items(), key=lambda kv: kv[1]):
            pieces.insert(min(i, len(pieces)), piece)
            out_scores.insert(min(i, len(out_scores)), 0.0)
        return pieces, out_scores

    def selection_counts(self):
        """piece -> number of sample() calls whose vocabulary held it (count_selected=True; substrings
        only: the 391 fixed pieces and the special tokens are in every vocabulary)."""
        out = collections.Counter(self._tally_flushed)
        for i in np.flatnonzero(self._tally).tolist():
            out[self._str[i]] += int(self._tally[i])
        return out

    # -- memory
    def compact(self):
        """Forget substrings that no queue holds any more (ids are renumbered, caches dropped)."""
        n = len(self._str)
        live = np.zeros(n, bool)
        for q in self._queues.values():
            q.fit(n)
            live |= q.total[:n] > 0
        keep = np.flatnonzero(live)
        new_id = np.full(n, -1, np.int64)
        new_id[keep] = np.arange(len(keep))
        if len(self._tally):
            tally = np.concatenate([self._tally, np.zeros(n - len(self._tally), np.int64)])
            for i in np.flatnonzero((tally > 0) & ~live).tolist():
                self._tally_flushed[self._str[i]] += int(tally[i])
            self._tally = tally[keep]
        self._str = [self._str[i] for i in keep.tolist()]
        self._id = {s: i for i, s in enumerate(self._str)}
        self._len, self._ok = self._len[keep], self._ok[keep]
        self._reset_pretokens()
        for q in self._queues.values():
            q.total = q.total[keep]
            q.batches = collections.deque((new_id[ids], scores) for ids, scores in q.batches)
        self._next_compact = max(self.max_ids, 2 * len(keep))
        self.compactions += 1


def sample_tokenizer(texts, vocab_size=32768, noise_std=0.0, rng=None, sampler=None, lang="default",
                     special_tokens=None, score="bytes"):
    """One step of Algorithm 1: add `texts` (one batch) to the sampler's queue for `lang` (a fresh
    sampler, so a queue of just this batch, when none is given) and sample a vocabulary of `vocab_size`
    pieces, the special tokens included at their ids. Returns (pieces, scores); see TokenizerSampler."""
    if sampler is None:
        sampler = TokenizerSampler(special_tokens=special_tokens, score=score)
    elif special_tokens is not None and dict(special_tokens) != sampler.special_tokens:
        raise ValueError("special_tokens differ from the sampler's; set them when creating the sampler")
    sampler.push(texts, lang)
    return sampler.sample(lang, vocab_size, noise_std, rng)


# ----------------------------------------------------------------------------- the sampled tokenizer
class UnigramTokenizer:
    """UnigramLM over sampled (pieces, scores): GPT-2 pre-tokenization of ' ' + text, byte-level
    characters, Viterbi over the pieces' scores (log-probabilities) per pre-token. Every byte character
    is a piece, so any text encodes; special tokens are split out first and never come from plain text.
    decode(encode(s)) == s for any str."""

    def __init__(self, pieces, scores, special_tokens=(), add_prefix_space=True):
        if len(pieces) != len(scores):
            raise ValueError("pieces and scores differ in length")
        self.pieces, self.scores = list(pieces), [float(s) for s in scores]
        self.special = set(special_tokens)
        self._vocab = {}
        for i, (p, s) in enumerate(zip(self.pieces, self.scores)):
            if p not in self.special and p not in self._vocab:
                self._vocab[p] = (i, s)
        missing = [c for c in BYTE_CHARS if c not in self._vocab]
        if missing:
            raise ValueError(f"{len(missing)} byte characters are not pieces (e.g. {missing[0]!r}); "
                             "the tokenizer could not encode every text")
        self.piece_to_id = {p: i for i, p in reversed(list(enumerate(self.pieces)))}
        self.max_len = max(len(p) for p in self._vocab)
        self.add_prefix_space = add_prefix_space
        alts = sorted(self.special, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, alts)) + ")") if alts else None
        self._cache = {}

    def __len__(self):
        return len(self.pieces)

    def _viterbi(self, b):
        n = len(b)
        best = [0.0] + [-math.inf] * n
        back = [0] * (n + 1)
        vocab, maxlen = self._vocab, self.max_len
        for i in range(1, n + 1):
            for j in range(max(0, i - maxlen), i):
                e = vocab.get(b[j:i])
                if e is not None:
                    s = best[j] + e[1]
                    if s > best[i]:
                        best[i], back[i] = s, j
        out, i = [], n
        while i > 0:
            j = back[i]
            out.append(vocab[b[j:i]][0])
            i = j
        return out[::-1]

    def _encode_plain(self, text, out):
        cache = self._cache
        for pt in pretokenize(text):
            ids = cache.get(pt)
            if ids is None:
                if len(cache) > 100_000:
                    cache.clear()
                ids = cache[pt] = self._viterbi(to_byte_level(pt))
            out.extend(ids)

    def encode(self, text):
        """Token ids of ' ' + text (no space is added before a special token that starts the text)."""
        specials = self._special_re
        if self.add_prefix_space and not (specials and specials.match(text)):
            text = " " + text
        out = []
        if specials is None:
            self._encode_plain(text, out)
        else:
            for j, part in enumerate(specials.split(text)):
                if j % 2:
                    out.append(self.piece_to_id[part])
                elif part:
                    self._encode_plain(part, out)
        return out

    def tokenize(self, text):
        return [self.pieces[i] for i in self.encode(text)]

    def decode(self, ids):
        buf = bytearray()
        for i in ids:
            p = self.pieces[i]
            buf += p.encode("utf-8") if p in self.special else bytes(CHAR_TO_BYTE[c] for c in p)
        text = buf.decode("utf-8", errors="replace")
        if self.add_prefix_space and ids and self.pieces[ids[0]] not in self.special and text.startswith(" "):
            text = text[1:]  # the space encode() added
        return text


# ----------------------------------------------------------------------------- config and data
def _fail(msg):
    raise SampleTokError(msg)


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _resolve(path, base):
    """A config path: as given (relative to the current directory), else relative to the config file."""
    p = Path(os.path.expanduser(path))
    if p.is_absolute() or p.exists() or base is None:
        return p
    alt = Path(base) / p
    return alt if alt.exists() else p


def load_config(path):
    """ZeTT's JSON config with defaults filled in and every key this tool reads checked."""
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        _fail(f"{path}: cannot read config ({e.strerror})")
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        _fail(f"{path}:{e.lineno}: not valid JSON ({e.msg})")
    if not isinstance(cfg, dict):
        _fail(f"{path}: the config must be a JSON object")
    for key in ("langs", "train_directory"):
        if key not in cfg:
            _fail(f"{path}: missing key '{key}'")
    out = dict(CONFIG_DEFAULTS)
    if "tokenizer_sample_min" not in cfg and _is_int(cfg.get("tokenizer_sample_max")):
        out["tokenizer_sample_min"] = min(CONFIG_DEFAULTS["tokenizer_sample_min"], cfg["tokenizer_sample_max"])
    out.update({k: v for k, v in cfg.items() if k in CONFIG_DEFAULTS})
    at_least_fixed = f"an integer >= {N_FIXED} (256 byte characters + 135 whitespace runs)"
    checks = {
        "langs": (lambda v: isinstance(v, str) and v.strip(), "a langs file path (or languages separated by spaces)"),
        "train_directory": (lambda v: isinstance(v, str) and v, "a folder path"),
        "tokenizer_sample_mean": (lambda v: _is_number(v) and v > 0, "a positive number"),
        "tokenizer_sample_std": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "tokenizer_sample_min": (lambda v: _is_int(v) and v >= N_FIXED, at_least_fixed),
        "tokenizer_sample_max": (lambda v: _is_int(v) and v >= N_FIXED, at_least_fixed),
        "tokenizer_batch_size": (lambda v: _is_int(v) and v > 0, "a positive integer"),
        "train_batch_size": (lambda v: _is_int(v) and v > 0, "a positive integer"),
        "tokenizer_noise_mean": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "tokenizer_noise_std": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
        "block_size": (lambda v: _is_int(v) and v > 0, "a positive integer"),
        "model_name_or_path": (lambda v: v is None or isinstance(v, str), "a path or null"),
        "do_tokenizer_sampling": (lambda v: isinstance(v, bool), "true or false"),
        "sample_text_span": (lambda v: isinstance(v, bool), "true or false"),
    }
    for key, (ok, what) in checks.items():
        if not ok(out[key]):
            _fail(f"{path}: key '{key}' must be {what}, not {json.dumps(out[key])}")
    if out["tokenizer_sample_min"] > out["tokenizer_sample_max"]:
        _fail(f"{path}: tokenizer_sample_min ({out['tokenizer_sample_min']}) > "
              f"tokenizer_sample_max ({out['tokenizer_sample_max']})")
    if out["tokenizer_batch_size"] % out["train_batch_size"]:
        _fail(f"{path}: tokenizer_batch_size ({out['tokenizer_batch_size']}) must be a multiple of train_batch_size "
              f"({out['train_batch_size']}): the queue holds tokenizer_batch_size / train_batch_size batches")
    if not out["do_tokenizer_sampling"]:
        _fail(f"{path}: do_tokenizer_sampling is false: there is nothing to sample")
    base = Path(path).resolve().parent
    out["langs_path"] = _resolve(out["langs"], base)
    out["train_directory"] = str(_resolve(out["train_directory"], base))
    out["config_path"] = str(path)
    return out


def read_langs(spec, path):
    """[(lang, probability)] from a file of `lang,weight` lines (a bare `lang` weighs 1; blank lines and
    #-comments skipped), or from a string of languages separated by spaces (equal weights)."""
    if not path.is_file():
        if spec.endswith(".txt") or "/" in spec or os.sep in spec:
            _fail(f"langs: file {path} not found")
        return [(lang, 1.0 / len(spec.split())) for lang in spec.split()]
    langs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [x.strip() for x in line.split(",")]
        weight = 1.0
        if len(parts) > 2 or not parts[0] or any(c.isspace() or c in "/\\" for c in parts[0]):
            _fail(f"{path}:{lineno}: bad line {line!r} (expected 'lang,weight')")
        if len(parts) == 2:
            try:
                weight = float(parts[1])
            except ValueError:
                weight = -1.0
            if not (weight >= 0 and math.isfinite(weight)):
                _fail(f"{path}:{lineno}: bad weight {parts[1]!r} for language {parts[0]!r} (expected a number >= 0)")
        if parts[0] in dict(langs):
            _fail(f"{path}:{lineno}: language {parts[0]!r} listed twice")
        langs.append((parts[0], weight))
    if not langs:
        _fail(f"{path}: no languages listed")
    total = sum(w for _, w in langs)
    if total <= 0:
        _fail(f"{path}: all language weights are 0")
    return [(lang, w / total) for lang, w in langs]


def find_language_file(directory, lang):
    """directory/{lang}.parquet (when pyarrow is installed), else {lang}.jsonl or {lang}.jsonl.gz."""
    d = Path(directory)
    if not d.is_dir():
        _fail(f"train_directory {d} is not a folder")
    parquet, jsonl = d / f"{lang}.parquet", [d / f"{lang}.jsonl", d / f"{lang}.jsonl.gz"]
    have_pyarrow = importlib.util.find_spec("pyarrow") is not None  # optional dependency
    if parquet.is_file() and have_pyarrow:
        return parquet
    for p in jsonl:
        if p.is_file():
            return p
    if parquet.is_file():
        _fail(f"{parquet}: reading parquet needs pyarrow (pip install pyarrow), or give {lang}.jsonl "
              f"(language {lang!r})")
    _fail(f"{parquet} (or {lang}.jsonl) not found: no data for language {lang!r}")


def iter_file_texts(path):
    """The `text` fields of a .jsonl(.gz) or .parquet file, in file order (empty texts skipped). A JSONL
    line that is not a record with a `text` string is an error naming the file and line."""
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            for _, text in iter_source_texts(path):
                yield text
            return
        for lineno, rec in read_jsonl(path):
            if not isinstance(rec.get("text"), str):
                _fail(f"{path}:{lineno}: record has no 'text' string field")
            if rec["text"]:
                yield rec["text"]
    except DataError as e:
        _fail(str(e))
    except UnicodeDecodeError as e:
        _fail(f"{path}: not UTF-8 ({e.reason} at byte {e.start} of a read block)")


class TextStream:
    """A language's persistent text iterator: file order through a seeded shuffle buffer, the file
    started over at its end (the next epoch). take(n) continues where the last call stopped and returns
    (spans, how many were shorter than span).

    pack_eos None: each text is one item, a random span of it cut as it enters the buffer (shorter texts
    are used whole). pack_eos a string (ZeTT's sequence packing): the buffer holds stripped non-empty
    documents; an item joins the next documents with pack_eos until it reaches span characters, and a
    random span of the joined text is taken."""

    def __init__(self, path, rng, span, random_span=True, buffer=SHUFFLE_BUFFER, pack_eos=None):
        self.path, self.rng, self.span, self.random_span, self.buffer_size = path, rng, span, random_span, buffer
        self.pack_eos = pack_eos
        self.buf, self.epoch = [], 0
        self._it = iter_file_texts(path)

    def _next_from_file(self):
        for _ in range(2):
            for t in self._it:
                if self.pack_eos is None:
                    return t
                t = t.strip()                       # ZeTT strips each document and skips empty ones
                if t:
                    return t
            self.epoch += 1
            self._it = iter_file_texts(self.path)
        _fail(f"{self.path}: no non-empty 'text' records")

    def _cut(self, t):
        span = self.span
        if len(t) <= span:
            return t, len(t) < span
        s = int(self.rng.integers(len(t) - span + 1)) if self.random_span else 0
        return t[s:s + span], False

    def _pop(self, n):
        """One buffered item, uniformly at random; refills the buffer from the file first."""
        while len(self.buf) < self.buffer_size:
            t = self._next_from_file()
            self.buf.append(self._cut(t) if self.pack_eos is None else t)
            if self.epoch and len(self.buf) >= n:  # a small file: don't hold many copies of it
                break
        j = int(self.rng.integers(len(self.buf)))
        self.buf[j], self.buf[-1] = self.buf[-1], self.buf[j]
        return self.buf.pop()

    def take(self, n):
        out, short = [], 0
        while len(out) < n:
            if self.pack_eos is None:
                text, is_short = self._pop(n)
            else:
                docs = [self._pop(n)]
                while sum(map(len, docs)) + len(self.pack_eos) * (len(docs) - 1) < self.span:
                    docs.append(self._pop(n))
                text, is_short = self._cut(self.pack_eos.join(docs))
            out.append(text)
            short += is_short
        return out, short


def _hf_special_tokens(folder):
    """piece -> id and the eos piece of a Hugging Face tokenizer folder without a tokenizer.model: the
    added tokens tokenizer.json marks special, eos from tokenizer_config.json or special_tokens_map.json."""
    try:
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(f"{folder / 'tokenizer.json'}: cannot read ({e})")
    added = data.get("added_tokens") if isinstance(data, dict) else None
    if not isinstance(added, list):
        _fail(f"{folder / 'tokenizer.json'}: no 'added_tokens' list")
    out = {t["content"]: t["id"] for t in added
           if isinstance(t, dict) and t.get("special") and isinstance(t.get("content"), str) and _is_int(t.get("id"))}
    eos = None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            cfg = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        eos = cfg.get("eos_token") if isinstance(cfg, dict) else None
        eos = eos.get("content") if isinstance(eos, dict) else eos
        if isinstance(eos, str):
            break
    return out, eos if isinstance(eos, str) else None


def load_special_tokens(path):
    """(piece -> id, eos piece) of a base tokenizer's special tokens (unk, bos, eos, pad and added tokens),
    from a tokenizer.model file, a checkpoint or corpus folder (read with data.Tokenizer), or a Hugging
    Face tokenizer folder that only has tokenizer.json."""
    path = Path(path)
    if path.is_dir() and not (path / "tokenizer.model").is_file() and (path / "tokenizer.json").is_file():
        return _hf_special_tokens(path)
    try:
        tok = Tokenizer.load(path)
    except DataError as e:
        _fail(f"model_name_or_path: {e}")
    out = {}
    for i in (getattr(tok, "unk_id", None), tok.bos_id, tok.eos_id, tok.pad_id):
        if i is not None and i >= 0:
            piece = tok.id_to_piece(i)
            if piece:
                out[piece] = i
    out.update(tok.added_tokens)
    eos = tok.id_to_piece(tok.eos_id) if tok.eos_id is not None and tok.eos_id >= 0 else None
    return out, eos


def _special_tokens_for(cfg, override=None):
    """(special tokens, eos piece, where they came from) for the config's model_name_or_path (or --tokenizer)."""
    name = override or cfg["model_name_or_path"]
    if not name:
        return {}, None, None
    p = _resolve(name, Path(cfg["config_path"]).resolve().parent)
    if p.exists():
        special, eos = load_special_tokens(p)
        return special, eos, str(p)
    looks_local = name.startswith((".", "/", "~")) or name.endswith(".model") or override
    if looks_local:
        _fail(f"{'--tokenizer' if override else 'model_name_or_path'}: {name} not found "
              "(a tokenizer.model file, a checkpoint folder or a Hugging Face tokenizer folder)")
    print(f"sample_tok: model_name_or_path {name!r} is not a local tokenizer.model or tokenizer folder "
          "(hub names are not fetched): no special tokens added", file=sys.stderr)
    return {}, None, None


# ----------------------------------------------------------------------------- the statistics tool
def plan_reads(probs, num_batches, queue_batches, seed):
    """The batches to read, in order, as (language index, sampled?): a language's first batch is preceded
    by queue_batches - 1 batches that only fill its queue (ZeTT fills it from its initial texts)."""
    choice = np.random.default_rng([seed, 0]).choice(len(probs), size=num_batches, p=probs)
    reads, seen = [], set()
    for li in choice.tolist():
        if li not in seen:
            seen.add(li)
            reads += [(li, False)] * (queue_batches - 1)
        reads.append((li, True))
    return reads


def produce_batches(files, reads, batch_size, span, seed, random_span=True, pack_eos=None):
    """For each read: ({pre-token: count}, texts, texts shorter than span). Runs in a worker process
    or inline; the result is the same either way."""
    streams = {}
    for li, _ in reads:
        if li not in streams:
            streams[li] = TextStream(files[li], np.random.default_rng([seed, li + 1]), span, random_span,
                                     pack_eos=pack_eos)
        texts, short = streams[li].take(batch_size)
        yield pretoken_counts(texts), len(texts), short


def _producer_process(queue, args):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's run_command handler is not for this reader
    try:
        for item in produce_batches(*args):
            queue.put(item)
        queue.put(None)
    except (SampleTokError, DataError) as e:
        queue.put(("error", str(e)))
    except BaseException as e:  # anything else: report it in the parent, then stop
        queue.put(("error", f"batch reader failed: {type(e).__name__}: {e}"))


def read_batches(files, reads, batch_size, span, seed, random_span=True, workers=0, pack_eos=None):
    """produce_batches, in a separate process when workers > 0 (reading and pre-tokenizing then overlap
    with sampling: about 2x on 2 cores)."""
    args = (files, reads, batch_size, span, seed, random_span, pack_eos)
    if workers <= 0:
        yield from produce_batches(*args)
        return
    ctx = mp.get_context()  # the platform's default start method (the arguments are plain data)
    queue = ctx.Queue(maxsize=8)  # bounded: the reader can't run far ahead (memory)
    proc = ctx.Process(target=_producer_process, args=(queue, args), daemon=True)
    proc.start()
    try:
        for _ in range(len(reads)):
            item = queue.get()
            if item is None or (len(item) == 2 and item[0] == "error"):
                _fail(item[1] if item else "batch reader stopped early")
            yield item
    finally:
        proc.terminate()
        proc.join()


def collect_stats(cfg, num_batches, seed=0, special_tokens=None, workers=1, score="bytes", eos=None):
    """Simulate ZeTT's training batches and count, per piece, in how many sampled vocabularies it was.
    eos: the string that joins packed documents (do_sequence_packing; default the project's
    <|endoftext|>). Returns a dict with the counts and run facts (see print_summary)."""
    langs = read_langs(cfg["langs"], cfg["langs_path"])
    names, probs = [lang for lang, _ in langs], np.array([p for _, p in langs])
    files = [str(find_language_file(cfg["train_directory"], lang)) for lang in names]
    special_tokens = dict(special_tokens or {})
    bs = cfg["train_batch_size"]
    queue_batches = cfg["tokenizer_batch_size"] // bs
    span = CHARS_PER_TOKEN * cfg["block_size"]
    reads = plan_reads(probs, num_batches, queue_batches, seed)
    rng = np.random.default_rng([seed, 1])  # vocabulary sizes and noise
    sampler = TokenizerSampler(queue_batches, special_tokens, count_selected=True, score=score)
    pack_eos = (eos if eos is not None else SPECIAL_PIECES["eos"]) if cfg["do_sequence_packing"] else None
    per_lang = collections.Counter()
    texts_total = texts_short = 0
    t0 = time.time()
    batches = zip(reads, read_batches(files, reads, bs, span, seed, cfg["sample_text_span"], workers, pack_eos))
    for (li, sampled), (counts, n_texts, n_short) in progress(
            batches, total=len(reads), label="sample_tok", unit="batches",
            stream=sys.stderr):  # (the stream given at call time: pytest swaps sys.stderr)
        lang = names[li]
        texts_total += n_texts
        texts_short += n_short
        sampler.push_pretokens(counts, lang)
        if sampled:
            size = draw_vocab_size(rng, cfg["tokenizer_sample_mean"], cfg["tokenizer_sample_std"],
                                   cfg["tokenizer_sample_min"], cfg["tokenizer_sample_max"])
            sigma = draw_noise_std(rng, cfg["tokenizer_noise_mean"], cfg["tokenizer_noise_std"])
            sampler.sample_ids(lang, size, sigma, rng, sort=False)
            per_lang[lang] += 1
    seconds = time.time() - t0
    counts = sampler.selection_counts()
    for piece in BYTE_CHARS + WS_RUNS + list(special_tokens):
        counts[piece] = num_batches
    return {"counts": counts, "num_batches": num_batches, "languages": names, "per_language": per_lang,
            "reads": len(reads), "texts": texts_total, "texts_short": texts_short, "span": span,
            "random_span": cfg["sample_text_span"], "seconds": seconds, "files": dict(zip(names, files)),
            "compactions": sampler.compactions, "pack_eos": pack_eos, "score": score}


def sorted_counts(counts):
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _show(piece):
    """The piece as stored, and what it stands for when that differs ('Ġdef' -> ' def')."""
    text = from_byte_level(piece) if all(c in CHAR_TO_BYTE for c in piece) else piece
    return repr(piece), (repr(text) if text != piece else "")


def print_summary(stats, items, top=20, left_out=0, out=None):
    """The console summary ZeTT's statistics tool prints. items: [(piece, count)] as written (sorted, maybe filtered)."""
    out = out or sys.stdout
    n = stats["num_batches"]
    total = sum(stats["counts"].values())
    bar = "=" * 70
    print(bar, file=out)
    print("TOKEN SAMPLING STATISTICS", file=out)
    print(bar, file=out)
    print(f"Total batches processed: {n}", file=out)
    print(f"Total token occurrences: {total}", file=out)
    print(f"Unique tokens sampled: {len(stats['counts'])}", file=out)
    print(f"Average tokens per batch: {total / max(n, 1):.2f}", file=out)
    print(f"Languages: {', '.join(stats['languages'])}", file=out)
    print(f"Batches per language: {', '.join(f'{k} {v}' for k, v in sorted(stats['per_language'].items()))}", file=out)
    packed = f" of documents joined with {stats['pack_eos']!r}" if stats.get("pack_eos") is not None else ""
    print(f"Texts: {stats['texts']} in {stats['reads']} batches ({stats['reads'] - n} to fill the queues first), "
          f"{'random ' if stats.get('random_span', True) else ''}{stats['span']:,}-character spans{packed}; "
          f"{stats['texts_short']} texts were shorter and used whole; pieces scored by "
          f"{'UTF-8 bytes' if stats.get('score', 'bytes') == 'bytes' else 'characters'}", file=out)
    print(f"Time: {stats['seconds']:.1f} s ({1000 * stats['seconds'] / max(n, 1):.1f} ms per sampled batch)", file=out)
    print(bar, file=out)
    print(file=out)
    extra = f" (leaving out {left_out} tokens present in every vocabulary)" if left_out else ""
    print(f"Top {top} most frequent tokens{extra}:", file=out)
    for rank, (piece, count) in enumerate(items[:top], 1):
        shown, text = _show(piece)
        print(f"{rank:2d}. {shown:<22s} {text:<22s}: {count:6d} ({100 * count / max(total, 1):.2f}%)", file=out)
    if items and not left_out and items[min(top, len(items)) - 1][1] == n:
        print(f"(all {min(top, len(items))} are in every vocabulary; --exclude_always_present lists the others)",
              file=out)


def check_output_file(path):
    """Fail before any sampling when the output cannot be written."""
    p = Path(path)
    if p.is_dir():
        _fail(f"--output_file {p}: is a folder; give a .json file name")
    check_output_path(p, "--output_file", folder=False)


def run_stats(config_path, num_batches, output_file, seed=0, exclude_always_present=False, top=20, tokenizer=None,
              workers=1, score="bytes"):
    check_output_file(output_file)
    cfg = load_config(config_path)
    special, eos, source = _special_tokens_for(cfg, tokenizer)
    if source:
        print(f"sample_tok: {len(special)} special tokens from {source} keep their ids: "
              + ", ".join(f"{p}={i}" for p, i in sorted(special.items(), key=lambda kv: kv[1])), file=sys.stderr)
    stats = collect_stats(cfg, num_batches, seed=seed, special_tokens=special, workers=workers, score=score, eos=eos)
    items = sorted_counts(stats["counts"])
    left_out = 0
    if exclude_always_present:
        kept = [(p, c) for p, c in items if c < num_batches]
        left_out = len(items) - len(kept)
        items = kept
    Path(output_file).parent.mkdir(parents=True, exist_ok=True)
    write_json(output_file, dict(items))
    print_summary(stats, items, top=top, left_out=left_out)
    print(f"\nWrote {len(items)} tokens to {output_file}")
    return stats


# ----------------------------------------------------------------------------- --demo
def _demo_sources():
    """Local text by language: the stdlib's Python, C headers, JavaScript, docs (rst/md/txt)."""
    paths = sysconfig.get_paths()
    site = sorted({Path(paths[k]) for k in ("purelib", "platlib")})
    return {
        "python": ([Path(paths["stdlib"])], (".py",)),
        "c": ([Path("/usr/include"), Path("/usr/local/include")] + site, (".h", ".c")),
        "javascript": ([Path("/usr/lib/node_modules"), Path("/usr/share/javascript"),
                        Path("/usr/local/lib/node_modules")], (".js",)),
        "docs": ([Path("/usr/share/doc"), Path("/usr/share/common-licenses")] + site, (".rst", ".md", ".txt")),
    }


def _demo_files(roots, exts):
    """Files under roots with one of exts, in a fixed order (no symlinks, no installed packages' metadata;
    site-packages is not part of the stdlib)."""
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.endswith(("-info", "site-packages", "dist-packages"))
                                 or Path(dirpath, d) in roots)
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if name.endswith(exts) and not p.is_symlink():
                    yield p


def build_demo(folder, max_chars=6_000_000, min_chars=300_000, max_files=4000):
    """Write folder/train/{lang}.jsonl from local files, folder/langs.txt and folder/config.json."""
    folder = Path(folder)
    (folder / "train").mkdir(parents=True, exist_ok=True)
    found = []
    for lang, (roots, exts) in _demo_sources().items():
        chars = docs = 0
        tmp = folder / "train" / f"{lang}.jsonl.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            for p in _demo_files(roots, exts):
                try:
                    text = p.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if len(text) >= 200:
                    f.write(json.dumps({"text": text}) + "\n")
                    chars += len(text)
                    docs += 1
                    if chars >= max_chars or docs >= max_files:
                        break
        if chars >= min_chars:
            os.replace(tmp, folder / "train" / f"{lang}.jsonl")
            found.append((lang, docs, chars))
        else:
            tmp.unlink()
    (folder / "langs.txt").write_text("".join(f"{lang},1\n" for lang, _, _ in found))
    config = {"train_directory": str((folder / "train").resolve()), "langs": str((folder / "langs.txt").resolve()),
              "model_name_or_path": None, "tokenizer_sample_mean": 32768, "tokenizer_sample_std": 0,
              "tokenizer_sample_min": 16384, "tokenizer_sample_max": 32768, "tokenizer_batch_size": 2048,
              "train_batch_size": 128, "tokenizer_noise_mean": 1e-5, "tokenizer_noise_std": 4, "block_size": 128}
    write_json(folder / "config.json", config)
    return found


# ----------------------------------------------------------------------------- main
def _epilog():
    keys = "\n".join(f"  {k:<34} {v}" for k, v in CONFIG_HELP.items())
    return (f"CONFIG.json keys (ZeTT's names; others are accepted and ignored):\n{keys}\n\n"
            "--demo writes DEMO_DIR/train/{lang}.jsonl, DEMO_DIR/langs.txt, DEMO_DIR/config.json and "
            "DEMO_DIR/token_frequencies.json (DEMO_DIR: --demo_dir, default out_sample_tok_demo).")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?",
                    help="JSON config with ZeTT's keys (listed below)")
    ap.add_argument("--num_batches", type=int, default=None,
                    help="batches to sample (default 1000; 200 with --demo)")
    ap.add_argument("--output_file", default=None, help="output JSON, tokens sorted by count "
                    "(default token_frequencies.json; DEMO_DIR/token_frequencies.json with --demo)")
    ap.add_argument("--seed", type=int, default=0, help="seed for language choice, spans, sizes, noise, shuffling")
    ap.add_argument("--exclude_always_present", action="store_true",
                    help="leave the tokens present in every sampled vocabulary out of the top list and the JSON")
    ap.add_argument("--top", type=int, default=20, help="tokens listed in the summary")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.model, checkpoint or Hugging Face tokenizer folder "
                    "whose special tokens keep their ids (overrides the config's model_name_or_path)")
    ap.add_argument("--score", choices=SCORES, default="bytes", help="what an occurrence of a piece scores: its "
                    "UTF-8 byte length as a byte-level string (ZeTT, default) or its length in characters (older)")
    ap.add_argument("--workers", type=int, choices=(0, 1), default=1 if (os.cpu_count() or 1) > 1 else 0,
                    help="1: read and pre-tokenize in a second process, ahead of the sampler (default with 2+ "
                    "cores); 0: all in this process. The results are identical")
    ap.add_argument("--demo", action="store_true", help="build a small multi-language config from local files "
                    "(stdlib Python, C headers, JavaScript, docs: whatever this machine has) and run it with "
                    "--exclude_always_present")
    ap.add_argument("--demo_dir", default="out_sample_tok_demo", help="where --demo writes its data, config and output")
    args = ap.parse_args(argv)
    if args.num_batches is not None and args.num_batches < 1:
        _fail("--num_batches must be >= 1")
    if args.demo:
        if args.config:
            _fail("give either CONFIG or --demo, not both")
        output = args.output_file or str(Path(args.demo_dir) / "token_frequencies.json")
        check_output_file(output)
        found = build_demo(args.demo_dir)
        if not found:
            _fail("--demo: found no local text to sample from")
        print(f"sample_tok --demo: wrote {args.demo_dir}/config.json with " + ", ".join(
            f"{lang} ({docs} files, {chars / 1e6:.1f}M chars)" for lang, docs, chars in found)
            + f"; run it again with: python sample_tok.py {args.demo_dir}/config.json", file=sys.stderr)
        config = str(Path(args.demo_dir) / "config.json")
        num = args.num_batches or 200
    else:
        if not args.config:
            ap.error("give a CONFIG.json (or --demo)")
        config, output, num = args.config, args.output_file or "token_frequencies.json", args.num_batches or 1000
    run_stats(config, num, output, seed=args.seed, exclude_always_present=args.exclude_always_present or args.demo,
              top=args.top, tokenizer=args.tokenizer, workers=args.workers, score=args.score)
    return 0


if __name__ == "__main__":
    run_command("sample_tok.py", main, errors=(SampleTokError,), kept="no output file was written")
