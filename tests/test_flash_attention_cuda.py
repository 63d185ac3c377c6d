"""Triton FlashAttention-2 compiled for a real GPU: bf16/fp16/fp32 against a float64 reference and against
torch SDPA's own error, at sizes the interpreter cannot reach. Skipped without CUDA (CI has none); run
on a GPU machine on its own, with the interpreter off:

    TRITON_INTERPRET=0 python -m pytest -q tests/test_flash_attention_cuda.py
"""
import os

import pytest
import torch

if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1":
    pytest.skip("needs a CUDA GPU and TRITON_INTERPRET=0", allow_module_level=True)
pytest.importorskip("triton")
import flash_attention as FA  # noqa: E402
import model as M  # noqa: E402
from flash_reference import compiled_and_eager, make as make_on, poison, reference, rel_err  # noqa: E402

DEV = "cuda"
TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}  # ||err|| / ||ref||


@pytest.fixture(autouse=True)
def one_config(monkeypatch):
    """Each kernel's first autotuning config only: every config compiles per dtype and head dim, which
    would take minutes over this grid. test_autotuned_configs covers the tuned path."""
    monkeypatch.setattr(FA, "_FLASH_AUTOTUNE", False)


@pytest.fixture
def poisoned(monkeypatch):
    return poison(monkeypatch, FA)


def make(shape, dtype, layout, gen):
    return make_on(shape, dtype, layout, gen, device=DEV)


CASES = [  # B, H, Hkv, Tq, Tk, D, causal, layout
    (1, 2, 2, 1, 1, 64, True, "contiguous"),
    (2, 4, 1, 1000, 1000, 64, True, "bthd"),     # T no multiple of any block, GQA group 4
    (1, 8, 4, 2048, 2048, 128, True, "bthd"),    # GQA group 2
    (2, 6, 6, 777, 777, 128, False, "contiguous"),
    (1, 4, 2, 333, 333, 16, True, "contiguous"),
    (1, 4, 4, 513, 513, 32, True, "bthd"),
    (1, 2, 1, 300, 300, 256, True, "contiguous"),
    (1, 2, 2, 200, 200, 256, False, "contiguous"),
    (1, 4, 2, 100, 1500, 64, False, "contiguous"),  # fewer queries than keys
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("B,H,Hkv,Tq,Tk,D,causal,layout", CASES)
def test_forward_backward_vs_float64_and_sdpa(poisoned, dtype, B, H, Hkv, Tq, Tk, D, causal, layout):
    gen = torch.Generator(device=DEV).manual_seed(1000 * Tq + 10 * D + H)
    q = make((B, H, Tq, D), dtype, layout, gen)
    k = make((B, Hkv, Tk, D), dtype, layout, gen)
    v = make((B, Hkv, Tk, D), dtype, layout, gen)
    do = torch.randn(B, H, Tq, D, generator=gen, device=DEV).to(dtype)

    out = FA.triton_attention(q, k, v, causal=causal)
    out.backward(do)
    ours = (out, q.grad, k.grad, v.grad)

    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference(q64, k64, v64, causal)
    ref.backward(do.double())
    refs = (ref, q64.grad, k64.grad, v64.grad)

    # SDPA in the same dtype sets the bar for rounding error (FlashAttention's own test does the same)
    qs, ks, vs = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out_s = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=causal and Tq > 1,
                                                             enable_gqa=H != Hkv)
    out_s.backward(do)
    theirs = (out_s, qs.grad, ks.grad, vs.grad)
    for name, got, want, sdpa in zip(("out", "dq", "dk", "dv"), ours, refs, theirs):
        err, sdpa_err = rel_err(got, want), rel_err(sdpa, want)
        assert err < TOL[dtype], f"{name}: relative error {err:.2e} >= {TOL[dtype]:.0e}"
        assert err <= 2 * sdpa_err + 1e-5, f"{name}: relative error {err:.2e} > 2 x SDPA's {sdpa_err:.2e}"


@pytest.mark.parametrize("D", [64, 128])
def test_autotuned_configs(monkeypatch, poisoned, D):
    """Every candidate config runs while tuning; whichever wins must give the right answer."""
    monkeypatch.setattr(FA, "_FLASH_AUTOTUNE", True)
    gen = torch.Generator(device=DEV).manual_seed(D)
    q, k, v, do = (torch.randn(2, 4, 1111, D, generator=gen, device=DEV, dtype=torch.bfloat16) for _ in range(4))
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = FA.triton_attention(q, k, v, causal=True)
    out.backward(do)
    q64, k64, v64 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref = reference(q64, k64, v64, True)
    ref.backward(do.double())
    for got, want in ((out, ref), (q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert rel_err(got, want) < TOL[torch.bfloat16]


def test_torch_compile_fullgraph_inductor():
    """On CUDA the kernels are a torch.library.triton_op: inductor compiles around them with no graph break."""
    gen = torch.Generator(device=DEV).manual_seed(5)
    q = make((2, 8, 300, 64), torch.bfloat16, "bthd", gen)
    k, v = (make((2, 4, 300, 64), torch.bfloat16, "bthd", gen) for _ in range(2))

    def loss_fn(q, k, v):
        return (FA.triton_attention(q * 2, k, v, causal=True).float() ** 2).sum()

    loss, grads, eager, eager_grads = compiled_and_eager(loss_fn, (q, k, v))
    torch.testing.assert_close(loss, eager, rtol=1e-3, atol=1e-3)
    for g, e in zip(grads, eager_grads):
        assert rel_err(g, e.double()) < 1e-2


def test_model_bf16_triton_matches_sdpa():
    """A whole model step under bf16 autocast: 'auto' picks Triton on CUDA and matches SDPA."""
    torch.manual_seed(0)
    kw = dict(vocab_size=512, block_size=512, n_layer=2, n_head=8, n_kv_head=4, n_embd=512)
    ref_model = M.GPT(M.GPTConfig(**kw, attn_impl="sdpa")).to(DEV)
    tri_model = M.GPT(M.GPTConfig(**kw, attn_impl="auto")).to(DEV)
    tri_model.load_state_dict(ref_model.state_dict())
    calls = []
    real = FA.triton_attention
    FA.triton_attention = lambda *a, **kw: calls.append(1) or real(*a, **kw)
    try:
        idx = torch.randint(0, 512, (4, 511), device=DEV)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss_ref = ref_model(idx, idx)
            _, loss_tri = tri_model(idx, idx)
        loss_ref.backward()
        loss_tri.backward()
    finally:
        FA.triton_attention = real
    assert len(calls) == 2  # one per layer
    assert abs(loss_tri.item() - loss_ref.item()) < 1e-2
    grads_ref = dict(ref_model.named_parameters())
    for name, p in tri_model.named_parameters():
        g_ref = grads_ref[name].grad.double()
        err = ((p.grad.double() - g_ref).norm() / g_ref.norm()).item()
        assert err < 3e-2, f"{name}: grad relative error {err:.2e}"


def test_generate_on_gpu_prefill_triton_equals_sdpa():
    torch.manual_seed(0)
    kw = dict(vocab_size=300, block_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=128)
    ref_model = M.GPT(M.GPTConfig(**kw, attn_impl="sdpa")).to(DEV).float()
    tri_model = M.GPT(M.GPTConfig(**kw, attn_impl="triton")).to(DEV).float()
    tri_model.load_state_dict(ref_model.state_dict())
    prompts = [list(range(5, 40)), list(range(100, 117))]
    with torch.no_grad():
        assert tri_model.generate(prompts, max_new_tokens=16) == ref_model.generate(prompts, max_new_tokens=16)
