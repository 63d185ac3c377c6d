"""8-bit AdamW (optim.py): codes, nearest-code search, state size, trajectory against torch AdamW, state_dict
round trips."""
import io

import torch

from model import GPT, GPTConfig


def tiny_model(n_embd=64, vocab=1024, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_embd=n_embd))


def param_groups(model, wd=0.1):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": wd},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


# ---- 8-bit AdamW
def test_dynamic_codes():
    from optim import dynamic_code

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
    from optim import dynamic_code, nearest_code, nearest_code_tables

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
    from optim import AdamW8bit

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

    from optim import AdamW8bit

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
