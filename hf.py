"""
Hugging Face interop: a LlamaForCausalLM / MistralForCausalLM folder loaded as a codelm GPT, and a codelm
checkpoint exported as one.

    python hf.py info --ckpt FOLDER                  # what a model folder is (ours or Hugging Face)
    python hf.py import --hf llama/ --to out/llama   # a Hugging Face folder as a codelm checkpoint
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
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from data import DataError, Tokenizer, file_sha256
from model import (CHECKPOINT_FORMAT, GPT, GPTConfig, ModelError, load_model, load_state, make_config,
                   model_state_dict, read_config, save_checkpoint)

# A Hugging Face LlamaForCausalLM / MistralForCausalLM folder (config.json, model.safetensors or shards
# listed in model.safetensors.index.json, tokenizer.model) is the same network as ours under other
# names: both use rotate-half RoPE, so import and export are a renaming plus vocab padding (our
# embedding has a multiple of 64 rows; HF's has exactly vocab_size). Anything that would change the
# computation (rope scaling, sliding window, biases, another activation) is refused by name.
HF_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
_HF_LAYER_NAMES = {"self_attn.q_proj": "attn.q", "self_attn.k_proj": "attn.k", "self_attn.v_proj": "attn.v",
                   "self_attn.o_proj": "attn.o", "mlp.gate_proj": "mlp.gate", "mlp.up_proj": "mlp.up",
                   "mlp.down_proj": "mlp.down", "input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
_HF_TOP_NAMES = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight", "lm_head.weight": "head.weight"}
_HF_IGNORED = ("rotary_emb.inv_freq",)   # a buffer older transformers saved; recomputed from rope_theta


def is_hf_config(config):
    """Whether a parsed config.json is a Hugging Face model config (not a codelm checkpoint)."""
    return config.get("format") != CHECKPOINT_FORMAT and ("architectures" in config or "model_type" in config)


def hf_to_ours(name):
    """Our tensor name for a Hugging Face one, or None if it has no counterpart."""
    if name in _HF_TOP_NAMES:
        return _HF_TOP_NAMES[name]
    parts = name.split(".")
    if len(parts) >= 5 and parts[0] == "model" and parts[1] == "layers" and parts[2].isdigit() and parts[-1] == "weight":
        ours = _HF_LAYER_NAMES.get(".".join(parts[3:-1]))
        if ours:
            return f"blocks.{parts[2]}.{ours}.weight"
    return None


def ours_to_hf(name):
    for hf, ours in _HF_TOP_NAMES.items():
        if name == ours:
            return hf
    parts = name.split(".")
    inverse = {v: k for k, v in _HF_LAYER_NAMES.items()}
    if parts[0] == "blocks" and ".".join(parts[2:-1]) in inverse:
        return f"model.layers.{parts[1]}.{inverse['.'.join(parts[2:-1])]}.weight"
    raise ModelError(f"export: tensor {name!r} has no Hugging Face name (LoRA adapters must be merged first)")


def hf_model_config(hf, where="config.json"):
    """GPTConfig for a Hugging Face config dict; ModelError naming what we cannot run."""
    arch = hf.get("architectures") or []
    mtype = hf.get("model_type")
    if not (any(a in HF_ARCHITECTURES for a in arch) if arch else mtype in ("llama", "mistral")):
        raise ModelError(f"{where}: unsupported architecture {', '.join(arch) or repr(mtype)} "
                         f"(supported: {', '.join(HF_ARCHITECTURES)})")
    name = arch[0] if arch else mtype
    rope = hf.get("rope_scaling") or None
    params = hf.get("rope_parameters") or {}       # transformers >= 5 keeps rope_theta in here
    if rope is None and params.get("rope_type", "default") != "default":
        rope = params
    if rope is not None and (rope.get("rope_type") or rope.get("type")) != "default":
        raise ModelError(f"{where}: unsupported architecture {name} with rope_scaling {rope} (only plain RoPE)")
    for key, bad in (("attention_bias", True), ("mlp_bias", True)):
        if hf.get(key) is bad:
            raise ModelError(f"{where}: unsupported architecture {name} with {key}=true (codelm has no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise ModelError(f"{where}: unsupported architecture {name} with hidden_act={hf['hidden_act']!r} (only silu/SwiGLU)")
    if hf.get("quantization_config"):
        raise ModelError(f"{where}: quantized weights ({hf['quantization_config'].get('quant_method', '?')}) are not supported")
    block = int(hf.get("max_position_embeddings", 2048))
    window = hf.get("sliding_window")
    if window is not None and hf.get("use_sliding_window", True) and int(window) < block:
        raise ModelError(f"{where}: unsupported architecture {name} with sliding_window={window} "
                         f"(< max_position_embeddings {block}; codelm attends over the whole context)")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size") if k not in hf]
    if missing:
        raise ModelError(f"{where}: missing keys {missing}")
    n_head = int(hf["num_attention_heads"])
    head_dim = hf.get("head_dim")
    if head_dim is not None and int(head_dim) != int(hf["hidden_size"]) // n_head:
        raise ModelError(f"{where}: unsupported architecture {name} with head_dim={head_dim} != hidden_size / num_attention_heads")
    return GPTConfig(vocab_size=int(hf["vocab_size"]), block_size=block, n_layer=int(hf["num_hidden_layers"]),
                     n_head=n_head, n_kv_head=int(hf.get("num_key_value_heads") or n_head), n_embd=int(hf["hidden_size"]),
                     intermediate_size=int(hf["intermediate_size"]),
                     rope_theta=float(hf.get("rope_theta", params.get("rope_theta", 10000.0))),
                     norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)))




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
    ...}); a Hugging Face folder is translated (format 'hf', the original under "hf")."""
    folder = Path(folder)
    config = read_config(folder)
    if not is_hf_config(config):
        return config
    cfg = hf_model_config(config, where=str(folder / "config.json"))
    tok = folder / "tokenizer.model"
    if not tok.is_file():
        raise ModelError(f"{folder}: no tokenizer.model (codelm needs the SentencePiece model; tokenizer.json-only "
                         "models such as Llama 3 are not supported)")
    return {"format": "hf", "model": asdict(cfg), "tokenizer": {"file": "tokenizer.model", "sha256": file_sha256(tok)},
            "train": {}, "step": 0, "postprocess": config.get("codelm_postprocess") or {"edit_format": None, "sugar": None},
            "hf": config}


def load_hf_model(folder, device="cpu", dtype=None):
    """Load a Hugging Face Llama/Mistral folder as a GPT. Tensors are read one at a time and cast to
    dtype as they are read (no full fp32 copy of a bf16 checkpoint); strict: every tensor must map,
    every weight must be present with its shape. Returns (model in eval mode, checkpoint_config())."""
    folder = Path(folder)
    config = checkpoint_config(folder)
    cfg = GPTConfig.from_dict(config["model"])
    files = hf_weight_files(folder)
    with torch.device("meta"):
        model = GPT(cfg)
    expected = model_state_dict(model)
    unmapped = sorted(k for k in files if hf_to_ours(k) is None and not k.endswith(_HF_IGNORED))
    if cfg.tie_embeddings and "lm_head.weight" in files:
        unmapped.append("lm_head.weight (tie_word_embeddings is true)")
    mapped = {hf_to_ours(k): k for k in files if hf_to_ours(k) is not None and not (cfg.tie_embeddings and k == "lm_head.weight")}
    missing = sorted(ours_to_hf(k) for k in expected if k not in mapped)
    unexpected = sorted(f"{v} (model has {cfg.n_layer} layers)" for k, v in mapped.items() if k not in expected)
    if unmapped or missing or unexpected:
        parts = [f"tensors with no codelm counterpart {unmapped[:8]}" if unmapped else "",
                 f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}" if missing else "",
                 f"unexpected {unexpected[:8]}" if unexpected else ""]
        raise ModelError(f"{folder}: weights do not match {cfg.n_layer} layers x {cfg.n_embd}: " + "; ".join(p for p in parts if p))
    state = {}
    by_file = {}
    for ours, hf_name in mapped.items():
        by_file.setdefault(files[hf_name], []).append((ours, hf_name))
    for path, names in sorted(by_file.items()):
        with safe_open(path, "pt", device=str(device)) as f:
            for ours, hf_name in names:
                t = f.get_tensor(hf_name)
                if dtype is not None:
                    t = t.to(dtype)
                want = tuple(expected[ours].shape)
                if ours in ("embed.weight", "head.weight"):
                    if t.dim() != 2 or t.shape[0] != cfg.vocab_size or t.shape[1] != cfg.n_embd:
                        raise ModelError(f"{path}: {hf_name} has shape {tuple(t.shape)}, config says ({cfg.vocab_size}, {cfg.n_embd})")
                    t = pad_vocab_rows(t, cfg.padded_vocab_size)
                elif tuple(t.shape) != want:
                    raise ModelError(f"{path}: {hf_name} has shape {tuple(t.shape)}, config.json implies {want}")
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


def export_hf(ckpt, to, dtype=None, force=False):
    """Write checkpoint folder `ckpt` (ours, LoRA adapters merged on load) as a Hugging Face
    LlamaForCausalLM folder: config.json, model.safetensors (HF names, vocab rows unpadded),
    tokenizer.model, tokenizer_config.json (added tokens in added_tokens_decoder),
    special_tokens_map.json, generation_config.json. Built under a temporary name, renamed at the end."""
    ckpt, to = Path(ckpt), Path(to)
    model, config = load_model(ckpt, dtype=dtype)
    cfg = model.cfg
    tok = Tokenizer.load(ckpt)
    if to.exists() and any(to.iterdir()) and not force:
        raise ModelError(f"{to}: exists and is not empty (pass --force to replace it)")
    tensors = {}
    for name, t in model_state_dict(model).items():
        if name in ("embed.weight", "head.weight"):
            t = t[:cfg.vocab_size]
        tensors[ours_to_hf(name)] = t.detach().contiguous().cpu()
    wdtype = next(iter(tensors.values())).dtype
    piece = tok.sp.id_to_piece
    specials = {kind: (piece(i) if i is not None and 0 <= i < tok.base_vocab_size else None, i)
                for kind, i in (("bos", tok.bos_id), ("eos", tok.eos_id), ("unk", tok.unk_id), ("pad", tok.pad_id))}
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
          "hidden_size": cfg.n_embd, "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.n_layer,
          "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
          "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
          "rope_theta": cfg.rope_theta, "rope_scaling": None,
          "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
          "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1,
          "tie_word_embeddings": cfg.tie_embeddings, "initializer_range": 0.02, "use_cache": True,
          "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id,
          "torch_dtype": str(wdtype).removeprefix("torch."),
          "codelm_postprocess": config.get("postprocess") or {"edit_format": None, "sugar": None}}
    decoder = {}
    for kind, (content, i) in specials.items():
        if content is not None:
            decoder[str(i)] = {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                               "single_word": False, "special": True}
    for content, i in sorted(tok.added_tokens.items(), key=lambda kv: kv[1]):
        decoder[str(i)] = {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": False}
    special_map = {f"{kind}_token": content for kind, (content, _) in specials.items() if content is not None}
    tok_config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": False, "add_eos_token": False,
                  "add_prefix_space": False, "legacy": False, "clean_up_tokenization_spaces": False,
                  "model_max_length": cfg.block_size, "sp_model_kwargs": {}, **special_map,
                  "added_tokens_decoder": dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))}
    gen = {"_from_model_config": True, "bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(f".{to.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        shutil.copyfile(Path(tok.model_path), tmp / "tokenizer.model")
        for name, obj in (("config.json", hf), ("tokenizer_config.json", tok_config),
                          ("special_tokens_map.json", special_map), ("generation_config.json", gen)):
            (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
        old = to.with_name(f".{to.name}.old-{os.getpid()}")
        if to.exists():
            os.replace(to, old)
        os.replace(tmp, to)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return to


def main(argv=None):
    """python hf.py export --ckpt out/ --to hf/      a checkpoint as a Hugging Face Llama folder
    python hf.py import --hf llama/ --to out/llama    a Hugging Face Llama/Mistral folder as a checkpoint
    python hf.py info --ckpt out/                      shape, parameters, tokenizer of a model folder"""
    parser = argparse.ArgumentParser(prog="hf.py", description=inspect.cleandoc(main.__doc__),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    p = sub.add_parser("export", help="write a checkpoint (ours; LoRA adapters are merged) as a Hugging Face LlamaForCausalLM folder")
    p.add_argument("--ckpt", required=True, help="checkpoint folder (config.json + model.safetensors or adapters.safetensors)")
    p.add_argument("--to", required=True, help="output folder")
    p.add_argument("--dtype", choices=sorted(dtypes), help="weight dtype of the export (default: as stored)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output folder")
    p = sub.add_parser("import", help="convert a Hugging Face Llama/Mistral folder into a codelm checkpoint folder")
    p.add_argument("--hf", required=True, help="folder with config.json, model.safetensors (or shards) and tokenizer.model")
    p.add_argument("--to", required=True, help="output checkpoint folder")
    p.add_argument("--dtype", choices=sorted(dtypes), help="weight dtype (default: as stored)")
    p = sub.add_parser("info", help="print the shape and size of a model folder (ours or Hugging Face)")
    p.add_argument("--ckpt", required=True)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "export":
            export_hf(args.ckpt, args.to, dtypes.get(args.dtype), args.force)
            print(f"wrote {args.to} (LlamaForCausalLM)", file=sys.stderr)
        elif args.cmd == "import":
            model, config = load_model(args.hf, dtype=dtypes.get(args.dtype))
            tok = Tokenizer.load(args.hf)
            save_checkpoint(args.to, model_state_dict(model), make_config(model.cfg, tok.to_config(), {}, 0, config.get("postprocess")),
                            tokenizer_file=tok.model_path)
            print(f"wrote {args.to} (codelm checkpoint)", file=sys.stderr)
        else:
            config = checkpoint_config(args.ckpt)
            cfg = GPTConfig.from_dict(config["model"])
            with torch.device("meta"):
                n = GPT(cfg).num_params()
            print(json.dumps({"format": config.get("format"), "params": n, "model": config["model"],
                              "lora": config.get("lora"), "postprocess": config.get("postprocess")}, indent=2))
    except (ModelError, DataError) as e:
        sys.exit(f"hf.py: error: {e}")


if __name__ == "__main__":
    main()
