"""Triton reduction of FFN activations into per-language statistics: equal to `reference.py`.

One launch reads an activation block x[T, F] once per language present in the call (one, in the
usual single-language shard) and produces per-launch partials:

    fired[n, f]    = #{t in n : x finite, x > threshold}          int32
    finite[n, f]   = #{t in n : x finite}                         int32
    sum[n, f]      = sum x,   sumsq[n, f] = sum x^2 (finite only)  float32
    above[n, k, f] = #{t in n : x finite, x > edges[k]}            int32

Grid: (neuron blocks, token splits). Each program walks its token range in BLOCK_T rows, keeps
its sums in registers, and adds them into the partials with one atomic per output element at the
end, so atomics stay ~1e-3 of the loads. Counts per launch are at most T (< 2^31), so int32 cannot
overflow; the launcher folds partials into the int64/float64 accumulators after the launch:
histogram bin k = above[k-1] - above[k] (bin 0 = finite - above[0]); non-finite = tokens - finite.
No autotuning (the outputs accumulate, and autotune trials would add into them); no host sync.
With no edges (the benchmark's counts-and-sums variant) the histogram is compiled out.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from langneurons.kernels.reference import Accumulator

BLOCK_T = 8
BLOCK_F = 64
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _program_tile(edges_ptr, T, F, tokens_per_split, NUM_EDGES: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_F: tl.constexpr):
    """This program's neuron block (offsets, mask), the edges, and its token range."""
    o_f = tl.program_id(0) * BLOCK_F + tl.arange(0, BLOCK_F)
    o_e = tl.arange(0, BLOCK_E)
    # Padding edges are +inf: nothing is above them, so their counts stay 0.
    b_edges = tl.load(edges_ptr + o_e, mask=o_e < NUM_EDGES, other=float("inf"))
    t_start = tl.program_id(1) * tokens_per_split
    return o_f, o_f < F, o_e, b_edges, t_start, tl.minimum(t_start + tokens_per_split, T)


@triton.jit
def _zero_stats(BLOCK_E: tl.constexpr, BLOCK_F: tl.constexpr):
    """Per-program running sums: fired, finite, sum, sumsq, above (int32 counts, fp32 sums)."""
    return (tl.zeros([BLOCK_F], dtype=tl.int32), tl.zeros([BLOCK_F], dtype=tl.int32),
            tl.zeros([BLOCK_F], dtype=tl.float32), tl.zeros([BLOCK_F], dtype=tl.float32),
            tl.zeros([BLOCK_E, BLOCK_F], dtype=tl.int32))


@triton.jit
def _tile_stats(b_x, m, b_edges, threshold, b_fired, b_finite, b_sum, b_sumsq, b_above,
                HIST: tl.constexpr):
    """Add one [BLOCK_T, BLOCK_F] fp32 tile's statistics (selected by m) to the running sums;
    the histogram only when there are edges (HIST)."""
    m_v = m & (b_x == b_x) & (tl.abs(b_x) < float("inf"))             # counted and finite
    b_xz = tl.where(m_v, b_x, 0.0)
    b_finite += tl.sum(m_v.to(tl.int32), axis=0)
    b_fired += tl.sum((m_v & (b_x > threshold)).to(tl.int32), axis=0)
    b_sum += tl.sum(b_xz, axis=0)
    b_sumsq += tl.sum(b_xz * b_xz, axis=0)
    if HIST:
        hit = (b_x[:, None, :] > b_edges[None, :, None]) & m_v[:, None, :]  # [T, E, F]
        b_above += tl.sum(hit.to(tl.int32), axis=0)
    return b_fired, b_finite, b_sum, b_sumsq, b_above


@triton.jit
def _flush(n, o_f, m_f, o_e, F, fired_ptr, finite_ptr, sum_ptr, sumsq_ptr, above_ptr,
           b_fired, b_finite, b_sum, b_sumsq, b_above, NUM_EDGES: tl.constexpr, BLOCK_E: tl.constexpr):
    """One atomic add per output element of language n: a program's whole token range at once."""
    o_nf = n * F + o_f
    tl.atomic_add(fired_ptr + o_nf, b_fired, mask=m_f)
    tl.atomic_add(finite_ptr + o_nf, b_finite, mask=m_f)
    tl.atomic_add(sum_ptr + o_nf, b_sum, mask=m_f)
    tl.atomic_add(sumsq_ptr + o_nf, b_sumsq, mask=m_f)
    p_above = above_ptr + (n * BLOCK_E + o_e[:, None]) * F + o_f[None, :]
    tl.atomic_add(p_above, b_above, mask=(o_e[:, None] < NUM_EDGES) & m_f[None, :])


@triton.jit
def _stats_kernel(x_ptr, lang_ptr, edges_ptr,
                  fired_ptr, finite_ptr, sum_ptr, sumsq_ptr, above_ptr,
                  T, F, stride_t, threshold, n_languages, tokens_per_split,
                  NUM_EDGES: tl.constexpr, BLOCK_E: tl.constexpr,
                  BLOCK_T: tl.constexpr, BLOCK_F: tl.constexpr):
    o_f, m_f, o_e, b_edges, t_start, t_stop = _program_tile(
        edges_ptr, T, F, tokens_per_split, NUM_EDGES, BLOCK_E, BLOCK_F)
    for n in range(n_languages):
        b_fired, b_finite, b_sum, b_sumsq, b_above = _zero_stats(BLOCK_E, BLOCK_F)
        for t0 in range(t_start, t_stop, BLOCK_T):
            o_t = t0 + tl.arange(0, BLOCK_T)
            m_t = o_t < t_stop
            b_lang = tl.load(lang_ptr + o_t, mask=m_t, other=-1)
            m = (b_lang == n)[:, None] & m_f[None, :]
            p_x = x_ptr + o_t[:, None].to(tl.int64) * stride_t + o_f[None, :]
            b_x = tl.load(p_x, mask=m, other=0.0).to(tl.float32)          # [BLOCK_T, BLOCK_F]
            b_fired, b_finite, b_sum, b_sumsq, b_above = _tile_stats(
                b_x, m, b_edges, threshold, b_fired, b_finite, b_sum, b_sumsq, b_above, NUM_EDGES > 0)
        _flush(n, o_f, m_f, o_e, F, fired_ptr, finite_ptr, sum_ptr, sumsq_ptr, above_ptr,
               b_fired, b_finite, b_sum, b_sumsq, b_above, NUM_EDGES, BLOCK_E)


def _num_programs_target(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
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
    return x if x.stride(1) == 1 else x.contiguous()


def new_partials(n_languages: int, n_edges: int, F: int, dev: torch.device) -> dict[str, torch.Tensor]:
    """Zeroed per-launch partials; `above` is padded to a power of two of edges (BLOCK_E)."""
    block_e = max(triton.next_power_of_2(n_edges), 2)
    return {
        "fired": torch.zeros(n_languages, F, dtype=torch.int32, device=dev),
        "finite": torch.zeros(n_languages, F, dtype=torch.int32, device=dev),
        "sum": torch.zeros(n_languages, F, dtype=torch.float32, device=dev),
        "sumsq": torch.zeros(n_languages, F, dtype=torch.float32, device=dev),
        "above": torch.zeros(n_languages, block_e, F, dtype=torch.int32, device=dev),
    }


def grid(T: int, F: int, dev: torch.device) -> tuple[int, int, int]:
    """(column blocks, token splits, tokens per split): enough programs to fill the device."""
    col_blocks = triton.cdiv(F, BLOCK_F)
    splits = max(1, min(triton.cdiv(T, BLOCK_T), _num_programs_target(dev) // col_blocks))
    per_split = triton.cdiv(triton.cdiv(T, splits), BLOCK_T) * BLOCK_T
    return col_blocks, triton.cdiv(T, per_split), per_split


def block_stats(x: torch.Tensor, token_lang: torch.Tensor, n_languages: int, threshold: float,
                edges: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-launch partials for x[T, F] (see module docstring), on x's device."""
    check_block(x, token_lang, edges)
    x = unit_stride_rows(x)
    lang = token_lang.to(torch.int32).contiguous()
    edges = edges.to(torch.float32).contiguous()
    T, F = x.shape
    E = edges.numel()
    out = new_partials(n_languages, E, F, x.device)
    if T > 0 and F > 0:
        col_blocks, splits, per_split = grid(T, F, x.device)
        _stats_kernel[(col_blocks, splits)](
            x, lang, edges, out["fired"], out["finite"], out["sum"], out["sumsq"], out["above"],
            T, F, x.stride(0), float(threshold), n_languages, per_split,
            NUM_EDGES=E, BLOCK_E=out["above"].shape[1], BLOCK_T=BLOCK_T, BLOCK_F=BLOCK_F, num_warps=4,
        )
    out["above"] = out["above"][:, :E]
    return out


def fold_(acc: Accumulator, layer: int, p: dict[str, torch.Tensor], token_lang: torch.Tensor) -> None:
    """Fold one launch's int32/fp32 partials into the int64/float64 totals of `layer`:
    bin k = above[k-1] - above[k] (bin 0 = finite - above[0]); non-finite = tokens - finite."""
    N = acc.n_languages
    tokens = torch.bincount((token_lang.long() + 1).clamp_min(0), minlength=N + 1)[1:]  # [N]
    finite = p["finite"].long()
    above = p["above"].long()                                         # [N, E, F]
    acc.n_fired[:, layer] += p["fired"]
    acc.act_sum[:, layer] += p["sum"].double()
    acc.act_sumsq[:, layer] += p["sumsq"].double()
    acc.n_nonfinite[:, layer] += tokens[:, None] - finite
    hist = acc.act_hist[:, layer]                                     # [N, F, B] view
    hist[..., 0] += finite - above[:, 0]
    hist[..., 1:-1] += (above[:, :-1] - above[:, 1:]).transpose(1, 2)
    hist[..., -1] += above[:, -1]


def accumulate_(acc: Accumulator, layer: int, x: torch.Tensor, token_lang: torch.Tensor) -> None:
    """Same contract as `reference.accumulate_`: add one layer's block statistics into `acc`."""
    fold_(acc, layer, block_stats(x, token_lang, acc.n_languages, acc.threshold, acc.edges), token_lang)
