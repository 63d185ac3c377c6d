"""What both Triton attention test files check against: a float64 reference, the error measure, inputs in
the memory layouts the kernels must read, and NaN-poisoned output buffers (an unwritten element fails)."""
import math

import torch


def reference(q, k, v, causal, sm_scale=None):
    """Plain softmax attention in float64; GQA by repeating each kv head over its group."""
    g = q.shape[1] // k.shape[1]
    q, k, v = q.double(), k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) * (sm_scale or 1 / math.sqrt(q.shape[-1]))
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return s.softmax(-1) @ v


def rel_err(got, ref):
    """||got - ref|| / ||ref||, with ||ref|| floored at RMS 0.1: some exact grads are 0 (T=1: dq, dk)."""
    assert torch.isfinite(got).all(), "non-finite values (an element the kernel did not write?)"
    floor = 0.1 * math.sqrt(ref.numel())
    return ((got.double() - ref).norm() / max(ref.norm().item(), floor)).item()


def make(shape, dtype, layout, gen, device="cpu"):
    """Fresh N(0, 1) values (never zeros) in one of three memory layouts, as a leaf needing grad."""
    B, H, T, D = shape
    if layout == "bthd":  # what the model passes: (B, T, H, D) memory seen as (B, H, T, D)
        x = torch.randn(B, T, H, D, generator=gen, device=device).to(dtype).transpose(1, 2)
    elif layout == "strided":  # every other element of the last dim: stride(-1) == 2
        x = torch.randn(B, H, T, 2 * D, generator=gen, device=device).to(dtype)[..., ::2]
    else:
        x = torch.randn(B, H, T, D, generator=gen, device=device).to(dtype)
    return x.requires_grad_()


def poison(monkeypatch, flash_attention):
    """Make every buffer the kernels allocate (O, LSE, delta, dQ, dK, dV) start as NaN; returns the list
    of allocated shapes."""
    calls = []

    def empty(shape, dtype, device):
        calls.append(shape)
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    def empty_like(t):
        calls.append(t.shape)
        return torch.full_like(t, float("nan"))

    monkeypatch.setattr(flash_attention, "_flash_empty", empty)
    monkeypatch.setattr(flash_attention, "_flash_empty_like", empty_like)
    return calls


def compiled_and_eager(loss_fn, inputs, **compile_kw):
    """(compiled loss, its input grads, eager loss, its input grads) of loss_fn(*inputs), with
    torch.compile(fullgraph=True) so a graph break fails."""
    torch._dynamo.reset()
    compiled = torch.compile(loss_fn, fullgraph=True, **compile_kw)(*inputs)
    compiled.backward()
    compiled_grads = [x.grad.clone() for x in inputs]
    for x in inputs:
        x.grad = None
    eager = loss_fn(*inputs)
    eager.backward()
    return compiled, compiled_grads, eager, [x.grad for x in inputs]
