"""Fine-tuning with train.py: our 8-bit AdamW (codes, state size, trajectory vs torch AdamW, state_dict
round trips), and the whole user flow of issue 4: a Llama-shaped Hugging Face folder -> `data.py sft` /
`data.py intent` -> task='sft' with LoRA (config/intent_lora.py) and with adamw8bit (config/intent_full.py)
-> exact resume -> DDP and FSDP on two CPU ranks -> `model.py export` -> loaded back (and by transformers,
when installed). Single-process runs call train.main() in this process (a fresh module each time) to
save interpreter start-ups; two-rank runs go through torchrun as users run them."""
import importlib
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_torchrun
from test_data_sft import INTENT_RECORDS
from test_model_hf import make_hf_folder


def tiny_model(n_embd=64, vocab=1024, seed=0):
    from model import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_embd=n_embd))


def param_groups(model, wd=0.1):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": wd},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


# ---- 8-bit AdamW
def test_dynamic_codes():
    from train import dynamic_code

    for signed in (True, False):
        code = dynamic_code(signed)
        assert code.numel() == 256 and torch.all(code[1:] >= code[:-1]) and code.max() == 1.0
        distinct = torch.unique(code)
        if signed:  # symmetric with an exact zero (odd count: 255 distinct values)
            assert len(distinct) == 255 and 0.0 in distinct and torch.equal(distinct, -distinct.flip(0))
        else:       # all positive: a second moment never rounds to 0
            assert len(distinct) == 256 and code.min() > 0
        small = distinct[distinct > 0]
        assert small.min() <= 1e-6 and (small[1:] / small[:-1]).max() < 6  # spans decades without big holes


def test_nearest_code_is_bucketize_bit_for_bit():
    """The fp16-table search gives torch.bucketize's answer everywhere, midpoints and their float32
    neighbours, the smallest codes, 0, +-1, inf and NaN included, on contiguous or strided input."""
    from train import dynamic_code, nearest_code, nearest_code_tables

    gen = torch.Generator().manual_seed(0)
    for signed in (True, False):
        code = torch.unique(dynamic_code(signed))
        mids = (code[1:] + code[:-1]) / 2
        wide = torch.randn(200_000, generator=gen) * torch.exp(torch.randn(200_000, generator=gen) * 4)
        near = torch.cat([mids, code, mids.nextafter(torch.tensor(2.0)), mids.nextafter(torch.tensor(-2.0))])
        near = torch.cat([near, near.half().float(), -near])
        special = torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-9, -1e-9, 6e-8, 3e-8, 1e-30,
                                float("inf"), -float("inf"), float("nan")])
        x = torch.cat([wide.clamp(-1, 1) if signed else wide.abs().clamp(max=1), near, special])
        tables = nearest_code_tables(code)
        assert torch.equal(nearest_code(x, *tables), torch.bucketize(x, mids, out_int32=True))
        strided = x[: (x.numel() // 6) * 6].view(-1, 6)[:, ::2]
        want = torch.bucketize(strided.contiguous(), mids, out_int32=True)
        assert torch.equal(nearest_code(strided, *tables), want)


def test_adamw8bit_follows_adamw_with_a_quarter_of_the_state():
    from train import AdamW8bit

    ref, q = tiny_model(n_embd=128), tiny_model(n_embd=128)
    o_ref = torch.optim.AdamW(param_groups(ref), lr=3e-3, betas=(0.9, 0.95))
    o_q = AdamW8bit(param_groups(q), lr=3e-3, betas=(0.9, 0.95))
    data = torch.randint(0, 1024, (32, 33), generator=torch.Generator().manual_seed(0))
    losses = {"ref": [], "q": []}
    for step in range(25):
        x = data[(step * 4) % 32:(step * 4) % 32 + 4]
        for name, m, o in (("ref", ref, o_ref), ("q", q, o_q)):
            _, loss = m(x[:, :-1], x[:, 1:])
            loss.backward()
            o.step()
            o.zero_grad()
            losses[name].append(loss.item())
    gap = max(abs(a - b) for a, b in zip(losses["ref"], losses["q"]))
    assert losses["q"][-1] < losses["q"][0] - 0.5 and gap < 0.03, (losses, gap)
    n = sum(p.numel() for p in q.parameters())
    ref_bytes = sum(v.numel() * v.element_size() for s in o_ref.state.values() for v in s.values() if v.dim())
    assert 1.9 < o_q.state_bytes() / n < 2.2 and 7.9 < ref_bytes / n <= 8.0
    state = o_q.state[q.blocks[0].attn.q.weight]
    assert state["m_q"].dtype == torch.uint8 and state["m_absmax"].shape == (128, 1)
    assert "exp_avg" in o_q.state[q.norm.weight]  # 1-D / small tensors keep fp32 state


def test_adamw8bit_state_dict_round_trip_continues_exactly():
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_optimizer_state_dict,
                                                         set_optimizer_state_dict)

    from train import AdamW8bit

    model = tiny_model()
    opt = AdamW8bit(param_groups(model), lr=1e-3)
    data = torch.randint(0, 1024, (8, 17), generator=torch.Generator().manual_seed(0))

    def step(m, o, i):
        x = data[i % 8:i % 8 + 2]
        m(x[:, :-1], x[:, 1:])[1].backward()
        o.step()
        o.zero_grad()

    for i in range(3):
        step(model, opt, i)
    # the path train.py's checkpoints take: full-state helpers, then torch.save / torch.load
    saved = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    buf = io.BytesIO()
    torch.save(saved, buf)
    saved = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    clone = tiny_model()
    clone.load_state_dict(model.state_dict())
    opt2 = AdamW8bit(param_groups(clone), lr=1e-3)
    set_optimizer_state_dict(clone, opt2, saved, options=StateDictOptions(full_state_dict=True))
    st = opt2.state[clone.blocks[1].mlp.up.weight]
    assert st["v_q"].dtype == torch.uint8 and st["v_absmax"].dtype == torch.float32  # not cast to the param dtype
    for i in range(3, 6):
        step(model, opt, i)
        step(clone, opt2, i)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), clone.parameters()))


# ---- the fine-tuning flow
def train(*args):
    """train.py in this process, from fresh module defaults."""
    import train as train_module

    t = importlib.reload(train_module)
    t.main([str(a) for a in args])


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
    r = subprocess.run([sys.executable, str(REPO / "model.py"), "export", "--ckpt", str(lora_run), "--to", str(hf)],
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


@pytest.mark.parametrize("case,expect", [
    ("bad target", "lora_targets: 'qkv' matches no module"),
    ("lora from scratch", "needs init_from"),
    ("no tokenizer.model", "no tokenizer.model"),
    ("added tokens differ", "has added token '<reasoning>'"),
    ("pretraining corpus", "not SFT data"),
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
    else:
        (tmp_path / "corpus").mkdir()
        (tmp_path / "corpus" / "meta.json").write_text(json.dumps({"format": "codelm-corpus-v1"}))
        args.append(f"--data_dir={tmp_path / 'corpus'}")
    with pytest.raises(SystemExit) as e:
        train(*args)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and expect in err[-1] and err[-1].startswith("train.py: error:")
