"""Triton reduction of FFN activations into per-language statistics: equal to `reference.py`.

One launch reads an activation block x[T, F] once and adds, for each language n present in the
call, straight into the Accumulator's int64 / float64 totals of one layer:

    n_fired[n, f] += #{t in n : x finite, x > threshold}
    act_sum[n, f] += sum x,   act_sumsq[n, f] += sum x^2        (finite values only)
    act_hist[n, f, b] += #{t in n : x finite, b = #{edges < x}}  (right-closed bins)
    n_nonfinite[n, f] += #{t in n} - sum_b act_hist[n, f, b]

Grid: (neuron blocks of BLOCK_F, token splits). A program walks its token range ROWS rows at a
time; every row is a 1-D vector of BLOCK_F neurons, so each thread keeps its own neurons' running
sums in registers and nothing crosses threads inside the loop (no shared memory, no barriers:
tests/test_kernels_native.py reads the compiled loop). Per value the work is: a finiteness test,
the fired count, two fp32 sums, and the bin by a 4-level binary search whose next edge is picked
from registers with selects (no gathers). A non-finite or uncounted value becomes NaN, which
compares false everywhere and lands in bin 0; bin 0 is therefore never counted directly but
derived as finite - (all other bins), so no mask is carried into the histogram. Counting 16 bins
without 16 registers per neuron: each value adds 1 << 4*bin to a pair of int32 words (4-bit
fields, bins 0-7 and 8-15); the ROWS <= 15 rows of an iteration cannot overflow a field, and the
words are widened into eight words of 16-bit fields once per iteration. A program covers at most
MAX_ROWS_PER_PROGRAM tokens so those cannot overflow either; more than 15 edges take one pass per
15. At the end each program adds its int32 / fp32 partials into the int64 / float64 totals with
one relaxed atomic per output element: counts cannot overflow, there is no host sync and no second
launch to fold partials. No autotuning (the outputs accumulate, and trials would add into them).

Several languages in one call: one pass per language, each loading only that language's rows
(the others are masked out of the load), so the block is still read from memory once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from langneurons.kernels.reference import Accumulator

ROWS = 8            # rows per loop iteration: that many independent loads in flight per thread
BLOCK_F = 512       # neurons per program: 8 bf16 (16 bytes) per thread with 2 warps
EDGES_PER_PASS = 15  # 16 bins: the 4-bit fields of two int32 words
MAX_ROWS_PER_PROGRAM = (65535 // ROWS) * ROWS  # 16-bit fields of the per-program bin counts
MIN_ROWS_PER_PROGRAM = 64  # below this the end-of-program atomics cost more than the rows
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# A vector mask and a scalar condition are combined with tl.where(cond, mask, False), not `&`:
# the interpreter turns bool-vector & bool-scalar into int32, which loads refuse as a mask.


@triton.jit
def _edge(edges_ptr, k, NUM_EDGES: tl.constexpr):
    """Edge k as a scalar; +inf past the last edge, so nothing is ever above it."""
    return tl.load(edges_ptr + k, mask=k < NUM_EDGES, other=float("inf"))


@triton.jit
def _edges15(edges_ptr, group, NUM_EDGES: tl.constexpr):
    """The 15 edges of a group as scalars, loaded once per pass and kept in registers."""
    o = group * 15
    return (_edge(edges_ptr, o, NUM_EDGES), _edge(edges_ptr, o + 1, NUM_EDGES),
            _edge(edges_ptr, o + 2, NUM_EDGES), _edge(edges_ptr, o + 3, NUM_EDGES),
            _edge(edges_ptr, o + 4, NUM_EDGES), _edge(edges_ptr, o + 5, NUM_EDGES),
            _edge(edges_ptr, o + 6, NUM_EDGES), _edge(edges_ptr, o + 7, NUM_EDGES),
            _edge(edges_ptr, o + 8, NUM_EDGES), _edge(edges_ptr, o + 9, NUM_EDGES),
            _edge(edges_ptr, o + 10, NUM_EDGES), _edge(edges_ptr, o + 11, NUM_EDGES),
            _edge(edges_ptr, o + 12, NUM_EDGES), _edge(edges_ptr, o + 13, NUM_EDGES),
            _edge(edges_ptr, o + 14, NUM_EDGES))


@triton.jit
def _onehot15(x, e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, b_lo, b_hi):
    """Add 1 << 4*b to the nibble words (b_lo: b = 0..7, b_hi: 8..15) where b = #{e_k < x}, the
    bin of x among 15 sorted edges, found by binary search: each level picks the next edge to
    compare from registers with selects (a 4-level tree), so no value is ever gathered. NaN
    compares false everywhere and lands in nibble 0, which callers never read."""
    p1 = x > e7
    p2 = x > tl.where(p1, e11, e3)
    p3 = x > tl.where(p1, tl.where(p2, e13, e9), tl.where(p2, e5, e1))
    p4 = x > tl.where(p1, tl.where(p2, tl.where(p3, e14, e12), tl.where(p3, e10, e8)),
                      tl.where(p2, tl.where(p3, e6, e4), tl.where(p3, e2, e0)))
    one = 1 << (tl.where(p2, 16, 0) + tl.where(p3, 8, 0) + tl.where(p4, 4, 0))  # 1 << 4*(b % 8)
    return b_lo + tl.where(p1, 0, one), b_hi + tl.where(p1, one, 0)


@triton.jit
def _widen(w, h_a, h_b, h_c, h_d):
    """Move the eight 4-bit fields of w (nibbles 0..7 of a word) into 16-bit fields:
    h_a = (0, 4), h_b = (2, 6), h_c = (1, 5), h_d = (3, 7) as (low half, high half)."""
    even = w & 0x0F0F0F0F
    odd = (w >> 4) & 0x0F0F0F0F
    h_a += even & 0x00FF00FF
    h_b += (even >> 8) & 0x00FF00FF
    h_c += odd & 0x00FF00FF
    h_d += (odd >> 8) & 0x00FF00FF
    return h_a, h_b, h_c, h_d


@triton.jit
def _row(x, m, threshold, b_fired, b_finite, b_sum, b_sumsq, b_lo, b_hi,
         e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, HIST: tl.constexpr):
    """Add one row x[BLOCK_F] (fp32; m: counted) to a program's running statistics."""
    m_v = m & (tl.abs(x) < float("inf"))   # counted and finite (|NaN| < inf is false)
    x_nan = tl.where(m_v, x, float("nan"))  # compares false everywhere: no mask needed below
    x_z = tl.where(m_v, x, 0.0)
    b_finite += m_v.to(tl.int32)
    b_fired += (x_nan > threshold).to(tl.int32)
    b_sum += x_z
    b_sumsq += x_z * x_z
    if HIST:
        b_lo, b_hi = _onehot15(x_nan, e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13,
                               e14, b_lo, b_hi)
    return b_fired, b_finite, b_sum, b_sumsq, b_lo, b_hi


@triton.jit
def _add_bin(p_h, c, j: tl.constexpr, group, m_f, NUM_BINS: tl.constexpr):
    """act_hist[15 * group + j] += c (one relaxed atomic per neuron)."""
    b = group * 15 + j
    tl.atomic_add(p_h + b, c.to(tl.int64), mask=tl.where(b < NUM_BINS, m_f, False), sem="relaxed")


@triton.jit
def _add_pair(p_h, h, j: tl.constexpr, group, m_f, NUM_BINS: tl.constexpr):
    """Bins j (low 16 bits of h) and j + 4 (high 16 bits) of the group; returns their sum."""
    lo, hi = h & 0xFFFF, h >> 16
    _add_bin(p_h, lo, j, group, m_f, NUM_BINS)
    _add_bin(p_h, hi, j + 4, group, m_f, NUM_BINS)
    return lo + hi


@triton.jit
def _flush_hist(p_h, m_f, group, b_finite, h0, h1, h2, h3, h4, h5, h6, h7, NUM_BINS: tl.constexpr):
    """Bins 15g+1 .. 15g+15 of group g from the 16-bit fields (layout of `_widen`); bin 15g gets
    minus their sum (plus the finite count in group 0): a value above all of group g's edges was
    counted in bin 15g+15 and, if it belongs higher, is taken out again by group g+1."""
    total = h0 >> 16                                   # h0's low half is bin 0: never read
    _add_bin(p_h, total, 4, group, m_f, NUM_BINS)
    total += _add_pair(p_h, h1, 2, group, m_f, NUM_BINS)   # bins 2, 6
    total += _add_pair(p_h, h2, 1, group, m_f, NUM_BINS)   # 1, 5
    total += _add_pair(p_h, h3, 3, group, m_f, NUM_BINS)   # 3, 7
    total += _add_pair(p_h, h4, 8, group, m_f, NUM_BINS)   # 8, 12
    total += _add_pair(p_h, h5, 10, group, m_f, NUM_BINS)  # 10, 14
    total += _add_pair(p_h, h6, 9, group, m_f, NUM_BINS)   # 9, 13
    total += _add_pair(p_h, h7, 11, group, m_f, NUM_BINS)  # 11, 15
    _add_bin(p_h, tl.where(group == 0, b_finite, 0) - total, 0, group, m_f, NUM_BINS)


@triton.jit
def _flush(n, group, o_f, m_f, rows, b_fired, b_finite, b_sum, b_sumsq, h0, h1, h2, h3, h4, h5, h6,
           h7, fired_ptr, sum_ptr, sumsq_ptr, hist_ptr, nonfinite_ptr, stride_n, stride_hn,
           stride_hf, NUM_BINS: tl.constexpr, HIST: tl.constexpr):
    """A program's int32/fp32 partials into the int64/float64 totals, one relaxed atomic per
    output element. The value statistics are added in group 0's pass only."""
    o_nf = n * stride_n + o_f
    m_stats = tl.where(group == 0, m_f, False)
    tl.atomic_add(fired_ptr + o_nf, b_fired.to(tl.int64), mask=m_stats, sem="relaxed")
    tl.atomic_add(sum_ptr + o_nf, b_sum.to(tl.float64), mask=m_stats, sem="relaxed")
    tl.atomic_add(sumsq_ptr + o_nf, b_sumsq.to(tl.float64), mask=m_stats, sem="relaxed")
    tl.atomic_add(nonfinite_ptr + o_nf, (rows - b_finite).to(tl.int64), mask=m_stats, sem="relaxed")
    p_h = hist_ptr + n * stride_hn + o_f * stride_hf
    if HIST:
        _flush_hist(p_h, m_f, group, b_finite, h0, h1, h2, h3, h4, h5, h6, h7, NUM_BINS)
    else:  # one bin: every finite value
        tl.atomic_add(p_h, b_finite.to(tl.int64), mask=m_f, sem="relaxed")


@triton.jit
def _program_range(F, T, tokens_per_split, BLOCK_F: tl.constexpr):
    """This program's neurons (offsets, mask) and token range [t_start, t_stop)."""
    o_f = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
    t_start = tl.program_id(1) * tokens_per_split
    return o_f, o_f < F, t_start, tl.minimum(t_start + tokens_per_split, T)


@triton.jit
def _row_selected(lang_ptr, t, t_stop, T, n):
    """Whether token t is in range and of language n (the load is clamped in bounds, unmasked)."""
    return (t < t_stop) & (tl.load(lang_ptr + tl.minimum(t, T - 1)) == n)


@triton.jit
def _zeros(BLOCK_F: tl.constexpr):
    """fired, finite, sum, sumsq, and the eight 16-bit-field histogram words of one program."""
    i = tl.zeros([BLOCK_F], dtype=tl.int32)
    f = tl.zeros([BLOCK_F], dtype=tl.float32)
    return i, i, f, f, i, i, i, i, i, i, i, i


@triton.jit
def _stats_kernel(x_ptr, lang_ptr, edges_ptr,
                  fired_ptr, sum_ptr, sumsq_ptr, hist_ptr, nonfinite_ptr,
                  T, F, stride_t, stride_n, stride_hn, stride_hf, threshold, n_languages,
                  tokens_per_split,
                  NUM_EDGES: tl.constexpr, NUM_GROUPS: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK_F: tl.constexpr):
    o_f, m_f, t_start, t_stop = _program_range(F, T, tokens_per_split, BLOCK_F)
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
                sel = _row_selected(lang_ptr, t, t_stop, T, n)
                rows += sel.to(tl.int32)
                m = tl.where(sel, m_f, False)    # rows of other languages are never loaded
                x = tl.load(x_ptr + t.to(tl.int64) * stride_t + o_f, mask=m, other=0.0)
                b_fired, b_finite, b_sum, b_sumsq, b_lo, b_hi = _row(
                    x.to(tl.float32), m, threshold, b_fired, b_finite, b_sum, b_sumsq, b_lo, b_hi,
                    e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, HIST)
            if HIST:
                h0, h1, h2, h3 = _widen(b_lo, h0, h1, h2, h3)
                h4, h5, h6, h7 = _widen(b_hi, h4, h5, h6, h7)
        _flush(n, group, o_f, m_f, rows, b_fired, b_finite, b_sum, b_sumsq, h0, h1, h2, h3, h4, h5,
               h6, h7, fired_ptr, sum_ptr, sumsq_ptr, hist_ptr, nonfinite_ptr, stride_n, stride_hn,
               stride_hf, NUM_EDGES + 1, HIST)


def _num_programs_target(device: torch.device) -> int:
    if device.type == "cuda":
        return 8 * torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter runs programs one by one: few, long programs are fastest there


def check_block(x: torch.Tensor, token_lang: torch.Tensor, edges: torch.Tensor, name: str = "x") -> None:
    """The launchers' argument checks: one clear error instead of a wrong read."""
    if x.dim() != 2:
        raise ValueError(f"{name} must be [tokens, d_ff], got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}; the kernels read {_FLOAT_DTYPES}")
    if token_lang.shape != x.shape[:1]:
        raise ValueError(f"token_lang shape {tuple(token_lang.shape)} != tokens {x.shape[0]}")
    if token_lang.device != x.device or edges.device != x.device:
        raise ValueError(f"{name}, token_lang and edges must share a device: {x.device}, "
                         f"{token_lang.device}, {edges.device}")


def unit_stride_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows may be strided (slices, views of a merged projection); columns must be unit-stride."""
    return x if x.stride(1) == 1 or x.shape[1] == 1 else x.contiguous()


def grid(T: int, F: int, dev: torch.device) -> tuple[int, int, int]:
    """(neuron blocks, token splits, tokens per split): enough programs to fill the device, each
    with at least MIN_ROWS_PER_PROGRAM and at most MAX_ROWS_PER_PROGRAM tokens."""
    col_blocks = triton.cdiv(F, BLOCK_F)
    splits = max(1, min(triton.cdiv(T, MIN_ROWS_PER_PROGRAM), _num_programs_target(dev) // col_blocks))
    per_split = min(triton.cdiv(triton.cdiv(T, splits), ROWS) * ROWS, MAX_ROWS_PER_PROGRAM)
    return col_blocks, triton.cdiv(T, per_split), per_split


def launch_options(dtype: torch.dtype) -> dict:
    """num_warps so that each thread loads 16 bytes of a row: 2 warps for 16-bit, 4 for fp32."""
    return {"num_warps": BLOCK_F * (4 if dtype == torch.float32 else 2) // (16 * 32)}


def layer_outputs(acc: Accumulator, layer: int) -> dict:
    """The accumulator's views of one layer, and their strides, as the kernels take them."""
    hist = acc.act_hist[:, layer]                                     # [N, F, B]
    fired = acc.n_fired[:, layer]                                     # [N, F], all alike
    return dict(fired_ptr=fired, sum_ptr=acc.act_sum[:, layer], sumsq_ptr=acc.act_sumsq[:, layer],
                hist_ptr=hist, nonfinite_ptr=acc.n_nonfinite[:, layer],
                stride_n=fired.stride(0), stride_hn=hist.stride(0), stride_hf=hist.stride(1))


def hist_constants(acc: Accumulator) -> dict:
    """15 edges (16 bins) per pass over the block; one pass without edges."""
    E = acc.edges.numel()
    return dict(NUM_EDGES=E, NUM_GROUPS=max(1, triton.cdiv(E, EDGES_PER_PASS)))


def check_accumulator(acc: Accumulator, x: torch.Tensor) -> None:
    if acc.n_fired.device != x.device:
        raise ValueError(f"the accumulator is on {acc.n_fired.device}, the activations on {x.device}")
    if acc.n_fired.shape[-1] != x.shape[1]:
        raise ValueError(f"the accumulator has {acc.n_fired.shape[-1]} neurons, the block {x.shape[1]}")


def accumulate_(acc: Accumulator, layer: int, x: torch.Tensor, token_lang: torch.Tensor) -> None:
    """Same contract as `reference.accumulate_`: add one layer's block statistics into `acc`."""
    check_block(x, token_lang, acc.edges)
    check_accumulator(acc, x)
    x = unit_stride_rows(x)
    T, F = x.shape
    if T == 0 or F == 0:
        return
    lang = token_lang if token_lang.dtype == torch.int32 else token_lang.to(torch.int32)
    col_blocks, splits, per_split = grid(T, F, x.device)
    _stats_kernel[(col_blocks, splits)](
        x, lang.contiguous(), acc.edges, T=T, F=F, stride_t=x.stride(0), threshold=acc.threshold,
        n_languages=acc.n_languages, tokens_per_split=per_split, ROWS=ROWS, BLOCK_F=BLOCK_F,
        **layer_outputs(acc, layer), **hist_constants(acc), **launch_options(x.dtype),
    )
