"""sample_tok.py: ZeTT Algorithm 1 (against slow, obviously correct references written here), the
UnigramLM over sampled pieces, and the statistics tool (output formats, reproducibility, bad input)."""
import collections
import functools
import importlib.util
import json
import math
import random
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import sample_tok as st
from conftest import UNWRITABLE, unwritable_output

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- slow references
# Unicode's White_Space property
WHITE_SPACE = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000")
WHITE_SPACE |= {chr(c) for c in range(0x2000, 0x200B)}


def ref_pretokenize(text):
    """GPT-2's 's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+, scanned by
    hand with unicodedata categories (no regex)."""
    def kind(c):
        if c in WHITE_SPACE:
            return "s"
        cat = unicodedata.category(c)
        return "L" if cat[0] == "L" else "N" if cat[0] == "N" else "O"

    out, i, n = [], 0, len(text)
    while i < n:
        for c in ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d"):
            if text.startswith(c, i):
                out.append(c)
                i += len(c)
                break
        else:
            j = i + (text[i] == " " and i + 1 < n and kind(text[i + 1]) != "s")
            if kind(text[j]) != "s":  # ' ?L+', ' ?N+', ' ?O+'
                k = kind(text[j])
                e = j
                while e < n and kind(text[e]) == k:
                    e += 1
                out.append(text[i:e])
                i = e
                continue
            e = i
            while e < n and kind(text[e]) == "s":
                e += 1
            end = e if e == n or e - i == 1 else e - 1  # \s+(?!\S), else \s+ (one char before non-space)
            out.append(text[i:end])
            i = end
    return out


_PRINTABLE = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
_OTHERS = sorted(set(range(256)) - set(_PRINTABLE))
_TABLE = {b: chr(b) for b in _PRINTABLE} | {b: chr(256 + k) for k, b in enumerate(_OTHERS)}


def ref_byte_level(s):
    """GPT-2's bytes_to_unicode: printable bytes as themselves, the other 68 as U+0100.. in byte order."""
    return "".join(_TABLE[b] for b in s.encode("utf-8"))


def ref_counts(texts, max_len=15, stride=4, by="bytes"):
    """Algorithm 1's substring scores, literally: every substring of 1..15 byte-level characters starting
    at offsets 0, 4, 8, ... of every pre-token of ' ' + text scores its length: as ZeTT's Rust code
    measures it (str::len(), UTF-8 bytes of the byte-level string), or in characters (by="chars")."""
    c = collections.Counter()
    for t in texts:
        for pt in ref_pretokenize(" " + t):
            b = ref_byte_level(pt)
            for s in range(0, len(b), stride):
                for length in range(1, max_len + 1):
                    if s + length <= len(b):
                        piece = b[s:s + length]
                        c[piece] += len(piece.encode("utf-8")) if by == "bytes" else length
    return c


def as_dict(ids_scores, sampler):
    out = collections.Counter()
    for i, s in zip(*ids_scores):
        out[sampler._str[i]] += int(s)
    return out


def rankable(piece, special=()):
    return len(piece) > 1 and sum(piece.count(c) for c in "ĠĊĉ") < 2 and piece not in special


# ----------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=1)
def _stdlib_files():
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    folders = ("json", "email", "logging", "unittest", "asyncio", "importlib")
    return sorted(p for d in folders for p in (root / d).glob("*.py"))


def stdlib_texts(n=60, size=700, seed=0):
    """n random size-character pieces of standard-library sources (real code, no download)."""
    files = _stdlib_files()
    rnd = random.Random(seed)
    out = []
    for p in rnd.sample(files, min(n, len(files))):
        t = p.read_text(encoding="utf-8")
        s = rnd.randrange(max(1, len(t) - size))
        out.append(t[s:s + size])
    return out


ODD = ["x²", "Ⅻ", "½", "é", "ß", "日本", "١٢", "\u0301", "_", "'s", "'ll", "'", "  ", "\t", "\n", "\r\n",
       "\u3000", "\xa0", "\x1c", "🙂", " ", "a", "Z9", "==", "->", "0", "\x00", "\u2028"]


def random_text(rnd, n=40):
    return "".join(rnd.choice(ODD) for _ in range(n))


# ----------------------------------------------------------------------------- byte level and pre-tokens
def test_byte_level_map():
    assert len(set(st.BYTE_CHARS)) == 256 and all(c.isprintable() and not c.isspace() for c in st.BYTE_CHARS)
    assert st.to_byte_level(" \n\t") == "ĠĊĉ"
    rnd = random.Random(1)
    for _ in range(200):
        s = random_text(rnd, 20)
        assert st.to_byte_level(s) == ref_byte_level(s)
        assert st.from_byte_level(st.to_byte_level(s)) == s


def test_pretokenize_matches_gpt2_split():
    rnd = random.Random(0)
    cases = [random_text(rnd) for _ in range(300)] + stdlib_texts(20)
    cases += ["don't  stop 's x", "a  \n\n  b", "end   ", "  \n", "x² ½ 3x", "foo_bar(1)", "é́", "'ll've"]
    for text in cases:
        assert st.pretokenize(text) == ref_pretokenize(text), repr(text)
        assert "".join(st.pretokenize(text)) == text


def test_ascii_fast_path_matches_reference():
    rnd = random.Random(3)
    parts = ["'", "s", "t", "re", "ve", "ll", "d", "m", " ", "  ", "\n", "\t", "\r\n", "\x0b", "\x1c", "\x00", "x",
             "9", "_", "(", "'s", " 's", "A", "abcdefghij", "12345678901", "\x7f", "==", "\n    "]
    for _ in range(300):
        texts = ["".join(rnd.choice(parts) for _ in range(rnd.randint(0, 25))) for _ in range(rnd.randint(1, 6))]
        want = collections.Counter(pt for t in texts for pt in ref_pretokenize(" " + t))
        assert st.pretoken_counts(texts) == want, texts


# ----------------------------------------------------------------------------- Algorithm 1
def test_counts_match_reference():
    rnd = random.Random(2)
    texts = stdlib_texts(30) + [random_text(rnd, 60) for _ in range(20)]
    texts += ["x" * 40 + " " + "=" * 33, "\n" * 20 + "    " * 5 + "y", ""]  # long pre-tokens, runs, empty
    sampler = st.TokenizerSampler()
    assert as_dict(sampler.count(texts), sampler) == ref_counts(texts)
    # per-pre-token rows are reused: a second count of the same batch gives the same answer
    assert as_dict(sampler.count(texts[::-1]), sampler) == ref_counts(texts)
    chars = st.TokenizerSampler(score="chars")      # the older scoring, kept behind --score chars
    assert as_dict(chars.count(texts), chars) == ref_counts(texts, by="chars") != ref_counts(texts)


def test_byte_length_scoring_of_non_ascii_pieces():
    """ZeTT scores an occurrence by the UTF-8 byte length of the byte-level piece: 'é' is the two bytes
    C3 A9, byte-level 'Ã©' (U+00C3 U+00A9), 4 UTF-8 bytes; the space before it is Ġ (U+0120), 2 bytes."""
    sampler = st.TokenizerSampler()
    counts = as_dict(sampler.count(["café"]), sampler)
    assert st.to_byte_level(" café") == "ĠcafÃ©"
    assert counts["ĠcafÃ©"] == 2 + 3 + 4 and counts["Ã©"] == 4 and counts["Ġ"] == 2 and counts["Ġc"] == 3
    chars = st.TokenizerSampler(score="chars")
    assert as_dict(chars.count(["café"]), chars)["ĠcafÃ©"] == 6
    # the ranking moves: 5 x 'ĠÃ©' (3 characters, 5 bytes) against 4 x 'Ġqqq' (4 characters, 5 bytes)
    texts = ["é"] * 5 + ["qqq"] * 4
    top = lambda score: st.sample_tokenizer(texts, vocab_size=st.N_FIXED + 1, score=score)[0][-1]  # noqa: E731
    assert (top("bytes"), top("chars")) == ("ĠÃ©", "Ġqqq")


def test_queue_running_total_equals_resummed_queue():
    texts = stdlib_texts(60, size=400, seed=3)
    batches = [texts[i:i + 4] for i in range(0, 60, 4)]
    refs = [ref_counts(b) for b in batches]
    # tiny limits so that compaction and pre-token table restarts happen along the way
    sampler = st.TokenizerSampler(queue_batches=3, max_ids=3000, cache_size=400, count_selected=True)
    for i, b in enumerate(batches):
        sampler.push(b, "py")
        sampler.push(batches[-1 - i], "other")  # a second language shares the intern table
        want = sum(refs[max(0, i - 2):i + 1], collections.Counter())
        assert sampler.totals("py") == dict(want)
        assert sampler.queue_length("py") == min(i + 1, 3)
        sampler.sample_ids("py", 600)
    assert sampler.compactions > 0
    # selection counts survive compaction: every sample() chose 600 - 391 pieces
    assert sum(sampler.selection_counts().values()) == len(batches) * (600 - st.N_FIXED)


def test_vocabulary_size_and_composition():
    special = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|endoftext|>": 700}
    sampler = st.TokenizerSampler(special_tokens=special)
    sampler.push(stdlib_texts(40))
    for size, noise in ((391 + len(special), 0.0), (600, 1e-4), (1000, 0.0), (2000, 1e-4)):
        pieces, scores = sampler.sample("default", size, noise, np.random.default_rng(size))
        assert len(pieces) == len(scores) == size and len(set(pieces)) == size
        for piece, i in special.items():
            assert pieces[min(i, size - 1)] == piece and scores[min(i, size - 1)] == 0.0
        rest = [(p, s) for p, s in zip(pieces, scores) if p not in special]
        assert [p for p, _ in rest[:256]] == st.BYTE_CHARS
        assert len({s for _, s in rest[:256]}) == 1
        ws = [p for p, _ in rest[256:391]]
        assert len(set(ws)) == 135 and all(set(p) <= set("ĠĊĉ") and 2 <= len(p) <= 16 for p in ws)
        assert all(s == 0.0 for _, s in rest[256:391])
        subs = rest[391:]
        assert all(rankable(p) for p, _ in subs)
        assert [s for _, s in subs] == sorted((s for _, s in subs), reverse=True)
        if noise == 0:
            assert all(s >= rest[0][1] for _, s in subs)  # byte characters score lowest


def test_noise_zero_is_the_deterministic_top_k():
    texts = stdlib_texts(40, seed=5)
    ref = ref_counts(texts)
    total = sum(ref.values())
    sampler = st.TokenizerSampler()
    sampler.push(texts)
    k = 700 - st.N_FIXED
    pieces, scores = sampler.sample("default", 700)
    chosen = pieces[st.N_FIXED:]
    eligible = sorted((v for p, v in ref.items() if rankable(p)), reverse=True)
    assert sorted((ref[p] for p in chosen), reverse=True) == eligible[:k]  # the k best scores (ties aside)
    assert all(math.isclose(s, math.log(ref[p] / total)) for p, s in zip(chosen, scores[st.N_FIXED:]))
    assert math.isclose(scores[0], math.log(min(ref.values()) / total))
    assert sampler.sample("default", 700) == (pieces, scores)


def test_seed_reproducibility_and_noise():
    texts = stdlib_texts(40, seed=6)

    def run(seed, sigma):
        sampler = st.TokenizerSampler()
        sampler.push(texts)
        return sampler.sample("default", 1500, sigma, np.random.default_rng(seed))

    a = run(0, 1e-4)
    assert run(0, 1e-4) == a
    assert run(1, 1e-4)[0] != a[0]
    assert set(run(0, 1e-4)[0][st.N_FIXED:]) != set(run(0, 0.0)[0][st.N_FIXED:])
    ns = [st.draw_noise_std(np.random.default_rng(i), 1e-5, 4) for i in range(2000)]
    assert abs(np.log(np.median(ns)) - np.log(1e-5)) < 0.5 and abs(np.std(np.log(ns)) - 4) < 0.3
    sizes = [st.draw_vocab_size(np.random.default_rng(i), 1000, 500, 800, 1200) for i in range(500)]
    assert min(sizes) == 800 and max(sizes) == 1200 and 800 < np.median(sizes) < 1200


def test_sample_tokenizer_function_and_special_token_pieces():
    texts = stdlib_texts(20) + ["x\ntag\ntag"] * 50  # 'tag' is a frequent substring and a special token
    pieces, scores = st.sample_tokenizer(texts, vocab_size=900)
    assert "tag" in pieces[st.N_FIXED:]
    pieces, scores = st.sample_tokenizer(texts, vocab_size=900, special_tokens={"tag": 1})
    assert len(pieces) == 900 and pieces[1] == "tag" and pieces.count("tag") == 1


# ----------------------------------------------------------------------------- UnigramLM
@pytest.fixture(scope="module")
def sampled():
    sampler = st.TokenizerSampler(special_tokens={"<|endoftext|>": 3})
    sampler.push(stdlib_texts(60, seed=7))
    pieces, scores = sampler.sample("default", 3000, 1e-5, np.random.default_rng(0))
    return pieces, scores


def test_unigram_round_trip(sampled):
    tok = st.UnigramTokenizer(*sampled, special_tokens=["<|endoftext|>"])
    rnd = random.Random(4)
    texts = stdlib_texts(15, seed=8) + [random_text(rnd, 50) for _ in range(50)]
    texts += ["", " ", "a<|endoftext|>b", "<|endoftext|>", "x\r\n\ty  ", "\U0010ffff", "\u3000 x²"]
    for t in texts:
        ids = tok.encode(t)
        assert tok.decode(ids) == t
    code = stdlib_texts(5, seed=9)
    assert sum(len(tok.encode(t)) for t in code) < 0.5 * sum(len(t.encode()) for t in code)  # pieces get used
    assert tok.encode("<|endoftext|>") == [3] and tok.encode("<|endoftext|>x")[0] == 3
    assert 3 not in tok.encode("<|endoftext" + "|>"[:1])


def test_unigram_viterbi_is_optimal():
    pieces = st.BYTE_CHARS + ["ab", "abc", "bc", "cd", "Ġab"]
    scores = [-5.0] * 256 + [-2.0, -4.5, -1.0, -1.5, -3.0]
    tok = st.UnigramTokenizer(pieces, scores, add_prefix_space=False)
    score = dict(zip(pieces, scores))

    def best(s):  # brute force over all segmentations
        if not s:
            return 0.0
        return max(score[s[:i]] + best(s[i:]) for i in range(1, len(s) + 1) if s[:i] in score)

    for word in ["abcd", "abc", "bcd", "ab", "abcdab", "dabc"]:
        got = sum(score[tok.pieces[i]] for i in tok.encode(word))
        assert math.isclose(got, best(word)), word


# ----------------------------------------------------------------------------- the statistics tool
def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


@pytest.fixture()
def small_config(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    py = [p.read_text(encoding="utf-8") for p in _stdlib_files() if p.parent.name == "json"]
    write_jsonl(train / "python.jsonl", py * 3 + ["short"])
    mbpp = REPO / "benchmarks" / "mbpp.jsonl"
    other = [json.loads(x)["code"] for x in mbpp.read_text().splitlines()[:300]]
    write_jsonl(train / "mbpp.jsonl", other)
    (tmp_path / "langs.txt").write_text("python,2\n# comment\nmbpp,1\n")
    cfg = {"train_directory": str(train), "langs": str(tmp_path / "langs.txt"), "valid_directory": "/nowhere",
           "tokenizer_sample_mean": 800, "tokenizer_sample_std": 100, "tokenizer_sample_min": 600,
           "tokenizer_sample_max": 1000, "tokenizer_batch_size": 16, "train_batch_size": 8,
           "tokenizer_noise_mean": 1e-5, "tokenizer_noise_std": 4, "block_size": 16,
           "hn_model_name_or_path": "roberta-base", "model_name_or_path": None}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path, cfg


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "sample_tok.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_stats_tool_output_and_summary(small_config, tmp_path, capsys):
    path, cfg = small_config
    out = tmp_path / "freq.json"
    assert st.main([str(path), "--num_batches", "12", "--output_file", str(out), "--workers", "0"]) == 0
    console = capsys.readouterr().out
    freq = json.loads(out.read_text())
    counts = list(freq.values())
    assert counts == sorted(counts, reverse=True) and max(counts) == 12 and min(counts) >= 1
    for piece in st.BYTE_CHARS + st.WS_RUNS:
        assert freq[piece] == 12
    total = sum(counts)
    assert 12 * 600 <= total <= 12 * 1000
    assert "Total batches processed: 12\n" in console
    assert f"Total token occurrences: {total}\n" in console
    assert f"Unique tokens sampled: {len(freq)}\n" in console
    assert f"Average tokens per batch: {total / 12:.2f}\n" in console
    assert "Languages: python, mbpp\n" in console
    m = re.search(r"Texts: (\d+) in (\d+) batches \((\d+) to fill the queues first\), random 256-character spans "
                  r"of documents joined with '<\|endoftext\|>'; (\d+) texts were shorter and used whole; pieces scored "
                  r"by UTF-8 bytes", console)
    assert m and int(m[1]) == 8 * int(m[2]) and int(m[2]) - int(m[3]) == 12
    top = re.findall(r"^ ?(\d+)\. .*: +(\d+) \((\d+\.\d\d)%\)$", console, re.M)
    assert [int(r) for r, _, _ in top] == list(range(1, 21))
    assert [int(c) for _, c, _ in top] == counts[:20]

    # leaving out the tokens present in every vocabulary
    out2 = tmp_path / "freq2.json"
    assert st.main([str(path), "--num_batches", "12", "--output_file", str(out2), "--workers", "0",
                    "--exclude_always_present"]) == 0
    console = capsys.readouterr().out
    freq2 = json.loads(out2.read_text())
    assert freq2 == {p: c for p, c in freq.items() if c < 12}
    assert f"leaving out {len(freq) - len(freq2)} tokens present in every vocabulary" in console


def test_stats_reproducible_and_worker_independent(small_config, tmp_path):
    path, cfg = small_config
    cfg_ = st.load_config(path)
    a = st.collect_stats(cfg_, 10, seed=3, workers=0)
    b = st.collect_stats(cfg_, 10, seed=3, workers=1)
    c = st.collect_stats(cfg_, 10, seed=4, workers=0)
    assert a["counts"] == b["counts"] and a["per_language"] == b["per_language"]
    assert a["counts"] != c["counts"]


def test_text_stream_is_persistent(tmp_path):
    texts = [f"doc{i:03d}|" * (1 if i % 5 == 0 else 80) for i in range(50)]  # every 5th shorter than the span
    write_jsonl(tmp_path / "t.jsonl", texts)
    stream = st.TextStream(tmp_path / "t.jsonl", np.random.default_rng(0), span=300, buffer=10)
    seen = []
    for _ in range(4):
        spans, short = stream.take(10)
        assert short == sum(len(t) < 300 for t in spans) and all(len(t) <= 300 for t in spans)
        seen += spans
    docs = [re.search(r"doc(\d{3})", s).group(1) for s in seen]
    assert len(set(docs)) == 40  # no text twice before the file is used up
    assert all(any(s in t for t in texts) for s in seen)  # spans are pieces of the texts
    seen += stream.take(160)[0]  # later epochs: the file starts over
    assert len({re.search(r"doc(\d{3})", s).group(1) for s in seen}) == 50


def test_text_stream_packs_documents_like_zett(tmp_path):
    """do_sequence_packing: stripped documents joined with eos until the span length, then a random span."""
    texts = [f"  doc{i:03d} " + "x" * (10 + 7 * (i % 5)) + "\n" for i in range(60)] + ["   "]
    write_jsonl(tmp_path / "t.jsonl", texts)
    stream = st.TextStream(tmp_path / "t.jsonl", np.random.default_rng(0), span=100, buffer=20, pack_eos="<E>")
    spans, short = stream.take(30)
    assert short == 0 and all(len(t) == 100 for t in spans)          # nothing shorter than a span any more
    assert all("<E>" in t for t in spans)                              # every span crosses a document boundary
    for t in spans:
        for part in t.split("<E>")[1:-1]:                              # whole documents in the middle, stripped
            assert part.strip() == part and re.fullmatch(r"doc\d{3} x+", part)
    old = st.TextStream(tmp_path / "t.jsonl", np.random.default_rng(0), span=100, buffer=20)
    spans, short = old.take(30)
    assert short == 30 and not any("<E>" in t for t in spans)        # the older behaviour: texts used whole


def test_special_tokens_from_a_hugging_face_tokenizer_folder(small_config, tmp_path):
    folder = tmp_path / "hf_tok"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({"added_tokens": [
        {"id": 0, "content": "<unk>", "special": True}, {"id": 1, "content": "<s>", "special": True},
        {"id": 2, "content": "</s>", "special": True}, {"id": 32000, "content": "<tool>", "special": False}]}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "</s>"}}))
    special, eos = st.load_special_tokens(folder)
    assert special == {"<unk>": 0, "<s>": 1, "</s>": 2} and eos == "</s>"
    path, cfg = small_config
    cfg["model_name_or_path"] = str(folder)
    path.write_text(json.dumps(cfg))
    out = tmp_path / "f.json"
    r = run_cli(path, "--num_batches", "2", "--output_file", out, "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert "3 special tokens from" in r.stderr and "joined with '</s>'" in r.stdout
    assert json.loads(out.read_text())["</s>"] == 2


def test_special_tokens_from_tokenizer(small_config, tokenizer_path, tmp_path):
    from data import Tokenizer

    path, cfg = small_config
    tok = Tokenizer.load(tokenizer_path)
    special, eos = st.load_special_tokens(tokenizer_path)
    assert special[tok.id_to_piece(tok.eos_id)] == tok.eos_id and len(special) >= 2 and eos == tok.id_to_piece(tok.eos_id)
    cfg["model_name_or_path"] = str(tokenizer_path)
    path.write_text(json.dumps(cfg))
    stats = st.collect_stats(st.load_config(path), 4, special_tokens=special, workers=0)
    for piece in special:
        assert stats["counts"][piece] == 4
    out = tmp_path / "f.json"
    r = run_cli(path, "--num_batches", "3", "--output_file", out, "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert f"{len(special)} special tokens from" in r.stderr


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("change, expect", [
    ({"tokenizer_sample_min": 2000}, "tokenizer_sample_min (2000) > tokenizer_sample_max (1000)"),
    ({"train_batch_size": "8"}, "key 'train_batch_size' must be a positive integer"),
    ({"tokenizer_noise_std": True}, "key 'tokenizer_noise_std'"),
    ({"tokenizer_batch_size": 20}, "must be a multiple of train_batch_size"),
    ({"langs": None}, "key 'langs'"),
    ({"train_directory": "__delete__"}, "missing key 'train_directory'"),
])
def test_bad_config(small_config, change, expect):
    path, cfg = small_config
    for k, v in change.items():
        if v == "__delete__":
            del cfg[k]
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))
    with pytest.raises(st.SampleTokError, match=re.escape(expect)):
        st.load_config(path)


def test_bad_input_cli(small_config, tmp_path):
    path, cfg = small_config
    (tmp_path / "langs.txt").write_text("python,2\nrust,1\n")
    r = run_cli(path, "--num_batches", "2", "--output_file", tmp_path / "x.json")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("sample_tok.py: error: ")
    assert "rust.parquet" in r.stderr and "'rust'" in r.stderr
    assert not (tmp_path / "x.json").exists()

    (tmp_path / "langs.txt").write_text("python,2\nmbpp,lots\n")
    r = run_cli(path, "--num_batches", "2")
    assert r.returncode != 0 and "langs.txt:2: bad weight 'lots'" in r.stderr

    (tmp_path / "langs.txt").write_text("python,2\n")
    (tmp_path / "train" / "python.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    r = run_cli(path, "--num_batches", "2", "--workers", "1")
    assert r.returncode == 2 and "python.jsonl:2: not JSON" in r.stderr and r.stderr.count("\n") == 1

    path.write_text('{"langs": "x.txt",\n "train_directory": }')
    r = run_cli(path)
    assert r.returncode != 0 and "config.json:2: not valid JSON" in r.stderr


def test_langs_forms_and_parquet_without_pyarrow(tmp_path):
    assert st.read_langs("python go", tmp_path / "python go") == [("python", 0.5), ("go", 0.5)]
    (tmp_path / "l.txt").write_text("a,3\nb\n\n")
    assert st.read_langs("l.txt", tmp_path / "l.txt") == [("a", 0.75), ("b", 0.25)]
    for bad, msg in [("a,1,2\n", "l.txt:1: bad line"), ("a,-1\n", "l.txt:1: bad weight"),
                     ("a\na\n", "l.txt:2: language 'a' listed twice"),
                     ("a,0\n", "all language weights are 0"), ("# nothing\n", "no languages listed")]:
        (tmp_path / "l.txt").write_text(bad)
        with pytest.raises(st.SampleTokError, match=re.escape(msg)):
            st.read_langs("l.txt", tmp_path / "l.txt")
    with pytest.raises(st.SampleTokError, match="file .*missing.txt not found"):
        st.read_langs("missing.txt", tmp_path / "missing.txt")
    (tmp_path / "go.parquet").write_bytes(b"not parquet")
    if importlib.util.find_spec("pyarrow"):
        with pytest.raises(st.SampleTokError, match="go.parquet: not a readable parquet file"):
            list(st.iter_file_texts(st.find_language_file(tmp_path, "go")))
    else:
        with pytest.raises(st.SampleTokError, match="go.parquet: reading parquet needs pyarrow"):
            st.find_language_file(tmp_path, "go")
    write_jsonl(tmp_path / "go.jsonl", ["x"])
    assert st.find_language_file(tmp_path, "go").name in ("go.parquet", "go.jsonl")


def test_demo_builds_a_config_from_local_files(tmp_path):
    found = st.build_demo(tmp_path, max_chars=30_000, min_chars=10_000, max_files=20)
    assert "python" in [lang for lang, _, _ in found]  # the stdlib is on every machine
    cfg = st.load_config(tmp_path / "config.json")
    langs = st.read_langs(cfg["langs"], cfg["langs_path"])
    assert [lang for lang, _ in langs] == [lang for lang, _, _ in found]
    for lang, docs, chars in found:
        texts = list(st.iter_file_texts(st.find_language_file(cfg["train_directory"], lang)))
        assert len(texts) == docs and sum(map(len, texts)) == chars


def test_output_file_folder_fails_before_sampling(small_config, tmp_path):
    path, cfg = small_config
    folder = tmp_path / "outdir"
    folder.mkdir()
    r = run_cli(path, "--num_batches", "500", "--output_file", folder, "--workers", "0")
    assert r.returncode == 2 and r.stderr == f"sample_tok.py: error: --output_file {folder}: is a folder; give a .json file name\n"
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("where", UNWRITABLE)
def test_output_file_nobody_can_write_fails_before_sampling(small_config, tmp_path, where):
    path, _ = small_config
    out, cause = unwritable_output(tmp_path, where, "freq.json")
    before = sorted(tmp_path.rglob("*"))
    r = run_cli(path, "--num_batches", "500", "--output_file", out, "--workers", "0")
    assert r.returncode == 2 and r.stderr == f"sample_tok.py: error: --output_file {out}: {cause}\n"
    assert sorted(tmp_path.rglob("*")) == before


def test_cli_help():
    r = run_cli("--help")
    assert r.returncode == 0 and "--num_batches" in r.stdout and "--demo" in r.stdout and "--score" in r.stdout
    for key in ("langs", "train_directory", "tokenizer_batch_size", "block_size", "model_name_or_path",
                "do_sequence_packing", "sample_text_span"):
        assert f"\n  {key}" in r.stdout                     # every CONFIG.json key is listed
    assert "DEMO_DIR/token_frequencies.json" in r.stdout and "out_sample_tok_demo" in r.stdout
