"""LoRA and vocabulary growth (finetune.py): which modules get adapters, that only adapters train, that
merging is exact (module and state-dict paths agree bit for bit), bad targets, and growing the embedding
for added tokens (mean rows, padding, tied heads)."""
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
