"""Fine-tuning with train.py: our 8-bit AdamW (codes, state size, trajectory vs torch AdamW, state_dict
round trips), and the whole user flow of issue 4: a Llama-shaped Hugging Face folder -> `data.py sft` /
`data.py intent` -> task='sft' with LoRA (config/intent_lora.py) and with adamw8bit (config/intent_full.py)
-> exact resume -> DDP and FSDP on two CPU ranks -> `hf.py export` -> loaded back (and by transformers,
when installed). Then the reasoning recipe's own settings: unpadded token budgets, longest-first batches,
the whole embedding and head trained beside LoRA, warmup as a fraction of the steps, and its configs. Single-process runs call train.main() in this process (settings are arguments, so
nothing carries over between runs) to save interpreter start-ups; two-rank runs go through torchrun as
users run them."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

import train as train_module
from conftest import REPO, run_torchrun
from test_data_sft import INTENT_RECORDS
from test_hf import make_hf_folder


# ---- the fine-tuning flow
def train(*args):
    """train.py in this process."""
    assert train_module.main([str(a) for a in args]) == 0


def torchrun(*args, procs=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
           str(REPO / "train.py"), *map(str, args)]
    r = run_torchrun(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


def curve(out):
    """(event, step) -> loss as logged."""
    recs = [json.loads(line) for line in open(out / "log.jsonl")]
    return {(r["event"], r["step"]): r.get("loss", r.get("val_loss")) for r in recs if r["event"] in ("train", "eval")}


def weights(folder):
    from model import load_model

    return load_model(folder)[0].state_dict()


def intent_records(mbpp_path, n=40):
    """Reasoning-augmented records from MBPP solutions: the code before the first def is the left context
    (after an import block), the def line the signature, its body the code."""
    out = list(INTENT_RECORDS)
    for line in list(open(mbpp_path))[:n]:
        r = json.loads(line)
        code = r["code"].replace("\r\n", "\n")
        head, sep, rest = code.partition("def ")
        if not sep:
            continue
        sig, _, body = rest.partition("\n")
        out.append({"left_context": "import math\nimport re\n\n" + head, "signature": "def " + sig + "\n",
                    "reasoning": "The tests call " + sig.split("(")[0] + " directly.", "intention": r["text"], "code": body})
    return out


@pytest.fixture(scope="module")
def flow(tmp_path_factory, tokenizer_path, mbpp_path):
    import data

    root = tmp_path_factory.mktemp("finetune")
    hf = make_hf_folder(root / "hf_llama", tokenizer_path)
    rows = [json.loads(line) for line in list(open(mbpp_path))[:48]]
    (root / "train.jsonl").write_text("".join(json.dumps({"prompt": f'"""{r["text"]}"""\n', "completion": r["code"]}) + "\n"
                                              for r in rows))
    data.main(["sft", "--src", str(root / "train.jsonl"), "--tokenizer", str(hf), "--out", str(root / "sft"),
               "--max_len", "160", "--truncate", "left", "--edit_format", "lintseq", "--bos"])
    (root / "intent.jsonl").write_text("".join(json.dumps(r) + "\n" for r in intent_records(mbpp_path)))
    data.main(["intent", "--src", str(root / "intent.jsonl"), "--tokenizer", str(hf), "--out", str(root / "intent"),
               "--max_len", "256"])
    return root


def lora_args(flow, out, **kw):
    args = {"init_from": flow / "hf_llama", "data_dir": flow / "intent", "out_dir": out, "block_size": 256,
            "batch_tokens": 600, "gradient_accumulation_steps": 2, "epochs": 0, "max_iters": 4, "lr_decay_iters": 4,
            "warmup_iters": 1, "learning_rate": 1e-2, "eval_interval": 2, "eval_iters": 2, "log_interval": 1,
            "lora_r": 4, "lora_dropout": 0.0, "optimizer": "adamw8bit", **kw}
    return [REPO / "config" / "intent_lora.py"] + [f"--{k}={v}" for k, v in args.items()]


def full_args(flow, out, **kw):
    args = {"init_from": flow / "hf_llama", "data_dir": flow / "sft", "out_dir": out, "block_size": 160,
            "batch_tokens": 512, "gradient_accumulation_steps": 2, "epochs": 1, "warmup_iters": 1,
            "lr_schedule": "constant", "learning_rate": 1e-3, "eval_interval": 2, "eval_iters": 2, "log_interval": 1, **kw}
    return [REPO / "config" / "intent_full.py"] + [f"--{k}={v}" for k, v in args.items()]


@pytest.fixture(scope="module")
def lora_run(flow):
    out = flow / "lora"
    train(*lora_args(flow, out))
    return out


@pytest.fixture(scope="module")
def full_run(flow):
    out = flow / "full"
    train(*full_args(flow, out))
    return out


def test_lora_run_trains_adapters_and_new_token_rows(flow, lora_run):
    from data import Tokenizer
    from model import load_model

    c = curve(lora_run)
    assert c[("eval", 4)] < c[("eval", 0)]
    config = json.loads((lora_run / "config.json").read_text())
    ft = config["finetune"]
    assert ft["base_format"] == "hf" and ft["lora"]["r"] == 4 and "lora" not in config  # merged: a plain checkpoint
    tags = Tokenizer.load(lora_run).added_tokens  # the table is saved and restored
    assert sorted(tags.values()) == ft["new_token_ids"] == ft["lora"]["token_ids"] and "<reasoning>" in tags
    assert config["postprocess"]["completion_format"] == "intent"  # eval.py reads the <code> block
    base, _ = load_model(flow / "hf_llama")
    tuned = weights(lora_run)
    b = base.state_dict()
    for name in ("blocks.0.attn.q.weight", "blocks.1.mlp.down.weight"):  # intent_lora targets all projections
        assert not torch.equal(tuned[name], b[name])
    assert torch.equal(tuned["blocks.0.attn_norm.weight"], b["blocks.0.attn_norm.weight"])  # frozen
    new = ft["new_token_ids"]
    old = [i for i in range(base.cfg.vocab_size) if i not in new]
    assert torch.equal(tuned["embed.weight"][old], b["embed.weight"][old])  # only the added tokens' rows move
    assert not torch.equal(tuned["embed.weight"][new[0]], tuned["embed.weight"][new[1]])


def test_lora_resume_is_exact_and_adapters_merge_to_the_same_weights(flow, lora_run):
    out = flow / "lora_resumed"
    train(*lora_args(flow, out, max_iters=2, lora_save="adapters"))
    assert (out / "adapters.safetensors").is_file() and not (out / "model.safetensors").exists()
    train(*lora_args(flow, out, init_from="resume", lora_save="adapters"))
    assert curve(out) == curve(lora_run)
    a, b = weights(lora_run), weights(out)  # adapters + base, merged on load == the merged checkpoint
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # eval.py takes the adapters folder as it is
    r = subprocess.run([sys.executable, str(REPO / "eval.py"), "--ckpt", str(out), "--limit", "1", "--max_new_tokens", "4",
                        "--out", str(flow / "eval_adapters")], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((flow / "eval_adapters" / "metrics.json").read_text())["tasks"]["humaneval"]["n_samples"] == 1


def test_full_finetune_with_adamw8bit(flow, full_run):
    config = json.loads((full_run / "config.json").read_text())
    state = torch.load(full_run / "train_state.pt", weights_only=False)["optimizer"]["state"]
    assert state["embed.weight"]["m_q"].dtype == torch.uint8  # the 8-bit state is what resume gets
    steps = config["step"]
    meta = json.loads((flow / "sft" / "meta.json").read_text())
    assert steps >= 3 and config["postprocess"]["edit_format"] == "lintseq"  # copied from the data
    c = curve(full_run)
    assert c[("eval", steps)] < c[("eval", 0)]
    assert config["model"]["vocab_size"] == max(meta["vocab_size"], config["finetune"]["base_vocab_size"])


@pytest.mark.parametrize("parallel", ["ddp", "fsdp", "fsdp-full"])
def test_two_ranks_match_one_process(flow, lora_run, full_run, parallel):
    if parallel in ("ddp", "fsdp"):  # LoRA + adamw8bit: the same global batches, the same losses
        out = flow / f"lora_{parallel}"
        torchrun(*lora_args(flow, out, max_iters=2, parallel=parallel))
        ref = curve(lora_run)
        for key, value in curve(out).items():
            assert value == pytest.approx(ref[key], abs=2e-4), key
        return
    # full fine-tuning + adamw8bit over FSDP (the 8-bit state sharded), then resumed by one process
    out = flow / "full_fsdp"
    torchrun(*full_args(flow, out, epochs=0, max_iters=2, parallel="fsdp"))
    train(*full_args(flow, out, epochs=0, max_iters=3, init_from="resume"))
    ref = curve(full_run)
    got = curve(out)
    assert {("train", 1), ("train", 2), ("train", 3), ("eval", 2)} <= got.keys()
    for key, value in got.items():
        if key in ref:  # (the last eval of the shorter run is at step 3, the reference's are at even steps)
            assert value == pytest.approx(ref[key], abs=2e-4), key


def test_export_and_load_back(flow, lora_run):
    from model import load_model

    hf = flow / "lora_hf"
    r = subprocess.run([sys.executable, str(REPO / "hf.py"), "export", "--ckpt", str(lora_run), "--to", str(hf)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    a, b = weights(lora_run), weights(hf)
    assert all(torch.equal(a[k], b[k]) for k in a)
    decoder = json.loads((hf / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {v["content"] for v in decoder.values()} >= {"<reasoning>", "</code>"}
    try:
        import transformers
    except ImportError:
        return
    ours = load_model(hf)[0]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    ids = torch.randint(0, ours.cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], theirs(ids).logits, atol=1e-5, rtol=0)


# ---- the reasoning recipe's reference settings: token budgets, order, whole embeddings, warmup as a fraction
def sft_feed(args):
    """The SFT feed train.py builds from these arguments (settings -> check_settings -> load_data)."""
    cfg = train_module.settings([str(a) for a in args])
    train_module.check_settings(cfg)
    env = train_module.Env(0, 1, torch.device("cpu"), cfg.gradient_accumulation_steps, torch.float32, False, False)
    return train_module.load_data(cfg, env).sft


def test_unpadded_budget_and_longest_first_reach_the_schedule(flow, tmp_path):
    from data import SFTData

    lengths = SFTData(flow / "intent", "train").lengths
    padded = sft_feed(lora_args(flow, tmp_path))
    unpadded = sft_feed(lora_args(flow, tmp_path, sft_budget="unpadded", sft_longest_first=True))
    plan = unpadded.sched.plan(0)
    assert all(lengths[b].sum() <= 600 or len(b) == 1 for b in plan)  # real tokens within batch_tokens
    assert any(len(b) * (lengths[b].max() - 1) > 600 for b in plan)     # which padding would put over it
    assert all(len(b) * (lengths[b].max() - 1) <= 600 or len(b) == 1 for b in padded.sched.plan(0))
    first = unpadded.sched.micro_batch(0, 0)
    assert lengths[first].max() == lengths.max()  # the first batch of the run holds the longest example
    longest = [int(lengths[b].max()) for b in plan]
    assert longest == sorted(longest, reverse=True)
    x, _, _ = unpadded.batch(0, 0)  # what the first micro-batch trains on
    assert x.shape == (len(first), lengths.max() - 1)


def test_unpadded_longest_first_resume_is_exact(flow):
    kw = {"sft_budget": "unpadded", "sft_longest_first": True}
    straight, split = flow / "unpadded", flow / "unpadded_resumed"
    train(*lora_args(flow, straight, **kw))
    train(*lora_args(flow, split, max_iters=2, **kw))
    train(*lora_args(flow, split, init_from="resume", **kw))
    assert curve(split) == curve(straight) and len(curve(straight)) == 7  # 4 train, 3 eval records
    a, b = weights(straight), weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_train_embeddings_trains_them_whole_and_adapters_carry_them(flow):
    """lora_train_embeddings: every row of the embedding and head moves; the adapters folder (resumed
    midway) holds both whole and loads, as eval.py --ckpt loads it, to the merged run's weights and logits."""
    from safetensors import safe_open

    from model import load_model

    merged, adapters = flow / "emb_merged", flow / "emb_adapters"
    train(*lora_args(flow, merged, lora_train_embeddings=True))
    train(*lora_args(flow, adapters, lora_train_embeddings=True, lora_save="adapters", max_iters=2))
    train(*lora_args(flow, adapters, lora_train_embeddings=True, lora_save="adapters", init_from="resume"))
    assert curve(adapters) == curve(merged)
    with safe_open(adapters / "adapters.safetensors", "pt") as f:
        assert {"embed.weight", "head.weight"} <= set(f.keys())
    config = json.loads((adapters / "config.json").read_text())
    assert config["lora"]["embeddings"] is True and config["lora"]["token_ids"] is None
    base, _ = load_model(flow / "hf_llama")
    b, tuned = base.state_dict(), weights(merged)
    new = set(json.loads((merged / "config.json").read_text())["finetune"]["new_token_ids"])
    old = [i for i in range(base.cfg.vocab_size) if i not in new]
    moved = {name: (tuned[name][old] != b[name][old]).any(dim=1) for name in ("embed.weight", "head.weight")}
    assert moved["head.weight"].all() and moved["embed.weight"].sum() > 100  # known tokens' rows, not only the tags'
    assert torch.equal(tuned["blocks.0.attn_norm.weight"], b["blocks.0.attn_norm.weight"])  # still frozen
    a, m = load_model(adapters)[0], load_model(merged)[0]
    ids = torch.randint(0, a.cfg.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a(ids)[0], m(ids)[0])


@pytest.mark.parametrize("config,data", [("intent_lora_reference", "intent"), ("intent_full_reference", "intent")])
def test_reference_configs_at_toy_scale(flow, tmp_path, config, data):
    """The recipe's configs run as written (only the scale shrunk): epochs set the steps, the warmup is 5%
    of them rounded up (one line says how many), then the learning rate peaks."""
    out = tmp_path / config
    args = {"init_from": flow / "hf_llama", "data_dir": flow / data, "out_dir": out, "block_size": 256,
            "batch_tokens": 600, "epochs": 1, "eval_interval": 100, "eval_iters": 1, "log_interval": 1}
    train(REPO / "config" / f"{config}.py", *[f"--{k}={v}" for k, v in args.items()])
    recs = [json.loads(line) for line in open(out / "log.jsonl")]
    steps = next(r for r in recs if r["event"] == "start")["max_iters"]
    warmup = next(r for r in recs if r["event"] == "warmup")
    w = warmup["warmup_iters"]
    assert steps >= 4 and w == math.ceil(0.05 * steps) and "warmup" in (out / "log.jsonl").read_text()
    lr = {r["step"]: r["lr"] for r in recs if r["event"] == "train"}  # record k: the lr of step k - 1
    peak = json.loads((out / "config.json").read_text())["train"]["learning_rate"]
    assert [lr[k] for k in range(1, w + 2)] == pytest.approx([peak * k / (w + 1) for k in range(1, w + 1)] + [peak])


@pytest.mark.parametrize("case,expect", [
    ("bad target", "lora_targets: 'qkv' matches no module"),
    ("lora from scratch", "needs init_from"),
    ("no tokenizer.model", "no tokenizer.model"),
    ("added tokens differ", "has added token '<reasoning>'"),
    ("pretraining corpus", "not SFT data"),
    ("sft_budget", "sft_budget must be one of 'padded', 'unpadded', got 'rows'"),
    ("sft_longest_first", "sft_longest_first"),
    ("warmup_fraction 1", "warmup_fraction must be in [0, 1), got 1.0"),
    ("warmup_fraction and warmup_iters", "warmup_fraction=0.05 and warmup_iters=1 both set the warmup"),
    ("resume with another budget", "chose its batches with other settings (sft_budget='padded' there, 'unpadded' here)"),
    ("resume training embeddings", "'embeddings': False}, this one asks for"),
])
def test_bad_input(flow, lora_run, tmp_path, capsys, case, expect):
    args = lora_args(flow, tmp_path / "out", max_iters=1)
    if case == "bad target":
        args.append("--lora_targets=q,qkv")
    elif case == "lora from scratch":
        args.append("--init_from=scratch")
    elif case == "no tokenizer.model":
        import shutil

        shutil.copytree(flow / "hf_llama", tmp_path / "hf")
        (tmp_path / "hf" / "tokenizer.model").unlink()
        args.append(f"--init_from={tmp_path / 'hf'}")
    elif case == "added tokens differ":  # the intent checkpoint's tags are not in the LintSeq data's tokenizer
        args += [f"--init_from={lora_run}", f"--data_dir={flow / 'sft'}", "--block_size=160"]
    elif case == "sft_budget":
        args.append("--sft_budget=rows")
    elif case == "sft_longest_first":
        args.append("--sft_longest_first=sometimes")
    elif case == "warmup_fraction 1":
        args += ["--warmup_fraction=1.0", "--warmup_iters=100"]
    elif case == "warmup_fraction and warmup_iters":
        args.append("--warmup_fraction=0.05")  # lora_args sets warmup_iters=1
    elif case.startswith("resume"):  # lora_run trained with the defaults: padded, only the new rows
        args += [f"--out_dir={lora_run}", "--init_from=resume",
                 "--sft_budget=unpadded" if case == "resume with another budget" else "--lora_train_embeddings=true"]
    else:
        (tmp_path / "corpus").mkdir()
        (tmp_path / "corpus" / "meta.json").write_text(json.dumps({"format": "codelm-corpus-v1"}))
        args.append(f"--data_dir={tmp_path / 'corpus'}")
    with pytest.raises(SystemExit) as e:
        train(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and expect in err[-1] and err[-1].startswith("train.py: error:")
