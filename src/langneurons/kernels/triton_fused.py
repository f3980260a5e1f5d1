"""Fused SiLU-gated MLP activation + statistics: one pass computes the model's own
y = silu(gate) * up and reduces the chosen site, so the FFN activations are read once.

Unfused, a profiled gated MLP moves: gate and up read by silu, silu(gate) written, read again with
up by the multiply, y written, then the site read again by the statistics kernel. Fused: gate and
up read, y written, statistics kept in registers. Its spec and test oracle is
`reference.silu_mul_accumulate_` (the model's own `act_fn(gate) * up`, then `accumulate_`).

Exactness. y must equal what the model itself computes, bit for bit, or profiling would change the
model. On CUDA, ATen computes silu as `x / (1 + expf(-x))` in fp32 (also for fp16/bf16 inputs,
rounding the result once to the dtype) and the multiply as one fp32 product rounded to the dtype.
This kernel does exactly those operations: libdevice's `__nv_expf` (the function nvcc links for
`expf`), IEEE round-to-nearest division (`div_rn`, not Triton's approximate `/`), denormals kept
(no flush-to-zero reflect), no FMA contraction, round-to-nearest-even casts. Under
TRITON_INTERPRET=1 (tests on CPU) numpy's exp stands in for `__nv_expf` and torch's CPU silu uses
its own vectorised exp, so there y agrees to within an ulp of the silu, not bit for bit; the
statistics still equal the reference reduction of the kernel's own y exactly. The native build is
checked without a GPU by compiling it to PTX (`kernels/ptx.py`, tests/test_kernels_native.py): IEEE
division, libdevice's expf sequence, no flush-to-zero, round-to-nearest casts.

That is a design, and exactness is a property of the device, the torch build and the model's dtype,
so it is checked where it matters: `check_exact` runs before the kernel stands in for any MLP and
compares it with the model's own activation module on every 16-bit gate value (all 65,536) and on
a 2^20-value sweep of fp32, refusing with an error if a single value differs.

Layout: the row-wise loop, grid and in-kernel folding of `triton_stats` (see there), sharing its
statistics helpers. y is computed and stored for every row (padding too: the model needs it) in
the first pass; with several languages in one call, later passes load only their own rows.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice  # the backend's math library: __nv_expf on CUDA

from langneurons.kernels.reference import Accumulator
from langneurons.kernels.triton_stats import (
    BLOCK_F, ROWS, _edges15, _flush, _program_range, _row, _row_selected, _widen, _zeros,
    check_accumulator, check_block, grid,
    hist_constants, launch_options, layer_outputs, unit_stride_rows,
)

SITES = ("gate", "down_in")
# Compiler options that keep ATen's rounding (see the module docstring): no FMA contraction, and
# libdevice without flush-to-zero (nvcc's default, -ftz=false). The interpreter takes no options.
NATIVE_OPTIONS = {"enable_fp_fusion": False, "enable_reflect_ftz": False}


@triton.jit
def _silu_f32(x, NATIVE: tl.constexpr):
    """ATen's CUDA silu on fp32 x: x / (1 + expf(-x)), IEEE division."""
    if NATIVE:
        e = libdevice.exp(-x)
    else:  # the interpreter has no libdevice; numpy's exp stands in
        e = tl.exp(-x)
    return tl.div_rn(x, 1.0 + e)


@triton.jit
def _round(x, out_ty: tl.constexpr, NATIVE: tl.constexpr, IS_BF16: tl.constexpr):
    """fp32 -> the model's dtype, round to nearest even (as ATen rounds)."""
    if NATIVE or not IS_BF16:
        return x.to(out_ty)
    else:
        # The interpreter's own fp32 -> bf16 cast truncates; round by bits instead, as c10's
        # BFloat16 does (NaN kept as the canonical quiet NaN).
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(x != x, 0x7FC0, bits)
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _silu_mul_stats_kernel(gate_ptr, up_ptr, y_ptr, lang_ptr, edges_ptr,
                           fired_ptr, sum_ptr, sumsq_ptr, hist_ptr, nonfinite_ptr,
                           T, F, stride_g, stride_u, stride_n, stride_hn, stride_hf, threshold,
                           n_languages, tokens_per_split,
                           SITE_GATE: tl.constexpr, NATIVE: tl.constexpr, IS_BF16: tl.constexpr,
                           NUM_EDGES: tl.constexpr, NUM_GROUPS: tl.constexpr,
                           ROWS: tl.constexpr, BLOCK_F: tl.constexpr):
    o_f, m_f, t_start, t_stop = _program_range(F, T, tokens_per_split, BLOCK_F)
    out_ty = y_ptr.dtype.element_ty
    HIST: tl.constexpr = NUM_EDGES > 0
    for p in range(n_languages * NUM_GROUPS):
        n = p // NUM_GROUPS
        group = p % NUM_GROUPS
        e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14 = _edges15(
            edges_ptr, group, NUM_EDGES)
        b_fired, b_finite, b_sum, b_sumsq, h0, h1, h2, h3, h4, h5, h6, h7 = _zeros(BLOCK_F)
        rows = 0
        for t0 in range(t_start, t_stop, ROWS):
            b_lo = tl.zeros([BLOCK_F], dtype=tl.int32)
            b_hi = tl.zeros([BLOCK_F], dtype=tl.int32)
            for r in tl.static_range(ROWS):
                t = t0 + r
                t_in = t < t_stop
                sel = _row_selected(lang_ptr, t, t_stop, T, n)
                rows += sel.to(tl.int32)
                # y needs every row once (the first pass); later passes load only their rows
                m_load = tl.where(t_in & ((p == 0) | sel), m_f, False)
                row = t.to(tl.int64)
                b_g = tl.load(gate_ptr + row * stride_g + o_f, mask=m_load, other=0.0)
                b_u = tl.load(up_ptr + row * stride_u + o_f, mask=m_load, other=0.0)
                # Rounded to the model's dtype exactly where ATen rounds: after silu, after the product.
                b_h = _round(_silu_f32(b_g.to(tl.float32), NATIVE), out_ty, NATIVE, IS_BF16)
                b_y = _round(b_h.to(tl.float32) * b_u.to(tl.float32), out_ty, NATIVE, IS_BF16)
                tl.store(y_ptr + row * F + o_f, b_y, mask=tl.where(t_in & (p == 0), m_f, False))
                if SITE_GATE:
                    b_x = b_h.to(tl.float32)
                else:
                    b_x = b_y.to(tl.float32)
                b_fired, b_finite, b_sum, b_sumsq, b_lo, b_hi = _row(
                    b_x, tl.where(sel, m_f, False), threshold, b_fired, b_finite, b_sum, b_sumsq,
                    b_lo, b_hi, e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, HIST)
            if HIST:
                h0, h1, h2, h3 = _widen(b_lo, h0, h1, h2, h3)
                h4, h5, h6, h7 = _widen(b_hi, h4, h5, h6, h7)
        _flush(n, group, o_f, m_f, rows, b_fired, b_finite, b_sum, b_sumsq, h0, h1, h2, h3, h4, h5,
               h6, h7, fired_ptr, sum_ptr, sumsq_ptr, hist_ptr, nonfinite_ptr, stride_n, stride_hn,
               stride_hf, NUM_EDGES + 1, HIST)


def silu_mul_stats(gate: torch.Tensor, up: torch.Tensor, acc: Accumulator, layer: int,
                   token_lang: torch.Tensor, site: str) -> torch.Tensor:
    """y[T, F] = silu(gate) * up for gate, up [T, F] of one dtype; adds the statistics of `site`
    to `acc`'s totals of `layer`."""
    if site not in SITES:
        raise ValueError(f"site {site!r} is not one of {SITES}")
    check_block(gate, token_lang, acc.edges, "gate")
    if up.shape != gate.shape or up.dtype != gate.dtype or up.device != gate.device:
        raise ValueError(f"up {tuple(up.shape)} {up.dtype} {up.device} must match gate "
                         f"{tuple(gate.shape)} {gate.dtype} {gate.device}")
    check_accumulator(acc, gate)
    gate, up = unit_stride_rows(gate), unit_stride_rows(up)
    T, F = gate.shape
    y = torch.empty(T, F, dtype=gate.dtype, device=gate.device)
    if T == 0 or F == 0:
        return y
    lang = token_lang if token_lang.dtype == torch.int32 else token_lang.to(torch.int32)
    col_blocks, splits, per_split = grid(T, F, gate.device)
    native = os.environ.get("TRITON_INTERPRET") != "1"
    _silu_mul_stats_kernel[(col_blocks, splits)](
        gate, up, y, lang.contiguous(), acc.edges, T=T, F=F, stride_g=gate.stride(0),
        stride_u=up.stride(0), threshold=acc.threshold, n_languages=acc.n_languages,
        tokens_per_split=per_split, SITE_GATE=site == "gate", NATIVE=native,
        IS_BF16=gate.dtype == torch.bfloat16, ROWS=ROWS, BLOCK_F=BLOCK_F,
        **layer_outputs(acc, layer), **hist_constants(acc), **launch_options(gate.dtype),
        **(NATIVE_OPTIONS if native else {}),
    )
    return y


def check_exact(act, dtype: torch.dtype, device: torch.device | str) -> None:
    """Raise unless this kernel's y equals ``act(gate) * up`` bit for bit on `device` in `dtype`
    (NaN payloads aside): every 16-bit pattern of gate (fp16/bf16), or 2^20 fp32 values across the
    whole exponent range plus zeros, denormals, infinities and NaN, each times up = 1 (the
    activation itself) and times random up values (the rounding of the product)."""
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    if dtype in (torch.float16, torch.bfloat16):
        bits = torch.arange(-2 ** 15, 2 ** 15, dtype=torch.int32).to(torch.int16)
        gate = bits.view(dtype)
    else:  # the interpreter runs ~1e4x slower than a GPU: a smaller sweep keeps its tests short
        special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-40, 3.4e38, -3.4e38, float("inf"),
                                float("-inf"), float("nan"), 88.7, -88.7, 103.0, -103.0])
        n = 2 ** 20 if os.environ.get("TRITON_INTERPRET") != "1" else 2 ** 12
        bits = torch.randint(-2 ** 31, 2 ** 31, (n - len(special),), generator=g, dtype=torch.int64)
        gate = torch.cat([bits.to(torch.int32).view(torch.float32), special])
    gate = gate.reshape(-1, 256).to(dev)  # 2^16 or 2^n values: whole rows of 256 neurons
    for up in (torch.ones_like(gate), torch.randn(gate.shape, generator=g).to(dtype).to(dev)):
        acc = Accumulator.zeros(1, 1, gate.shape[1], (), 0.0, dev)
        lang = torch.full((gate.shape[0],), -1, dtype=torch.int32, device=dev)  # count nothing
        y = silu_mul_stats(gate, up, acc, 0, lang, "down_in")
        want = act(gate) * up
        same = (y == want) | (torch.isnan(y) & torch.isnan(want))
        if not bool(same.all()):
            bad = int((~same).sum())
            i = int(torch.nonzero(~same)[0, 0]), int(torch.nonzero(~same)[0, 1])
            raise RuntimeError(
                f"--fused-mlp: the fused kernel's silu(gate) * up differs from the model's own "
                f"{type(act).__name__} on {dev} in {bad} of {y.numel()} {str(dtype).removeprefix('torch.')} "
                f"values (e.g. gate={gate[i].item()!r}: {y[i].item()!r} vs {want[i].item()!r}), so it "
                "would change the model it profiles; run without --fused-mlp (the hooks give the "
                "same statistics), or with --kernel reference")


def silu_mul_accumulate_(acc: Accumulator, layer: int, gate: torch.Tensor, up: torch.Tensor,
                         token_lang: torch.Tensor, site: str, act=None) -> torch.Tensor:
    """Same contract as `reference.silu_mul_accumulate_`: return silu(gate) * up (gate's shape)
    and add the statistics of `site` to `acc`. `act` is accepted for that symmetry: this kernel
    only computes SiLU, so callers check that the model's activation is SiLU."""
    shape = gate.shape
    F = shape[-1]
    return silu_mul_stats(gate.reshape(-1, F), up.reshape(-1, F), acc, layer, token_lang, site).view(shape)
