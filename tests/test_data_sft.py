"""SFT data in data.py: `data.py sft` (loss masks, length filter, skipped lines with line numbers, the
LintSeq edit format), `data.py intent` (the reasoning-augmented recipe), added tokens, and batching
(token budget, determinism per epoch, ranks, no attention across examples)."""
import json

import numpy as np
import pytest
import torch

from conftest import UNWRITABLE, unwritable_output

INTENT_RECORDS = [  # realistic records: a module's left context, the signature, then what the model writes
    {"left_context": "import os\nimport json\nfrom pathlib import Path\n\nCONFIG_NAME = 'settings.json'\n\n\n"
                     "def config_dir():\n    return Path(os.environ.get('APP_HOME', '~/.app')).expanduser()\n\n\n",
     "signature": "def load_settings(name=CONFIG_NAME):\n",
     "reasoning": "Settings are JSON files in config_dir(); a missing file must not crash the caller.",
     "intention": "Read the settings file and return a dict, empty when the file does not exist.",
     "code": "    path = config_dir() / name\n    if not path.is_file():\n        return {}\n"
             "    with open(path, encoding='utf-8') as f:\n        return json.load(f)\n"},
    {"left_context": "from collections import (\n    Counter,\n    defaultdict,\n)\nimport re\n\nWORD = re.compile(r'\\w+')\n\n\n"
                     + "".join(f"def normalise_{i}(word):\n    return word.strip().lower()[:{i + 3}]\n\n\n" for i in range(30)),
     "signature": "def top_words(text, n=3):\n",
     "reasoning": "WORD finds the words; Counter.most_common ranks them.",
     "intention": "Return the n most frequent lower-cased words of text with their counts.",
     "code": "    return Counter(w.lower() for w in WORD.findall(text)).most_common(n)\n"},
    {"left_context": "", "signature": "def clamp(x, lo, hi):\n", "reasoning": "Bounds are inclusive.",
     "intention": "Limit x to [lo, hi].", "code": "    return max(lo, min(hi, x))\n"},
    {"left_context": "import re\n", "signature": "def is_identifier(s):\n", "reasoning": "x", "intention": "y", "code": "  \n"},
    {"left_context": "x = 1\n", "signature": "def f():\n", "intention": "no reasoning field", "code": "    return x\n"},
]


@pytest.fixture(scope="module")
def sft_src(tmp_path_factory, mbpp_path):
    """JSONL from MBPP (real prompts; CRLF and tabs in the code) with bad lines at known line numbers."""
    rows = [json.loads(line) for line in open(mbpp_path)][:40]
    lines = [json.dumps({"prompt": f'"""{r["text"]}"""\n', "completion": r["code"]}) for r in rows]
    lines.insert(2, "{not json")                                               # line 3
    lines.insert(4, json.dumps({"prompt": "p"}))                               # line 5
    lines.insert(6, json.dumps({"prompt": "p", "completion": "   \n"}))        # line 7
    lines.insert(8, json.dumps(["a list"]))                                    # line 9
    path = tmp_path_factory.mktemp("sft") / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, rows


def test_sft_tokens_masks_counts_and_skipped_lines(tmp_path, sft_src, tokenizer_path):
    from data import SFTData, Tokenizer, prepare_sft

    src, rows = sft_src
    meta = prepare_sft(src, tokenizer_path, tmp_path / "d", max_len=4096, val_fraction=0.1)
    assert meta["counts"] == {"records": 44, "kept": 40, "dropped": 0, "truncated": 0}
    assert meta["skipped_lines"] == {"not JSON": [3], "no 'completion' string field": [5], "empty completion": [7],
                                     "not an object": [9]}
    tok = Tokenizer.load(tmp_path / "d")
    data = {s: SFTData(tmp_path / "d", s) for s in ("train", "val")}
    assert len(data["train"]) + len(data["val"]) == 40 and len(data["val"]) >= 1
    want = {}
    for r in rows:
        p, c = tok.encode(f'"""{r["text"]}"""\n'), tok.encode(r["code"])
        want[tuple(p + c + [tok.eos_id])] = [0] * len(p) + [1] * (len(c) + 1)
    for d in data.values():
        for i in range(len(d)):
            t, m = d.example(i)
            assert list(m) == want[tuple(int(v) for v in t)]  # loss on completion + eos only
    assert meta["train"]["loss_tokens"] == sum(int(data["train"].example(i)[1].sum()) for i in range(len(data["train"])))


def test_length_filter_drop_and_left_truncation(tmp_path, sft_src, tokenizer_path):
    from data import SFTData, Tokenizer, prepare_sft

    src, rows = sft_src
    tok = Tokenizer(tokenizer_path)
    lens = sorted(len(tok.encode(f'"""{r["text"]}"""\n')) + len(tok.encode(r["code"])) + 1 for r in rows)
    max_len = lens[len(lens) // 2]
    drop = prepare_sft(src, tokenizer_path, tmp_path / "drop", max_len=max_len)
    left = prepare_sft(src, tokenizer_path, tmp_path / "left", max_len=max_len, truncate="left")
    too_long = sum(n > max_len for n in lens)
    assert drop["counts"]["dropped"] == too_long and drop["counts"]["kept"] == 40 - too_long
    assert left["counts"]["kept"] + left["counts"]["dropped"] == 40 and left["counts"]["truncated"] > 0
    assert left["counts"]["kept"] > drop["counts"]["kept"]
    for s in ("train", "val"):
        d = SFTData(tmp_path / "left", s)
        assert d.lengths.max() <= max_len
        for i in range(len(d)):
            t, m = d.example(i)
            assert m[-1] == 1 and t[-1] == tok.eos_id and set(np.diff(m.astype(int))) <= {0, 1}  # prompt, then completion
    completions = {tuple(tok.encode(r["code"])) for r in rows}
    d = SFTData(tmp_path / "left", "train")
    for i in range(len(d)):
        t, m = d.example(i)
        assert tuple(int(v) for v in t[m == 1][:-1]) in completions  # the completion is never cut


def test_no_usable_line_is_fatal_with_line_numbers(tmp_path, tokenizer_path, capsys):
    import data

    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "a"}\nnot json\n{"prompt": "a", "completion": ""}\n')
    with pytest.raises(SystemExit) as e:
        data.run_command("data.py", data.main, ["sft", "--src", str(src), "--tokenizer", str(tokenizer_path),
                                                "--out", str(tmp_path / "d"), "--max_len", "64"])
    msg = capsys.readouterr().err.splitlines()[-1]  # after the progress line
    assert e.value.code == 2 and msg.startswith("data.py: error:")
    assert "no usable examples" in msg and "line 2" in msg and "line 1" in msg and "empty completion (line 3)" in msg
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d.tmp-*"))  # nothing half-written


def test_lintseq_edit_format_adds_diff_token(tmp_path, tokenizer_path):
    from data import SFTData, Tokenizer, prepare_sft

    src = tmp_path / "ls.jsonl"
    recs = [{"prompt": "Write add.\n<|diff|>", "completion": "@@ -0,0 +1,2 @@\n+def add(a, b):\n+    return a + b\n<|diff|>\n<|diff|>"},
            {"prompt": "Write one.\n<|diff|>", "completion": "@@ -0,0 +1 @@\n+ONE = 1\n<|diff|>\n<|diff|>"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    meta = prepare_sft(src, tokenizer_path, tmp_path / "d", max_len=256, edit_format="lintseq")
    assert meta["postprocess"] == {"edit_format": "lintseq", "sugar": None, "prompt_format": "instruction",
                                   "prompt_start": "none"}
    tok = Tokenizer.load(tmp_path / "d")  # the added token comes back from meta.json
    diff = tok.added_tokens["<|diff|>"]
    assert diff == tok.base_vocab_size and meta["vocab_size"] == diff + 1
    t, m = SFTData(tmp_path / "d", "train").example(0)
    assert int((t == diff).sum()) == 3 and tok.decode(t[:-1]) == recs[0]["prompt"] + recs[0]["completion"]


def test_val_split_keeps_the_sequences_of_a_program_together(tmp_path, tokenizer_path, mbpp_path):
    """LintSeq writes several edit sequences per program under one prompt: they must share a split, or
    val loss would be measured on programs train has seen."""
    from data import SFTData, prepare_sft
    from lintseq import SkipProgram, make_records

    recs = []
    for line in open(mbpp_path).readlines()[:60]:
        r = json.loads(line)
        try:
            recs += make_records(r["text"], r["code"], seed=r["task_id"], s=4)
        except SkipProgram:
            continue
    src = tmp_path / "ls.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    meta = prepare_sft(src, tokenizer_path, tmp_path / "d", max_len=4096, edit_format="lintseq", val_fraction=0.25)
    assert meta["counts"]["kept"] == len(recs) > 150
    prompts = {}
    for split in ("train", "val"):
        d = SFTData(tmp_path / "d", split)
        prompts[split] = [tuple(int(v) for v, m in zip(*d.example(i)) if not m) for i in range(len(d))]
    assert 5 <= len(set(prompts["val"])) and len(prompts["val"]) == 4 * len(set(prompts["val"]))
    assert not set(prompts["train"]) & set(prompts["val"])
    # without groups (one example per prompt) the draw is the same as before: the second example is val
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in recs[::4]))
    prepare_sft(plain, tokenizer_path, tmp_path / "p", max_len=4096, edit_format="lintseq", val_fraction=0.25)
    val = SFTData(tmp_path / "p", "val")
    firsts = [tuple(int(v) for v in val.example(i)[0]) for i in range(len(val))]
    d = SFTData(tmp_path / "d", "val")
    assert firsts == [tuple(int(v) for v in d.example(i)[0]) for i in range(0, len(d), 4)]


def test_added_token_bad_input(tokenizer_path, tmp_path):
    from data import DataError, Tokenizer

    tok = Tokenizer(tokenizer_path)
    tok.add_tokens(["<reasoning>", "<code>"])
    with pytest.raises(DataError, match="already exists"):
        tok.add_tokens(["<code>"])
    with pytest.raises(DataError, match="overlaps id"):
        tok.add_tokens(["<x>", "<y>"], start_id=tok.added_tokens["<code>"] - 1)
    # a Hugging Face tokenizer_config.json lists the base's special pieces too: they are not added tokens
    (tmp_path / "tokenizer.model").write_bytes(tokenizer_path.read_bytes())
    decoder = {"0": {"content": "<unk>"}, "1": {"content": "<s>"}, "2": {"content": "<|endoftext|>"},
               str(tok.base_vocab_size): {"content": "<|diff|>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    assert Tokenizer.load(tmp_path).added_tokens == {"<|diff|>": tok.base_vocab_size}


def test_token_budget_batches():
    from data import sft_batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 200, size=500)
    lengths[7] = 900  # longer than the budget: alone
    budget = 1024
    a = sft_batches(lengths, seed=3, epoch=0, batch_tokens=budget)
    assert [b.tolist() for b in a] == [b.tolist() for b in sft_batches(lengths, seed=3, epoch=0, batch_tokens=budget)]
    assert [b.tolist() for b in a] != [b.tolist() for b in sft_batches(lengths, seed=3, epoch=1, batch_tokens=budget)]
    flat = np.concatenate(a)
    assert sorted(flat.tolist()) == list(range(500))  # every example once per epoch
    for b in a:
        padded = len(b) * (lengths[b] - 1).max()
        assert padded <= budget or len(b) == 1
    assert [7] in [b.tolist() for b in a]
    fill = sum(int((lengths[b] - 1).sum()) for b in a) / sum(len(b) * int((lengths[b] - 1).max()) for b in a)
    assert fill > 0.8  # length bucketing: little padding
    fixed = sft_batches(lengths, seed=3, epoch=0, batch_size=32)
    assert all(len(b) == 32 for b in fixed[:-1]) and sum(map(len, fixed)) == 500


def test_schedule_gives_ranks_disjoint_batches_of_the_same_step():
    from data import SFTSchedule

    lengths = np.random.default_rng(1).integers(5, 100, size=300)
    s = SFTSchedule(lengths, group=4, seed=0, batch_tokens=400)
    per_epoch = s.steps(1)
    assert s.steps(3) == sum(len(s.plan(e)) // 4 for e in range(3))
    for step in (0, per_epoch - 1, per_epoch, per_epoch + 5):
        group = [s.micro_batch(step, j).tolist() for j in range(4)]
        rank0, rank1 = group[:2], group[2:]  # world 2: accum 2 each, the same count on both ranks
        ids0, ids1 = sum(rank0, []), sum(rank1, [])
        assert not set(ids0) & set(ids1)
    e, within = s.locate(per_epoch + 5)
    assert (e, within) == (1, 5)


def test_collated_examples_do_not_attend_to_each_other(tmp_path, tokenizer_path):
    from data import SFTData, collate_sft, prepare_sft
    from model import GPT, GPTConfig

    src = tmp_path / "s.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"# task {i}\n" * (1 + i % 3), "completion": "x = %d\n" % i * (1 + i)}) + "\n"
                           for i in range(6)))
    prepare_sft(src, tokenizer_path, tmp_path / "d", max_len=256, val_fraction=0)
    d = SFTData(tmp_path / "d", "train")
    x, y = collate_sft(d, [0, 5, 2], pad_id=0)
    assert x.shape[1] == max(d.lengths[[0, 5, 2]]) - 1
    for r, i in enumerate([0, 5, 2]):
        t, m = d.example(i)
        n = len(t) - 1
        assert (x[r, :n] == t[:-1]).all() and (y[r, n:] == -1).all()
        assert ((y[r, :n] != -1) == (m[1:] == 1)).all()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=1024, block_size=256, n_layer=1, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        batch, _ = model(torch.from_numpy(x))
        for r, i in enumerate([0, 5, 2]):
            alone, _ = model(torch.from_numpy(x[r:r + 1, :d.lengths[i] - 1]))
            torch.testing.assert_close(batch[r, :d.lengths[i] - 1], alone[0], atol=1e-5, rtol=1e-5)


def test_intent_recipe(tmp_path, tokenizer_path):
    from data import INTENT_TAGS, SFTData, Tokenizer, prepare_intent, split_imports

    src = tmp_path / "intent.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in INTENT_RECORDS))
    meta = prepare_intent(src, tokenizer_path, tmp_path / "d", max_len=300, val_fraction=0)
    assert meta["skipped_lines"] == {"empty 'code'": [4], "no 'reasoning' string field": [5]}
    assert meta["counts"]["kept"] == 3 and meta["counts"]["truncated"] == 1
    assert meta["postprocess"] == {"edit_format": None, "sugar": None, "completion_format": "intent",
                                   "prompt_start": "bos"}
    tok = Tokenizer.load(tmp_path / "d")
    assert list(tok.added_tokens) == list(INTENT_TAGS)
    d = SFTData(tmp_path / "d", "train")
    texts = []
    for i in range(len(d)):
        t, m = d.example(i)
        assert len(t) <= 300 and t[0] == tok.bos_id and t[-1] == tok.eos_id
        first = int(np.argmax(m))
        assert t[first] == tok.added_tokens["<reasoning>"] and m[first:].all() and not m[:first].any()
        texts.append(tok.decode(t[1:-1]))
    long = next(s for s in texts if "top_words" in s)
    imports, _ = split_imports(INTENT_RECORDS[1]["left_context"])
    assert long.startswith(imports) and "normalise_29" in long and "normalise_0(" not in long  # cut from the left
    assert long.endswith("<code>" + INTENT_RECORDS[1]["code"] + "</code>")
    whole = INTENT_RECORDS[0]
    assert (whole["left_context"] + whole["signature"] + f"<reasoning>{whole['reasoning']}</reasoning><intention>"
            f"{whole['intention']}</intention><code>{whole['code']}</code>") in texts
    # field names can be remapped; a tokenizer that already has the tags keeps their ids
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(json.dumps({("ctx" if k == "left_context" else k): v for k, v in INTENT_RECORDS[2].items()}) + "\n")
    again = prepare_intent(renamed, tmp_path / "d", tmp_path / "d2", max_len=200, fields={"left_context": "ctx"})
    assert again["tokenizer"]["added_tokens"] == meta["tokenizer"]["added_tokens"] and again["counts"]["kept"] == 1


# ----------------------------------------------------------------------------- the recipes' reference behaviours
def test_right_truncation_keeps_the_first_max_len_tokens(tmp_path, sft_src, tokenizer_path):
    """--truncate right (the LintSeq reference: Hugging Face truncation=True): over-long examples keep
    their first max_len tokens, so the completion's end and the eos are cut; nothing is dropped."""
    from data import SFTData, Tokenizer, prepare_sft

    src, rows = sft_src
    tok = Tokenizer(tokenizer_path)
    full = {tuple(tok.encode(f'"""{r["text"]}"""\n')): tok.encode(f'"""{r["text"]}"""\n') + tok.encode(r["code"])
            + [tok.eos_id] for r in rows}
    max_len = sorted(len(ids) for ids in full.values())[len(full) // 2]
    meta = prepare_sft(src, tokenizer_path, tmp_path / "right", max_len=max_len, truncate="right", val_fraction=0)
    too_long = sum(len(ids) > max_len for ids in full.values())
    assert meta["counts"] == {"records": 44, "kept": 40, "dropped": 0, "truncated": too_long} and too_long > 0
    assert meta["truncate"] == "right"
    d = SFTData(tmp_path / "right", "train")
    cut = 0
    for i in range(len(d)):
        t, m = d.example(i)
        assert len(t) <= max_len
        want = full[tuple(int(v) for v in t[:int(np.argmax(m))])]
        assert [int(v) for v in t] == want[:max_len]           # a prefix of the whole example
        cut += len(want) > max_len and t[-1] != tok.eos_id   # ...without its eos when it was cut
    assert cut == too_long


REFERENCE_RECORD = {"left_context": "import os\nfrom pathlib import Path\n\nROOT = Path('.')\n",
                    "function_signature": "def list_py(folder=ROOT):",
                    "reasoning": "Python files end in .py.", "intention": "Return the .py files in folder.",
                    "solution": "    return sorted(p.name for p in folder.glob('*.py'))"}
REFERENCE_TEXT = ("import os\nfrom pathlib import Path\n\nROOT = Path('.')\n"   # the left context as is
                  "\ndef list_py(folder=ROOT):\n"
                  "<reasoning>\nPython files end in .py.\n</reasoning>\n"
                  "<intention>\nReturn the .py files in folder.\n</intention>\n"
                  "<code>\n    return sorted(p.name for p in folder.glob('*.py'))\n</code>")


def test_intent_reference_layout_cut_marker_and_margin(tmp_path, tokenizer_path):
    from data import (INTENT_CUT_MARKER, SFTData, Tokenizer, prepare_intent, reference_import_block,
                      reference_intent_text)

    assert reference_intent_text(*(REFERENCE_RECORD[k] for k in ("left_context", "function_signature", "reasoning",
                                                                 "intention", "solution"))) == REFERENCE_TEXT
    long_ctx = "import re\n# helpers\n\n" + "".join(f"def helper_{i}(s):\n    return s[{i}:]\n\n" for i in range(80))
    assert reference_import_block(long_ctx) == ("import re\n# helpers\n\n", long_ctx[len("import re\n# helpers\n\n"):])
    assert reference_import_block("\n" * 60 + "x = 1\n")[0] == "\n" * 50          # at most 50 lines
    cut_rec = dict(REFERENCE_RECORD, left_context=long_ctx)
    huge = dict(REFERENCE_RECORD, solution="    pass\n" * 400)                  # tail over max_len - 200
    src = tmp_path / "ref.json"                                                  # the recipe ships a JSON array
    src.write_text(json.dumps([REFERENCE_RECORD, cut_rec, huge]))
    meta = prepare_intent(src, tokenizer_path, tmp_path / "d", max_len=600, val_fraction=0, reference=True)
    assert meta["counts"] == {"records": 3, "kept": 2, "dropped": 1, "truncated": 1} and meta["margin"] == 200
    tok = Tokenizer.load(tmp_path / "d")
    d = SFTData(tmp_path / "d", "train")
    t, m = d.example(0)
    assert t[0] == tok.bos_id and t[-1] == tok.eos_id and tok.decode(t[1:-1]) == REFERENCE_TEXT
    first = int(np.argmax(m))
    assert t[first] == tok.added_tokens["<reasoning>"] and m[first:].all() and not m[:first].any()
    t, m = d.example(1)
    text = tok.decode(t[1:-1])
    assert len(t) <= 600 and text.startswith("import re\n# helpers\n\n" + INTENT_CUT_MARKER)   # imports, then #...
    assert "helper_79(s)" in text and "helper_0(" not in text                                 # the end of the rest
    assert text.endswith(REFERENCE_TEXT[REFERENCE_TEXT.index("\ndef list_py"):])
    # ours on the same file (its own field names mapped): no marker, no newlines around the tags
    ours = prepare_intent(src, tokenizer_path, tmp_path / "o", max_len=600, val_fraction=0,
                          fields={"signature": "function_signature", "code": "solution"})
    t, _ = SFTData(tmp_path / "o", "train").example(0)
    assert "<reasoning>Python files" in Tokenizer.load(tmp_path / "o").decode(t) and ours["margin"] == 0


def test_unpadded_budget_and_longest_first():
    from data import SFTSchedule, sft_batches

    lengths = np.random.default_rng(2).integers(5, 300, size=400)
    a = sft_batches(lengths, seed=1, epoch=0, batch_tokens=2048, budget="unpadded")
    assert sorted(np.concatenate(a).tolist()) == list(range(400))
    assert all(int(lengths[b].sum()) <= 2048 for b in a)                      # real tokens, not rows x longest
    padded = sft_batches(lengths, seed=1, epoch=0, batch_tokens=2048)
    assert len(a) < len(padded)                                               # padding no longer counts
    lf = sft_batches(lengths, seed=1, epoch=0, batch_tokens=2048, budget="unpadded", longest_first=True)
    firsts = [int(lengths[b].max()) for b in lf]
    assert firsts == sorted(firsts, reverse=True) and firsts[0] == lengths.max()
    s = SFTSchedule(lengths, group=2, seed=1, batch_tokens=2048, budget="unpadded", longest_first=True)
    assert s.micro_batch(0, 0).tolist() == lf[0].tolist()
    with pytest.raises(Exception, match="budget"):
        sft_batches(lengths, seed=1, epoch=0, batch_tokens=2048, budget="rows")


@pytest.mark.parametrize("name, want", [
    ("intent_lora_reference", {"lora_r": 32, "lora_alpha": 64.0, "lora_dropout": 0.05, "learning_rate": 1e-4,
                               "epochs": 2, "beta2": 0.95, "batch_tokens": 2048, "optimizer": "adamw",
                               "lora_targets": ("q", "k", "v", "o", "gate", "up", "down")}),
    ("intent_full_reference", {"lora_r": 0, "learning_rate": 1e-5, "epochs": 3, "optimizer": "adamw8bit",
                               "batch_tokens": 4096, "beta2": 0.95})])
def test_reference_configs_apply_to_train_defaults(repo_root, name, want):
    """The recipe's settings, through configurator (every key must be one of train.py's defaults)."""
    import ast

    import configurator

    defaults = {}
    for node in ast.parse((repo_root / "train.py").read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                defaults[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    configurator.configure(defaults, [str(repo_root / "config" / f"{name}.py")])
    assert {k: defaults[k] for k in want} == want and defaults["lr_schedule"] == "cosine"


@pytest.mark.parametrize("recipe,flags,start", [
    ("sft", [], "none"), ("sft", ["--bos"], "bos"), ("sft", ["--edit_format", "lintseq"], "none"),
    ("intent", [], "bos"), ("intent", ["--no_bos"], "none")])
def test_eval_prompts_start_as_the_training_examples_did(tmp_path, tokenizer_path, recipe, flags, start):
    """What a checkpoint's data records (postprocess.prompt_start) is what eval.py puts before a prompt,
    and it is how every training example of the recipe begins."""
    import data
    import eval as ev
    from data import Postprocess, SFTData, Tokenizer

    src = tmp_path / "src.jsonl"
    recs = INTENT_RECORDS if recipe == "intent" else [
        {"prompt": f"Write f{i}.\n", "completion": f"def f{i}():\n    return {i}\n"} for i in range(6)]
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    data.main([recipe, "--src", str(src), "--tokenizer", str(tokenizer_path), "--out", str(tmp_path / "d"),
               "--max_len", "512", *flags])
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    pp = Postprocess.from_dict(meta["postprocess"])
    assert pp.prompt_start == start
    tok = Tokenizer.load(tmp_path / "d")
    head = ev.start_ids(tok, pp)
    assert head == ([tok.bos_id] if start == "bos" else [])
    for split in ("train", "val"):
        d = SFTData(tmp_path / "d", split)
        for i in range(len(d)):
            tokens, _ = d.example(i)
            assert list(tokens[:len(head)]) == head and (head or int(tokens[0]) not in (tok.bos_id, tok.eos_id))


@pytest.mark.parametrize("where", UNWRITABLE)
def test_sft_out_nobody_can_write_is_one_line_before_any_work(tmp_path, sft_src, tokenizer_path, where, capsys):
    import data

    out, cause = unwritable_output(tmp_path, where)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        data.run_command("data.py", data.main, ["sft", "--src", str(sft_src), "--tokenizer", str(tokenizer_path),
                                                "--out", str(out), "--max_len", "64"])
    assert e.value.code == 2 and capsys.readouterr().err == f"data.py: error: --out {out}: {cause}\n"
    assert sorted(tmp_path.rglob("*")) == before
