"""The CPU reduction kernel (numba): one pass over each activation block, all five statistics.

Its spec is `kernels/reference.py` (`reduce_block`); `tests/test_kernels_cpu.py` holds it to that
(integer statistics exactly equal, sums within the float32 tolerance).

How it runs. The counted rows (token_lang >= 0; padding and special tokens are -1) are grouped
by language, in token order within a language, and cut into segments of at most CHUNK rows; the
segments are shared out over numba's threads (as many as torch uses). Grouping first makes the
work independent of how many languages the run has: a batch holding one of 100 languages costs
what it costs with one. For each row of a segment:
1. one pass over a tile of the row's neurons adds the sum, the sum of squares, the firing count
   and the non-finite count, and writes the tile into a scratch row with non-finite values as NaN;
2. once GROUP rows are in scratch, for each histogram edge one branch-free pass adds
   `x > edge` of all GROUP rows into an int32 counter per neuron. NaN compares false, so
   non-finite values (and the NaN rows that pad a last, short group) land in no bin.
Tiles of TILE neurons keep the scratch rows and the E x TILE counters in L1 for all the segment's
rows (E x F counters would spill to L2 on every row); each inner loop runs over contiguous
neurons, which LLVM vectorises (8 neurons per AVX2 instruction, 16 with AVX-512), and reading
and writing a counter once per GROUP rows instead of once per row halves the time of pass 2.
The cumulative counts give the bins by differences: bin k holds count(x > e[k-1]) - count(x > e[k])
(right-closed bins, as the reference), bin 0 holds the finite values not above e[0].

Determinism. Integer results are exact. Float sums are accumulated in float32 over a segment's
rows (at most CHUNK values: closer than the reference, which sums a whole block in float32) and
the segments are folded in float64 in segment order, which the block alone fixes: sums depend
neither on the number of threads nor on scheduling.

Values are compared in float32: float16/bfloat16 blocks are widened first (exact), float64 ones
narrowed (as the reference does with `.float()`).
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from langneurons.kernels.reference import Accumulator
from langneurons.store.schema import DTYPES, NEURON_VARS, TRAILING_DIMS

CHUNK = 128  # rows per segment: the unit of threading, and the order in which float sums are folded
TILE = 256   # neurons per tile: a tile's 15 edge counters (15 KB) and its scratch rows stay in L1
GROUP = 8    # rows compared per pass over a counter row (written out below: change both together)


def _compile():
    """Build the numba kernel on first use (import numba only when the kernel is asked for)."""
    import numba
    from numba import njit, prange

    # numba's OpenMP layer keeps its threads spinning after each parallel region, stealing the cores
    # from torch's own threads between hooks (measured: +35% CPU time on 2 cores); the workqueue
    # layer's threads sleep. Only the first parallel run in a process can choose.
    if numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER = "workqueue"

    @njit(cache=True, nogil=True, boundscheck=False)
    def plan(lang, n_languages):
        """Counted rows grouped by language (a counting sort, token order kept within a language),
        and the segments: language, first and end index into those rows. Returns an empty plan
        with seg_lang [-1] if a language index is >= n_languages."""
        T = lang.shape[0]
        start = np.zeros(n_languages + 1, np.int64)
        for t in range(T):
            n = lang[t]
            if n >= n_languages:
                return np.empty(0, np.int64), np.full(1, -1, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
            if n >= 0:
                start[n + 1] += 1
        n_seg = 0
        for n in range(n_languages):
            n_seg += (start[n + 1] + CHUNK - 1) // CHUNK
            start[n + 1] += start[n]
        rows = np.empty(start[n_languages], np.int64)
        fill = start[:n_languages].copy()
        for t in range(T):
            n = lang[t]
            if n >= 0:
                rows[fill[n]] = t
                fill[n] += 1
        seg_lang, lo, hi = np.empty(n_seg, np.int64), np.empty(n_seg, np.int64), np.empty(n_seg, np.int64)
        s = 0
        for n in range(n_languages):
            for r in range(start[n], start[n + 1], CHUNK):
                seg_lang[s], lo[s], hi[s] = n, r, min(r + CHUNK, start[n + 1])
                s += 1
        return rows, seg_lang, lo, hi

    @njit(parallel=True, cache=True, nogil=True, boundscheck=False)
    def reduce_segments(x, rows, lo, hi, threshold, edges, fired, nonfin, total, ssum, ssq, cum):
        """x [T, F] float32; segment s covers rows[lo[s]:hi[s]]. Outputs, one slot per segment,
        every slot written: fired/nonfin/total [S, F] int32 (total: finite values), ssum/ssq
        [S, F] float32, cum [S, E, F] int32 (count of x > edges[e])."""
        F = x.shape[1]
        E = edges.shape[0]
        nan = np.float32(np.nan)
        for s in prange(lo.shape[0]):
            r0_, n_rows = lo[s], hi[s] - lo[s]
            counts = np.empty((E, TILE), np.int32)
            fr, nf, tot = np.empty(TILE, np.int32), np.empty(TILE, np.int32), np.empty(TILE, np.int32)
            s1, s2 = np.empty(TILE, np.float32), np.empty(TILE, np.float32)
            scratch = np.empty((GROUP, TILE), np.float32)
            for f0 in range(0, F, TILE):          # a tile's counters stay in L1 across the rows
                m = min(F - f0, TILE)
                counts[:, :m] = 0
                fr[:m] = 0
                nf[:m] = 0
                tot[:m] = 0
                s1[:m] = 0.0
                s2[:m] = 0.0
                for g in range(0, n_rows, GROUP):
                    for j in range(GROUP):        # pass 1, row by row; missing rows are all NaN
                        sj = scratch[j]
                        if g + j >= n_rows:
                            sj[:m] = nan
                            continue
                        xr = x[rows[r0_ + g + j], f0:f0 + m]
                        for f in range(m):
                            v = xr[f]
                            fin = np.abs(v) < np.inf  # False for NaN and +-inf
                            vz = v if fin else np.float32(0.0)
                            fr[f] += np.int32(fin & (v > threshold))
                            nf[f] += np.int32(not fin)
                            tot[f] += np.int32(fin)
                            s1[f] += vz
                            s2[f] += vz * vz
                            sj[f] = v if fin else nan
                    r0, r1, r2, r3 = scratch[0], scratch[1], scratch[2], scratch[3]
                    r4, r5, r6, r7 = scratch[4], scratch[5], scratch[6], scratch[7]
                    for e in range(E):            # pass 2: GROUP rows per read-modify-write of a counter
                        edge = edges[e]
                        row = counts[e]
                        for f in range(m):
                            row[f] += (np.int32(r0[f] > edge) + np.int32(r1[f] > edge)
                                       + np.int32(r2[f] > edge) + np.int32(r3[f] > edge)
                                       + np.int32(r4[f] > edge) + np.int32(r5[f] > edge)
                                       + np.int32(r6[f] > edge) + np.int32(r7[f] > edge))
                fired[s, f0:f0 + m] = fr[:m]
                nonfin[s, f0:f0 + m] = nf[:m]
                total[s, f0:f0 + m] = tot[:m]
                ssum[s, f0:f0 + m] = s1[:m]
                ssq[s, f0:f0 + m] = s2[:m]
                cum[s, :, f0:f0 + m] = counts[:, :m]
        return None

    @njit(cache=True, nogil=True, boundscheck=False)
    def fold_into(seg_lang, fired, nonfin, total, ssum, ssq, cum, o_fired, o_sum, o_sumsq, o_hist, o_nonfin):
        """Add the segment slots into their language's outputs ([N, F] and [N, F, E+1], int64/
        float64), segments in order. A language's segments are consecutive (plan groups them):
        their finite and cumulative counts are summed row by row over contiguous neurons (the slots'
        layout, which vectorises), and only then turned into bins, once per language: bin k =
        count(x > e[k-1]) - count(x > e[k]), bin 0 starting from the finite count."""
        S, F = fired.shape
        E = cum.shape[1]
        counts = np.empty((E + 1, F), np.int64)  # row 0: finite values; row e+1: count(x > edges[e])
        s = 0
        while s < S:
            n = seg_lang[s]
            o1, o2, o3, o4, o5 = o_fired[n], o_nonfin[n], o_sum[n], o_sumsq[n], o_hist[n]
            counts[:] = 0
            finite = counts[0]
            while s < S and seg_lang[s] == n:
                fr, nf, tot, s1, s2 = fired[s], nonfin[s], total[s], ssum[s], ssq[s]
                for f in range(F):
                    o1[f] += fr[f]
                    o2[f] += nf[f]
                    o3[f] += np.float64(s1[f])
                    o4[f] += np.float64(s2[f])
                    finite[f] += tot[f]
                for e in range(E):
                    row, c = counts[e + 1], cum[s, e]
                    for f in range(F):
                        row[f] += c[f]
                s += 1
            for f in range(F):
                for k in range(E):
                    o5[f, k] += counts[k, f] - counts[k + 1, f]
                o5[f, E] += counts[E, f]
        return None

    return numba, plan, reduce_segments, fold_into


_KERNEL = None  # (numba, plan, reduce_segments, fold_into), compiled on first use
_WORK = threading.local()  # per-thread slot buffers, reused across calls (no page faults per block)


def kernel_parts():
    """(numba, plan, reduce_segments, fold_into), compiled on first use: the building blocks
    another candidate kernel reuses (benchmarks/bench_cpu_kernel.py)."""
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _compile()
    return _KERNEL


def available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def segment_slots(S: int, E: int, F: int):
    """Views for one call's segment slots, carved from this thread's buffers (grown when short).
    The kernel writes every slot it hands back, so stale contents never leak into a result."""
    n_int, n_float = S * (3 + E) * F, 2 * S * F
    ints, floats = getattr(_WORK, "ints", None), getattr(_WORK, "floats", None)
    if ints is None or ints.size < n_int:
        ints = _WORK.ints = np.empty(max(n_int, 1), np.int32)
    if floats is None or floats.size < n_float:
        floats = _WORK.floats = np.empty(max(n_float, 1), np.float32)
    i = [ints[k * S * F:(k + 1) * S * F].reshape(S, F) for k in range(3)]
    cum = ints[3 * S * F:n_int].reshape(S, E, F)
    f = [floats[k * S * F:(k + 1) * S * F].reshape(S, F) for k in range(2)]
    return (*i, *f, cum)


def segment_stats(x: torch.Tensor, token_lang: torch.Tensor, n_languages: int, threshold: float,
                  edges: torch.Tensor):
    """Run the kernel over the block: the segments' languages, their slots, and the fold function
    (`reduce_block` and `accumulate_` then fold; public so the two phases can be timed apart)."""
    if x.dim() != 2:
        raise ValueError(f"x must be [tokens, d_ff], got shape {tuple(x.shape)}")
    if x.device.type != "cpu":
        raise ValueError(f"the numba kernel runs on the CPU; this block is on {x.device}")
    if token_lang.shape != x.shape[:1]:
        raise ValueError(f"token_lang shape {tuple(token_lang.shape)} != tokens {x.shape[0]}")
    numba, plan, kernel, fold_into = kernel_parts()
    xs = x.detach()
    if xs.dtype != torch.float32:
        xs = xs.float()
    if xs.stride(1) != 1:
        xs = xs.contiguous()
    a = xs.numpy()
    lang = token_lang.detach().to(torch.int64).contiguous().numpy()
    rows, seg_lang, lo, hi = plan(lang, n_languages)
    if seg_lang.size and seg_lang[0] < 0:
        raise ValueError(f"token_lang holds a language index >= {n_languages} (the number of languages)")
    e = np.ascontiguousarray(edges.detach().cpu().numpy(), dtype=np.float32)
    slots = segment_slots(seg_lang.size, e.shape[0], a.shape[1])
    threads = torch.get_num_threads()
    if numba.get_num_threads() != threads:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    kernel(a, rows, lo, hi, np.float32(threshold), e, *slots)
    return seg_lang, slots, fold_into


def reduce_block(x: torch.Tensor, token_lang: torch.Tensor, n_languages: int, threshold: float,
                 edges: torch.Tensor) -> dict[str, np.ndarray]:
    """The reference's `reduce_block`, computed by the kernel: per language, n_fired/act_hist/
    n_nonfinite as int64 and act_sum/act_sumsq as float64 numpy arrays ([N, F], [N, F, B])."""
    seg_lang, slots, fold_into = segment_stats(x, token_lang, n_languages, threshold, edges)
    size = {"neuron": x.shape[1], "bin": edges.numel() + 1}
    res = {v: np.zeros((n_languages, *(size[d] for d in TRAILING_DIMS[v][1:])), DTYPES[v]) for v in NEURON_VARS}
    fold_into(seg_lang, *slots, *res.values())  # in NEURON_VARS order
    return res


def accumulate_(acc: Accumulator, layer: int, x: torch.Tensor, token_lang: torch.Tensor) -> None:
    """Add block statistics of one layer into ``acc`` (int64 counts, float64 sums), in place: the
    fold writes straight into the accumulator's memory (CPU tensors share it with numpy)."""
    if acc.n_fired.device.type != "cpu" or acc.n_fired.shape[2] != x.shape[1]:
        raise ValueError(f"the accumulator ({acc.n_fired.shape[2]} neurons on {acc.n_fired.device}) does not "
                         f"fit a block of {x.shape[1]} neurons on the CPU")
    seg_lang, slots, fold_into = segment_stats(x, token_lang, acc.n_languages, acc.threshold, acc.edges)
    fold_into(seg_lang, *slots, *(getattr(acc, v)[:, layer].numpy() for v in NEURON_VARS))
