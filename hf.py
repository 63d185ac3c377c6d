"""
Hugging Face interop: Llama / Mistral, Qwen2, OLMo and GPT-NeoX (Pythia) folders loaded as a codelm GPT,
and a codelm checkpoint exported back as a folder of its own model_type, with its tokenizer
(SentencePiece tokenizer.model, or a byte-level BPE tokenizer.json).

    python hf.py info --ckpt FOLDER                  # what a model folder is (ours or Hugging Face), or why refused
    python hf.py import --hf pythia/ --to out/pythia # a Hugging Face folder as a codelm checkpoint
    python hf.py export --ckpt out/ --to hf/         # a codelm checkpoint as a Hugging Face folder

model.load_model() reads Hugging Face folders through load_hf_model(), so train.py --init_from=FOLDER
and eval.py --ckpt FOLDER take them directly.
"""
import argparse
import inspect
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from checkpoint import CheckpointError, reading_checkpoint, save_checkpoint
from data import DataError, Tokenizer, check_output_path, run_command
from model import (CHECKPOINT_FORMAT, GPT, GPTConfig, ModelError, load_model, load_state, make_config,
                   model_state_dict, read_config)


# Each family is our network under other tensor names: both sides use rotate-half RoPE, so import and
# export are a renaming (plus GPT-NeoX's fused q/k/v split per head, and vocab padding: our embedding
# has a multiple of 64 rows, theirs exactly vocab_size). Config fields that would change the computation
# and that GPTConfig cannot express are refused by name.
@dataclass(frozen=True)
class Family:
    arch: str        # the architectures[0] an export writes
    layers: str      # prefix of layer i's tensors, before the index
    layer_names: dict  # their module name in a layer -> ours in a block
    top_names: dict    # their module name outside the layers -> ours


_LLAMA_LAYER = {"self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
                "self_attn.o_proj": "attn.o", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up",
                "mlp.down_proj": "mlp.down", "input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
_LLAMA_TOP = {"model.embed_tokens": "embed", "model.norm": "norm", "lm_head": "head"}
_NEOX_LAYER = {"attention.query_key_value": "attn.qkv", "attention.dense": "attn.o", "mlp.dense_h_to_4h": "mlp.up",
               "mlp.dense_4h_to_h": "mlp.down", "input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
_NEOX_TOP = {"gpt_neox.embed_in": "embed", "gpt_neox.final_layer_norm": "norm", "embed_out": "head"}
FAMILIES = {"llama": Family("LlamaForCausalLM", "model.layers.", _LLAMA_LAYER, _LLAMA_TOP),
            "mistral": Family("MistralForCausalLM", "model.layers.", _LLAMA_LAYER, _LLAMA_TOP),
            "qwen2": Family("Qwen2ForCausalLM", "model.layers.", _LLAMA_LAYER, _LLAMA_TOP),
            "olmo": Family("OlmoForCausalLM", "model.layers.", _LLAMA_LAYER, _LLAMA_TOP),
            "gpt_neox": Family("GPTNeoXForCausalLM", "gpt_neox.layers.", _NEOX_LAYER, _NEOX_TOP)}
HF_ARCHITECTURES = tuple(f.arch for f in FAMILIES.values())
# families we know and do not run, with what GPTConfig lacks for them
REFUSED = {"gemma2": "logit soft-capping (attn_logit_softcapping, final_logit_softcapping), pre/post feed-forward "
                     "norms, (1 + weight) RMSNorm, embeddings scaled by sqrt(hidden_size), query_pre_attn_scalar and "
                     "alternating sliding-window layers",
           "gemma": "(1 + weight) RMSNorm and embeddings scaled by sqrt(hidden_size)",
           "phi3": "fused qkv_proj / gate_up_proj tensors, sliding-window attention and longrope/su RoPE scaling"}
# buffers some transformers versions saved: recomputed, never weights
_HF_IGNORED = ("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")
# transformers >= 5 reads the tokenizer of every qwen2 folder with Qwen2Tokenizer: tokenizer.json's vocabulary
# and merges, but Qwen2.5's own normalizer (NFC) and pre-tokenizer split, this one
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
ROPE_TYPES = ("default", "linear", "llama3")
GELUS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


def is_hf_config(config):
    """Whether a parsed config.json is a Hugging Face model config (not a codelm checkpoint)."""
    return config.get("format") != CHECKPOINT_FORMAT and ("architectures" in config or "model_type" in config)


def hf_family(hf, where="config.json"):
    """model_type of a Hugging Face config we can run; ModelError naming the architecture otherwise."""
    arch = hf.get("architectures") or []
    mtype = next((t for t, f in FAMILIES.items() if f.arch in arch), hf.get("model_type"))  # the class decides
    name = arch[0] if arch else repr(mtype)
    if mtype in REFUSED:
        raise ModelError(f"{where}: unsupported architecture {name}: codelm lacks {REFUSED[mtype]}")
    if mtype not in FAMILIES or (arch and FAMILIES[mtype].arch not in arch):
        raise ModelError(f"{where}: unsupported architecture {name} (model_type {mtype!r}; supported: {', '.join(HF_ARCHITECTURES)})")
    return mtype


def _rope_fields(hf, name, where):
    """GPTConfig RoPE fields from either config style: rope_theta + rope_scaling (transformers < 5) or
    rope_parameters (>= 5); GPT-NeoX's rotary_pct / rotary_emb_base."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
        params.update(scaling)
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in ROPE_TYPES:
        raise ModelError(f"{where}: unsupported architecture {name} with rope_scaling {kind!r} (supported: linear, llama3)")
    theta = params.get("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    fraction = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)))
    out = {"rope_theta": float(theta), "rotary_fraction": float(fraction)}
    if kind == "linear":
        out.update(rope_scaling="linear", rope_factor=float(params["factor"]))
    elif kind == "llama3":
        try:
            out.update(rope_scaling="llama3", rope_factor=float(params["factor"]),
                       rope_low_freq_factor=float(params["low_freq_factor"]),
                       rope_high_freq_factor=float(params["high_freq_factor"]),
                       rope_original_context=int(params["original_max_position_embeddings"]))
        except KeyError as e:
            raise ModelError(f"{where}: llama3 rope_scaling lacks {e.args[0]!r}")
    return out


def hf_model_config(hf, where="config.json"):
    """GPTConfig for a Hugging Face config dict; ModelError naming what we cannot run."""
    mtype = hf_family(hf, where)
    name = FAMILIES[mtype].arch
    if hf.get("quantization_config"):
        raise ModelError(f"{where}: quantized weights ({hf['quantization_config'].get('quant_method', '?')}) are not supported")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if k not in hf]
    if missing:
        raise ModelError(f"{where}: missing keys {missing}")
    n_head = int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim")
    if head_dim is not None and int(head_dim) != int(hf["hidden_size"]) // n_head:
        raise ModelError(f"{where}: unsupported architecture {name} with head_dim={head_dim} != hidden_size / num_attention_heads")
    block = int(hf.get("max_position_embeddings", 2048))
    window = hf.get("sliding_window")
    if window is not None and hf.get("use_sliding_window", True) and int(window) < block:
        raise ModelError(f"{where}: unsupported architecture {name} with sliding_window={window} "
                         f"(< max_position_embeddings {block}; codelm attends over the whole context)")
    act = hf.get("hidden_act", "gelu" if mtype == "gpt_neox" else "silu")
    kw = dict(vocab_size=int(hf["vocab_size"]), block_size=block, n_layer=int(hf["num_hidden_layers"]), n_head=n_head,
              n_kv_head=int(hf.get("num_key_value_heads") or n_head), n_embd=int(hf["hidden_size"]),
              intermediate_size=int(hf["intermediate_size"]), tie_embeddings=bool(hf.get("tie_word_embeddings", mtype == "olmo")),
              **_rope_fields(hf, name, where))
    if mtype == "gpt_neox":
        if act not in GELUS:
            raise ModelError(f"{where}: unsupported architecture {name} with hidden_act={act!r} (only {', '.join(GELUS)})")
        bias = bool(hf.get("attention_bias", True))
        kw.update(norm="layernorm", norm_bias=True, norm_eps=float(hf.get("layer_norm_eps", 1e-5)), qkv_bias=bias,
                  out_bias=bias, mlp_bias=True, mlp_gated=False, mlp_act=GELUS[act],
                  parallel_residual=bool(hf.get("use_parallel_residual", True)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
        return GPTConfig(**kw)
    if act != "silu":
        raise ModelError(f"{where}: unsupported architecture {name} with hidden_act={act!r} (only silu/SwiGLU)")
    if kw["rotary_fraction"] != 1.0:
        raise ModelError(f"{where}: unsupported architecture {name} with partial_rotary_factor={kw['rotary_fraction']}")
    bias = bool(hf.get("attention_bias", False))
    if mtype == "olmo":  # LayerNorm without weight or bias, eps fixed at 1e-5 by the architecture
        clip = hf.get("clip_qkv")
        kw.update(norm="layernorm", norm_affine=False, norm_eps=1e-5, qkv_bias=bias, out_bias=bias, qkv_clip=float(clip or 0.0))
    elif mtype == "qwen2":  # biases on q/k/v only
        kw.update(norm_eps=float(hf.get("rms_norm_eps", 1e-6)), qkv_bias=True)
    else:
        kw.update(norm_eps=float(hf.get("rms_norm_eps", 1e-6)), qkv_bias=bias, out_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)))
    return GPTConfig(**kw)


def export_family(cfg):
    """The model_type a GPTConfig exports as; ModelError naming the combination no family has."""
    neox = dict(norm="layernorm", norm_affine=True, norm_bias=True, mlp_gated=False, mlp_bias=True, qkv_bias=cfg.out_bias,
                mlp_act="gelu" if cfg.mlp_act == "silu" else cfg.mlp_act, n_kv_head=cfg.n_head, rope_scaling="none", qkv_clip=0.0)
    if cfg.norm == "layernorm" and cfg.norm_bias and not cfg.mlp_gated:
        family = "gpt_neox"
        want = neox
    elif cfg.norm == "layernorm" and not cfg.norm_affine:
        family = "olmo"
        want = dict(mlp_gated=True, mlp_act="silu", mlp_bias=False, qkv_bias=cfg.out_bias, parallel_residual=False,
                    rotary_fraction=1.0, rope_scaling="none", norm_eps=1e-5)
    elif cfg.norm == "rmsnorm" and cfg.qkv_bias and not cfg.out_bias and not cfg.mlp_bias:
        family = "qwen2"
        want = dict(mlp_gated=True, mlp_act="silu", parallel_residual=False, rotary_fraction=1.0, qkv_clip=0.0)
    else:
        family = "llama"
        want = dict(norm="rmsnorm", mlp_gated=True, mlp_act="silu", qkv_bias=cfg.out_bias, parallel_residual=False,
                    rotary_fraction=1.0, qkv_clip=0.0)
    wrong = {k: getattr(cfg, k) for k, v in want.items() if getattr(cfg, k) != v}
    if wrong:
        raise ModelError(f"export: no Hugging Face family has this architecture (closest {FAMILIES[family].arch}, "
                         f"which cannot express {wrong})")
    return family


def hf_to_ours(name, family="llama"):
    """Our tensor name for a Hugging Face one ('blocks.i.attn.qkv.*' for GPT-NeoX's fused projection),
    or None if it has no counterpart."""
    fam = FAMILIES[family]
    module, _, kind = name.rpartition(".")
    if kind not in ("weight", "bias"):
        return None
    if module in fam.top_names:
        return f"{fam.top_names[module]}.{kind}"
    if name.startswith(fam.layers):
        i, _, rest = name[len(fam.layers):].partition(".")
        ours = fam.layer_names.get(rest.rpartition(".")[0])
        if i.isdigit() and ours:
            return f"blocks.{i}.{ours}.{kind}"
    return None


def ours_to_hf(name, family="llama"):
    fam = FAMILIES[family]
    module, _, kind = name.rpartition(".")
    for theirs, ours in fam.top_names.items():
        if module == ours:
            return f"{theirs}.{kind}"
    parts = module.split(".")
    inverse = {v: k for k, v in fam.layer_names.items()}
    if parts[0] == "blocks" and ".".join(parts[2:]) in inverse:
        return f"{fam.layers}{parts[1]}.{inverse['.'.join(parts[2:])]}.{kind}"
    raise ModelError(f"export: tensor {name!r} has no {fam.arch} name (LoRA adapters must be merged first)")


def split_neox_qkv(t, n_head):
    """GPT-NeoX's query_key_value rows are per head [q_h, k_h, v_h]: split into our q, k, v."""
    parts = t.reshape(n_head, 3, -1, *t.shape[1:])
    return [parts[:, j].reshape(-1, *t.shape[1:]).contiguous() for j in range(3)]


def fuse_neox_qkv(q, k, v, n_head):
    return torch.stack([x.reshape(n_head, -1, *x.shape[1:]) for x in (q, k, v)], dim=1).reshape(-1, *q.shape[1:])


def hf_weight_files(folder):
    """name -> safetensors file of a Hugging Face folder (one file, or shards via the index)."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelError(f"{index}: not a safetensors index ({e})")
        for f in sorted(set(weight_map.values())):
            if not (folder / f).is_file():
                raise ModelError(f"{index}: shard {f} is missing")
        return {k: folder / f for k, f in weight_map.items()}
    single = folder / "model.safetensors"
    if single.is_file():
        with safe_open(single, "pt") as f:
            return {k: single for k in f.keys()}
    if any(folder.glob("*.bin")):
        raise ModelError(f"{folder}: only PyTorch .bin weights; codelm reads safetensors (convert with transformers' save_pretrained(safe_serialization=True))")
    raise ModelError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def checkpoint_config(folder):
    """The config of any model folder in codelm's shape ({"format", "model", "tokenizer", "postprocess",
    ...}); a Hugging Face folder is translated (format 'hf', its model_type under "hf_family", the original
    under "hf"), its tokenizer loaded and checked against the embedding."""
    folder = Path(folder)
    config = read_config(folder)
    if not is_hf_config(config):
        return config
    where = str(folder / "config.json")
    cfg = hf_model_config(config, where=where)
    if not any((folder / n).is_file() for n in ("tokenizer.model", "tokenizer.json")):
        raise ModelError(f"{folder}: no tokenizer.model or tokenizer.json (codelm needs the model's tokenizer)")
    try:
        tok = Tokenizer.load(folder)
    except DataError as e:
        raise ModelError(str(e))
    if tok.vocab_size > cfg.vocab_size:
        raise ModelError(f"{folder}: the tokenizer ({tok.file_name}) has {tok.vocab_size} ids but the embedding only "
                         f"{cfg.vocab_size} rows (vocab_size in {where})")
    return {"format": "hf", "hf_family": hf_family(config, where), "model": asdict(cfg), "tokenizer": tok.to_config(),
            "train": {}, "step": 0, "postprocess": config.get("codelm_postprocess") or {"edit_format": None, "sugar": None},
            "hf": config}


def _check_names(folder, files, family, cfg, expected):
    """Map every Hugging Face tensor name to ours; ModelError listing what does not map, what is missing,
    what the config gives the model no place for. Returns {our name (attn.qkv for GPT-NeoX): their name}."""
    def fused(k):  # GPT-NeoX stores our q, k, v as one tensor
        return k.replace(".attn.k.", ".attn.q.").replace(".attn.v.", ".attn.q.").replace(".attn.q.", ".attn.qkv.") \
            if family == "gpt_neox" else k
    needed = {fused(k) for k in expected}
    head = ours_to_hf("head.weight", family)
    unmapped = sorted(k for k in files if hf_to_ours(k, family) is None and not k.endswith(_HF_IGNORED))
    if cfg.tie_embeddings and head in files:
        unmapped.append(f"{head} (tie_word_embeddings is true)")
    mapped = {hf_to_ours(k, family): k for k in files if hf_to_ours(k, family) is not None and not (cfg.tie_embeddings and k == head)}
    missing = sorted(ours_to_hf(k, family) for k in needed if k not in mapped)
    unexpected = sorted(v for k, v in mapped.items() if k not in needed)
    if unmapped or missing or unexpected:
        parts = [f"tensors with no codelm counterpart {unmapped[:8]}" if unmapped else "",
                 f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}" if missing else "",
                 f"unexpected {unexpected[:8]} (config.json gives the model no such tensor)" if unexpected else ""]
        raise ModelError(f"{folder}: weights do not match {FAMILIES[family].arch} with {cfg.n_layer} layers x {cfg.n_embd}: "
                         + "; ".join(p for p in parts if p))
    return mapped


def _check_shape(shape, ours, hf_name, path, cfg, expected):
    """ModelError unless a Hugging Face tensor has the shape our model needs for it."""
    if ours in ("embed.weight", "head.weight"):
        want = (cfg.vocab_size, cfg.n_embd)
    elif ".attn.qkv." in ours:  # GPT-NeoX: q, k, v of every head stacked
        want = (3 * cfg.n_embd, cfg.n_embd)[:len(expected[ours.replace(".qkv.", ".q.")].shape)]
    else:
        want = tuple(expected[ours].shape)
    if tuple(shape) != want:
        raise ModelError(f"{path}: {hf_name} has shape {tuple(shape)}, config.json implies {want}")


def check_hf_folder(folder):
    """Everything load_hf_model checks, from the safetensors headers only (no tensor is read): what
    `hf.py info` says about a Hugging Face folder. Returns checkpoint_config()."""
    folder = Path(folder)
    config = checkpoint_config(folder)
    cfg = GPTConfig.from_dict(config["model"])
    files = hf_weight_files(folder)
    with torch.device("meta"):
        expected = model_state_dict(GPT(cfg))
    for ours, hf_name in _check_names(folder, files, config["hf_family"], cfg, expected).items():
        with safe_open(files[hf_name], "pt") as f:
            _check_shape(f.get_slice(hf_name).get_shape(), ours, hf_name, files[hf_name], cfg, expected)
    return config


def load_hf_model(folder, device="cpu", dtype=None):
    """Load a Hugging Face folder (see FAMILIES) as a GPT. Tensors are read one at a time and cast to
    dtype as they are read (no full fp32 copy of a bf16 checkpoint); strict: every tensor must map,
    every weight must be present with its shape. Returns (model in eval mode, checkpoint_config())."""
    folder = Path(folder)
    config = checkpoint_config(folder)
    family = config["hf_family"]
    cfg = GPTConfig.from_dict(config["model"])
    files = hf_weight_files(folder)
    with torch.device("meta"):
        model = GPT(cfg)
    expected = model_state_dict(model)
    mapped = _check_names(folder, files, family, cfg, expected)
    by_file = {}
    for ours, hf_name in mapped.items():
        by_file.setdefault(files[hf_name], []).append((ours, hf_name))
    state = {}
    for path, names in sorted(by_file.items()):
        with safe_open(path, "pt", device=str(device)) as f:
            for ours, hf_name in names:
                t = f.get_tensor(hf_name)
                if dtype is not None:
                    t = t.to(dtype)
                _check_shape(t.shape, ours, hf_name, path, cfg, expected)
                if ".attn.qkv." in ours:
                    for x, part in zip("qkv", split_neox_qkv(t, cfg.n_head)):
                        state[ours.replace(".qkv.", f".{x}.")] = part
                    del t
                elif ours in ("embed.weight", "head.weight"):
                    state[ours] = pad_vocab_rows(t, cfg.padded_vocab_size)
                else:
                    state[ours] = t
    load_state(model, state, where=str(folder))
    model.reset_rope(device)
    return model.eval(), config


def pad_vocab_rows(w, rows):
    """w (vocab, dim) with zero rows appended up to `rows` (the padded vocab)."""
    if w.shape[0] == rows:
        return w
    out = torch.zeros(rows, w.shape[1], dtype=w.dtype, device=w.device)
    out[:w.shape[0]] = w
    return out


def hf_config(cfg, family, tok, dtype, postprocess):
    """config.json of an export: the family's keys for cfg, in both rope styles transformers reads."""
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling == "linear":
        rope.update(rope_type="linear", factor=cfg.rope_factor)
    elif cfg.rope_scaling == "llama3":
        rope.update(rope_type="llama3", factor=cfg.rope_factor, low_freq_factor=cfg.rope_low_freq_factor,
                    high_freq_factor=cfg.rope_high_freq_factor, original_max_position_embeddings=cfg.rope_original_context)
    if cfg.rotary_fraction != 1.0:
        rope["partial_rotary_factor"] = cfg.rotary_fraction
    out = {"architectures": [FAMILIES[family].arch], "model_type": family, "vocab_size": cfg.vocab_size,
           "hidden_size": cfg.n_embd, "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.n_layer,
           "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
           "max_position_embeddings": cfg.block_size, "rope_theta": cfg.rope_theta,
           "rope_scaling": None if rope["rope_type"] == "default" else {k: v for k, v in rope.items() if k != "rope_theta"},
           "rope_parameters": rope, "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": 0.02,
           "use_cache": True, "attention_dropout": 0.0, "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
           "pad_token_id": tok.pad_id, "torch_dtype": str(dtype).removeprefix("torch."), "dtype": str(dtype).removeprefix("torch."),
           "codelm_postprocess": postprocess or {"edit_format": None, "sugar": None}}
    if family == "gpt_neox":
        out.update(hidden_act={"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}[cfg.mlp_act], layer_norm_eps=cfg.norm_eps,
                   use_parallel_residual=cfg.parallel_residual, attention_bias=cfg.qkv_bias, rotary_pct=cfg.rotary_fraction,
                   rotary_emb_base=cfg.rope_theta, hidden_dropout=0.0, classifier_dropout=0.0)
        del out["num_key_value_heads"], out["head_dim"]
    else:
        out.update(hidden_act="silu", rms_norm_eps=cfg.norm_eps)
    if family == "olmo":
        out.update(attention_bias=cfg.qkv_bias, clip_qkv=cfg.qkv_clip or None)
        del out["rms_norm_eps"]
    elif family == "qwen2":
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layer)
    elif family == "llama":
        out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias, pretraining_tp=1)
    return out


def export_tensors(model, family):
    """Hugging Face name -> tensor of a model (padding rows cut; q/k/v fused again for GPT-NeoX)."""
    cfg = model.cfg
    state = model_state_dict(model)
    tensors = {}
    for name, t in state.items():
        if name in ("embed.weight", "head.weight"):
            t = t[:cfg.vocab_size]
        if family == "gpt_neox" and ".attn." in name and name.split(".")[-2] in "qkv":
            if ".attn.q." not in name:
                continue
            q, k, v = (state[name.replace(".attn.q.", f".attn.{x}.")] for x in "qkv")
            name, t = name.replace(".attn.q.", ".attn.qkv."), fuse_neox_qkv(q, k, v, cfg.n_head)
        tensors[ours_to_hf(name, family)] = t.detach().contiguous().cpu()
    return tensors


def qwen2_tokenizer_warning(spec):
    """A warning when transformers (>= 5) would not encode a qwen2 export's tokenizer.json as it is
    (see QWEN2_SPLIT); None for Qwen2.5's own layout."""
    pre = spec.get("pre_tokenizer") or {}
    steps = [(p.get("type"), (p.get("pattern") or {}).get("Regex"), p.get("behavior"), p.get("use_regex"))
             for p in (pre.get("pretokenizers") or [pre])]
    if (spec.get("normalizer") or {}).get("type") == "NFC" and steps == [("Split", QWEN2_SPLIT, "Isolated", None),
                                                                       ("ByteLevel", None, None, False)]:
        return None
    return ("warning: transformers >= 5 loads a Qwen2 folder's tokenizer as Qwen2Tokenizer, which keeps this "
            "tokenizer.json's vocabulary but imposes Qwen2.5's normalizer and pre-tokenizer; this one has others, so "
            "AutoTokenizer's ids will differ from codelm's (PreTrainedTokenizerFast(tokenizer_file=...) reads it as it is)")


def refuse_reused_ids(tok, added):
    """ModelError when added tokens took over base ids (add_tokens start_id, Token Sugar's --start_id). Our
    tokenizer then spells each displaced piece in bytes; a tokenizer file cannot: `tokenizers` gives an added
    token whose id a vocabulary piece holds a new id (so the piece's text keeps its id), and a piece cannot
    leave a BPE vocabulary without the merges that build it, which changes how whole words split."""
    reused = [(t, i) for t, i in added if i < tok.base_vocab_size]
    if not reused:
        return
    shown = ", ".join(f"{t!r} (id {i}, was {tok.base.id_to_piece(i)!r})" for t, i in reused[:3]) + (", ..." if len(reused) > 3 else "")
    raise ModelError(f"export: {len(reused)} added token(s) took over base ids (add_tokens start_id): {shown}; codelm spells "
                     f"the displaced pieces in bytes, which a {tok.file_name} cannot express (tokenizers moves an added token "
                     "to a new id when a vocabulary piece holds its id, and a piece cannot leave the vocabulary without the "
                     "merges that build it, which changes how whole words split), so transformers would encode other ids; "
                     "to export, add the tokens at new ids (no start_id)")


def tokenizer_files(tok, cfg):
    """{file name: bytes or JSON object} of the tokenizer part of an export: the base file as the model came
    with it (tokenizer.json gets our added tokens in its added_tokens), tokenizer_config.json,
    special_tokens_map.json."""
    piece = tok.base.id_to_piece
    specials = {kind: (piece(i) if i is not None and 0 <= i < tok.base_vocab_size else None, i)
                for kind, i in (("bos", tok.bos_id), ("eos", tok.eos_id), ("unk", tok.unk_id), ("pad", tok.pad_id))}
    special_map = {f"{kind}_token": content for kind, (content, _) in specials.items() if content is not None}
    common = {"add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": cfg.block_size, **special_map}
    added = sorted(tok.added_tokens.items(), key=lambda kv: kv[1])
    refuse_reused_ids(tok, added)
    entry = lambda content, i, special: {"id": i, "content": content, "single_word": False, "lstrip": False,  # noqa: E731
                                         "rstrip": False, "normalized": False, "special": special}
    if tok.file_name == "tokenizer.json":
        spec = json.loads(Path(tok.model_path).read_text(encoding="utf-8"))
        spec["added_tokens"] = list(spec.get("added_tokens") or []) + [entry(t, i, False) for t, i in added]
        return {"tokenizer.json": spec, "special_tokens_map.json": special_map,
                "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", **common}}
    decoder = {str(i): entry(content, i, True) for kind, (content, i) in specials.items() if content is not None}
    decoder.update({str(i): entry(t, i, False) for t, i in added})
    for e in decoder.values():
        del e["id"]
    return {"tokenizer.model": Path(tok.model_path).read_bytes(), "special_tokens_map.json": special_map,
            "tokenizer_config.json": {"tokenizer_class": "LlamaTokenizer", "add_prefix_space": False, "legacy": False,
                                      "sp_model_kwargs": {}, **common,
                                      "added_tokens_decoder": dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))}}


def replace_folder(to, write, force):
    """Build folder `to` by write(tmp) under a temporary name, then put it in place of `to` in one rename
    (an existing non-empty folder only with force; nothing of it survives: no stale train_state.pt)."""
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())) and not force:
        raise ModelError(f"{to}: exists and is not empty (pass --force to replace it)")
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(f".{to.name}.tmp-{os.getpid()}")
    old = to.with_name(f".{to.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if to.exists():
            os.replace(to, old)
        os.replace(tmp, to)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return to


def export_hf(ckpt, to, dtype=None, force=False):
    """Write checkpoint folder `ckpt` (ours, or any folder load_model reads; LoRA adapters merged on load)
    as a Hugging Face folder of its family (export_family): config.json, model.safetensors (their names,
    vocab rows unpadded), the tokenizer files, generation_config.json. Built under a temporary name,
    renamed at the end."""
    ckpt, to = Path(ckpt), Path(to)
    check_output_path(to, "--to")  # before the (slow) load
    if to.exists() and any(to.iterdir()) and not force:
        raise ModelError(f"{to}: exists and is not empty (pass --force to replace it)")
    with reading_checkpoint(ckpt):  # the weights and the tokenizer files of one save
        model, config = load_model(ckpt, dtype=dtype)
        tok = Tokenizer.load(ckpt)
        family = export_family(model.cfg)
        files = tokenizer_files(tok, model.cfg)
    tensors = export_tensors(model, family)
    wdtype = next(iter(tensors.values())).dtype
    if family == "qwen2" and "tokenizer.json" in files and (warning := qwen2_tokenizer_warning(files["tokenizer.json"])):
        print(warning, file=sys.stderr)
    files["config.json"] = hf_config(model.cfg, family, tok, wdtype, config.get("postprocess"))
    files["generation_config.json"] = {"_from_model_config": True, "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id,
                                       "pad_token_id": tok.pad_id}

    def write(tmp):
        tmp.mkdir()
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        for name, obj in files.items():
            (tmp / name).write_bytes(obj if isinstance(obj, bytes) else (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())

    return replace_folder(to, write, force)


def import_hf(src, to, dtype=None, force=False):
    """A Hugging Face folder as a codelm checkpoint folder (weights renamed and padded, the tokenizer file
    as it came). Returns the architecture."""
    check_output_path(to, "--to")  # before the (slow) load
    if Path(to).exists() and any(Path(to).iterdir()) and not force:
        raise ModelError(f"{to}: exists and is not empty (pass --force to replace it)")
    with reading_checkpoint(src):  # the weights and the tokenizer file (copied as it is) of one save
        model, config = load_model(src, dtype=dtype)
        tok = Tokenizer.load(src)
        ckpt = make_config(model.cfg, tok.to_config(), {}, 0, config.get("postprocess"))
        replace_folder(to, lambda tmp: save_checkpoint(tmp, model_state_dict(model), ckpt, tokenizer_file=tok.model_path), force)
    return FAMILIES[config["hf_family"]].arch if config.get("format") == "hf" else "codelm"


def folder_info(folder):
    """What `hf.py info` prints: format, family, parameters, model config, tokenizer facts (only those for
    a folder that holds just a tokenizer)."""
    tok_only = not (Path(folder) / "config.json").is_file() and any((Path(folder) / n).is_file() for n in ("tokenizer.model", "tokenizer.json"))
    tok = Tokenizer.load(folder) if tok_only else None
    config = {"format": "tokenizer", "model": None} if tok_only else checkpoint_config(folder)
    if config.get("format") == "hf":
        check_hf_folder(folder)
    n = None
    if config["model"]:
        with torch.device("meta"):
            n = GPT(GPTConfig.from_dict(config["model"])).num_params()
        tok = Tokenizer.load(folder)
    return {"format": config.get("format"), "architecture": FAMILIES[config["hf_family"]].arch if config.get("hf_family") else "codelm GPT",
            "params": n, "model": config["model"], "lora": config.get("lora"), "postprocess": config.get("postprocess"),
            "tokenizer": {"file": tok.file_name, "kind": tok.kind, "vocab_size": tok.vocab_size, "base_vocab_size": tok.base_vocab_size,
                          "eos_id": tok.eos_id, "bos_id": tok.bos_id, "pad_id": tok.pad_id, "added_tokens": tok.added_tokens}}


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def main(argv=None):
    """Run the command line (one line `hf.py: error: ...` and exit 2 on bad input, nothing written)."""
    return run_command("hf.py", _main, argv, errors=(ModelError, CheckpointError))


def _main(argv=None):
    """python hf.py export --ckpt out/ --to hf/      a checkpoint as a Hugging Face folder of its family
    python hf.py import --hf pythia/ --to out/pythia  a Hugging Face folder as a checkpoint
    python hf.py info --ckpt out/                      what a model folder is (or why it is refused)

    Families: LlamaForCausalLM (rope_scaling linear / llama3), MistralForCausalLM, Qwen2ForCausalLM,
    OlmoForCausalLM, GPTNeoXForCausalLM; tokenizer.model (SentencePiece) or a byte-level BPE tokenizer.json
    (needs the tokenizers package)."""
    parser = argparse.ArgumentParser(prog="hf.py", description=inspect.cleandoc(_main.__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("export", help="write a checkpoint (LoRA adapters are merged) as a Hugging Face folder of its family")
    p.add_argument("--ckpt", required=True, help="checkpoint folder (config.json + model.safetensors or adapters.safetensors)")
    p.add_argument("--to", required=True, help="output folder")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weight dtype of the export (default: as stored)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder (the whole folder)")
    p = sub.add_parser("import", help="convert a Hugging Face folder into a codelm checkpoint folder")
    p.add_argument("--hf", required=True, help="folder with config.json, model.safetensors (or shards) and tokenizer.model or tokenizer.json")
    p.add_argument("--to", required=True, help="output checkpoint folder")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="weight dtype (default: as stored)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder (the whole folder)")
    p = sub.add_parser("info", help="print what a model folder is (ours or Hugging Face), or why it is refused")
    p.add_argument("--ckpt", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "export":
        out = export_hf(args.ckpt, args.to, DTYPES.get(args.dtype), args.force)
        print(f"wrote {out} ({json.loads((out / 'config.json').read_text())['architectures'][0]})", file=sys.stderr)
    elif args.cmd == "import":
        arch = import_hf(args.hf, args.to, DTYPES.get(args.dtype), args.force)
        print(f"wrote {args.to} (codelm checkpoint from {arch})", file=sys.stderr)
    else:
        print(json.dumps(folder_info(args.ckpt), indent=2))


if __name__ == "__main__":
    main()
