"""
Data for codelm: corpus collection, the SentencePiece tokenizer and its `Tokenizer` wrapper,
token shards for pretraining, and random training windows read back from them.

    python data.py corpus --src stdlib --out data/stdlib            # the embedded default corpus
    python data.py corpus --src ~/code --out data/mycode --ext .py,.pyi
    python data.py corpus --src the_stack_python.jsonl.gz --out data/stack --text_field content
    python data.py corpus --src more.jsonl --out data/more --tokenizer data/stack   # reuse a tokenizer
    python data.py sft --src train.jsonl --tokenizer out/ --out data/sft --max_len 1024   # prompt/completion
    python data.py intent --src intent.jsonl --tokenizer out/ --out data/intent --max_len 2048  # reasoning-augmented recipe

A corpus folder holds train_000000.bin ... (raw token ids, uint16 or uint32 above 65,535 ids, one
end-of-text id after every document), val_000000.bin, tokenizer.model and meta.json. Re-running
with identical inputs and options reuses the folder instead of rebuilding it. An SFT folder (sft,
intent) holds whole examples with loss masks instead (see "SFT data" below).
"""
import argparse
import gzip
import hashlib
import io
import json
import multiprocessing as mp
import os
import queue
import random
import re
import shutil
import sys
import sysconfig
import signal
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

# ----------------------------------------------------------------------------- defaults
VOCAB_SIZE = 32768
VAL_FRACTION = 0.005          # share of documents held out for validation (at least one document)
SHARD_TOKENS = 100_000_000    # tokens per shard file (200 MB as uint16)
ENCODE_BATCH_CHARS = 4_000_000  # characters per job handed to an encoding worker
TOKENIZER_MAX_CHARS = 400_000_000  # the tokenizer trains on at most this many characters of the corpus
TOKENIZER_MAX_CHUNKS = 150_000     # ...reservoir-sampled down to this many chunks (bounds its memory)
CHUNK_CHARS = 4000            # tokenizer training sees multi-line chunks of at most this many characters
SPECIAL_PIECES = {"unk": "<unk>", "bos": "<s>", "eos": "<|endoftext|>", "pad": "<|pad|>"}
SP_SPACE = "\u2581"           # SentencePiece's visible space; a literal one in text is byte-encoded
CORPUS_FORMAT = "codelm-corpus-v1"


class DataError(Exception):
    """Bad input: the message names the file, key or line."""


# ----------------------------------------------------------------------------- commands
# Every command reports bad input the same way: one line `TOOL: error: MESSAGE` on stderr, exit 2.
# Ctrl-C exits 130 and SIGTERM 143, each with one line; an OSError (disk full, permissions) names the
# path and the cause instead of a traceback.
EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143


def fail(tool, message, code=EXIT_BAD_INPUT):
    """Print `TOOL: error: MESSAGE` and exit with `code`."""
    print(f"{tool}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread by run_command's handler (a BaseException, like Ctrl-C)."""


def _raise_terminated(signum, frame):
    raise Terminated()


def run_command(tool, main, argv=None, errors=(), kept="nothing was written"):
    """Run main(argv) as command `tool`: `errors` (the tool's bad-input exceptions, DataError always)
    and OSErrors end as one line and exit 2; Ctrl-C and SIGTERM end as one line saying `kept` (what is
    left on disk) and exit 130 / 143."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return main(argv)
    except (DataError, *errors) as e:
        fail(tool, e)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        fail(tool, f"{where}{e.strerror or e}")
    except KeyboardInterrupt:
        fail(tool, f"interrupted; {kept}", EXIT_INTERRUPTED)
    except Terminated:
        fail(tool, f"terminated; {kept}", EXIT_TERMINATED)
    finally:
        signal.signal(signal.SIGTERM, previous)



def exit_process(run):
    """End the process with run()'s exit code (an int; anything else is 0; a SystemExit's own code, its
    message printed). Under torchrun (WORLD_SIZE > 1), after flushing and without interpreter teardown:
    destroy_process_group and teardown left ranks stuck or aborting now and then once everything was
    written (a gloo peer waiting on one that had exited; SIGABRT, "terminate called without an active
    exception"). The ranks meet at a barrier before calling this."""
    try:
        code = run()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1 if e.code else 0
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    code = code if isinstance(code, int) else 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)

# ----------------------------------------------------------------------------- files
def file_sha256(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path, data):
    """Write data to path through a temporary name in the same folder, fsynced, then renamed: readers
    see the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_path(path, flag, folder=True):
    """Refuse, before any work, an output that cannot be written: `path` is a folder to create or fill
    (folder=False: a file to write), named on the command line by `flag`. Its nearest existing ancestor
    must be a folder in which a file can really be created: a probe file is made there and removed at
    once, because os.access says yes to root everywhere and some folders (/proc, read-only mounts) take
    no new file from anyone."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise DataError(f"{flag} {path}: " + ("exists and is not a folder" if folder else "is a folder, not a file"))
    base = path if folder else path.parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise DataError(f"{flag} {path}: {base} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=base)
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot create files in {base} ({e.strerror})")
    os.close(fd)
    os.unlink(probe)

def write_json(path, obj):
    """obj as indented UTF-8 JSON, atomically (atomic_write_bytes)."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def write_jsonl(path, rows):
    """One JSON object per line, UTF-8, atomically."""
    atomic_write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))


def read_jsonl(path):
    """Yield (line number, object) for every non-blank line of a JSONL file (.gz read transparently);
    DataError naming the file and line for one that is not a JSON object."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})")
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            yield n, obj


# ----------------------------------------------------------------------------- post-processing contract
LINTSEQ_DIFF_TOKEN = "<|diff|>"   # separates LintSeq edits (lintseq.py writes it, eval.py decodes it)
EDIT_FORMATS = (None, "lintseq")
COMPLETION_FORMATS = (None, "intent")
PROMPT_FORMATS = (None, "completion", "instruction")
PROMPT_STARTS = (None, "eot", "bos", "none")


@dataclass
class Postprocess:
    """How a model's generations become code, stored in config.json["postprocess"] of every checkpoint
    (and meta.json of SFT data): written by data.py (sft, intent) and sugar.py (apply), read by eval.py.
    edit_format 'lintseq': completions are LintSeq edit sequences (prompt + "\n<|diff|>", decoded).
    completion_format 'intent': <reasoning>, <intention>, then <code>...</code> holds the completion.
    sugar: the Token Sugar table when the tokenizer has shorthand tokens (expanded before judging).
    prompt_format: what the examples' prompts were: 'completion' (code to continue; None means it) or
    'instruction' (natural language answered with a whole program: LintSeq data and its plain baseline).
    prompt_start: the token each example began with: 'eot' (as pretraining documents; None means it),
    'bos', or 'none'."""
    edit_format: str | None = None
    completion_format: str | None = None
    sugar: dict | None = None
    prompt_format: str | None = None
    prompt_start: str | None = None

    @classmethod
    def from_dict(cls, d, where="postprocess"):
        """Validated; DataError naming `where` and the key for an unknown key or mode."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise DataError(f"{where}: postprocess must be an object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f for f in cls.__dataclass_fields__})
        if unknown:
            raise DataError(f"{where}: unknown postprocess key(s) {unknown} (known: {sorted(cls.__dataclass_fields__)})")
        pp = cls(**d)
        if pp.edit_format not in EDIT_FORMATS:
            raise DataError(f"{where}: unknown edit_format {pp.edit_format!r} (known: {EDIT_FORMATS})")
        if pp.completion_format not in COMPLETION_FORMATS:
            raise DataError(f"{where}: unknown completion_format {pp.completion_format!r} (known: {COMPLETION_FORMATS})")
        if pp.prompt_format not in PROMPT_FORMATS:
            raise DataError(f"{where}: unknown prompt_format {pp.prompt_format!r} (known: {PROMPT_FORMATS})")
        if pp.prompt_start not in PROMPT_STARTS:
            raise DataError(f"{where}: unknown prompt_start {pp.prompt_start!r} (known: {PROMPT_STARTS})")
        if pp.sugar is not None and not isinstance(pp.sugar, dict):
            raise DataError(f"{where}: postprocess.sugar must be a sugar table (object), got {type(pp.sugar).__name__}")
        return pp

    def to_dict(self):
        return asdict(self)


# ----------------------------------------------------------------------------- progress
def format_eta(seconds):
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress(iterable, total=None, label="", unit="items", every=2.0, weight=None, stream=None):
    """Yield from iterable, printing `[label] n/total (pct) rate unit/s ETA` every `every` seconds to
    stream (default: sys.stderr at call time). weight(item) -> how much the item counts (default 1)."""
    stream = stream or sys.stderr
    t0 = last = time.time()
    done = 0
    for item in iterable:
        yield item
        done += weight(item) if weight else 1
        now = time.time()
        if now - last >= every:
            last = now
            rate = done / max(now - t0, 1e-9)
            if total:
                eta = format_eta((total - done) / rate) if rate > 0 else "?"
                line = f"[{label}] {done:,}/{total:,} ({100 * done / total:.1f}%) {rate:,.1f} {unit}/s ETA {eta}"
            else:
                line = f"[{label}] {done:,} {unit} {rate:,.1f} {unit}/s elapsed {format_eta(now - t0)}"
            print(line, file=stream, flush=True)
    elapsed = time.time() - t0
    print(f"[{label}] done: {done:,} {unit} in {format_eta(elapsed)} ({done / max(elapsed, 1e-9):,.1f} {unit}/s)", file=stream, flush=True)


# ----------------------------------------------------------------------------- sources
def stdlib_root():
    """The running interpreter's standard-library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files():
    """The running interpreter's standard-library .py sources (no site-packages), sorted."""
    root = stdlib_root()
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and "dist-packages" not in p.parts)


def describe_source(src, ext=(".py",)):
    """A fingerprint of the source that changes whenever its content could have changed (paths,
    sizes, mtimes), computed without reading the files: lets a re-run reuse its outputs."""
    h = hashlib.sha256()
    if src == "stdlib":
        files = stdlib_files()
        h.update(sys.version.encode())
    elif os.path.isdir(src):
        files = sorted(p for p in Path(src).rglob("*") if p.is_file() and _wanted(p, ext))
    elif os.path.isfile(src):
        files = [Path(src)]
    else:
        raise DataError(f"{src}: no such file or folder (give a folder of source files, a .jsonl/.jsonl.gz/.parquet file, or 'stdlib')")
    size = 0
    for p in files:
        st = p.stat()
        size += st.st_size
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"src": str(src), "files": len(files), "bytes": size, "fingerprint": h.hexdigest()}


def _wanted(path, ext):
    return "all" in ext or path.suffix in ext


def iter_source_texts(src, ext=(".py",), text_field="text", stats=None):
    """Yield (name, text) for every document of src: a folder (files with a suffix in `ext`, or
    ext=('all',)), a .jsonl / .jsonl.gz file (records with `text_field`), a .parquet file (needs
    pyarrow), or 'stdlib'. Unreadable, non-UTF-8 and malformed documents are skipped and counted in
    `stats` (a dict), never fatal here: the caller decides what an empty result means."""
    stats = stats if stats is not None else {}
    stats.setdefault("documents", 0)
    stats.setdefault("skipped", {})

    def skip(reason, where):
        stats["skipped"][reason] = stats["skipped"].get(reason, 0) + 1
        examples = stats.setdefault("skipped_examples", {}).setdefault(reason, [])
        if len(examples) < 3:
            examples.append(str(where))

    src = str(src)
    if src == "stdlib" or os.path.isdir(src):
        texts = _folder_texts(src, ext, skip)
    elif src.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        texts = _jsonl_texts(src, text_field, skip)
    elif src.endswith(".parquet"):
        texts = _parquet_texts(src, text_field, skip)
    elif os.path.isfile(src):
        raise DataError(f"{src}: unsupported file type (expected a folder, .jsonl, .jsonl.gz, .parquet or 'stdlib')")
    else:
        raise DataError(f"{src}: no such file or folder (give a folder of source files, a .jsonl/.jsonl.gz/.parquet file, or 'stdlib')")
    for name, text in texts:
        if not text.strip():
            skip("empty", name)
            continue
        stats["documents"] += 1
        yield name, text


def _folder_texts(src, ext, skip):
    files = stdlib_files() if src == "stdlib" else sorted(p for p in Path(src).rglob("*") if p.is_file() and _wanted(p, ext))
    for p in files:
        try:
            raw = p.read_bytes()
        except OSError:
            skip("unreadable", p)
            continue
        try:
            yield str(p), raw.decode("utf-8")
        except UnicodeDecodeError:
            skip("not UTF-8", p)


def _jsonl_texts(src, text_field, skip):
    for lineno, rec in iter_records(src, lambda reason, n: skip(reason, f"{src}:{n}")):
        text = rec.get(text_field)
        if not isinstance(text, str):
            skip(f"no '{text_field}' field", f"{src}:{lineno}")
            continue
        yield f"{src}:{lineno}", text


def _parquet_texts(src, text_field, skip):
    try:
        import pyarrow.parquet as pq  # optional: only parquet sources need it
    except ImportError:
        raise DataError(f"{src}: reading parquet needs pyarrow (pip install pyarrow), or convert it to .jsonl")
    try:
        pf = pq.ParquetFile(src)
    except Exception as e:
        raise DataError(f"{src}: not a readable parquet file ({e})")
    if text_field not in pf.schema_arrow.names:
        raise DataError(f"{src}: no column '{text_field}' (columns: {', '.join(pf.schema_arrow.names)}); pass --text_field")
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):  # one batch in memory at a time
        for text in batch.column(0).to_pylist():
            row += 1
            yield f"{src}:row {row}", text if isinstance(text, str) else ""


# ----------------------------------------------------------------------------- tokenizer training
def training_chunks(texts, max_chars=CHUNK_CHARS):
    """Cut documents into multi-line chunks: SentencePiece then learns pieces that span newlines and
    indentation ('):\\n    return'), which a line-by-line trainer never sees."""
    for text in texts:
        cur = []
        size = 0
        for line in text.splitlines(keepends=True):
            while len(line) > max_chars:  # a pathological long line is cut where it must be
                if cur:
                    yield "".join(cur)
                    cur, size = [], 0
                yield line[:max_chars]
                line = line[max_chars:]
            if size + len(line) > max_chars and cur:
                yield "".join(cur)
                cur, size = [], 0
            cur.append(line)
            size += len(line)
        if cur:
            yield "".join(cur)


def train_tokenizer(texts, out_path, vocab_size=VOCAB_SIZE, max_chars=TOKENIZER_MAX_CHARS, threads=None):
    """Train a byte-fallback BPE SentencePiece model on an iterable of documents; write it to out_path.
    Options chosen for code: identity normalization, no dummy prefix, whitespace kept as is and allowed
    inside pieces (indentation runs, newline+indent, 'return▁self'), digits split."""

    seen = 0

    def capped():
        nonlocal seen
        for t in texts:
            if seen >= max_chars:
                return
            seen += len(t)
            yield t

    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=training_chunks(capped()), model_writer=model,
            model_type="bpe", vocab_size=vocab_size, byte_fallback=True, character_coverage=0.9999,
            normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
            split_by_whitespace=False, allow_whitespace_only_pieces=True, split_digits=True,
            max_sentence_length=4 * CHUNK_CHARS + 16, input_sentence_size=TOKENIZER_MAX_CHUNKS,
            shuffle_input_sentence=True, hard_vocab_limit=False,
            unk_id=0, bos_id=1, eos_id=2, pad_id=3, unk_piece=SPECIAL_PIECES["unk"], bos_piece=SPECIAL_PIECES["bos"],
            eos_piece=SPECIAL_PIECES["eos"], pad_piece=SPECIAL_PIECES["pad"],
            num_threads=threads or os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:
        raise DataError(f"tokenizer training failed: {e}")
    if seen == 0:
        raise DataError("tokenizer training: the corpus has no text")
    atomic_write_bytes(out_path, model.getvalue())
    return out_path


# ----------------------------------------------------------------------------- the Tokenizer
class SentencePieceBase:
    """A SentencePiece model under Tokenizer: plain-text encoding (literal '▁' characters byte-encoded,
    since SentencePiece would turn them into spaces), decoding, the piece table, and what start_id reuse
    needs (byte ids, reserved ids, piece bytes)."""
    FILE = "tokenizer.model"
    KIND = "sentencepiece"

    def __init__(self, path, specials=None):

        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise DataError(f"{path}: not a SentencePiece model ({e})")
        self.size = self.sp.get_piece_size()
        self.specials = {"eos": self._special("eos", 2), "pad": self._special("pad", None), "bos": self._special("bos", None)}
        self.unk_id = self.sp.unk_id()
        byte_ids = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in range(256)]
        self.byte_ids = byte_ids if all(self.sp.is_byte(i) for i in byte_ids) else None

    def _special(self, kind, default):
        i = self.sp.piece_to_id(SPECIAL_PIECES[kind])
        if i != self.sp.unk_id() or SPECIAL_PIECES[kind] == SPECIAL_PIECES["unk"]:
            return i
        sp_id = {"eos": self.sp.eos_id(), "pad": self.sp.pad_id(), "bos": self.sp.bos_id()}[kind]
        return sp_id if sp_id >= 0 else default

    def encode(self, text):
        if SP_SPACE not in text:
            return self.sp.encode(text)
        out = []
        parts = text.split(SP_SPACE)
        for j, part in enumerate(parts):
            if part:
                out += self.sp.encode(part)
            if j < len(parts) - 1:
                out += [self.byte_ids[b] for b in SP_SPACE.encode()]
        return out

    def encode_batch(self, texts):
        if not any(SP_SPACE in t for t in texts):
            return self.sp.encode(list(texts))  # fast path: one C++ call
        return [self.encode(t) for t in texts]

    def decode(self, ids):
        return self.sp.decode(ids)

    def id_to_piece(self, i):
        return self.sp.id_to_piece(i)

    def piece_to_id(self, piece):
        i = self.sp.piece_to_id(piece)
        return None if (i == self.unk_id and piece != self.sp.id_to_piece(self.unk_id)) else i

    def piece_bytes(self, i):
        return self.sp.id_to_piece(i).replace(SP_SPACE, " ").encode()

    def reserved(self, i):
        return self.sp.is_control(i) or self.sp.is_byte(i) or self.sp.is_unknown(i)


def tokenizer_base(path, specials=None):
    """The backend for a tokenizer file: SentencePiece for tokenizer.model, Hugging Face for a .json."""
    if str(path).endswith(".json"):
        from hf_tokenizer import HFTokenizerBase, TokenizerFileError  # only tokenizer.json models need it

        try:
            return HFTokenizerBase(path, specials)
        except TokenizerFileError as e:
            raise DataError(str(e))
    return SentencePieceBase(path)


class Tokenizer:
    """A base tokenizer (SentencePiece tokenizer.model, or a Hugging Face byte-level BPE tokenizer.json via
    hf_tokenizer.py) plus added tokens. Added strings (special tokens such as '<|diff|>', sugar tokens)
    are split out of the text before the base tokenizer sees it, so they are atomic (longest match first)
    and ordinary text never produces them. Lossless: decode(encode(s)) == s for any str (any NFC str
    for a tokenizer.json with an NFC normalizer)."""

    def __init__(self, model_path, added_tokens=None, specials=None):
        self.model_path = str(model_path)
        self.base = tokenizer_base(model_path, specials)
        self.sp = getattr(self.base, "sp", None)  # the SentencePieceProcessor, for SentencePiece models
        self.kind, self.file_name = self.base.KIND, self.base.FILE
        self.base_vocab_size = self.base.size
        self.eos_id, self.pad_id, self.bos_id = (self.base.specials[k] for k in ("eos", "pad", "bos"))
        self.unk_id = self.base.unk_id
        self.added_tokens = {}
        self._reused = {}  # base id taken over by an added token (start_id) -> that token
        self._pattern = self._by_id = None
        for tok, i in sorted((added_tokens or {}).items(), key=lambda kv: kv[1]):
            self._add(tok, int(i))

    # -- loading and saving
    @classmethod
    def load(cls, path):
        """path: a tokenizer.model / tokenizer.json file, a checkpoint folder (config.json; ours or Hugging
        Face) or a corpus folder (meta.json)."""
        path = Path(path)
        if path.is_file():
            return cls(path)
        if not path.is_dir():
            raise DataError(f"{path}: no tokenizer here (expected tokenizer.model, tokenizer.json or a folder holding one)")
        info = None
        for name in ("config.json", "meta.json"):
            if (path / name).is_file():
                try:
                    cfg = json.loads((path / name).read_text())
                except (OSError, json.JSONDecodeError) as e:
                    raise DataError(f"{path / name}: not readable JSON ({e})")
                if isinstance(cfg, dict) and isinstance(cfg.get("tokenizer"), dict):
                    info = cfg["tokenizer"]
                    break
        if info:
            model_file = path / info.get("file", "tokenizer.model")
        else:  # a Hugging Face folder: SentencePiece if it has one (Llama 2 folders carry both), else tokenizer.json
            model_file = next((path / n for n in ("tokenizer.model", "tokenizer.json") if (path / n).is_file()), path / "tokenizer.model")
        if not model_file.is_file():
            raise DataError(f"{path}: missing {model_file.name}" + ("" if info else " (or tokenizer.json)"))
        if info and info.get("sha256") and file_sha256(model_file) != info["sha256"]:
            raise DataError(f"{model_file}: sha256 differs from the one recorded in {path}'s config (tokenizer replaced?)")
        added = (info or {}).get("added_tokens") or {}
        specials = {k: info.get(f"{k}_id") for k in ("eos", "bos", "pad")} if info and "eos_id" in info else None
        if not info and model_file.suffix == ".model" and (path / "tokenizer_config.json").is_file():
            added = _hf_added_tokens(path / "tokenizer_config.json", model_file)
        return cls(model_file, added, specials if model_file.suffix == ".json" else None)

    def save(self, folder):
        """Copy the base tokenizer file into folder (added tokens go in the config)."""
        dst = Path(folder) / self.file_name
        if Path(self.model_path).resolve() != dst.resolve():
            atomic_write_bytes(dst, Path(self.model_path).read_bytes())
        return dst

    def specials(self):
        return {"eos": self.eos_id, "bos": self.bos_id, "pad": self.pad_id}

    def to_config(self):
        return {"file": self.file_name, "kind": self.kind, "sha256": file_sha256(self.model_path), "vocab_size": self.vocab_size,
                "base_vocab_size": self.base_vocab_size, "eos_id": self.eos_id, "pad_id": self.pad_id,
                "bos_id": self.bos_id, "added_tokens": dict(self.added_tokens)}

    # -- vocabulary
    @property
    def vocab_size(self):
        return max([self.base_vocab_size] + [i + 1 for i in self.added_tokens.values()])

    def id_to_piece(self, i):
        if i in self._added_by_id:
            return self._added_by_id[i]
        return self.base.id_to_piece(i) if 0 <= i < self.base_vocab_size else None

    def piece_to_id(self, piece):
        if piece in self.added_tokens:
            return self.added_tokens[piece]
        return self.base.piece_to_id(piece)

    def add_tokens(self, tokens, start_id=None):
        """Add atomic tokens. Ids follow the current vocabulary, or run from start_id on, taking over
        those base ids (the Token Sugar convention: it reuses embedding rows; ordinary text then
        byte-encodes the pieces it displaced). Returns the new ids."""
        tokens = list(tokens)
        if len(set(tokens)) != len(tokens):
            raise DataError("add_tokens: the list repeats a token")
        for tok in tokens:
            if not isinstance(tok, str) or not tok:
                raise DataError(f"add_tokens: {tok!r} is not a non-empty string")
            if tok in self.added_tokens:
                raise DataError(f"add_tokens: {tok!r} already exists (id {self.added_tokens[tok]})")
            base = self.base.piece_to_id(tok)
            if base is not None:
                raise DataError(f"add_tokens: {tok!r} already exists in the base vocabulary (id {base})")
        if start_id is None:
            first = self.vocab_size
            ids = list(range(first, first + len(tokens)))
        else:
            ids = list(range(int(start_id), int(start_id) + len(tokens)))
            taken = {i: t for t, i in self.added_tokens.items()}
            for i in ids:
                if i in taken:
                    raise DataError(f"add_tokens: start_id range {ids[0]}..{ids[-1]} overlaps id {i} of added token {taken[i]!r}")
                if i < self.base_vocab_size and self.base.reserved(i):
                    raise DataError(f"add_tokens: start_id range {ids[0]}..{ids[-1]} would take over special or byte piece {i} ({self.base.id_to_piece(i)!r})")
            if any(i < self.base_vocab_size for i in ids) and self.base.byte_ids is None:
                raise DataError("add_tokens: start_id reuse needs a byte-fallback tokenizer")
        for tok, i in zip(tokens, ids):
            self._add(tok, i)
        return ids

    def _add(self, tok, i):
        self.added_tokens[tok] = i
        if i < self.base_vocab_size:
            self._reused[i] = tok
        self._pattern = self._by_id = None  # rebuilt on first use: adding n tokens stays O(n)

    @property
    def _splitter(self):
        if self._pattern is None and self.added_tokens:
            self._pattern = re.compile("(" + _trie_regex(self.added_tokens) + ")")
        return self._pattern

    @property
    def _added_by_id(self):
        if self._by_id is None:
            self._by_id = {i: t for t, i in self.added_tokens.items()}
        return self._by_id

    # -- encoding
    def _respell(self, ids):
        """Pieces whose ids added tokens took over (start_id), spelled in byte pieces instead."""
        if not self._reused:
            return ids
        fixed = []
        for i in ids:
            if i in self._reused:
                fixed += [self.base.byte_ids[b] for b in self.base.piece_bytes(i)]
            else:
                fixed.append(i)
        return fixed

    def encode(self, text, bos=False, eos=False):
        if not isinstance(text, str):
            raise TypeError(f"Tokenizer.encode takes a str, not {type(text).__name__}")
        if not self.added_tokens:
            ids = self.base.encode(text) if text else []
        else:
            ids = []
            for j, part in enumerate(self._splitter.split(text)):
                if j % 2:
                    ids.append(self.added_tokens[part])
                elif part:
                    ids += self._respell(self.base.encode(part))
        if bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if eos:
            ids = ids + [self.eos_id]
        return ids

    def encode_batch(self, texts, eos=False):
        if not self.added_tokens:
            out = self.base.encode_batch(texts)
            return [ids + [self.eos_id] for ids in out] if eos else out
        return [self.encode(t, eos=eos) for t in texts]

    def decode(self, ids):
        ids = [int(i) for i in ids]
        if not self.added_tokens:
            return self.base.decode([i for i in ids if 0 <= i < self.base_vocab_size])
        by_id = self._added_by_id
        out, run = [], []
        for i in ids:
            if i in by_id:
                if run:
                    out.append(self.base.decode(run))
                    run = []
                out.append(by_id[i])
            elif 0 <= i < self.base_vocab_size:
                run.append(i)
        if run:
            out.append(self.base.decode(run))
        return "".join(out)


def _trie_regex(strings):
    """One regex alternation matching any of strings, longest first, factored as a prefix trie: the
    regex engine then walks one branch per character instead of trying every token in turn (tens of
    thousands of Token Sugar tokens)."""
    trie = {}
    for s in strings:
        node = trie
        for ch in s:
            node = node.setdefault(ch, {})
        node[""] = {}  # end of a token

    def emit(node):
        end = "" in node
        alts = []
        for ch in sorted(k for k in node if k):
            child, run = node[ch], ch
            while len(child) == 1 and "" not in child:  # a chain of single children: one literal
                (c, child), = child.items()
                run += c
            alts.append(re.escape(run) + emit(child))
        if not alts:
            return ""
        if len(alts) == 1 and not end:
            return alts[0]
        body = "(?:" + "|".join(alts) + ")"
        return body + "?" if end else body  # '?' is greedy: the longer token wins, the shorter is the fallback

    return emit(trie)


def _hf_added_tokens(path, model_file=None):
    """Added tokens of a Hugging Face tokenizer_config.json (added_tokens_decoder: {id: {content}}).
    Entries that merely restate a piece of the SentencePiece model at its own id ('<s>' at 1, as
    Llama folders list their special tokens) are not added tokens and are left out."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON ({e})")
    sp = None
    if model_file is not None:

        sp = spm.SentencePieceProcessor(model_file=str(model_file))
    added = {}
    for i, entry in (cfg.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, dict) and "content" in entry:
            if sp is not None and int(i) < sp.get_piece_size() and sp.id_to_piece(int(i)) == entry["content"]:
                continue
            added[entry["content"]] = int(i)
    return added


# ----------------------------------------------------------------------------- writing corpora
def _publish_folder(tmp, out_dir):
    """Put a completely written folder in place of out_dir (the old one, if any, goes only after)."""
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def token_dtype(vocab_size):
    return np.uint16 if vocab_size <= 65536 else np.uint32


_worker_tok = None


def _init_worker(model_path, added, specials=None):
    global _worker_tok
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to report, once
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # die quietly when ended
    _worker_tok = Tokenizer(model_path, added, specials)


def _encode_job(job):
    """In a worker: encode a list of (is_val, text); return per split the token array (eos after each
    document), document count and character count."""
    tok = _worker_tok
    dtype = token_dtype(tok.vocab_size)
    out = {}
    for split in ("train", "val"):
        texts = [t for v, t in job if v == (split == "val")]
        if not texts:
            continue
        ids = tok.encode_batch(texts, eos=True)
        arr = np.fromiter((i for seq in ids for i in seq), dtype=dtype, count=sum(len(s) for s in ids))
        out[split] = (arr, len(texts), sum(len(t) for t in texts))
    return out


class ShardWriter:
    """Appends token arrays to split_000000.bin, split_000001.bin, ... each at most shard_tokens long;
    a shard is written under a temporary name and renamed when full or at close."""

    def __init__(self, folder, split, dtype, shard_tokens=SHARD_TOKENS):
        self.folder, self.split, self.dtype, self.shard_tokens = Path(folder), split, dtype, shard_tokens
        self.shards, self.f, self.n, self.docs, self.chars = [], None, 0, 0, 0

    def write(self, arr, docs=0, chars=0):
        self.docs += docs
        self.chars += chars
        while len(arr):
            if self.f is None:
                name = f"{self.split}_{len(self.shards):06d}.bin"
                self.f = open(self.folder / f".{name}.tmp", "wb")
                self.shards.append({"file": name, "tokens": 0})
            room = self.shard_tokens - self.shards[-1]["tokens"]
            part, arr = arr[:room], arr[room:]
            self.f.write(part.tobytes())
            self.shards[-1]["tokens"] += len(part)
            self.n += len(part)
            if self.shards[-1]["tokens"] >= self.shard_tokens:
                self._finish()

    def _finish(self):
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        self.f = None
        name = self.shards[-1]["file"]
        os.replace(self.folder / f".{name}.tmp", self.folder / name)
        self.shards[-1]["head_sha256"] = _head_sha256(self.folder / name)

    def close(self):
        if self.f is not None:
            self._finish()
        return {"shards": self.shards, "tokens": self.n, "documents": self.docs, "characters": self.chars}


def _head_sha256(path, nbytes=1 << 20):
    """sha256 of a shard's first and last MiB and its size: a cheap check that catches a replaced or
    truncated shard without hashing gigabytes at every start."""
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(nbytes))
        if size > nbytes:
            f.seek(max(nbytes, size - nbytes))
            h.update(f.read(nbytes))
    return h.hexdigest()


def write_corpus(texts, tokenizer, out_dir, val_fraction=VAL_FRACTION, seed=0, meta_extra=None, workers=None,
                 total_chars=None, shard_tokens=SHARD_TOKENS):
    """Tokenize an iterable of documents (str) into out_dir: train/val shards, tokenizer.model and
    meta.json. Encoding runs in `workers` processes with a bounded number of jobs in flight, so memory
    stays flat for any corpus size. The folder is built under a temporary name and renamed at the end.
    meta_extra: a dict, or a function returning one after every document was read (counts)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out_dir.parent, os.W_OK):
        raise DataError(f"{out_dir.parent}: not writable")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tokenizer.save(tmp)
        dtype = token_dtype(tokenizer.vocab_size)
        writers = {s: ShardWriter(tmp, s, dtype, shard_tokens) for s in ("train", "val")}
        rng = random.Random(seed)
        workers = max(1, workers or os.cpu_count() or 1)

        def jobs():
            job, size = [], 0
            for i, text in enumerate(progress(texts, total=total_chars, label="encode", unit="chars", weight=len)):
                # the second document always goes to val, so a small corpus still has a held-out split
                is_val = i == 1 or (val_fraction > 0 and rng.random() < val_fraction)
                job.append((is_val, text))
                size += len(text)
                if size >= ENCODE_BATCH_CHARS:
                    yield job
                    job, size = [], 0
            if job:
                yield job

        init = (tokenizer.model_path, tokenizer.added_tokens, tokenizer.specials())
        for result in _encode_in_workers(jobs(), workers, init):
            _write_result(result, writers)
        splits = {s: w.close() for s, w in writers.items()}
        if splits["train"]["tokens"] == 0:
            raise DataError("the corpus has no documents left to train on")
        if splits["val"]["tokens"] == 0:  # a one-document corpus: validate on the training data
            shutil.copyfile(tmp / splits["train"]["shards"][0]["file"], tmp / "val_000000.bin")
            splits["val"] = dict(splits["train"], shards=[dict(splits["train"]["shards"][0], file="val_000000.bin")])
        val = splits["val"]
        meta = {"format": CORPUS_FORMAT, "dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id, "tokenizer": tokenizer.to_config(), "train": splits["train"],
                "val": val, "chars_per_token_val": round(val["characters"] / max(1, val["tokens"] - val["documents"]), 4),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        meta.update((meta_extra() if callable(meta_extra) else meta_extra) or {})
        write_json(tmp / "meta.json", meta)
        _publish_folder(tmp, out_dir)
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _encoding_worker(init, todo, done):
    """An encoding process: (index, job) from todo, (index, result or error text) to done, until None."""
    _init_worker(*init)
    for index, job in iter(todo.get, None):
        try:
            done.put((index, _encode_job(job), None))
        except Exception as e:  # noqa: BLE001 (reported to the parent, which stops with it)
            done.put((index, None, f"{type(e).__name__}: {e}"))


def _encode_in_workers(jobs, workers, init):
    """Encode jobs in `workers` processes; yield their results in job order, with at most 2 * workers jobs
    in flight (flat memory). Our own processes and queues rather than multiprocessing.Pool: on Ctrl-C or
    an error the workers are killed and the job queue abandoned (cancel_join_thread), where Pool.terminate
    can wait forever on its task thread, blocked sending a job to a worker it has just terminated."""
    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    todo, done = ctx.Queue(), ctx.Queue()
    procs = [ctx.Process(target=_encoding_worker, args=(init, todo, done), daemon=True) for _ in range(workers)]
    for p in procs:
        p.start()
    finished = False
    try:
        sent, results, next_index = 0, {}, 0
        for job in jobs:
            todo.put((sent, job))
            sent += 1
            while sent - next_index > 2 * workers:  # backpressure
                next_index = yield from _results_in_order(done, results, next_index, procs)
        while next_index < sent:
            next_index = yield from _results_in_order(done, results, next_index, procs)
        for _ in procs:
            todo.put(None)
        for p in procs:
            p.join()
        finished = True
    finally:
        if not finished:
            for p in procs:
                p.kill()
            todo.cancel_join_thread()  # its feeder may be blocked on a pipe no one reads any more


def _results_in_order(done, results, next_index, procs):
    """Wait for one more result; yield every result that is now next in order; return the next index."""
    while True:
        try:
            index, result, error = done.get(timeout=1.0)
            break
        except queue.Empty:
            if not all(p.is_alive() for p in procs):
                raise DataError("an encoding worker died (out of memory?); nothing was written")
    if error is not None:
        raise DataError(f"encoding failed in a worker: {error}")
    results[index] = result
    while next_index in results:
        yield results.pop(next_index)
        next_index += 1
    return next_index


def _write_result(result, writers):
    for split, (arr, docs, chars) in result.items():
        writers[split].write(arr, docs, chars)


# ----------------------------------------------------------------------------- reading corpora
def load_corpus_meta(data_dir):
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{data_dir}: no meta.json (prepare it with: python data.py corpus --src SRC --out {data_dir})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})")
    if not isinstance(meta, dict) or meta.get("format") != CORPUS_FORMAT:
        raise DataError(f"{path}: not a codelm corpus (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    return meta


def open_shards(data_dir, split, meta=None):
    """Memory-map a split's shards after checking each one's size and head/tail hash against meta.json:
    a truncated, missing or replaced shard is an error that names the file."""
    meta = meta or load_corpus_meta(data_dir)
    dtype = np.dtype(meta["dtype"])
    arrays = []
    for s in meta[split]["shards"]:
        path = Path(data_dir) / s["file"]
        if not path.is_file():
            raise DataError(f"{path}: shard missing")
        size = path.stat().st_size
        if size != s["tokens"] * dtype.itemsize:
            raise DataError(f"{path}: truncated or corrupt shard ({size} bytes, expected {s['tokens'] * dtype.itemsize})")
        if s.get("head_sha256") and _head_sha256(path) != s["head_sha256"]:
            raise DataError(f"{path}: corrupt shard (content hash differs from meta.json)")
        arrays.append(np.memmap(path, dtype=dtype, mode="r"))
    return arrays


def sample_windows(shards, batch_size, block_size, generator):
    """batch_size random windows of block_size+1 tokens from the shards (chosen in proportion to their
    length) as (x, y) int64 tensors. `generator` (a numpy Generator) makes it deterministic."""
    import torch  # only the training reader needs torch: data.py's own commands and workers never load it

    lengths = np.array([len(s) for s in shards], dtype=np.int64)
    usable = np.maximum(lengths - block_size - 1, 0)
    if usable.sum() <= 0:
        raise DataError(f"block_size {block_size} is larger than any shard of the data ({int(lengths.max())} tokens); lower block_size")
    which = generator.choice(len(shards), size=batch_size, p=usable / usable.sum())
    starts = [int(generator.integers(0, usable[w] + 1)) for w in which]
    buf = np.stack([np.asarray(shards[w][s:s + block_size + 1], dtype=np.int64) for w, s in zip(which, starts)])
    t = torch.from_numpy(buf)
    return t[:, :-1], t[:, 1:]


# ----------------------------------------------------------------------------- the corpus command
def prepare_corpus(src, out, vocab_size=VOCAB_SIZE, tokenizer=None, ext=(".py",), text_field="text",
                   val_fraction=VAL_FRACTION, seed=0, workers=None, force=False):
    """Everything `python data.py corpus` does; train.py calls it to prepare the quickstart data."""
    out = Path(out)
    check_corpus_options(out, vocab_size, val_fraction, workers)
    remove_stale_temps(out)
    source = describe_source(src, ext)
    options = {"vocab_size": vocab_size, "tokenizer": file_sha256(_tokenizer_file(tokenizer)) if tokenizer else None,
               "ext": list(ext), "text_field": text_field, "val_fraction": val_fraction, "seed": seed}
    request = {"source": source, "options": options}
    if not force and (out / "meta.json").is_file():
        try:
            old = load_corpus_meta(out)
            if old.get("request") == request:
                open_shards(out, "train", old)
                open_shards(out, "val", old)
                print(f"{out}: up to date with its inputs, reusing it ({old['train']['tokens']:,} train tokens)", file=sys.stderr)
                return old
        except DataError as e:
            print(f"{out}: rebuilding ({e})", file=sys.stderr)
    if out.exists() and not (out / "meta.json").is_file() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not a codelm corpus folder; refusing to overwrite it")

    stats = {}
    first = iter_source_texts(src, ext, text_field, stats)
    try:
        probe = next(first)
    except StopIteration:
        if not stats["skipped"] and source["files"] == 0 and (src == "stdlib" or os.path.isdir(src)):
            raise DataError(f"{src}: no files with suffix {', '.join(ext)} (choose others with --ext, e.g. --ext .py,.pyi or --ext all)")
        raise DataError(f"{src}: no usable documents ({_skip_summary(stats) or 'empty'})")

    def docs(it=first, head=probe):
        yield head[1]
        for _, t in it:
            yield t

    if tokenizer:
        tok = Tokenizer.load(tokenizer)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        model_path = out.with_name(f".{out.name}.tokenizer-{os.getpid()}.model")
        print(f"training a {vocab_size:,}-piece BPE tokenizer on {src} ...", file=sys.stderr)
        t0 = time.time()
        train_stats = {}
        train_tokenizer((t for _, t in iter_source_texts(src, ext, text_field, train_stats)), model_path, vocab_size)
        print(f"tokenizer trained in {time.time() - t0:.1f}s", file=sys.stderr)
        tok = Tokenizer(model_path)
    try:
        folder = src == "stdlib" or os.path.isdir(src)
        total = source["bytes"] if folder else None  # for ETA: bytes ~ characters of code
        meta = write_corpus(docs(), tok, out, val_fraction, seed, workers=workers, total_chars=total,
                            meta_extra=lambda: {"request": request, "sources": {"src": str(src), "documents": stats["documents"],
                                                                                "skipped": stats["skipped"]}})
    finally:
        if not tokenizer:
            Path(tok.model_path).unlink(missing_ok=True)
    if stats["skipped"]:
        print(f"skipped {_skip_summary(stats)}", file=sys.stderr)
    print(f"{out}: {meta['train']['tokens']:,} train tokens, {meta['val']['tokens']:,} val tokens, "
          f"{stats['documents']:,} documents, {meta['chars_per_token_val']:.3f} chars/token on val", file=sys.stderr)
    return meta


def check_corpus_options(out, vocab_size, val_fraction, workers):
    """Bad options end here, before any work, with the allowed range."""
    check_output_path(out, "--out")
    if not 0 <= val_fraction < 1:
        raise DataError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    if vocab_size < 256 + len(SPECIAL_PIECES):
        raise DataError(f"--vocab_size must be at least {256 + len(SPECIAL_PIECES)} (byte fallback needs 256 pieces), got {vocab_size}")
    if workers is not None and workers < 1:
        raise DataError(f"--workers must be >= 1, got {workers}")


def remove_stale_temps(out):
    """Delete the temporary folder and tokenizer file a killed run (its pid no longer alive) left
    beside `out`, saying so."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{out.name}.*"):
        m = re.fullmatch(rf"\.{re.escape(out.name)}\.(?:tmp|old|tokenizer)-(\d+)(?:\.model)?", p.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        print(f"removing {p} (left by a run that was killed)", file=sys.stderr)
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tokenizer_file(path):
    p = Path(path)
    if p.is_file():
        return p
    return next((p / n for n in ("tokenizer.model", "tokenizer.json") if (p / n).is_file()), p / "tokenizer.model")


def _skip_summary(stats):
    parts = []
    for reason, n in stats.get("skipped", {}).items():
        ex = stats.get("skipped_examples", {}).get(reason, [])
        parts.append(f"{n} {reason}" + (f" (e.g. {ex[0]})" if ex else ""))
    return ", ".join(parts)


# ---- SFT data ----
# Supervised fine-tuning examples: tokens = [bos] + prompt + completion + eos, loss on completion + eos
# only. A data folder holds, per split, {split}_tokens.bin (all examples back to back, uint16/uint32),
# {split}_mask.bin (uint8, 1 where the token is a loss target), {split}_offsets.npy (int64, n+1
# boundaries) + meta.json (tokenizer with its added tokens, counts, skipped lines) + tokenizer.model.
# Everything is memory-mapped by train.py; batches hold whole examples, right-padded, one per row, so
# no example attends to another.
SFT_FORMAT = "codelm-sft-v1"
SFT_VAL_FRACTION = 0.02
SKIP_LINES_KEPT = 20          # line numbers listed per skip reason (the count is always complete)
INTENT_TAGS = ("<reasoning>", "</reasoning>", "<intention>", "</intention>", "<code>", "</code>")
# record fields of `python data.py intent` (override with --fields left_context=ctx,code=body)
INTENT_FIELDS = {"left_context": "left_context", "signature": "signature", "reasoning": "reasoning",
                 "intention": "intention", "code": "code"}
# --reference: the reasoning-augmented recipe's own data files, text layout, cut and filter
REFERENCE_INTENT_FIELDS = dict(INTENT_FIELDS, signature="function_signature", code="solution")
INTENT_CUT_MARKER = "\n#...\n"   # stands where the left context was cut
INTENT_MAX_IMPORT_LINES = 50      # leading import/comment/blank lines kept when the context is cut
INTENT_MARGIN = 200               # --reference drops records whose signature + completion exceed max_len - this


class SkipLog:
    """Counts skipped records per reason and keeps the first line numbers of each, for the summary."""

    def __init__(self):
        self.counts, self.lines = {}, {}

    def __call__(self, reason, where):
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.lines.setdefault(reason, [])
        if len(kept) < SKIP_LINES_KEPT:
            kept.append(where)

    def summary(self, src):
        parts = []
        for reason, n in self.counts.items():
            lines = ", ".join(str(x) for x in self.lines[reason]) + (", ..." if n > len(self.lines[reason]) else "")
            parts.append(f"{n} {reason} ({'line' if n == 1 else 'lines'} {lines})")
        return f"{src}: skipped " + "; ".join(parts) if parts else ""


def iter_records(src, skips):
    """(line number, dict) for each JSON object of src: JSONL (.jsonl, .jsonl.gz: one per line; bad lines
    are counted in skips) or a .json file holding one array of objects (numbered from 1)."""
    src = str(src)
    if not os.path.isfile(src):
        raise DataError(f"{src}: no such file")
    if src.endswith(".json"):
        try:
            data = json.loads(Path(src).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"{src}: not a JSON file ({e}); give JSONL (one object per line) or one JSON array")
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise DataError(f"{src}: expected a JSON array of objects")
        for i, rec in enumerate(data, 1):
            if isinstance(rec, dict):
                yield i, rec
            else:
                skips("not an object", i)
        return
    opener = gzip.open if src.endswith(".gz") else open
    try:
        with opener(src, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    skips("not UTF-8", lineno)
                    continue
                except json.JSONDecodeError:
                    skips("not JSON", lineno)
                    continue
                if not isinstance(rec, dict):
                    skips("not an object", lineno)
                    continue
                yield lineno, rec
    except (OSError, EOFError) as e:
        raise DataError(f"{src}: cannot read ({e})")


TRUNCATE_MODES = ("drop", "left", "right")


def sft_example(prompt_ids, completion_ids, eos_id, max_len, truncate="drop"):
    """(ids, mask) of one example, or (None, reason). Over max_len: 'drop' it; 'left': cut the prompt
    from the left (dropped anyway when completion + eos alone do not fit); 'right': keep the first
    max_len tokens, cutting the completion's end and its eos (what Hugging Face truncation=True does,
    the LintSeq reference's behaviour; dropped when not one completion token fits). mask is 1 on
    completion + eos."""
    n = len(prompt_ids) + len(completion_ids) + 1
    truncated = False
    if n > max_len:
        room = max_len - len(completion_ids) - 1
        if truncate == "right" and len(prompt_ids) < max_len:
            ids = (list(prompt_ids) + list(completion_ids))[:max_len]
            return (ids, [0] * len(prompt_ids) + [1] * (max_len - len(prompt_ids))), "truncated"
        if truncate != "left" or room < 0:
            return None, "longer than max_len"
        prompt_ids = prompt_ids[len(prompt_ids) - room:] if room else []
        truncated = True
    ids = list(prompt_ids) + list(completion_ids) + [eos_id]
    mask = [0] * len(prompt_ids) + [1] * (len(completion_ids) + 1)
    return (ids, mask), ("truncated" if truncated else None)


def write_sft(examples, tokenizer, out_dir, val_fraction=SFT_VAL_FRACTION, seed=0, meta_extra=None):
    """Write (ids, mask) or (ids, mask, group) examples into an SFT data folder (see above), atomically:
    built under a temporary name and renamed when complete. Examples of one group (the same prompt:
    the several LintSeq edit sequences of one program) go to the same split, so val never holds a
    program train has seen. The second group always goes to val when val_fraction > 0; with no val
    example the val split is a copy of train (noted in meta.json)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tokenizer.save(tmp)
        dtype = token_dtype(tokenizer.vocab_size)
        files = {s: (open(tmp / f"{s}_tokens.bin", "wb"), open(tmp / f"{s}_mask.bin", "wb")) for s in ("train", "val")}
        offsets = {"train": [0], "val": [0]}
        stats = {s: {"examples": 0, "tokens": 0, "loss_tokens": 0, "longest": 0} for s in ("train", "val")}
        rng = random.Random(seed)
        group_split, n_groups = {}, 0
        for ex in examples:
            ids, mask = ex[0], ex[1]
            split = group_split.get(ex[2]) if len(ex) > 2 else None
            if split is None:
                split = "val" if val_fraction > 0 and (n_groups == 1 or rng.random() < val_fraction) else "train"
                n_groups += 1
                if len(ex) > 2:
                    group_split[ex[2]] = split
            tf, mf = files[split]
            tf.write(np.asarray(ids, dtype=dtype).tobytes())
            mf.write(np.asarray(mask, dtype=np.uint8).tobytes())
            offsets[split].append(offsets[split][-1] + len(ids))
            st = stats[split]
            st["examples"] += 1
            st["tokens"] += len(ids)
            st["loss_tokens"] += int(sum(mask))
            st["longest"] = max(st["longest"], len(ids))
        for tf, mf in files.values():
            for f in (tf, mf):
                f.flush()
                os.fsync(f.fileno())
                f.close()
        if stats["train"]["examples"] == 0 and stats["val"]["examples"] > 0:  # one example: it trains
            for kind in ("tokens", "mask"):
                os.replace(tmp / f"val_{kind}.bin", tmp / f"train_{kind}.bin")
            offsets["train"], stats["train"] = offsets["val"], stats["val"]
            stats["val"] = dict(stats["val"], examples=0)
        if stats["train"]["examples"] == 0:
            raise DataError("no usable examples")
        same = stats["val"]["examples"] == 0
        if same:  # validate on the training data rather than not at all
            for kind in ("tokens", "mask"):
                shutil.copyfile(tmp / f"train_{kind}.bin", tmp / f"val_{kind}.bin")
            offsets["val"], stats["val"] = offsets["train"], dict(stats["train"])
        for s in ("train", "val"):
            np.save(tmp / f"{s}_offsets.npy", np.asarray(offsets[s], dtype=np.int64))
            stats[s]["files"] = {k: f"{s}_{k}" + (".npy" if k == "offsets" else ".bin") for k in ("tokens", "mask", "offsets")}
        meta = {"format": SFT_FORMAT, "dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size,
                "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id, "tokenizer": tokenizer.to_config(),
                "train": stats["train"], "val": dict(stats["val"], same_as_train=same),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        meta.update(meta_extra or {})
        write_json(tmp / "meta.json", meta)
        _publish_folder(tmp, out_dir)
        return meta
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _group_key(prompt):
    """Examples with the same prompt share a split (8 bytes each to remember, not the prompt)."""
    return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _source_postprocess(tokenizer_path):
    """The postprocess flags of the checkpoint or data folder the tokenizer comes from (sugar table,
    edit format), so SFT data made with a sugarized tokenizer keeps saying so."""
    p = Path(tokenizer_path)
    for name in ("config.json", "meta.json"):
        if p.is_dir() and (p / name).is_file():
            try:
                pp = json.loads((p / name).read_text()).get("postprocess")
            except (OSError, json.JSONDecodeError, AttributeError):
                pp = None
            if isinstance(pp, dict):
                return dict(pp)
    return {"edit_format": None, "sugar": None}


def _check_out(out):
    out = Path(out)
    check_output_path(out, "--out")
    if out.exists() and not (out / "meta.json").is_file() and any(out.iterdir()):
        raise DataError(f"{out}: exists and is not a codelm data folder; refusing to overwrite it")


def _report(out, meta, skips, src):
    c = meta["counts"]
    print(f"{out}: kept {c['kept']:,} of {c['records']:,} records ({c['truncated']:,} truncated, "
          f"{c['dropped']:,} dropped as longer than max_len {meta['max_len']}); "
          f"{meta['train']['examples']:,} train / {meta['val']['examples']:,} val examples, "
          f"{meta['train']['tokens']:,} train tokens ({meta['train']['loss_tokens']:,} with loss)", file=sys.stderr)
    if skips.counts:
        print(skips.summary(src), file=sys.stderr)


def prepare_sft(src, tokenizer, out, max_len, truncate="drop", edit_format=None, prompt_field="prompt",
                completion_field="completion", val_fraction=SFT_VAL_FRACTION, seed=0, bos=False, prompt_format=None):
    """Everything `python data.py sft` does. Returns meta.json's dict. prompt_format: what the prompts
    are, recorded so eval.py prompts the model the same way: 'instruction' (a task in words, answered
    with a whole program: LintSeq data and its baseline) or 'completion' (code to continue); default
    'instruction' for LintSeq edit sequences, else 'completion'."""
    if max_len < 2:
        raise DataError(f"--max_len must be at least 2, got {max_len}")
    if truncate not in TRUNCATE_MODES:
        raise DataError(f"--truncate must be one of {', '.join(TRUNCATE_MODES)}, got {truncate!r}")
    if edit_format not in (None, "lintseq"):
        raise DataError(f"--edit_format must be 'lintseq', got {edit_format!r}")
    prompt_format = prompt_format or ("instruction" if edit_format == "lintseq" else "completion")
    if prompt_format not in PROMPT_FORMATS:
        raise DataError(f"--prompt_format must be one of {', '.join(f for f in PROMPT_FORMATS if f)}, got {prompt_format!r}")
    _check_out(out)
    tok = Tokenizer.load(tokenizer)
    postprocess = _source_postprocess(tokenizer)  # the sugar table stays (a tokenizer property); the
    postprocess["edit_format"] = edit_format       # completions' format is this data's
    postprocess.pop("completion_format", None)
    if edit_format == "lintseq" and LINTSEQ_DIFF_TOKEN not in tok.added_tokens:
        tok.add_tokens([LINTSEQ_DIFF_TOKEN])
    skips = SkipLog()
    counts = {"records": 0, "kept": 0, "dropped": 0, "truncated": 0}
    head = [tok.bos_id] if bos and tok.bos_id is not None else []
    postprocess.update(prompt_format=prompt_format, prompt_start="bos" if head else "none")

    def examples():
        for lineno, rec in progress(iter_records(src, skips), label="sft", unit="records"):
            prompt, completion = rec.get(prompt_field), rec.get(completion_field)
            if not isinstance(prompt, str):
                skips(f"no '{prompt_field}' string field", lineno)
                continue
            if not isinstance(completion, str):
                skips(f"no '{completion_field}' string field", lineno)
                continue
            if not completion.strip():
                skips("empty completion", lineno)
                continue
            ex, note = sft_example(head + tok.encode(prompt), tok.encode(completion), tok.eos_id, max_len, truncate)
            if ex is None:
                counts["dropped"] += 1
                continue
            counts["truncated"] += note == "truncated"
            counts["kept"] += 1
            yield ex + (_group_key(prompt),)
        counts["records"] = counts["kept"] + counts["dropped"] + sum(skips.counts.values())  # every non-blank line

    extra = {"recipe": "sft", "max_len": max_len, "truncate": truncate, "bos": bool(head),
             "fields": {"prompt": prompt_field, "completion": completion_field}, "counts": counts,
             "skipped": skips.counts, "skipped_lines": skips.lines, "postprocess": postprocess,
             "source": {"src": str(src), "sha256": file_sha256(src) if os.path.isfile(src) else None}}
    try:
        meta = write_sft(examples(), tok, out, val_fraction, seed, extra)
    except DataError as e:
        if counts["kept"] == 0 and str(e) == "no usable examples":
            why = skips.summary(src) or f"{src}: {counts['dropped']} of {counts['records']} records longer than --max_len {max_len}"
            raise DataError(f"{src}: no usable examples ({why})" if counts["records"] else f"{src}: no records") from e
        raise
    _report(out, meta, skips, src)
    return meta


# -- the reasoning-augmented completion recipe (Li et al. 2025)
_IMPORT_RE = re.compile(r"(import\s|from\s+\S+\s+import\s)")


def split_imports(context):
    """(import block, rest) of a left context: every top-level `import ...` / `from ... import ...`
    statement with its continuation lines (parentheses, backslashes), and the other lines in order."""
    imports, rest = [], []
    lines = context.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        line = lines[i]
        if _IMPORT_RE.match(line):
            stmt = [line]
            depth = line.count("(") - line.count(")")
            while (depth > 0 or stmt[-1].rstrip("\r\n").endswith("\\")) and i + 1 < len(lines):
                i += 1
                stmt.append(lines[i])
                depth += lines[i].count("(") - lines[i].count(")")
            imports += stmt
        else:
            rest.append(line)
        i += 1
    block = "".join(imports)
    if block and not block.endswith("\n"):
        block += "\n"
    return block, rest


def cut_context(tok, context, budget):
    """The longest left-cut of context whose tokens fit in budget, keeping its import block: whole lines
    are dropped from the start of the non-import part, up to the next top-level line when there is one
    (the kept code starts at a statement, not inside a function). Falls back to cutting imports too.
    Returns (token ids, cut?) or (None, True) when nothing fits (budget < 0)."""
    if budget < 0:
        return None, True
    ids = tok.encode(context)
    if len(ids) <= budget:
        return ids, False
    imports, rest = split_imports(context)
    imports += "\n" if imports else ""  # a blank line between the kept imports and the kept code
    for head, lines in ((imports, rest), ("", context.splitlines(keepends=True))):
        if len(tok.encode(head)) > budget:
            continue
        lo, hi = 0, len(lines)      # smallest k with encode(head + lines[k:]) <= budget; k = len fits
        while lo < hi:
            k = (lo + hi) // 2
            if len(tok.encode(head + "".join(lines[k:]))) <= budget:
                hi = k
            else:
                lo = k + 1
        top = [j for j in range(lo, len(lines)) if lines[j][:1] not in ("", " ", "\t", "\n", "\r", ")", "]", "}")]
        return tok.encode(head + "".join(lines[top[0] if top else lo:])), True
    return [], True


def reference_import_block(context):
    """(block, rest) as the reasoning-augmented recipe splits a left context: its leading lines, at most
    INTENT_MAX_IMPORT_LINES, that are blank or start (after indentation) with `import `, `from `, `#`,
    `/*` or a triple quote; the rest is everything after them."""
    lines = context.splitlines(keepends=True)
    i = 0
    while i < len(lines) and i < INTENT_MAX_IMPORT_LINES:
        s = lines[i].lstrip()
        if s.strip() and not s.startswith(("import ", "from ", "#", "/*", '"""', "'''")):
            break
        i += 1
    return "".join(lines[:i]), "".join(lines[i:])


def reference_intent_text(left_context, signature, reasoning, intention, code):
    """The recipe's training text; the loss starts at <reasoning>."""
    return (f"{left_context}\n{signature}\n<reasoning>\n{reasoning}\n</reasoning>\n<intention>\n{intention}\n"
            f"</intention>\n<code>\n{code}\n</code>")


def _intent_example_ours(tok, vals, head, max_len):
    """([bos] + left context + signature, <reasoning>R</reasoning><intention>I</intention><code>C</code>):
    the context cut from the left at line boundaries, keeping its import block (cut_context)."""
    completion = tok.encode(f"<reasoning>{vals['reasoning']}</reasoning><intention>{vals['intention']}"
                            f"</intention><code>{vals['code']}</code>")
    signature = tok.encode(vals["signature"])
    context, cut = cut_context(tok, vals["left_context"], max_len - len(head) - len(signature) - len(completion) - 1)
    if context is None:
        return None, "does not fit max_len"
    ex, _ = sft_example(head + context + signature, completion, tok.eos_id, max_len, "drop")
    return ex, cut


def _intent_example_reference(tok, vals, head, max_len, margin, marker):
    """The recipe's example: text reference_intent_text; dropped when [bos] + its tail (the text without
    the left context) exceeds max_len - margin; a context that does not fit keeps the token prefix of its
    import block and the token suffix of the rest, joined by the `#...` marker (token-level cuts)."""
    tail = reference_intent_text("", vals["signature"], vals["reasoning"], vals["intention"], vals["code"])
    cut_at = tail.index("<reasoning>")
    prompt_tail, completion = tok.encode(tail[:cut_at]), tok.encode(tail[cut_at:])
    n_tail = len(prompt_tail) + len(completion)
    if len(head) + n_tail > max_len - margin:
        return None, "longer than max_len - margin"
    remain = max_len - n_tail - len(head) - 1                  # bos and eos
    if remain < len(marker) + 20:                             # the recipe asserts this room
        return None, "longer than max_len - margin"
    block, rest = reference_import_block(vals["left_context"])
    imports = tok.encode(block)[:remain - len(marker) - 20]
    remain -= len(imports)
    rest_ids = tok.encode(rest)
    cut = len(rest_ids) > remain
    if cut and remain > len(marker):
        context = imports + marker + rest_ids[len(rest_ids) - (remain - len(marker)):]
    else:
        context = imports + (rest_ids[len(rest_ids) - remain:] if remain > 0 else [])
    ex, _ = sft_example(head + context + prompt_tail, completion, tok.eos_id, max_len, "drop")
    return ex, cut


def prepare_intent(src, tokenizer, out, max_len, fields=None, val_fraction=SFT_VAL_FRACTION, seed=0, bos=True,
                   reference=False, margin=None):
    """Everything `python data.py intent` does: records with left context, signature, reasoning,
    intention and code become prompt = [bos] + left_context + signature and completion =
    <reasoning>R</reasoning><intention>I</intention><code>C</code> (+ eos), the six tags added to the
    tokenizer; over-long contexts are cut from the left keeping their import block. reference=True: the
    recipe's own field names, text layout (newlines around the signature and every tag), `#...` cut
    marker, 50-line import block and max_len - margin filter (margin default INTENT_MARGIN)."""
    if max_len < 2:
        raise DataError(f"--max_len must be at least 2, got {max_len}")
    margin = (INTENT_MARGIN if reference else 0) if margin is None else margin
    if margin < 0 or margin >= max_len:
        raise DataError(f"--margin must be in [0, max_len), got {margin}")
    _check_out(out)
    known = REFERENCE_INTENT_FIELDS if reference else INTENT_FIELDS
    names = dict(known, **(fields or {}))
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise DataError(f"--fields: unknown field {unknown[0]!r} (known: {', '.join(known)})")
    tok = Tokenizer.load(tokenizer)
    missing = [t for t in INTENT_TAGS if t not in tok.added_tokens]
    if missing:
        tok.add_tokens(missing)
    skips = SkipLog()
    counts = {"records": 0, "kept": 0, "dropped": 0, "truncated": 0}
    head = [tok.bos_id] if bos and tok.bos_id is not None else []
    marker = tok.encode(INTENT_CUT_MARKER)

    def examples():
        for lineno, rec in progress(iter_records(src, skips), label="intent", unit="records"):
            vals = {}
            for key, field in names.items():
                v = rec.get(field, "" if key == "left_context" else None)
                if not isinstance(v, str):
                    skips(f"no '{field}' string field", lineno)
                    break
                vals[key] = v
            else:
                if not vals["code"].strip():
                    skips(f"empty '{names['code']}'", lineno)
                    continue
                if reference:
                    ex, cut = _intent_example_reference(tok, vals, head, max_len, margin, marker)
                else:
                    ex, cut = _intent_example_ours(tok, vals, head, max_len)
                if ex is None:
                    counts["dropped"] += 1
                    continue
                counts["truncated"] += cut
                counts["kept"] += 1
                yield ex + (_group_key(vals["left_context"] + vals["signature"]),)
        counts["records"] = counts["kept"] + counts["dropped"] + sum(skips.counts.values())

    extra = {"recipe": "intent", "layout": "reference" if reference else "ours", "max_len": max_len,
             "margin": margin, "truncate": ("left, token-level, #... marker" if reference else "left (keeping imports)"),
             "bos": bool(head), "fields": names, "tags": list(INTENT_TAGS), "counts": counts, "skipped": skips.counts,
             "skipped_lines": skips.lines,
             "postprocess": dict(_source_postprocess(tokenizer), edit_format=None, completion_format="intent",
                                 prompt_start="bos" if head else "none"),
             "source": {"src": str(src), "sha256": file_sha256(src) if os.path.isfile(src) else None}}
    try:
        meta = write_sft(examples(), tok, out, val_fraction, seed, extra)
    except DataError as e:
        if counts["kept"] == 0 and str(e) == "no usable examples":
            why = skips.summary(src) or f"{src}: {counts['dropped']} of {counts['records']} records do not fit --max_len {max_len}"
            raise DataError(f"{src}: no usable examples ({why})" if counts["records"] else f"{src}: no records") from e
        raise
    _report(out, meta, skips, src)
    return meta


# -- reading SFT data and batching it
def load_sft_meta(data_dir):
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise DataError(f"{data_dir}: no meta.json (prepare it with: python data.py sft --src FILE.jsonl --tokenizer CKPT --out {data_dir} --max_len N)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})")
    if not isinstance(meta, dict) or meta.get("format") != SFT_FORMAT:
        fmt = meta.get("format") if isinstance(meta, dict) else None
        hint = " (a pretraining corpus: use task='pretrain')" if fmt == CORPUS_FORMAT else ""
        raise DataError(f"{path}: not SFT data (format {fmt!r}){hint}")
    return meta


class SFTData:
    """One split of an SFT data folder, memory-mapped: tokens, loss mask and example boundaries."""

    def __init__(self, data_dir, split, meta=None):
        meta = meta or load_sft_meta(data_dir)
        folder, files = Path(data_dir), meta[split]["files"]
        dtype = np.dtype(meta["dtype"])
        for kind in ("tokens", "mask", "offsets"):
            if not (folder / files[kind]).is_file():
                raise DataError(f"{folder / files[kind]}: missing")
        self.offsets = np.load(folder / files["offsets"])
        n = int(self.offsets[-1])
        for kind, itemsize in (("tokens", dtype.itemsize), ("mask", 1)):
            size = (folder / files[kind]).stat().st_size
            if size != n * itemsize:
                raise DataError(f"{folder / files[kind]}: truncated or corrupt ({size} bytes, expected {n * itemsize})")
        if len(self.offsets) - 1 != meta[split]["examples"]:
            raise DataError(f"{folder / files['offsets']}: {len(self.offsets) - 1} examples, meta.json says {meta[split]['examples']}")
        self.tokens = np.memmap(folder / files["tokens"], dtype=dtype, mode="r") if n else np.zeros(0, dtype)
        self.mask = np.memmap(folder / files["mask"], dtype=np.uint8, mode="r") if n else np.zeros(0, np.uint8)
        self.lengths = np.diff(self.offsets)

    def __len__(self):
        return len(self.lengths)

    def example(self, i):
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b], self.mask[a:b]


BATCH_BUDGETS = ("padded", "unpadded")


def _fill_batches(order, cost, batch_tokens, unpadded):
    """Consecutive examples of `order` into batches while rows x longest cost (padded) or the sum of the
    costs (unpadded) stays within batch_tokens; an example over the budget goes alone."""
    batches, cur, longest, total = [], [], 0, 0
    for i in order:
        c = int(cost[i])
        size = total + c if unpadded else max(longest, c) * (len(cur) + 1)
        if cur and size > batch_tokens:
            batches.append(np.asarray(cur))
            cur, longest, total = [], 0, 0
        cur.append(i)
        longest, total = max(longest, c), total + c
    if cur:
        batches.append(np.asarray(cur))
    return batches


def sft_batches(lengths, seed, epoch, batch_size=0, batch_tokens=0, pool_batches=64, budget="padded",
                longest_first=False):
    """One epoch of micro-batches (arrays of example indices), a pure function of (seed, epoch).
    batch_tokens > 0: shuffle, cut into pools of about pool_batches budgets, sort each pool by length
    and fill a batch while its size stays within batch_tokens; an example longer than the budget goes
    alone; the batches are shuffled. budget 'padded': rows x longest, counted in training positions
    (length - 1); 'unpadded': the sum of the examples' token counts (the reasoning-augmented recipe's
    budget). longest_first: one pool, longest examples first, batches in that order (the recipe's;
    ties in a seeded order). Else shuffled batches of batch_size examples (the last one may be smaller)."""
    if budget not in BATCH_BUDGETS:
        raise DataError(f"batch budget must be one of {', '.join(BATCH_BUDGETS)}, got {budget!r}")
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if batch_tokens <= 0:
        if batch_size <= 0:
            raise DataError("SFT batching needs batch_size > 0 or batch_tokens > 0")
        if longest_first:
            order = order[np.argsort(-np.asarray(lengths)[order], kind="stable")]
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    unpadded = budget == "unpadded"
    lengths = np.asarray(lengths, dtype=np.int64)
    cost = lengths if unpadded else np.maximum(lengths - 1, 1)
    if longest_first:
        return _fill_batches(order[np.argsort(-cost[order], kind="stable")], cost, batch_tokens, unpadded)
    cum = np.cumsum(cost[order])
    batches, start = [], 0
    while start < len(order):
        before = int(cum[start - 1]) if start else 0
        end = max(start + 1, int(np.searchsorted(cum, before + pool_batches * batch_tokens, side="right")))
        pool = order[start:end]
        batches += _fill_batches(pool[np.argsort(cost[pool], kind="stable")], cost, batch_tokens, unpadded)
        start = end
    return [batches[j] for j in rng.permutation(len(batches))]


def _add_sft_commands(sub):
    p = sub.add_parser("sft", help="tokenize prompt/completion JSONL into SFT examples with loss masks")
    p.add_argument("--src", required=True, help="JSONL (.jsonl, .jsonl.gz) with one object per line, or a .json array")
    p.add_argument("--tokenizer", required=True, help="checkpoint folder (ours or Hugging Face), data folder or tokenizer.model")
    p.add_argument("--out", required=True, help="output folder, e.g. data/NAME")
    p.add_argument("--max_len", type=int, required=True, help="longest example in tokens (prompt + completion + eos)")
    p.add_argument("--truncate", choices=TRUNCATE_MODES, default="drop",
                   help="over-long examples: drop them (default), cut the prompt from the left, or keep the first "
                   "max_len tokens (right: the LintSeq reference's behaviour, the completion's end and eos are lost)")
    p.add_argument("--edit_format", choices=("lintseq",), help="LintSeq edit sequences: adds <|diff|>, marks the checkpoint")
    p.add_argument("--prompt_field", default="prompt")
    p.add_argument("--completion_field", default="completion")
    p.add_argument("--bos", action="store_true", help="start every example with the bos token (Llama-family models expect it)")
    p.add_argument("--prompt_format", choices=("completion", "instruction"),
                   help="what the prompts are, recorded for eval.py: 'instruction' (a task in words, answered with a "
                   "whole program; the default with --edit_format lintseq, and what lintseq.py --baseline data is) or "
                   "'completion' (code to continue; the default otherwise)")
    p.add_argument("--val_fraction", type=float, default=SFT_VAL_FRACTION)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("intent", help="reasoning-augmented completion data (left context, signature, reasoning, intention, code)")
    p.add_argument("--src", required=True, help="JSONL or .json array of records with fields " + ", ".join(INTENT_FIELDS))
    p.add_argument("--tokenizer", required=True, help="checkpoint folder (ours or Hugging Face), data folder or tokenizer.model")
    p.add_argument("--out", required=True, help="output folder, e.g. data/intent")
    p.add_argument("--max_len", type=int, required=True, help="longest example in tokens; longer left contexts are cut")
    p.add_argument("--fields", default="", help="field names if yours differ: left_context=ctx,code=body,...")
    p.add_argument("--reference", action="store_true", help="the recipe's own layout: fields function_signature and "
                   "solution, newlines around the signature and tags, `#...` where the context is cut, an import "
                   "block of at most 50 lines, records over max_len - margin dropped")
    p.add_argument("--margin", type=int, default=None,
                   help=f"drop records whose signature + completion exceed max_len - margin (default {INTENT_MARGIN} "
                   "with --reference, else 0)")
    p.add_argument("--no_bos", action="store_true", help="do not start examples with the bos token")
    p.add_argument("--val_fraction", type=float, default=SFT_VAL_FRACTION)
    p.add_argument("--seed", type=int, default=0)


def _run_sft_command(args):
    if args.cmd == "sft":
        prepare_sft(args.src, args.tokenizer, args.out, args.max_len, args.truncate, args.edit_format, args.prompt_field,
                    args.completion_field, args.val_fraction, args.seed, args.bos, args.prompt_format)
        return
    fields = {}
    for item in filter(None, args.fields.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not value:
            raise DataError(f"--fields: expected key=value, got {item!r}")
        fields[key.strip()] = value.strip()
    prepare_intent(args.src, args.tokenizer, args.out, args.max_len, fields, args.val_fraction, args.seed, not args.no_bos,
                   args.reference, args.margin)


class SFTSchedule:
    """Which examples each micro-batch of each optimizer step trains on. A step takes `group` (=
    gradient_accumulation_steps, counted over all processes) consecutive micro-batches of its epoch's
    plan; the remainder of an epoch that does not fill a step is skipped. Deterministic in (seed, step),
    so a resumed run replays the same batches and any world size sees the same global batch: rank r of
    W takes micro-batches r*group/W ... (r+1)*group/W - 1 of the step (the same count on every rank)."""

    def __init__(self, lengths, group, seed, batch_size=0, batch_tokens=0, budget="padded", longest_first=False):
        self.lengths, self.group, self.seed = lengths, group, seed
        self.batch_size, self.batch_tokens = batch_size, batch_tokens
        self.budget, self.longest_first = budget, longest_first
        self.cum = [0]          # cum[e] = steps before epoch e
        self._plan = (None, None)

    def plan(self, epoch):
        if self._plan[0] != epoch:
            self._plan = (epoch, sft_batches(self.lengths, self.seed, epoch, self.batch_size, self.batch_tokens,
                                             budget=self.budget, longest_first=self.longest_first))
        return self._plan[1]

    def steps_in_epoch(self, epoch):
        n = len(self.plan(epoch)) // self.group
        if n == 0:
            raise DataError(f"an epoch has {len(self.plan(epoch))} micro-batches, fewer than gradient_accumulation_steps="
                            f"{self.group}: lower it, or batch_size / batch_tokens")
        return n

    def steps(self, epochs):
        while len(self.cum) <= epochs:
            self.cum.append(self.cum[-1] + self.steps_in_epoch(len(self.cum) - 1))
        return self.cum[epochs]

    def locate(self, step):
        """(epoch, step within the epoch) of a global step."""
        e = 0
        while self.steps(e + 1) <= step:
            e += 1
        return e, step - self.cum[e]

    def micro_batch(self, step, j):
        """Example indices of micro-batch j (0 <= j < group) of optimizer step `step`."""
        e, s = self.locate(step)
        return self.plan(e)[s * self.group + j]


def collate_sft(data, indices, pad_id=0):
    """(x, y) int64 arrays of shape (B, T), T = longest example - 1: x the inputs, right-padded with
    pad_id; y the next tokens where the loss mask is 1, else -1 (padding too)."""
    seqs = [data.example(int(i)) for i in indices]
    T = max(len(t) for t, _ in seqs) - 1
    x = np.full((len(seqs), max(T, 1)), pad_id, dtype=np.int64)
    y = np.full((len(seqs), max(T, 1)), -1, dtype=np.int64)
    for r, (t, m) in enumerate(seqs):
        n = len(t) - 1
        t = np.asarray(t, dtype=np.int64)
        x[r, :n] = t[:-1]
        y[r, :n] = np.where(m[1:] > 0, t[1:], -1)
    return x, y
# ---- end SFT data ----


# ----------------------------------------------------------------------------- CLI
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("corpus", help="tokenize a corpus into train/val token shards (+ train a tokenizer)")
    p.add_argument("--src", required=True, help="folder of source files | .jsonl / .jsonl.gz | .parquet | stdlib")
    p.add_argument("--out", required=True, help="output folder, e.g. data/NAME")
    p.add_argument("--vocab_size", type=int, default=VOCAB_SIZE, help="pieces of the BPE tokenizer to train")
    p.add_argument("--tokenizer", help="use this tokenizer (a .model file, checkpoint or corpus folder) instead of training one")
    p.add_argument("--ext", default=".py", help="comma-separated file suffixes to take from a folder, or 'all'")
    p.add_argument("--text_field", default="text", help="field (JSONL) or column (parquet) holding the text")
    p.add_argument("--val_fraction", type=float, default=VAL_FRACTION)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    p.add_argument("--force", action="store_true", help="rebuild even if the output matches its inputs")
    _add_sft_commands(sub)
    args = parser.parse_args(argv)
    if args.cmd == "corpus":
        ext = tuple(e if e.startswith(".") or e == "all" else "." + e for e in args.ext.split(","))
        prepare_corpus(args.src, args.out, args.vocab_size, args.tokenizer, ext, args.text_field,
                       args.val_fraction, args.seed, args.workers, args.force)
    elif args.cmd in ("sft", "intent"):
        _run_sft_command(args)


if __name__ == "__main__":
    run_command("data.py", main, kept="the output folder was not touched (work is built under a temporary name)")
