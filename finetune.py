"""
Fine-tuning pieces: vocabulary growth for added tokens, LoRA adapters (add, merge, state dicts) and the
adapters checkpoint format (adapters.safetensors + config.json["lora"] naming the base folder).

    from finetune import add_lora, grow_vocab, merge_lora
    grow_vocab(model, new_vocab_size)             # new rows = mean of the old ones
    add_lora(model, r=16, alpha=32, targets=("q", "v"))
"""
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

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
    base is loaded, grown to this vocab, the adapters (and new token rows) applied and merged."""
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
    state = dict(model.state_dict())
    missing = sorted(set(lora_state_dict(state)) - set(adapters))
    if missing:
        raise ModelError(f"{folder / 'adapters.safetensors'}: missing adapters {missing[:8]}")
    for k, v in adapters.items():
        if k.endswith((".lora_A", ".lora_B")) and k in state:
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
