"""model.py's decoding: RoPE tables, the decoding step against the full forward on every architecture
variant, and generate(compile=True)'s fixed-shape decoding (static cache) against the eager one."""
import pytest
import torch

from finetune import LoRALinear, add_lora
from model import GPT, GPTConfig, apply_rope, rope_inv_freq, rope_tables

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3], [10, 20, 30], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50]]
# the imported families' variants (hf.py) besides ours: each takes its own path through Attention.decode
VARIANTS = {
    "ours": {},
    "gpt_neox": dict(norm="layernorm", norm_bias=True, qkv_bias=True, out_bias=True, mlp_bias=True, mlp_gated=False,
                     mlp_act="gelu", parallel_residual=True, rotary_fraction=0.25),
    "qwen2": dict(qkv_bias=True, rope_scaling="linear", rope_factor=2.0),
    "olmo": dict(norm="layernorm", norm_affine=False, qkv_clip=0.05, tie_embeddings=True),
}


def tiny(**kw):
    args = dict(vocab_size=100, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, attn_impl="sdpa")
    args.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**args))


@pytest.fixture
def no_compile(monkeypatch):
    """generate(compile=True) with torch.compile left out: the fixed-shape decoding itself, in eager mode."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)


def rotate_half_rope(x, positions, cfg):
    """Hugging Face Llama's RoPE, written out: rotate_half on the first rotary_dim dims, the rest unchanged."""
    r = cfg.rotary_dim
    angles = positions.float()[:, None] * rope_inv_freq(cfg)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    rot, rest = x[..., :r], x[..., r:]
    rotated = torch.cat([-rot[..., r // 2:], rot[..., :r // 2]], -1)
    return torch.cat([rot * cos + rotated * sin, rest], -1)


@pytest.mark.parametrize("fraction", [1.0, 0.25])
def test_rope_tables_equal_rotate_half(fraction):
    cfg = GPTConfig(vocab_size=10, n_layer=1, n_head=2, n_embd=64, rotary_fraction=fraction)
    x, pos = torch.randn(3, 2, 9, 32), torch.arange(9) + 5
    cos, sin, swap = rope_tables(pos, cfg)
    assert cos.shape == sin.shape == (9, 32)
    torch.testing.assert_close(apply_rope(x, cos, sin, swap), rotate_half_rope(x, pos, cfg), atol=1e-6, rtol=1e-6)
    if fraction < 1:  # the dims past rotary_dim pass through exactly
        assert torch.equal(apply_rope(x, cos, sin, swap)[..., cfg.rotary_dim:], x[..., cfg.rotary_dim:])
    half = apply_rope(x.bfloat16(), cos, sin, swap)
    assert half.dtype == torch.bfloat16


@pytest.mark.parametrize("variant", VARIANTS)
def test_decoding_logits_equal_full_forward(variant, no_compile):
    """Every decoding step's logits (eager and fixed-shape) are the full forward's at that position, on
    prompts of different lengths (left padding) whose rows leave the batch at different steps."""
    m = tiny(**VARIANTS[variant])
    ends = [3, 8, 5, 8]
    stop = lambda row, ids: len(ids) >= ends[row]  # noqa: E731
    for static in (False, True):
        outs, logits = m.generate(PROMPTS, 8, temperature=1.0, generator=torch.Generator().manual_seed(0),
                                  return_logits=True, stop=stop, compile=static)
        for row, (prompt, new, lg) in enumerate(zip(PROMPTS, outs, logits)):
            assert len(new) == ends[row] and lg.shape == (ends[row], 100)
            full = m(torch.tensor([prompt + new]))[0][0]
            torch.testing.assert_close(lg, full[len(prompt) - 1:-1], atol=1e-5, rtol=1e-5,
                                       msg=lambda msg: f"{variant} static={static} row {row}: {msg}")


def test_fixed_shape_decoding_equals_eager(no_compile):
    """generate(compile=True) keeps finished rows in its batch and attends over the whole cache: the same
    tokens as the eager decoding that drops them, greedy and sampled (one generator, or one per row)."""
    m = tiny()
    greedy = dict(max_new_tokens=10, n_samples=2, eos_id=int(m.generate(PROMPTS[:1], 3)[0][2]),
                  repetition_penalty=1.3, banned_ids=[0, 7])
    eager = m.generate(PROMPTS, **greedy)
    assert eager == m.generate(PROMPTS, **greedy, compile=True)
    assert min(map(len, eager)) < 10 == max(map(len, eager))  # eos ended a row early, another ran on

    def one_generator(compile, eos_id=None):
        return m.generate(PROMPTS, 10, temperature=1.0, n_samples=2, eos_id=eos_id, compile=compile,
                          generator=torch.Generator().manual_seed(1))

    def generator_per_row(compile, eos_id=None):
        return m.generate(PROMPTS, 10, temperature=1.0, top_p=0.9, min_p=0.05, n_samples=2, eos_id=eos_id,
                          compile=compile, generators=[torch.Generator().manual_seed(i) for i in range(8)])

    for sample in (one_generator, generator_per_row):
        eos = sample(False)[0][2]  # the first row stops at its third token
        assert sample(False, eos) == sample(True, eos)
        assert len(sample(True, eos)[0]) == 2


def test_fixed_shape_cache_is_kept_per_shape(no_compile):
    """The static cache (and its compiled step) serves every later call of the same batch and length bucket,
    whatever the previous call left in it; another shape gets its own."""
    m = tiny()
    first = m.generate(PROMPTS, 6, compile=True)
    cache = m._static[1]
    other = [p[::-1] for p in PROMPTS]
    assert m.generate(other, 9, compile=True) == m.generate(other, 9)
    assert m._static[1] is cache  # same rows, 11 + 9 columns: the same 128-column bucket
    assert m.generate(PROMPTS, 6, compile=True) == first
    m.generate(PROMPTS[:2], 6, compile=True)
    assert m._static[1] is not cache and len(m._static[1].k[0]) == 2


def test_compiled_generate_equals_eager():
    """generate(compile=True) with torch.compile itself (inductor on CPU, a few seconds on one layer): one
    graph, no break (fullgraph), the eager tokens on prompts of different lengths with rows stopping at eos."""
    torch._dynamo.reset()
    m = tiny(n_layer=1)
    kw = dict(max_new_tokens=6, eos_id=int(m.generate(PROMPTS[:1], 3)[0][2]))
    assert m.generate(PROMPTS, **kw, compile=True) == m.generate(PROMPTS, **kw)
    assert m.generate(PROMPTS[::-1], **kw, compile=True) == m.generate(PROMPTS[::-1], **kw)


def decoding_logits(m, prompts, n=6):
    outs, logits = m.generate(prompts, n, return_logits=True)
    full = [m(torch.tensor([p + o]))[0][0, len(p) - 1:-1] for p, o in zip(prompts, outs)]
    return logits, full


needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_onednn
def test_packed_weights_follow_every_change_of_the_weights():
    """CPU decoding multiplies by copies of the weights packed for oneDNN, kept between calls: an optimizer
    step (in place), load_state_dict (a copy into them) and replaced tensors must each be seen by the next
    call, whose logits are then the full forward's with the new weights."""
    m = tiny(tie_embeddings=True)
    packed = m.packed_weights()
    linears = [mod for mod in m.modules() if type(mod) is torch.nn.Linear]
    assert set(packed) == set(linears) and m.head in packed  # every matmul, the tied head too
    assert m.packed_weights() is packed  # nothing changed: the same copies
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    m(torch.tensor([PROMPTS[0]]), targets=torch.tensor([PROMPTS[0][1:] + [0]]))[1].backward()
    opt.step()

    def new_weights_seen():
        logits, full = decoding_logits(m, PROMPTS)
        for got, want in zip(logits, full):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

    new_weights_seen()
    state = {k: torch.randn_like(v) * 0.1 for k, v in m.state_dict().items() if "rope" not in k}
    m.load_state_dict(state, strict=False)
    new_weights_seen()
    m.blocks[0].mlp.up.weight = torch.nn.Parameter(torch.randn_like(m.blocks[0].mlp.up.weight))
    new_weights_seen()


def test_packed_and_default_matmuls_decode_alike(monkeypatch):
    """The packed decoding and the default matmuls (where packing does not apply: no oneDNN, another dtype
    or device) give the same tokens and logits within float tolerance."""
    m = tiny()
    packed = m.generate(PROMPTS, 8, return_logits=True)
    monkeypatch.setattr(GPT, "packed_weights", lambda self: {})
    plain = m.generate(PROMPTS, 8, return_logits=True)
    assert packed[0] == plain[0]
    for a, b in zip(packed[1], plain[1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_lora_layers_decode_through_their_own_forward():
    """A LoRA adapter's layers are not packed (their forward adds B A x): a model with adapters on q and v
    decodes to its full forward's logits, adapters included, while its plain layers stay packed."""
    m = tiny()
    add_lora(m, r=4, targets=("q", "v"))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, LoRALinear):
                mod.lora_B.normal_(0, 0.5)  # (zero at start: a real adapter after some training)
    packed = m.packed_weights()
    assert packed and not any(isinstance(mod, LoRALinear) for mod in packed) and m.blocks[0].attn.k in packed
    logits, full = decoding_logits(m, PROMPTS)
    for got, want in zip(logits, full):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_onednn_that_cannot_pack_leaves_the_default_matmuls(monkeypatch):
    """Where oneDNN refuses to pack (a build for another CPU), generation runs on torch's default matmuls."""
    m = tiny()
    want = m.generate(PROMPTS, 6)

    def refuse(*args):
        raise RuntimeError("mkldnn: this build cannot reorder weights")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    m2 = tiny()  # (a model never packed: nothing kept)
    assert m2.packed_weights() == {}
    assert m2.generate(PROMPTS, 6) == want
