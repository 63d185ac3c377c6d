"""
Fine-tuning pieces: vocabulary growth for added tokens, LoRA adapters (add, merge, state dicts), the
model a fine-tuning run starts from (train.py task='sft') and the adapters checkpoint format
(adapters.safetensors: the adapters and whatever embedding/head the run trained, whole or the added
tokens' rows; config.json["lora"] names the base folder), written and read here.

    from finetune import add_lora, grow_vocab, merge_lora
    grow_vocab(model, new_vocab_size)             # new rows = mean of the old ones
    add_lora(model, r=16, alpha=32, targets=("q", "v"))
"""
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.distributed.tensor import distribute_tensor

from data import Tokenizer
from model import GPT, GPTConfig, ModelError, load_model, load_state, without_tied_head

@torch.no_grad()
def grow_vocab(model, vocab_size, init_ids=None, mean_of=None):
    """Grow a GPT's embedding (and untied head) to vocab_size tokens (rows padded to VOCAB_MULTIPLE), for
    tokens added to the tokenizer. Rows init_ids (default: the new ones) are set to the mean of rows
    [0, mean_of) (default: the old vocab): a neutral embedding and output logits near the average, not
    noise. Pass mean_of = the tokenizer's size when the embedding has unused rows beyond it."""
    cfg = model.cfg
    old = cfg.vocab_size
    init_ids = list(range(old, vocab_size)) if init_ids is None else list(init_ids)
    mean_of = old if mean_of is None else min(int(mean_of), old)
    if vocab_size > old:
        cfg.vocab_size = vocab_size
        rows = cfg.padded_vocab_size

        def grown(w):
            out = torch.zeros(rows, w.shape[1], dtype=w.dtype, device=w.device)
            out[:old] = w[:old]
            return nn.Parameter(out, requires_grad=w.requires_grad)

        model.embed.weight = grown(model.embed.weight)
        model.embed.num_embeddings = rows
        model.head.weight = model.embed.weight if cfg.tie_embeddings else grown(model.head.weight)
        model.head.out_features = rows
    if init_ids:
        for w in {id(w): w for w in (model.embed.weight, model.head.weight)}.values():
            w[init_ids] = w[:mean_of].float().mean(0).to(w.dtype)
    return model


# LoRA (Hu et al. 2021): a frozen weight W plus a trainable low-rank update, y = x W^T + s * x A^T B^T with
# A (r x in, Kaiming-uniform), B (out x r, zeros: training starts from the base model), s = alpha / r.
# LoRALinear keeps the original weight Parameter under the same name (`blocks.0.attn.q.weight`), so
# base weights load and save as before and adapters appear as extra `...q.lora_A` / `...q.lora_B`.
# Merging (W + s * B A, computed in fp32) is one function, used both on modules and on state dicts,
# so a merged checkpoint and an adapters checkpoint merged on load are bit-identical.
LORA_TARGETS = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "o": "attn.o",
                "gate": "mlp.gate", "up": "mlp.up", "down": "mlp.down"}
_LORA_HF_ALIASES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
                    "gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


def lora_delta(A, B, scale):
    """s * B @ A in fp32: the update LoRA adds to a weight."""
    return (B.float() @ A.float()) * scale


def merged_weight(W, A, B, scale):
    return (W.float() + lora_delta(A, B, scale)).to(W.dtype)


class LoRALinear(nn.Linear):
    """An nn.Linear whose weight (and bias, Qwen2/GPT-NeoX) is frozen, plus trainable lora_A / lora_B."""

    def __init__(self, base, r, alpha, dropout=0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight                     # the same Parameter: names and storage unchanged
        self.weight.requires_grad_(False)
        self.bias = base.bias
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.r, self.alpha, self.scale = int(r), float(alpha), float(alpha) / int(r)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, self.r, **kw))
        if self.lora_A.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        return y + F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B) * self.scale

    def merged(self):
        """A plain nn.Linear holding W + s * B A (this module is left unchanged)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        out.weight = nn.Parameter(merged_weight(self.weight.detach(), self.lora_A.detach(), self.lora_B.detach(), self.scale))
        if self.bias is not None:
            out.bias = nn.Parameter(self.bias.detach())
        return out


def parse_lora_targets(targets):
    """'q,v' / ('q', 'v') / HF names ('q_proj') -> a tuple of our short names; ModelError on unknown ones."""
    if isinstance(targets, str):
        targets = [t for t in targets.split(",")]
    out = []
    for t in targets:
        t = _LORA_HF_ALIASES.get(t.strip(), t.strip())
        if t not in LORA_TARGETS:
            raise ModelError(f"lora_targets: {t!r} matches no module (choose among {', '.join(LORA_TARGETS)})")
        if t not in out:
            out.append(t)
    if not out:
        raise ModelError("lora_targets: empty (choose among " + ", ".join(LORA_TARGETS) + ")")
    return tuple(out)


def add_lora(model, r, alpha=16.0, dropout=0.0, targets=("q", "v")):
    """Freeze every parameter of model and wrap the target projections of every block in LoRALinear.
    Returns the names of the wrapped modules. ModelError when a target matches no module."""
    if int(r) <= 0:
        raise ModelError(f"lora_r must be positive, got {r}")
    targets = parse_lora_targets(targets)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for t in targets:
        suffix = "." + LORA_TARGETS[t]
        hits = [(n, m) for n, m in model.named_modules() if n.endswith(suffix) and type(m) is nn.Linear]
        if not hits:
            raise ModelError(f"lora_targets: {t!r} matches no module of this model")
        for name, module in hits:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, LoRALinear(module, r, alpha, dropout))
            wrapped.append(name)
    return wrapped


def merge_lora(model):
    """Replace every LoRALinear of model by a plain nn.Linear with the merged weight (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.merged())
    return model


def lora_state_dict(state):
    """The adapter tensors of a state dict (names ending in .lora_A / .lora_B)."""
    return {k: v for k, v in state.items() if k.endswith((".lora_A", ".lora_B"))}


def merge_lora_state(state, scale):
    """A plain state dict: every `X.weight` with adapters `X.lora_A`, `X.lora_B` replaced by the merged
    weight, adapter entries dropped. Same arithmetic as LoRALinear.merged()."""
    out = {k: v for k, v in state.items() if not k.endswith((".lora_A", ".lora_B"))}
    for k in state:
        if k.endswith(".lora_A"):
            base = k[:-len(".lora_A")]
            out[base + ".weight"] = merged_weight(state[base + ".weight"], state[k], state[base + ".lora_B"], scale)
    return out


def load_adapter_checkpoint(folder, config, device="cpu", dtype=None):
    """A LoRA adapters checkpoint: config.json["lora"] names the base folder (ours or Hugging Face); the
    base is loaded, grown to this vocab, the adapters applied and merged, and the embedding/head the run
    trained put in (whole, or the new tokens' rows)."""
    folder = Path(folder)
    lora = config["lora"]
    base = Path(lora["base"])
    if not base.is_absolute():
        base = (folder / base).resolve()
    if not (base / "config.json").is_file():
        raise ModelError(f"{folder / 'config.json'}: LoRA base model {base} not found (the adapters need it)")
    model, _ = load_model(base, device=device, dtype=dtype)
    cfg = GPTConfig.from_dict(config["model"], where=str(folder / "config.json"))
    grow_vocab(model, cfg.vocab_size, lora.get("init_ids") or [], lora.get("mean_of"))
    add_lora(model, lora["r"], lora["alpha"], 0.0, lora["targets"])
    adapters = load_file(folder / "adapters.safetensors", device=str(device))
    ids = lora.get("token_ids")   # rows of embed/head that were trained (tokens the fine-tune added)
    whole = ("embed.weight",) + (() if cfg.tie_embeddings else ("head.weight",)) if lora.get("embeddings") else ()
    state = dict(model.state_dict())
    missing = sorted((set(lora_state_dict(state)) | set(whole)) - set(adapters))
    if missing:
        raise ModelError(f"{folder / 'adapters.safetensors'}: missing adapters {missing[:8]}")
    for k, v in adapters.items():
        if (k.endswith((".lora_A", ".lora_B")) and k in state) or k in whole:  # (load_state checks the shapes)
            state[k] = v.to(state[k].dtype)
        elif ids and k in ("embed.weight.new_rows", "head.weight.new_rows"):
            w = state[k[:-len(".new_rows")]].clone()
            w[ids] = v.to(w.dtype)
            state[k[:-len(".new_rows")]] = w
        else:
            raise ModelError(f"{folder / 'adapters.safetensors'}: unexpected tensor {k!r}")
    state = merge_lora_state(state, lora["alpha"] / lora["r"])
    with torch.device("meta"):
        plain = GPT(cfg)
    state = without_tied_head(state, cfg)
    load_state(plain, state, where=str(folder))
    plain.reset_rope(device)
    return plain.eval(), config


# ----------------------------------------------------------------------------- fine-tuning runs
@dataclass
class LoraSettings:
    """train.py's lora_* settings; r = 0 is full fine-tuning."""
    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple = ("q", "v")
    save: str = "merged"        # 'merged': a plain checkpoint | 'adapters': adapters + the base's path
    new_tokens: bool = True     # also train the embedding/head rows of tokens the data added
    embeddings: bool = False    # train the whole embedding and head beside the adapters (PEFT's modules_to_save)


def check_vocab_extension(src, src_tok, meta, data_dir):
    """The data's tokenizer may extend the checkpoint's (same SentencePiece model, more added tokens),
    never change it; returns how many token ids the model must have."""
    data_added = meta["tokenizer"].get("added_tokens") or {}
    for t, i in (src_tok.get("added_tokens") or {}).items():
        if data_added.get(t) != i:
            where = f"at id {data_added[t]}" if t in data_added else "not at all"
            raise ModelError(f"tokenizer/model vocab mismatch: {src} has added token {t!r} at id {i}, {data_dir} has it {where} "
                             f"(make the data with --tokenizer {src})")
    return meta["vocab_size"]


def _train_embeddings(model):
    """Let the embedding/head (one Parameter when tied) learn: all of it (lora.embeddings), or only the
    added tokens' rows (new_rows_only zeroes the other rows' gradient)."""
    for p in {id(p): p for p in (model.embed.weight, model.head.weight)}.values():
        p.requires_grad_(True)


def finetune_model(src, ckpt, meta, data_dir, block_size, lora, resume_state=None):
    """The model to train from a checkpoint folder (ours, a LoRA adapters one, or Hugging Face), on CPU
    in fp32: grown to the data's vocabulary (rows of new tokens = mean of the known ones) and wrapped
    with LoRA if lora.r > 0. Returns (model, finetune info), the info going into config.json["finetune"]:
    the base folder, the new token ids and how they were initialised, the LoRA settings. Resuming
    (resume_state given) a LoRA run rebuilds the base the same way and takes the trained tensors from
    train_state.pt (a merged checkpoint cannot be split into base and adapters again)."""
    if resume_state is not None:
        return _resumed_model(src, ckpt, block_size, lora, resume_state)
    model, _ = load_model(src, device="cpu", dtype=torch.float32)
    model.cfg.block_size = block_size
    model.reset_rope()
    src_tok = Tokenizer.load(src).to_config()
    check_vocab_extension(src, src_tok, meta, data_dir)
    src_added = src_tok.get("added_tokens") or {}
    new_ids = sorted(i for t, i in (meta["tokenizer"].get("added_tokens") or {}).items() if t not in src_added)
    known = src_tok.get("vocab_size") or model.cfg.vocab_size
    init_ids = [i for i in new_ids if i >= known]  # rows no token of the base used (start_id reuse keeps its rows)
    base_vocab = model.cfg.vocab_size
    grow_vocab(model, max(base_vocab, meta["vocab_size"]), init_ids, known)
    info = {"base": str(Path(src).resolve()), "base_format": ckpt.get("format"), "base_vocab_size": base_vocab,
            "vocab_size": model.cfg.vocab_size, "new_token_ids": new_ids, "init_ids": init_ids, "mean_of": known, "lora": None}
    if lora.r > 0:
        targets = parse_lora_targets(lora.targets)
        add_lora(model, lora.r, lora.alpha, lora.dropout, targets)
        # the added tokens' rows learn too (else every new token keeps the same mean embedding), or every row
        ids = new_ids if lora.new_tokens and new_ids and not lora.embeddings else None
        if ids or lora.embeddings:
            _train_embeddings(model)
        info["lora"] = {"r": lora.r, "alpha": float(lora.alpha), "targets": list(targets), "token_ids": ids,
                        "embeddings": bool(lora.embeddings)}
    return model, info


def _resumed_model(src, ckpt, block_size, lora, resume_state):
    """finetune_model for init_from='resume': the run's own checkpoint folder src."""
    info = ckpt.get("finetune")
    trained = (info or {}).get("lora")
    if not trained:
        if lora.r > 0:
            raise ModelError(f"init_from='resume': the run in {src} did not train LoRA adapters; set lora_r=0")
        model, _ = load_model(src, device="cpu", dtype=torch.float32)
    else:
        now = {"r": lora.r, "alpha": float(lora.alpha), "targets": list(parse_lora_targets(lora.targets)),
               "embeddings": bool(lora.embeddings)}
        then = {k: trained.get(k, False) for k in now}  # a run from before lora.embeddings existed: False
        if then != now:
            raise ModelError(f"init_from='resume': the run in {src} trained LoRA {then}, this one asks for {now}")
        model, _ = load_model(info["base"], device="cpu", dtype=torch.float32)
        grow_vocab(model, info["vocab_size"], info["init_ids"], info["mean_of"])
        add_lora(model, trained["r"], trained["alpha"], lora.dropout, trained["targets"])
        if trained.get("token_ids") or trained.get("embeddings"):
            _train_embeddings(model)
        load_trainable(model, resume_state["lora_state"], trained.get("token_ids"))
    model.cfg.block_size = block_size
    model.reset_rope()
    return model, info


def new_rows_only(model, ids):
    """Zero the embedding/head gradient outside rows `ids` (LoRA + added tokens: only the new tokens'
    rows learn; with no weight decay on them, Adam leaves the other rows bit-identical)."""
    for p in {id(p): p for p in (model.embed.weight, model.head.weight)}.values():
        g = p.grad
        if g is None:
            continue
        local = g.to_local() if hasattr(g, "to_local") else g
        mask = torch.zeros(g.shape[0], 1, dtype=g.dtype, device=local.device)
        mask[ids] = 1
        if hasattr(g, "to_local"):  # FSDP2: a sharded gradient; shard the row mask the same way
            mask = distribute_tensor(mask, g.device_mesh, g.placements)
        g.mul_(mask)


def pack_trainable(state, ids, embeddings=False):
    """The tensors a LoRA run trains, from a full state dict as a checkpoint holds it (a tied head not
    repeated): adapters, and the whole embedding/head (embeddings) or the new tokens' rows (ids)."""
    out = dict(lora_state_dict(state))
    for name in ("embed.weight", "head.weight"):
        if name in state and embeddings:
            out[name] = state[name]
        elif name in state and ids:
            out[name + ".new_rows"] = state[name][ids].clone()
    return out


@torch.no_grad()
def load_trainable(model, packed, ids):
    """Put pack_trainable()'s tensors back into a model wrapped the same way (whole tensors: copied)."""
    for k, v in packed.items():
        if k.endswith(".new_rows"):
            model.get_parameter(k[:-len(".new_rows")])[ids] = v
        else:
            model.get_parameter(k).copy_(v)


def finetune_checkpoint(state, ckpt_config, train_state, info, lora_save="merged"):
    """Turn a training state dict into what a fine-tuning checkpoint stores: merged weights (a plain
    checkpoint), or (lora_save='adapters') adapters alone + config["lora"] naming the base, which
    load_adapter_checkpoint reads back; train_state keeps the trained tensors for resume. Returns
    (state to write, weights file name)."""
    if not info:
        return state, "model.safetensors"
    ckpt_config["finetune"] = info
    lo = info.get("lora")
    if not lo:
        return state, "model.safetensors"
    trainable = pack_trainable(state, lo.get("token_ids"), lo.get("embeddings", False))
    train_state["lora_state"] = trainable
    if lora_save == "adapters":
        ckpt_config["lora"] = {"r": lo["r"], "alpha": lo["alpha"], "targets": lo["targets"], "base": info["base"],
                               "token_ids": lo.get("token_ids"), "embeddings": lo.get("embeddings", False),
                               "init_ids": info["init_ids"], "mean_of": info["mean_of"]}
        return trainable, "adapters.safetensors"
    return merge_lora_state(state, lo["alpha"] / lo["r"]), "model.safetensors"
