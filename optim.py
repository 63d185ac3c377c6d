"""
8-bit AdamW: torch.optim.AdamW's update with both moments stored in 8 bits, about 2 bytes of optimizer
state per parameter instead of 8. Works on one process, DDP and FSDP2 (sharded state), and its
state_dict() resumes on any world size.

    from optim import AdamW8bit
    opt = AdamW8bit(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
"""
import math

import torch

# AdamW with both moments stored in 8 bits (Dettmers et al. 2021, "8-bit Optimizers via Block-wise
# Quantization"). Each moment of a weight matrix is kept as uint8 indices into a fixed 256-entry dynamic
# code plus one fp32 absmax per block of 256 consecutive elements of a row: x ~ code[q] * absmax. The
# code is non-linear ("dynamic"): its entries are spread over decades 1 .. 1e-6 (1e-7 for the second
# moment), with the finest steps in the top decade, so small values keep their relative precision.
# The first moment uses a signed code with an exact 0; the second an unsigned code without 0 (a
# second moment rounded to 0 would turn m / (sqrt(v) + eps) into m / eps). Each step dequantizes a
# chunk of rows to fp32, does the AdamW update there, and quantizes back: state is ~2.03 bytes per
# parameter instead of 8. 1-D tensors and tensors under 4,096 elements keep fp32 state (a negligible
# share). Blocks never cross a row, so under FSDP2 (rows sharded on dim 0) the quantized state of a
# shard is exactly the rows of the full state: it is kept as DTensors like the parameters, and the
# full-state checkpoint helpers gather and re-shard it as they do torch.optim.AdamW's (resume on any
# world size).
_QUANT_BLOCK = 256
_QUANT_MIN_NUMEL = 4096
_QUANT_CHUNK = 1 << 22           # elements dequantized at once (bounds the fp32 temporaries)


def dynamic_code(signed):
    """The sorted 256-entry code. Decade k (values in (10^-k-1, 10^-k]) holds 2^(6-k) right-edge values
    per sign for the signed code (k = 0..6, plus exact 0; 255 distinct values, the 256th repeats 1.0
    and is never chosen) and 2^(7-k) for the unsigned one (k = 0..7, the last decade 2 values; all
    positive, so nothing rounds to 0)."""
    mags = []
    for k in range(7 if signed else 8):
        n = (64 if signed else 128) >> k or 1
        if not signed and k == 7:
            n = 2
        j = torch.arange(1, n + 1, dtype=torch.float64)
        mags.append((0.1 + 0.9 * j / n) * 10.0 ** -k)
    mags = torch.cat(mags)
    code = torch.cat([-mags, torch.zeros(1, dtype=torch.float64), mags, torch.ones(1, dtype=torch.float64)]) if signed else mags
    return torch.sort(code.float()).values


def nearest_code_tables(code):
    """Tables for nearest_code: the bucket of every fp16 value (65,536 entries, indexed by its bit
    pattern) and the midpoints between code values, padded so that nothing moves past either end."""
    mids = (code[1:] + code[:-1]) / 2
    halves = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.float16).float()
    by_half = torch.bucketize(halves, mids, out_int32=True).roll(-32768)  # index: the pattern as uint16
    nan, inf = mids.new_tensor([float("nan")]), mids.new_tensor([float("inf")])  # x <= nan, x > inf: never
    return by_half, torch.cat([nan, mids]), torch.cat([mids, inf])


def nearest_code(x, by_half, mids_below, mids_above):
    """torch.bucketize(x, mids, out_int32=True), bit for bit, 2-4x faster on CPU: the bucket of x rounded
    to fp16 is looked up, then moved by one where a midpoint lies between x and its fp16 value. One
    step is enough: an fp16 ulp is under a quarter of the gap between midpoints of the dynamic code."""
    pattern = x.to(torch.float16).view(torch.int16).to(torch.int32) & 0xFFFF
    i = by_half.index_select(0, pattern.reshape(-1)).view(x.shape)
    i = i + (x > mids_above.index_select(0, i.view(-1)).view(x.shape)).to(torch.int32)
    return i - (x <= mids_below.index_select(0, i.view(-1)).view(x.shape)).to(torch.int32)


class AdamW8bit(torch.optim.Optimizer):
    """torch.optim.AdamW's update (decoupled weight decay, bias correction) with 8-bit block-wise
    quantized moments; state_dict()/load_state_dict() keep the quantized tensors as they are."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self._codes = {}

    def _code(self, signed, device):
        """(code, nearest-code search tables) on device."""
        key = (signed, str(device))
        if key not in self._codes:
            code = torch.unique(dynamic_code(signed))  # sorted, the repeated 1.0 dropped
            self._codes[key] = (code.to(device), tuple(t.to(device) for t in nearest_code_tables(code)))
        return self._codes[key]

    @staticmethod
    def _local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    def _init_state(self, p):
        state = self.state[p]
        state["step"] = torch.zeros((), dtype=torch.float32)
        if p.dim() < 2 or p.numel() < _QUANT_MIN_NUMEL:
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            return state
        cols = p.numel() // p.shape[0]
        nb = math.ceil(cols / _QUANT_BLOCK)
        local = self._local(p)
        absmax_shape = (p.shape[0], nb)
        for name in ("m", "v"):
            state[f"{name}_q"] = torch.zeros_like(p, dtype=torch.uint8, memory_format=torch.contiguous_format)
            a = torch.zeros(local.shape[0], nb, dtype=torch.float32, device=local.device)
            if hasattr(p, "to_local"):  # a DTensor (FSDP2): shard the absmax rows like the parameter's
                from torch.distributed.tensor import DTensor, Shard  # ~1 s to import: only under FSDP

                if any(not (pl.is_replicate() or pl == Shard(0)) for pl in p.placements):
                    raise TypeError(f"AdamW8bit: parameters sharded as {p.placements} are not supported (only on dim 0)")
                a = DTensor.from_local(a, p.device_mesh, p.placements, run_check=False, shape=absmax_shape, stride=(nb, 1))
            state[f"{name}_absmax"] = a
        return state

    @staticmethod
    def _blocks(x, nb):
        """(R, C) -> (R, nb, block) with zero padding at the end of each row."""
        R, C = x.shape
        block = _QUANT_BLOCK if C > _QUANT_BLOCK else C
        if nb * block != C:
            x = torch.nn.functional.pad(x, (0, nb * block - C))
        return x.view(R, nb, block)

    def _dequant(self, q, absmax, code):
        R, C = q.shape
        x = self._blocks(code[q.int()], absmax.shape[1]) * absmax[..., None]
        return x.view(R, -1)[:, :C]

    def _quant(self, x, q_out, absmax_out, tables):
        R, C = x.shape
        xb = self._blocks(x, absmax_out.shape[1])
        absmax = xb.abs().amax(dim=-1)
        idx = nearest_code(xb / absmax.clamp_min(1e-30)[..., None], *tables)
        q_out.copy_(idx.view(R, -1)[:, :C])
        absmax_out.copy_(absmax)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p] if self.state[p] else self._init_state(p)
                state["step"] += 1
                t = float(state["step"])
                bc1, bc2_sqrt = 1 - b1 ** t, math.sqrt(1 - b2 ** t)
                w, g = self._local(p), self._local(p.grad)
                if w.numel() == 0:
                    continue
                if wd:
                    w.mul_(1 - lr * wd)
                if "exp_avg" in state:  # small tensor: plain fp32 AdamW
                    m, v = self._local(state["exp_avg"]), self._local(state["exp_avg_sq"])
                    m.lerp_(g.float(), 1 - b1)
                    v.mul_(b2).addcmul_(g.float(), g.float(), value=1 - b2)
                    w.addcdiv_(m.to(w.dtype), (v.sqrt() / bc2_sqrt).add_(eps).to(w.dtype), value=-lr / bc1)
                    continue
                code_m, tables_m = self._code(True, w.device)
                code_v, tables_v = self._code(False, w.device)
                w2, g2 = w.view(w.shape[0], -1), g.view(g.shape[0], -1)
                qm, qv = self._local(state["m_q"]).view(w2.shape), self._local(state["v_q"]).view(w2.shape)
                am, av = self._local(state["m_absmax"]), self._local(state["v_absmax"])
                rows = max(1, _QUANT_CHUNK // max(1, w2.shape[1]))
                for r0 in range(0, w2.shape[0], rows):
                    sl = slice(r0, r0 + rows)
                    gf = g2[sl].float()
                    m = self._dequant(qm[sl], am[sl], code_m)
                    v = self._dequant(qv[sl], av[sl], code_v)
                    m.lerp_(gf, 1 - b1)
                    v.mul_(b2).addcmul_(gf, gf, value=1 - b2)
                    upd = m / (v.sqrt() / bc2_sqrt).add_(eps)
                    w2[sl].add_(upd.to(w2.dtype), alpha=-lr / bc1)
                    self._quant(m, qm[sl], am[sl], tables_m)
                    self._quant(v, qv[sl], av[sl], tables_v)
        return loss

    def load_state_dict(self, state_dict):
        """As torch's, except that the uint8 codes and fp32 absmax keep their dtypes (torch would cast
        every state tensor of a floating-point parameter to the parameter's dtype)."""
        keep = ("m_q", "v_q", "m_absmax", "v_absmax")
        saved = {k: {n: v for n, v in s.items() if n in keep} for k, s in state_dict["state"].items()}
        super().load_state_dict(state_dict)
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, params):
            for n, v in saved.get(i, {}).items():
                self.state[p][n] = v.to(self._local(p).device) if not hasattr(v, "to_local") else v

    def state_bytes(self):
        """Bytes of optimizer state held by this process (local shards under FSDP)."""
        return sum(self._local(v).numel() * self._local(v).element_size() for s in self.state.values()
                   for v in s.values() if torch.is_tensor(v))
