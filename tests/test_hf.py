"""Hugging Face interop (hf.py): importing Llama/Mistral folders (strict, sharded, tied, padded vocab,
dtype), exporting ours as LlamaForCausalLM, exact round trips, a cross-check against transformers when it
is installed (skipped otherwise), and every bad input the import must refuse."""
import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conftest import REPO, UNWRITABLE, unwritable_output


def hf_tensors(vocab, n_layer=2, hidden=64, heads=4, kv=2, inter=96, tie=False, seed=0):
    """Random Llama weights under Hugging Face names (norm weights near 1, like a trained model)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.05  # noqa: E731
    hd = hidden // heads
    t = {"model.embed_tokens.weight": r(vocab, hidden), "model.norm.weight": 1 + r(hidden)}
    if not tie:
        t["lm_head.weight"] = r(vocab, hidden)
    for i in range(n_layer):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = r(heads * hd, hidden)
        t[p + "self_attn.k_proj.weight"] = r(kv * hd, hidden)
        t[p + "self_attn.v_proj.weight"] = r(kv * hd, hidden)
        t[p + "self_attn.o_proj.weight"] = r(hidden, heads * hd)
        t[p + "mlp.gate_proj.weight"] = r(inter, hidden)
        t[p + "mlp.up_proj.weight"] = r(inter, hidden)
        t[p + "mlp.down_proj.weight"] = r(hidden, inter)
        t[p + "input_layernorm.weight"] = 1 + r(hidden)
        t[p + "post_attention_layernorm.weight"] = 1 + r(hidden)
    return t


def make_hf_folder(folder, tokenizer_model, vocab_extra=5, n_layer=2, hidden=64, heads=4, kv=2, inter=96, tie=False,
                   shards=False, arch="LlamaForCausalLM", config_extra=None, dtype=torch.float32, seed=0):
    """A small Llama-shaped Hugging Face folder as save_pretrained writes it: config.json, model.safetensors
    (or two shards + model.safetensors.index.json), tokenizer.model. Its vocab is the tokenizer's plus
    vocab_extra rows (not a multiple of 64, as real models often are)."""
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    vocab = spm.SentencePieceProcessor(model_file=str(tokenizer_model)).get_piece_size() + vocab_extra
    t = {k: v.to(dtype) for k, v in hf_tensors(vocab, n_layer, hidden, heads, kv, inter, tie, seed).items()}
    if shards:
        names = sorted(t)
        parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
                 "model-00002-of-00002.safetensors": names[len(names) // 2:]}
        for f, ns in parts.items():
            save_file({n: t[n] for n in ns}, folder / f, metadata={"format": "pt"})
        index = {"metadata": {}, "weight_map": {n: f for f, ns in parts.items() for n in ns}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(t, folder / "model.safetensors", metadata={"format": "pt"})
    cfg = {"architectures": [arch], "model_type": "mistral" if arch.startswith("Mistral") else "llama",
           "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": n_layer,
           "num_attention_heads": heads, "num_key_value_heads": kv, "max_position_embeddings": 256,
           "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "tie_word_embeddings": tie, "hidden_act": "silu",
           "rope_scaling": None, "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2,
           "torch_dtype": str(dtype).removeprefix("torch.")}
    cfg.update(config_extra or {})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copyfile(tokenizer_model, folder / "tokenizer.model")
    return folder


def reference_llama_logits(t, cfg, ids):
    """Llama's forward pass written directly from the Hugging Face tensors and config (rotate-half RoPE,
    GQA by repeating k/v heads, RMSNorm, SwiGLU): an independent check of our import."""
    H, KV, C = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]
    D, eps, B, T = C // H, cfg["rms_norm_eps"], *ids.shape
    inv = 1.0 / cfg["rope_theta"] ** (torch.arange(0, D, 2).float() / D)
    ang = torch.outer(torch.arange(T).float(), inv)
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rope(x):
        return x * cos + torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1) * sin

    x = t["model.embed_tokens.weight"][ids]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, t[p + "input_layernorm.weight"])
        q = (h @ t[p + "self_attn.q_proj.weight"].T).view(B, T, H, D).transpose(1, 2)
        k = (h @ t[p + "self_attn.k_proj.weight"].T).view(B, T, KV, D).transpose(1, 2)
        v = (h @ t[p + "self_attn.v_proj.weight"].T).view(B, T, KV, D).transpose(1, 2)
        q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
        att = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill(~causal, float("-inf")).softmax(-1)
        x = x + (att @ v).transpose(1, 2).reshape(B, T, C) @ t[p + "self_attn.o_proj.weight"].T
        h = rms(x, t[p + "post_attention_layernorm.weight"])
        x = x + (F.silu(h @ t[p + "mlp.gate_proj.weight"].T) * (h @ t[p + "mlp.up_proj.weight"].T)) @ t[p + "mlp.down_proj.weight"].T
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return rms(x, t["model.norm.weight"]) @ head.T


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tokenizer_path):
    return make_hf_folder(tmp_path_factory.mktemp("hf") / "llama", tokenizer_path)


def _weights(folder):
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    out = {}
    for f in sorted(folder.glob("model-*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize("tie,shards", [(False, False), (True, True)])
def test_import_matches_the_reference_forward(tmp_path, tokenizer_path, tie, shards):
    from model import load_model

    folder = make_hf_folder(tmp_path / "hf", tokenizer_path, tie=tie, shards=shards)
    cfg = json.loads((folder / "config.json").read_text())
    model, config = load_model(folder)
    assert config["format"] == "hf"
    assert model.cfg.vocab_size == cfg["vocab_size"] and model.cfg.vocab_size % 64 != 0
    assert model.embed.weight.shape[0] % 64 == 0 and model.cfg.rope_theta == 500000.0 and model.cfg.norm_eps == 1e-6
    assert model.cfg.n_kv_head == 2 and model.cfg.tie_embeddings == tie
    ids = torch.randint(0, cfg["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, _ = model(ids)
    ref = reference_llama_logits(_weights(folder), cfg, ids)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_import_straight_into_bf16(tmp_path, tokenizer_path):
    from model import load_model

    folder = make_hf_folder(tmp_path / "hf", tokenizer_path, dtype=torch.bfloat16)
    model, _ = load_model(folder)  # dtype None: as stored
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    model32, _ = load_model(folder, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in model32.parameters())
    assert torch.equal(model32.blocks[0].attn.q.weight, model.blocks[0].attn.q.weight.float())


def test_mistral_without_sliding_window_loads(tmp_path, tokenizer_path):
    from model import load_model

    folder = make_hf_folder(tmp_path / "hf", tokenizer_path, arch="MistralForCausalLM",
                            config_extra={"sliding_window": None, "head_dim": 16})
    model, _ = load_model(folder)
    assert model.cfg.n_head == 4


def _grown_ckpt(tmp_path, tiny_ckpt):
    """tiny_ckpt with two added tokens (the vocab grown, new rows = mean), saved as a new checkpoint."""
    from data import Tokenizer
    from finetune import grow_vocab
    from checkpoint import save_checkpoint
    from model import load_model, make_config, model_state_dict

    model, config = load_model(tiny_ckpt)
    tok = Tokenizer.load(tiny_ckpt)
    tok.add_tokens(["<|diff|>", "<code>"])
    grow_vocab(model, tok.vocab_size)
    folder = tmp_path / "grown"
    save_checkpoint(folder, model_state_dict(model), make_config(model.cfg, tok.to_config(), {}, 7,
                                                                 {"edit_format": "lintseq", "sugar": None}),
                    tokenizer_file=tok.model_path)
    return folder


def test_export_round_trip_is_exact(tmp_path, tiny_ckpt):
    from data import Tokenizer
    from hf import export_hf
    from model import load_model

    src = _grown_ckpt(tmp_path, tiny_ckpt)
    hf = export_hf(src, tmp_path / "hf")
    names = {p.name for p in hf.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
            "special_tokens_map.json", "generation_config.json"} <= names
    cfg = json.loads((hf / "config.json").read_text())
    ours, _ = load_model(src)
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["vocab_size"] == ours.cfg.vocab_size
    weights = load_file(hf / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape[0] == ours.cfg.vocab_size  # padding rows stripped
    assert ("lm_head.weight" in weights) == (not cfg["tie_word_embeddings"])
    decoder = json.loads((hf / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    tok = Tokenizer.load(src)
    for t, i in tok.added_tokens.items():
        assert decoder[str(i)]["content"] == t
    back, config = load_model(hf)
    assert config["postprocess"]["edit_format"] == "lintseq"
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert Tokenizer.load(hf).added_tokens == tok.added_tokens  # base special pieces are not "added"


def test_export_refuses_tokens_that_took_over_sentencepiece_ids(tmp_path, tiny_ckpt):
    """start_id reuse on a tokenizer.model: SentencePiece still gives the displaced piece's text its id, so
    no transformers tokenizer could encode as we do; export refuses before writing anything."""
    from data import Tokenizer
    from hf import export_hf
    from checkpoint import save_checkpoint
    from model import ModelError, load_model, make_config, model_state_dict

    model, _ = load_model(tiny_ckpt)
    tok = Tokenizer.load(tiny_ckpt)
    victim = max((i for i in range(300, 1000) if tok.encode(tok.decode([i])) == [i]), key=lambda i: len(tok.decode([i])))
    assert tok.base.encode(tok.decode([victim])) == [victim]
    tok.add_tokens(["<S0>"], start_id=victim)
    save_checkpoint(tmp_path / "sugar", model_state_dict(model), make_config(model.cfg, tok.to_config()), tokenizer_file=tok.model_path)
    with pytest.raises(ModelError, match=rf"1 added token\(s\) took over base ids \(add_tokens start_id\): '<S0>' \(id {victim}, "
                       r".*which a tokenizer.model cannot express .* to export, add the tokens at new ids \(no start_id\)"):
        export_hf(tmp_path / "sugar", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_export_cli(tmp_path, tiny_ckpt, capsys):
    import hf

    with pytest.raises(SystemExit) as e:
        hf.main(["--help"])
    assert e.value.code == 0 and "export" in capsys.readouterr().out
    # as a user runs it (one subprocess; the other calls go through the same main())
    r = subprocess.run([sys.executable, str(REPO / "hf.py"), "export", "--ckpt", str(tiny_ckpt), "--to", str(tmp_path / "hf"),
                        "--dtype", "bfloat16"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert load_file(tmp_path / "hf" / "model.safetensors")["model.norm.weight"].dtype == torch.bfloat16
    with pytest.raises(SystemExit) as e:
        hf.main(["export", "--ckpt", str(tiny_ckpt), "--to", str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "not empty" in err and err.startswith("hf.py: error:") and err.count("\n") == 1
    hf.main(["import", "--hf", str(tmp_path / "hf"), "--to", str(tmp_path / "back")])
    assert json.loads((tmp_path / "back" / "config.json").read_text())["format"] == "codelm"
    hf.main(["info", "--ckpt", str(tmp_path / "hf")])
    assert '"format": "hf"' in capsys.readouterr().out


def test_same_logits_as_transformers(tmp_path, tiny_ckpt, hf_dir):
    transformers = pytest.importorskip("transformers")
    from hf import export_hf
    from model import load_model

    hf = export_hf(_grown_ckpt(tmp_path, tiny_ckpt), tmp_path / "hf")
    for folder in (hf, hf_dir):  # our export, and a folder as transformers users have them
        ours, _ = load_model(folder)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        assert type(theirs).__name__ == "LlamaForCausalLM"
        ids = torch.randint(0, ours.cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(ours(ids)[0], theirs(ids).logits, atol=1e-5, rtol=0)


# ---- bad input: one clear error naming the problem
def _break(folder, what):
    cfg = json.loads((folder / "config.json").read_text())
    if what == "no config.json":
        (folder / "config.json").unlink()
    elif what == "no tokenizer.model":
        (folder / "tokenizer.model").unlink()
    elif what == "missing tensor":
        t = load_file(folder / "model.safetensors")
        del t["model.layers.1.mlp.up_proj.weight"]
        save_file(t, folder / "model.safetensors")
    elif what == "unmapped tensor":
        t = load_file(folder / "model.safetensors")
        t["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
        save_file(t, folder / "model.safetensors")
    elif what == "wrong shape":
        t = load_file(folder / "model.safetensors")
        t["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 128)
        save_file(t, folder / "model.safetensors")
    elif what == "bin weights only":
        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(b"")
    else:
        cfg.update({"qwen2": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"},
                    "unknown model_type": {"architectures": ["FalconForCausalLM"], "model_type": "falcon"},
                    "gemma2": {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2"},
                    "phi3": {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3"},
                    "rope_scaling": {"rope_scaling": {"rope_type": "yarn", "factor": 8.0}},
                    "llama3 incomplete": {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
                    "sliding window": {"architectures": ["MistralForCausalLM"], "sliding_window": 64},
                    "attention bias": {"attention_bias": True},
                    "gelu": {"hidden_act": "gelu"}}[what])
        (folder / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("what,expect", [
    ("no config.json", "no config.json"), ("no tokenizer.model", "no tokenizer.model"),
    ("missing tensor", "model.layers.1.mlp.up_proj.weight"), ("unmapped tensor", "q_proj.bias"),
    ("wrong shape", "down_proj.weight has shape (64, 128)"), ("bin weights only", ".bin"),
    ("qwen2", "missing ['model.layers.0.self_attn.k_proj.bias'"),  # Qwen2 has q/k/v biases
    ("unknown model_type", "unsupported architecture FalconForCausalLM (model_type 'falcon'"),
    ("gemma2", "Gemma2ForCausalLM: codelm lacks logit soft-capping"), ("phi3", "Phi3ForCausalLM: codelm lacks fused qkv_proj"),
    ("rope_scaling", "rope_scaling 'yarn' (supported: linear, llama3)"), ("llama3 incomplete", "lacks 'low_freq_factor'"),
    ("sliding window", "sliding_window=64"), ("attention bias", "missing ['model.layers.0.self_attn.k_proj.bias'"),
    ("gelu", "hidden_act='gelu'")])
def test_bad_hf_folders_are_refused_by_name(tmp_path, hf_dir, what, expect):
    from model import ModelError, load_model

    folder = tmp_path / "hf"
    shutil.copytree(hf_dir, folder)
    _break(folder, what)
    with pytest.raises(ModelError) as e:
        load_model(folder)
    assert expect in str(e.value)


@pytest.mark.parametrize("where", UNWRITABLE)
@pytest.mark.parametrize("cmd", ["import", "export"])
def test_a_target_nobody_can_write_is_one_line_before_the_load(tmp_path, tiny_ckpt, cmd, where, capsys):
    import hf

    to, cause = unwritable_output(tmp_path, where)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as e:
        hf.main([cmd, "--hf" if cmd == "import" else "--ckpt", str(tiny_ckpt), "--to", str(to)])
    assert e.value.code == 2 and capsys.readouterr().err == f"hf.py: error: --to {to}: {cause}\n"
    assert sorted(tmp_path.rglob("*")) == before
