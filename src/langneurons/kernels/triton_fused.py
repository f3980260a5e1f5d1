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
division, libdevice's expf sequence, no flush-to-zero, round-to-nearest casts. Bit-identity with
torch's CUDA silu itself is asserted by tests/test_fused_mlp.py when it runs on a CUDA machine.

Layout: the same grid and per-launch partials as `triton_stats` (see there). With several
languages in one call the block is re-read per language, as in `triton_stats`; y is written in the
first pass only. Padding rows (token_lang -1) get y computed and stored but never counted.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice  # the backend's math library: __nv_expf on CUDA

from langneurons.kernels.reference import Accumulator
from langneurons.kernels.triton_stats import (
    BLOCK_F, BLOCK_T, _flush, _program_tile, _tile_stats, _zero_stats, check_block, fold_, grid,
    new_partials, unit_stride_rows,
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
                           fired_ptr, finite_ptr, sum_ptr, sumsq_ptr, above_ptr,
                           T, F, stride_g, stride_u, threshold, n_languages, tokens_per_split,
                           SITE_GATE: tl.constexpr, NATIVE: tl.constexpr, IS_BF16: tl.constexpr,
                           NUM_EDGES: tl.constexpr, BLOCK_E: tl.constexpr,
                           BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
    o_f, m_f, o_e, b_edges, t_start, t_stop = _program_tile(
        edges_ptr, T, F, tokens_per_split, NUM_EDGES, BLOCK_E, BLOCK_F)
    out_ty = y_ptr.dtype.element_ty
    for n in range(n_languages):
        b_fired, b_finite, b_sum, b_sumsq, b_above = _zero_stats(BLOCK_E, BLOCK_F)
        for t0 in range(t_start, t_stop, BLOCK_T):
            o_t = t0 + tl.arange(0, BLOCK_T)
            m_t = o_t < t_stop
            m_tile = m_t[:, None] & m_f[None, :]
            rows = o_t[:, None].to(tl.int64)
            b_g = tl.load(gate_ptr + rows * stride_g + o_f[None, :], mask=m_tile, other=0.0)
            b_u = tl.load(up_ptr + rows * stride_u + o_f[None, :], mask=m_tile, other=0.0)
            # Rounded to the model's dtype exactly where ATen rounds: after silu, after the product.
            b_h = _round(_silu_f32(b_g.to(tl.float32), NATIVE), out_ty, NATIVE, IS_BF16)
            b_y = _round(b_h.to(tl.float32) * b_u.to(tl.float32), out_ty, NATIVE, IS_BF16)
            tl.store(y_ptr + rows * F + o_f[None, :], b_y, mask=m_tile & (n == 0))
            if SITE_GATE:
                b_x = b_h.to(tl.float32)
            else:
                b_x = b_y.to(tl.float32)
            b_lang = tl.load(lang_ptr + o_t, mask=m_t, other=-1)
            m = (b_lang == n)[:, None] & m_f[None, :]
            b_fired, b_finite, b_sum, b_sumsq, b_above = _tile_stats(
                b_x, m, b_edges, threshold, b_fired, b_finite, b_sum, b_sumsq, b_above, NUM_EDGES > 0)
        _flush(n, o_f, m_f, o_e, F, fired_ptr, finite_ptr, sum_ptr, sumsq_ptr, above_ptr,
               b_fired, b_finite, b_sum, b_sumsq, b_above, NUM_EDGES, BLOCK_E)


def silu_mul_stats(gate: torch.Tensor, up: torch.Tensor, token_lang: torch.Tensor, n_languages: int,
                   threshold: float, edges: torch.Tensor, site: str
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(y[T, F], per-launch partials of `site`) for gate, up [T, F] of one dtype."""
    if site not in SITES:
        raise ValueError(f"site {site!r} is not one of {SITES}")
    if n_languages < 1:
        raise ValueError("n_languages must be >= 1: y is written in the first language's pass")
    check_block(gate, token_lang, edges, "gate")
    if up.shape != gate.shape or up.dtype != gate.dtype or up.device != gate.device:
        raise ValueError(f"up {tuple(up.shape)} {up.dtype} {up.device} must match gate "
                         f"{tuple(gate.shape)} {gate.dtype} {gate.device}")
    gate, up = unit_stride_rows(gate), unit_stride_rows(up)
    lang = token_lang.to(torch.int32).contiguous()
    edges = edges.to(torch.float32).contiguous()
    T, F = gate.shape
    E = edges.numel()
    dev = gate.device
    y = torch.empty(T, F, dtype=gate.dtype, device=dev)
    p = new_partials(n_languages, E, F, dev)
    if T > 0 and F > 0:
        col_blocks, splits, per_split = grid(T, F, dev)
        native = os.environ.get("TRITON_INTERPRET") != "1"
        options = NATIVE_OPTIONS if native else {}
        _silu_mul_stats_kernel[(col_blocks, splits)](
            gate, up, y, lang, edges, p["fired"], p["finite"], p["sum"], p["sumsq"], p["above"],
            T, F, gate.stride(0), up.stride(0), float(threshold), n_languages, per_split,
            SITE_GATE=site == "gate", NATIVE=native, IS_BF16=gate.dtype == torch.bfloat16,
            NUM_EDGES=E, BLOCK_E=p["above"].shape[1], BLOCK_T=BLOCK_T, BLOCK_F=BLOCK_F, num_warps=4,
            **options,
        )
    p["above"] = p["above"][:, :E]
    return y, p


def silu_mul_accumulate_(acc: Accumulator, layer: int, gate: torch.Tensor, up: torch.Tensor,
                         token_lang: torch.Tensor, site: str, act=None) -> torch.Tensor:
    """Same contract as `reference.silu_mul_accumulate_`: return silu(gate) * up (gate's shape)
    and add the statistics of `site` to `acc`. `act` is accepted for that symmetry: this kernel
    only computes SiLU, so callers check that the model's activation is SiLU."""
    shape = gate.shape
    F = shape[-1]
    y, p = silu_mul_stats(gate.reshape(-1, F), up.reshape(-1, F), token_lang, acc.n_languages,
                          acc.threshold, acc.edges, site)
    fold_(acc, layer, p, token_lang)
    return y.view(shape)
