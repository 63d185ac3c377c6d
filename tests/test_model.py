"""model.py: the transformer, KV-cache generation, accounting, and loading checkpoint folders."""
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from checkpoint import recover_checkpoint, save_checkpoint
from model import GPT, GPTConfig, ModelError, load_model, make_config, model_state_dict, sample_next

REPO = Path(__file__).resolve().parents[1]


def tiny(vocab=100, **kw):
    args = dict(vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, attn_impl="sdpa")
    args.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**args))


def test_shapes_padding_and_logits():
    m = tiny(vocab=100)
    assert m.embed.weight.shape == (128, 32) and m.head.weight.shape == (128, 32)  # padded to 64
    idx = torch.randint(0, 100, (3, 17))
    logits, loss = m(idx)
    assert logits.shape == (3, 17, 100) and loss is None
    full, loss = m(idx, idx)
    assert full.shape == (3, 17, 100) and loss.ndim == 0
    assert torch.equal(full, logits)
    # padding rows of the head never enter the softmax: the loss ignores them
    with torch.no_grad():
        m.head.weight[100:] = 50.0
    assert m(idx, idx)[1].item() == pytest.approx(loss.item(), rel=1e-6)
    with pytest.raises(ModelError, match="exceeds block_size 64"):
        m(torch.zeros(1, 65, dtype=torch.long))


def test_loss_mask_and_ignore_index():
    m = tiny()
    idx = torch.randint(0, 100, (2, 12))
    targets = torch.randint(0, 100, (2, 12))
    mask = torch.zeros(2, 12)
    mask[0, 5:] = 1
    mask[1, :3] = 1
    logits, loss = m(idx, targets, mask)
    per_token = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), reduction="none").view(2, 12)
    assert loss.item() == pytest.approx((per_token * mask).sum().item() / mask.sum().item(), rel=1e-6)
    # masked-out targets do not matter at all
    other = targets.clone()
    other[mask == 0] = (other[mask == 0] + 1) % 100
    assert m(idx, other, mask)[1].item() == pytest.approx(loss.item(), rel=1e-6)
    # -1 targets are ignored like a zero mask
    ignored = targets.clone()
    ignored[mask == 0] = -1
    assert m(idx, ignored)[1].item() == pytest.approx(loss.item(), rel=1e-6)


def test_gqa_equals_multi_head_attention_with_repeated_kv():
    gqa = tiny(n_head=4, n_kv_head=2)
    mha = GPT(GPTConfig(**{**gqa.cfg.__dict__, "n_kv_head": 4}))
    state = gqa.state_dict()
    d = gqa.cfg.head_dim
    for name in list(state):
        if name.endswith(("attn.k.weight", "attn.v.weight")):  # each kv head serves 2 query heads
            w = state[name].view(2, d, -1)
            state[name] = w.repeat_interleave(2, dim=0).reshape(4 * d, -1)
    mha.load_state_dict(state)
    idx = torch.randint(0, 100, (2, 20))
    assert torch.allclose(gqa(idx)[0], mha(idx)[0], atol=1e-5)
    assert gqa.num_params() < mha.num_params()


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_generation_logits_equal_full_forward(n_kv_head):
    m = tiny(n_kv_head=n_kv_head)
    prompts = [[5, 6, 7, 8, 9], [3], [10, 20, 30, 40, 50, 60, 70, 80]]
    outs, logits = m.generate(prompts, 12, temperature=1.0, n_samples=2, return_logits=True,
                              generator=torch.Generator().manual_seed(0))
    assert len(outs) == 6
    for row, (new, lg) in enumerate(zip(outs, logits)):
        prompt = prompts[row // 2]
        seq = prompt + new
        full = m(torch.tensor([seq]))[0][0]
        assert len(new) == 12 and lg.shape == (12, 100)
        assert torch.allclose(lg, full[len(prompt) - 1:len(seq) - 1], atol=1e-5), row
    # the samples of one prompt share a prefill but not their continuations
    assert outs[0] != outs[1] or outs[2] != outs[3]


def test_greedy_generation_and_stops():
    m = tiny()
    prompt = [1, 2, 3]
    greedy = m.generate([prompt], 8)[0]
    seq = list(prompt)
    for _ in range(8):  # greedy by hand with full forwards
        seq.append(int(m(torch.tensor([seq]))[0][0, -1].argmax()))
    assert greedy == seq[3:]
    # eos stops a row and is not returned; other rows go on
    cut = next(i for i in range(1, 8) if greedy[i] not in greedy[:i])
    eos = greedy[cut]
    outs = m.generate([prompt, [4, 4]], 8, eos_id=eos)
    assert outs[0] == greedy[:cut]
    assert len(outs[1]) == 8 or eos in m.generate([[4, 4]], 8)[0]
    # a stop callback ends a row after the token that triggered it
    calls = []
    outs = m.generate([prompt], 8, stop=lambda row, ids: calls.append(row) or len(ids) == 3)
    assert outs[0] == greedy[:3] and set(calls) == {0}
    with pytest.raises(ModelError, match="at least one token"):
        m.generate([[]], 4)


def test_a_row_does_not_depend_on_its_batch():
    """Prompts of different lengths decode as one batch, left-padded in the cache, and rows leave it as
    they stop: every row's tokens and logits equal those of its prompt generated alone, greedy (repetition
    penalty and banned ids included) and sampled with a generator per row."""
    m = tiny()
    prompts = [[5, 6, 7, 8, 9, 10, 11], [3], [10, 20, 30], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
    ends = [4, 9, 6, 12]  # rows stop after different numbers of tokens

    def run(rows, **kw):
        return m.generate([prompts[i] for i in rows], 12, stop=lambda row, ids: len(ids) >= ends[rows[row]], **kw)

    together, logits = run([0, 1, 2, 3], repetition_penalty=1.3, banned_ids=[0, 7], return_logits=True)
    assert [len(t) for t in together] == ends
    for i in range(4):
        alone, alone_logits = run([i], repetition_penalty=1.3, banned_ids=[0, 7], return_logits=True)
        assert together[i] == alone[0]
        assert torch.allclose(logits[i], alone_logits[0], atol=1e-5)

    def sampled(rows):
        gens = [torch.Generator().manual_seed(100 + i) for i in rows]
        return m.generate([prompts[i] for i in rows], 10, temperature=1.0, top_p=0.9, generators=gens)

    assert sampled([0, 1, 2, 3]) == [sampled([i])[0] for i in range(4)]
    assert sampled([3, 1]) == [sampled([3])[0], sampled([1])[0]]


def test_top_p_and_temperature_sampling():
    logits = torch.tensor([[5.0, 4.9, 0.0, -1.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    nucleus = sample_next(logits, temperature=1.0, top_p=0.5, generator=g)
    assert set(nucleus.tolist()) == {0}  # the top token alone already holds more than half
    wide = sample_next(logits, temperature=1.0, top_p=0.99, generator=g)
    assert set(wide.tolist()) == {0, 1}
    hot = sample_next(logits, temperature=100.0, generator=g)
    assert set(hot.tolist()) == {0, 1, 2, 3}
    assert sample_next(logits[:1], temperature=0.0).item() == 0


def test_flops_and_params():
    m = tiny(tie_embeddings=True)
    cfg = m.cfg
    n = sum(p.numel() for p in m.parameters())
    assert m.num_params() == n and m.num_params(matmul_only=True) == n  # tied: the head counts
    untied = tiny(tie_embeddings=False)
    assert untied.num_params(matmul_only=True) == untied.num_params() - untied.embed.weight.numel()
    expected = 6 * untied.num_params(matmul_only=True) + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * 64
    assert untied.flops_per_token(64) == expected


@pytest.mark.parametrize("kw, message", [
    (dict(n_embd=30, n_head=4), "not divisible by n_head"),
    (dict(n_head=4, n_kv_head=3), "not divisible by n_kv_head"),
    (dict(attn_impl="flash"), "attn_impl must be"),
    (dict(n_layer=0), "n_layer must be positive"),
])
def test_bad_config(kw, message):
    with pytest.raises(ModelError, match=message):
        GPTConfig(**{**dict(vocab_size=10, n_layer=1, n_head=4, n_embd=32), **kw})


@pytest.mark.parametrize("tied", [False, True])
def test_checkpoint_round_trip(tmp_path, tied):
    m = tiny(tie_embeddings=tied)
    cfg = make_config(m.cfg, {"vocab_size": 100}, {"lr": 1}, step=7)
    save_checkpoint(tmp_path / "ck", model_state_dict(m), cfg, train_state={"step": 7})
    assert sorted(os.listdir(tmp_path / "ck")) == ["config.json", "model.safetensors", "train_state.pt"]
    loaded, config = load_model(tmp_path / "ck")
    assert config["step"] == 7 and config["model"]["tie_embeddings"] == tied
    for (k, a), (k2, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    if tied:
        assert loaded.head.weight is loaded.embed.weight
    idx = torch.randint(0, 100, (1, 10))
    assert torch.equal(m(idx)[0], loaded(idx)[0])
    half, _ = load_model(tmp_path / "ck", dtype=torch.bfloat16)
    assert half.embed.weight.dtype == torch.bfloat16


def test_config_missing_a_shape_key_is_named(tmp_path):
    m = tiny()
    save_checkpoint(tmp_path / "ck", model_state_dict(m), make_config(m.cfg))
    config = json.loads((tmp_path / "ck" / "config.json").read_text())
    del config["model"]["n_embd"]
    (tmp_path / "ck" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"config.json: model config lacks n_embd"):
        load_model(tmp_path / "ck")


def test_strict_loading_names_what_is_wrong(tmp_path):
    m = tiny()
    state = model_state_dict(m)
    state.pop("blocks.1.mlp.up.weight")
    state["blocks.0.attn.q.weight"] = torch.zeros(5, 5)
    state["extra.weight"] = torch.zeros(1)
    save_checkpoint(tmp_path / "bad", state, make_config(m.cfg))
    with pytest.raises(ModelError) as e:
        load_model(tmp_path / "bad")
    msg = str(e.value)
    assert "blocks.1.mlp.up.weight" in msg and "extra.weight" in msg and "blocks.0.attn.q.weight (5, 5)" in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path / "empty")
    cfg = json.loads((tmp_path / "bad" / "config.json").read_text())
    cfg["model"]["n_layers"] = 3
    (tmp_path / "bad" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"unknown model config keys \['n_layers'\]"):
        load_model(tmp_path / "bad")
    recover_checkpoint(tmp_path / "bad")  # nothing to recover: a no-op


def test_activation_checkpointing_same_gradients():
    m = tiny()
    idx = torch.randint(0, 100, (2, 16))
    m(idx, idx)[1].backward()
    ref = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    m.activation_checkpointing = True
    m(idx, idx)[1].backward()
    assert all(torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(ref, m.parameters()))
    assert not math.isnan(ref[0].sum().item())
