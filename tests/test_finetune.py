"""LoRA and vocabulary growth (finetune.py): which modules get adapters, that only adapters train, that
merging is exact (module and state-dict paths agree bit for bit), bad targets, and growing the embedding
for added tokens (mean rows, padding, tied heads). Then the helpers train.py fine-tunes with: the model a
run starts from (grown + LoRA), the trained tensors packed for resume and put back, only the new rows
learning (or the whole embedding and head), and the adapters checkpoint written and read back equal to
the merged one."""
import pytest
import torch


def tiny(tie=False, vocab=1000, seed=0):
    from model import GPT, GPTConfig

    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, tie_embeddings=tie))


def ids(vocab=1000, shape=(2, 16), seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def test_adapters_wrap_the_targets_and_only_they_train():
    from finetune import LoRALinear, add_lora

    model = tiny()
    x = ids()
    with torch.no_grad():
        before, _ = model(x)
    base_names = set(model.state_dict())
    wrapped = add_lora(model, r=4, alpha=8, targets="q,v,down")
    assert sorted(wrapped) == sorted(f"blocks.{i}.{m}" for i in range(2) for m in ("attn.q", "attn.v", "mlp.down"))
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in wrapped)
    state = model.state_dict()
    assert base_names <= set(state)  # base weights keep their names: checkpoints load as before
    assert set(state) - base_names == {f"{n}.lora_{ab}" for n in wrapped for ab in "AB"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(state) - base_names
    assert model.blocks[0].attn.q.lora_A.shape == (4, 64) and model.blocks[0].attn.q.lora_B.shape == (64, 4)
    with torch.no_grad():
        after, _ = model(x)
    assert torch.equal(before, after)  # B starts at zero: training starts from the base model
    model.blocks[0].attn.q.lora_B.data.normal_()
    _, loss = model(x, x)
    loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    assert model.blocks[0].attn.q.lora_A.grad.abs().sum() > 0


@pytest.mark.parametrize("tie", [False, True])
def test_merge_is_exact(tie):
    from finetune import add_lora, merge_lora, merge_lora_state
    from model import GPT, load_state

    model = tiny(tie)
    add_lora(model, r=8, alpha=16, targets=("q", "k", "v", "o", "gate", "up", "down"))
    for n, p in model.named_parameters():
        if n.endswith("lora_B"):
            p.data.normal_(std=0.05)
    x = ids()
    with torch.no_grad():
        with_adapters, _ = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    merge_lora(model)
    assert not any("lora" in k for k in model.state_dict())
    with torch.no_grad():
        merged, _ = model(x)
    torch.testing.assert_close(merged, with_adapters, atol=1e-5, rtol=1e-5)
    # the state-dict merge (what train.py saves) equals the module merge bit for bit
    plain = merge_lora_state(state, 16 / 8)
    mine = model.state_dict()
    assert plain.keys() == mine.keys() and all(torch.equal(plain[k], mine[k]) for k in mine)
    fresh = GPT(model.cfg)
    if tie:
        plain.pop("head.weight")
    load_state(fresh, plain)
    with torch.no_grad():
        assert torch.equal(fresh(x)[0], merged)


@pytest.mark.parametrize("targets", ["qkv", "q,attn", "", ("lm_head",)])
def test_a_target_that_matches_no_module_is_refused(targets):
    from finetune import add_lora
    from model import ModelError

    with pytest.raises(ModelError, match="matches no module|empty"):
        add_lora(tiny(), r=4, targets=targets)


def test_hf_target_names_and_bad_rank():
    from finetune import add_lora, parse_lora_targets
    from model import ModelError

    assert parse_lora_targets("q_proj, v_proj,gate") == ("q", "v", "gate")
    with pytest.raises(ModelError, match="lora_r"):
        add_lora(tiny(), r=0)


@pytest.mark.parametrize("tie", [False, True])
def test_grow_vocab_adds_mean_rows(tie):
    from finetune import grow_vocab

    model = tiny(tie, vocab=1000)
    x = ids(1000)
    with torch.no_grad():
        before, _ = model(x)
    old = model.embed.weight.detach().clone()
    grow_vocab(model, 1070)
    assert model.cfg.vocab_size == 1070 and model.embed.weight.shape == (1088, 64) == model.head.weight.shape
    assert (model.head.weight is model.embed.weight) == tie
    w = model.embed.weight.detach()
    assert torch.equal(w[:1000], old[:1000])
    mean = old[:1000].mean(0)
    assert all(torch.allclose(w[i], mean) for i in (1000, 1069))
    assert torch.all(w[1070:] == 0)
    with torch.no_grad():
        after, _ = model(x)
    assert after.shape[-1] == 1070
    assert torch.equal(after[..., :1000], before)  # known tokens: same logits
    # init_ids/mean_of: rows that exist but no token used (a padded HF vocab) are reset, no growth
    grow_vocab(model, 1070, init_ids=[1065], mean_of=900)
    assert torch.allclose(model.embed.weight[1065], w[:900].mean(0))


# ---- the fine-tuning run's helpers (train.py task='sft')
def sft_meta(tok, added):
    """meta.json facts of SFT data whose tokenizer adds `added` tokens to tok's."""
    config = tok.to_config()
    config["added_tokens"] = {**config["added_tokens"], **{t: tok.vocab_size + i for i, t in enumerate(added)}}
    return {"tokenizer": config, "vocab_size": tok.vocab_size + len(added)}


def lora(r=2, **kw):
    from finetune import LoraSettings

    return LoraSettings(r=r, alpha=4.0, targets=("q", "v", "down"), **kw)


def test_finetune_model_grows_wraps_and_records_how(tiny_ckpt):
    from data import Tokenizer
    from finetune import LoRALinear, finetune_model

    tok = Tokenizer.load(tiny_ckpt)
    meta = sft_meta(tok, ["<a>", "<b>"])
    model, info = finetune_model(tiny_ckpt, {"format": "codelm"}, meta, "data/x", 128, lora())
    assert model.cfg.vocab_size == tok.vocab_size + 2 and model.cfg.block_size == 128
    assert info["new_token_ids"] == [tok.vocab_size, tok.vocab_size + 1] == info["lora"]["token_ids"]
    assert info["lora"] == {"r": 2, "alpha": 4.0, "targets": ["q", "v", "down"], "token_ids": info["new_token_ids"],
                            "embeddings": False}
    assert isinstance(model.blocks[1].mlp.down, LoRALinear)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "embed.weight" in trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable - {"embed.weight", "head.weight"})
    new = model.embed.weight[info["init_ids"]]
    assert torch.equal(new[0], new[1])  # both start at the mean row
    # without new_tokens, the embedding stays frozen; full fine-tuning trains everything
    model, info = finetune_model(tiny_ckpt, {}, meta, "data/x", 128, lora(new_tokens=False))
    assert not model.embed.weight.requires_grad and info["lora"]["token_ids"] is None
    model, info = finetune_model(tiny_ckpt, {}, meta, "data/x", 128, lora(r=0))
    assert info["lora"] is None and all(p.requires_grad for p in model.parameters())
    # embeddings: the whole embedding and head train beside the adapters (no row mask: token_ids is None)
    model, info = finetune_model(tiny_ckpt, {}, meta, "data/x", 128, lora(embeddings=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"embed.weight", "head.weight"} <= trainable and info["lora"]["embeddings"] and info["lora"]["token_ids"] is None


def test_changed_added_tokens_are_refused(tiny_ckpt):
    from data import Tokenizer
    from finetune import check_vocab_extension
    from model import ModelError

    tok = Tokenizer.load(tiny_ckpt)
    base = tok.to_config()
    base["added_tokens"] = {"<a>": tok.vocab_size}
    assert check_vocab_extension("ckpt", base, sft_meta(tok, ["<a>", "<b>"]), "data/x") == tok.vocab_size + 2
    with pytest.raises(ModelError, match="ckpt has added token '<a>' at id .*, data/x has it at id"):
        check_vocab_extension("ckpt", base, sft_meta(tok, ["<b>", "<a>"]), "data/x")


def test_new_rows_only_keeps_the_other_rows_bit_identical(tiny_ckpt):
    from data import Tokenizer
    from finetune import finetune_model, new_rows_only

    tok = Tokenizer.load(tiny_ckpt)
    model, info = finetune_model(tiny_ckpt, {}, sft_meta(tok, ["<a>"]), "data/x", 64, lora())
    new = info["lora"]["token_ids"]
    before = {w: getattr(model, w).weight.detach().clone() for w in ("embed", "head")}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    x = ids(model.cfg.vocab_size, (2, 16))
    x[0, 0] = new[0]  # the new token in the input: its embedding row gets a gradient too
    model(x, x)[1].backward()
    new_rows_only(model, new)
    opt.step()
    for w, b in before.items():
        after = getattr(model, w).weight
        old = [i for i in range(b.shape[0]) if i not in new]
        assert torch.equal(after[old], b[old]) and not torch.equal(after[new], b[new]), w


def test_trainable_tensors_round_trip_and_adapters_load_as_merged(tiny_ckpt, tmp_path):
    from data import Tokenizer
    from finetune import finetune_checkpoint, finetune_model, load_trainable, pack_trainable
    from checkpoint import save_checkpoint
    from model import load_model, make_config, model_state_dict

    tok = Tokenizer.load(tiny_ckpt)
    meta = sft_meta(tok, ["<a>"])
    model, info = finetune_model(tiny_ckpt, {"format": "codelm"}, meta, "data/x", 64, lora())
    new = info["lora"]["token_ids"]
    with torch.no_grad():  # as if trained: adapters and the new token's rows move
        for n, p in model.named_parameters():
            if n.endswith(("lora_A", "lora_B")):
                p.add_(torch.randn_like(p) * 0.05)
            elif p.requires_grad:
                p[new] += 0.05
    state = model.state_dict()
    packed = pack_trainable(state, new)
    assert set(packed) == {k for k in state if k.endswith(("lora_A", "lora_B"))} | {"embed.weight.new_rows", "head.weight.new_rows"}
    again, _ = finetune_model(tiny_ckpt, {"format": "codelm"}, meta, "data/x", 64, lora())
    load_trainable(again, packed, new)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())
    # the same training state written both ways loads to the same weights
    loaded = {}
    for how in ("merged", "adapters"):
        config, train_state = make_config(model.cfg, tok.to_config()), {}
        weights, name = finetune_checkpoint(dict(state), config, train_state, info, how)
        assert name == ("adapters.safetensors" if how == "adapters" else "model.safetensors")
        assert set(train_state["lora_state"]) == set(packed) and ("lora" in config) == (how == "adapters")
        save_checkpoint(tmp_path / how, weights, config, tokenizer_file=tiny_ckpt / "tokenizer.model", weights_name=name)
        loaded[how] = model_state_dict(load_model(tmp_path / how)[0])
    a, b = loaded["merged"], loaded["adapters"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def tied_ckpt(folder, tokenizer_file):
    """A tiny checkpoint whose head is its embedding."""
    from data import Tokenizer
    from checkpoint import save_checkpoint
    from model import make_config, model_state_dict

    model = tiny(tie=True, vocab=Tokenizer(tokenizer_file).vocab_size)
    save_checkpoint(folder, model_state_dict(model), make_config(model.cfg, Tokenizer(tokenizer_file).to_config()),
                    tokenizer_file=tokenizer_file)
    return folder


@pytest.mark.parametrize("tie", [False, True])
def test_whole_embeddings_save_with_the_adapters_and_load_merged(tiny_ckpt, tmp_path, tie):
    """lora.embeddings: every embedding/head row trains; the adapters file carries the whole tensors (a
    tied matrix once), and loading it (what eval.py --ckpt does) gives the merged checkpoint's logits."""
    from safetensors.torch import load_file, save_file

    from data import Tokenizer
    from finetune import finetune_checkpoint, finetune_model, load_trainable, pack_trainable
    from checkpoint import save_checkpoint
    from model import ModelError, load_model, make_config, model_state_dict

    tokenizer_file = tiny_ckpt / "tokenizer.model"
    src = tied_ckpt(tmp_path / "tied", tokenizer_file) if tie else tiny_ckpt
    tok = Tokenizer.load(src)
    meta = sft_meta(tok, ["<a>"])
    model, info = finetune_model(src, {"format": "codelm"}, meta, "data/x", 32, lora(embeddings=True))
    assert (model.head.weight is model.embed.weight) == tie
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    before = {w: getattr(model, w).weight.detach().clone() for w in ("embed", "head")}
    for n, p in model.named_parameters():  # B = 0 at the start: give the adapters something to merge
        if n.endswith("lora_B"):
            p.data.normal_(std=0.05)
    x = ids(tok.vocab_size, (2, 16))
    model(x, x)[1].backward()
    opt.step()
    rows = sorted(set(x.flatten().tolist()))[:3]  # known tokens the batch used: their rows moved
    for w, b in before.items():
        assert not torch.equal(getattr(model, w).weight[rows], b[rows]), w
    state = model_state_dict(model)
    packed = pack_trainable(state, info["lora"]["token_ids"], embeddings=True)
    whole = {"embed.weight"} | (set() if tie else {"head.weight"})
    assert set(packed) == {k for k in state if k.endswith(("lora_A", "lora_B"))} | whole
    again, _ = finetune_model(src, {"format": "codelm"}, meta, "data/x", 32, lora(embeddings=True))
    load_trainable(again, packed, None)
    assert all(torch.equal(v, model_state_dict(again)[k]) for k, v in state.items())
    loaded = {}
    for how in ("merged", "adapters"):
        config = make_config(model.cfg, tok.to_config())
        weights, name = finetune_checkpoint(dict(state), config, {}, info, how)
        save_checkpoint(tmp_path / how, weights, config, tokenizer_file=tokenizer_file, weights_name=name)
        loaded[how] = load_model(tmp_path / how)[0]
    assert config["lora"]["embeddings"] is True
    with torch.no_grad():
        want = model.eval()(x)[0]
        merged, from_adapters = loaded["merged"](x)[0], loaded["adapters"](x)[0]
    assert torch.equal(merged, from_adapters)
    torch.testing.assert_close(from_adapters, want, atol=1e-5, rtol=1e-5)  # merging reorders the sums only
    # an adapters file without the trained embedding is refused by name
    tensors = load_file(tmp_path / "adapters" / "adapters.safetensors")
    save_file({k: v for k, v in tensors.items() if k != "embed.weight"}, tmp_path / "adapters" / "adapters.safetensors")
    with pytest.raises(ModelError, match=r"missing adapters \['embed.weight'\]"):
        load_model(tmp_path / "adapters")
