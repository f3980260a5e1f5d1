"""Which CPU reduction kernel? The candidates measured on the same blocks, not assumed.

One activation block of one layer (the demo model's d_ff 1536, 2048 tokens, float32, 3 languages
and 5% uncounted tokens, 15 histogram edges) reduced into all five statistics, the way the hooks
call it (`accumulate_` into an Accumulator), by:

    reference      kernels/reference.py: the plain-torch spec (gather rows, 15 compares, bincount)
    numba          kernels/cpu_stats.py: what `--kernel auto` runs on the CPU
    torch_compile  torch.compile (Inductor) of the same statistics written as masked reductions
                   (compiles C++ at run time: needs a compiler on every user's machine)
    cpp            the numba kernel's loop written in C++ (g++ -O3 -march=native -fopenmp), loaded
                   with ctypes: what a small compiled extension would give (needs a compiler at
                   install time, and one build per platform)

Each candidate is first checked against the reference (integer statistics exactly equal, sums
within 1e-4 relative) on the same block; timings are medians of interleaved rounds, at 1 and 2
threads. The first-call cost (numba's compile, with its on-disk cache cold and warm; Inductor's
compile; g++) is recorded too: a profiling run pays it once per worker process.

    python benchmarks/bench_cpu_kernel.py [--rounds 15]

Writes benchmarks/results/cpu_kernel.json and prints a table.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info  # noqa: E402

from langneurons.kernels import cpu_stats, reference  # noqa: E402
from langneurons.kernels.reference import Accumulator  # noqa: E402
from langneurons.store.schema import DEFAULT_EDGES, NEURON_VARS  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cpu_kernel.json"
T, F, N, THRESHOLD = 2048, 1536, 3, 0.0
STATS = NEURON_VARS


def block(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, F, generator=g) * 0.5
    lang = torch.randint(0, N, (T,), generator=g)
    lang[torch.rand(T, generator=g) < 0.05] = -1
    return x, lang


def fresh(edges) -> Accumulator:
    return Accumulator.zeros(N, 1, F, edges, THRESHOLD)


# --- torch.compile: the statistics as masked reductions Inductor can fuse -------------------------

def _masked_stats(x, lang, edges, threshold: float, n_languages: int):
    fin = torch.isfinite(x)
    xz = torch.where(fin, x, 0.0)
    out = []
    for n in range(n_languages):
        m = (lang == n).unsqueeze(1)
        mf = m & fin
        fired = (mf & (x > threshold)).sum(0)
        s1 = torch.where(m, xz, 0.0).sum(0)
        s2 = torch.where(m, xz * xz, 0.0).sum(0)
        above = (mf.unsqueeze(0) & (x.unsqueeze(0) > edges.view(-1, 1, 1))).sum(1)  # [E, F]
        total = mf.sum(0)
        nonfin = (m & ~fin).sum(0)
        cum = torch.cat([total.unsqueeze(0), above, torch.zeros_like(total).unsqueeze(0)])
        out.append((fired, s1, s2, (cum[:-1] - cum[1:]).T, nonfin))
    return out


def compiled_accumulate():
    fn = torch.compile(_masked_stats, dynamic=False)

    def accumulate_(acc: Accumulator, layer: int, x, token_lang):
        for n, (fired, s1, s2, hist, nonfin) in enumerate(fn(x, token_lang, acc.edges, acc.threshold,
                                                              acc.n_languages)):
            acc.n_fired[n, layer] += fired
            acc.act_sum[n, layer] += s1.double()
            acc.act_sumsq[n, layer] += s2.double()
            acc.act_hist[n, layer] += hist
            acc.n_nonfinite[n, layer] += nonfin
    return accumulate_


# --- the numba kernel's loop in C++, through ctypes -------------------------------------------

CPP = r"""
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <omp.h>
extern "C" void set_threads(int n) { omp_set_num_threads(n); }
extern "C" void reduce_segments(const float* x, int64_t F, const int64_t* rows, const int64_t* lo,
                                const int64_t* hi, int64_t S, float thr, const float* edges, int64_t E,
                                int32_t* fired, int32_t* nonfin, int32_t* total, float* ssum, float* ssq,
                                int32_t* cum) {
  const int64_t TL = 256, G = 8;
  #pragma omp parallel for schedule(dynamic)
  for (int64_t s = 0; s < S; ++s) {
    int32_t counts[64 * 256]; int32_t fr[256], nf[256], tot[256];
    float s1[256], s2[256], sc[8][256];
    const int64_t* rs = rows + lo[s]; int64_t nr = hi[s] - lo[s];
    for (int64_t f0 = 0; f0 < F; f0 += TL) {
      int64_t m = std::min(F - f0, TL);
      std::memset(counts, 0, sizeof(int32_t) * E * TL); std::memset(fr, 0, sizeof(fr));
      std::memset(nf, 0, sizeof(nf)); std::memset(tot, 0, sizeof(tot));
      std::memset(s1, 0, sizeof(s1)); std::memset(s2, 0, sizeof(s2));
      for (int64_t g = 0; g < nr; g += G) {
        for (int64_t j = 0; j < G; ++j) {
          float* sj = sc[j];
          if (g + j >= nr) { for (int64_t f = 0; f < m; ++f) sj[f] = NAN; continue; }
          const float* xr = x + rs[g + j] * F + f0;
          for (int64_t f = 0; f < m; ++f) {
            float v = xr[f]; bool fin = std::fabs(v) < INFINITY; float vz = fin ? v : 0.0f;
            fr[f] += fin & (v > thr); nf[f] += !fin; tot[f] += fin;
            s1[f] += vz; s2[f] += vz * vz; sj[f] = fin ? v : NAN;
          }
        }
        for (int64_t e = 0; e < E; ++e) {
          float ed = edges[e]; int32_t* row = counts + e * TL;
          for (int64_t f = 0; f < m; ++f)
            row[f] += (sc[0][f] > ed) + (sc[1][f] > ed) + (sc[2][f] > ed) + (sc[3][f] > ed)
                    + (sc[4][f] > ed) + (sc[5][f] > ed) + (sc[6][f] > ed) + (sc[7][f] > ed);
        }
      }
      int64_t o = s * F + f0;
      std::memcpy(fired + o, fr, m * 4); std::memcpy(nonfin + o, nf, m * 4);
      std::memcpy(total + o, tot, m * 4); std::memcpy(ssum + o, s1, m * 4); std::memcpy(ssq + o, s2, m * 4);
      for (int64_t e = 0; e < E; ++e) std::memcpy(cum + (s * E + e) * F + f0, counts + e * TL, m * 4);
    }
  }
}
"""


def cpp_accumulate(workdir: Path):
    """Build the C++ loop (None and the reason if it cannot be built here). It gets the same
    segments (numba's `plan`) and folds with the same function, so only the loop differs."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None, "no C++ compiler on this machine"
    src, lib = workdir / "reduce.cpp", workdir / "reduce.so"
    src.write_text(CPP)
    proc = subprocess.run([cxx, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(src), "-o", str(lib)],
                          capture_output=True, text=True)
    if proc.returncode:
        return None, f"g++ failed: {proc.stderr[-300:]}"
    so = ctypes.CDLL(str(lib))
    so.reduce_segments.restype = so.set_threads.restype = None
    _, plan, _, fold_into = cpu_stats.kernel_parts()

    def ptr(a):
        return a.ctypes.data_as(ctypes.c_void_p)

    def accumulate_(acc: Accumulator, layer: int, x, token_lang):
        so.set_threads(torch.get_num_threads())
        a = x.contiguous().numpy()
        rows, seg_lang, lo, hi = plan(token_lang.to(torch.int64).contiguous().numpy(), acc.n_languages)
        e = acc.edges.numpy()
        S, Fn, E = seg_lang.size, a.shape[1], e.shape[0]
        assert E <= 64
        slots = cpu_stats.segment_slots(S, E, Fn)
        so.reduce_segments(ptr(a), ctypes.c_int64(Fn), ptr(rows), ptr(lo), ptr(hi), ctypes.c_int64(S),
                           ctypes.c_float(acc.threshold), ptr(e), ctypes.c_int64(E), *(ptr(s) for s in slots))
        fold_into(seg_lang, *slots, *(getattr(acc, v)[:, layer].numpy() for v in STATS))
    return accumulate_, None


# ------------------------------------------------------------------------------------------------

def check(fn, x, lang, edges) -> str | None:
    """None if `fn` gives the reference's statistics on this block, else what differs."""
    want, got = fresh(edges), fresh(edges)
    reference.accumulate_(want, 0, x, lang)
    fn(got, 0, x, lang)
    for v in STATS:
        a, b = getattr(want, v), getattr(got, v)
        ok = torch.equal(a, b) if v in ("n_fired", "act_hist", "n_nonfinite") else \
            torch.allclose(a, b, rtol=1e-4, atol=1e-3)
        if not ok:
            return f"{v} differs from the reference"
    return None


def first_call(fn, x, lang, edges) -> float:
    t = time.perf_counter()
    fn(fresh(edges), 0, x, lang)
    return time.perf_counter() - t


def numba_first_calls(repo: Path) -> dict:
    """numba's compile on first use, with its on-disk cache cold and then warm (fresh processes)."""
    code = ("import time,torch;from langneurons.kernels import cpu_stats as k;"
            "from langneurons.kernels.reference import Accumulator as A;x=torch.randn(256,64);"
            "l=torch.zeros(256,dtype=torch.long);t=time.perf_counter();"
            "k.accumulate_(A.zeros(1,1,64,[0.0],0.0),0,x,l);print(time.perf_counter()-t)")
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for name in ("cold_cache_s", "warm_cache_s"):
            env = {"NUMBA_CACHE_DIR": cache, "PATH": "/usr/bin:/bin"}
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=repo)
            out[name] = float(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    return out


def table() -> list[str]:
    """This benchmark's section of the results table in benchmarks/README.md (`run_all.py`)."""
    from common import load

    out: list[str] = []
    ck = load("cpu_kernel.json")
    if ck:
        b = ck["block"]
        out += [f"### CPU reduction kernel candidates (one block: {b['tokens']} tokens x {b['d_ff']} neurons, "
                f"{b['dtype']}, {b['languages']} languages, {b['edges']} edges; {ck['rounds']} interleaved rounds)", "",
                "| candidate | 1 thread ms | 2 threads ms | GB/s (2 threads) | first call s |", "|---|---|---|---|---|"]
        first = ck["first_call"]
        for k, r in ck["candidates"].items():
            fc = first.get("numba_cold_cache_s") if k == "numba" else first.get(f"{k}_first_call_s")
            if k == "cpp" and "cpp_build_s" in first:
                fc = first["cpp_build_s"] + first.get("cpp_first_call_s", 0)
            out.append(f"| {k} | {r['1t']['ms_median']:.2f} | {r['2t']['ms_median']:.2f} | "
                       f"{r['2t']['gb_per_s']:.1f} | {'' if fc is None else f'{fc:.1f}'} |")
        for k, why in ck.get("not_run", {}).items():
            out.append(f"| {k} | not run: {why} | | | |")
        out += ["", "First call: numba's compile with a cold on-disk cache "
                f"({first.get('numba_cold_cache_s', float('nan')):.1f} s; "
                f"{first.get('numba_warm_cache_s', float('nan')):.1f} s warm), Inductor's compile with an empty cache, "
                "g++ plus the first run. Inside a forward pass the kernels share the cores with torch's "
                "OpenMP threads, which keep spinning for a while after each matmul. Every candidate was checked against the reference on the block first (integers equal).", ""]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    x, lang = block()
    edges = list(DEFAULT_EDGES)
    gb = x.numel() * x.element_size() / 1e9
    candidates = {"reference": reference.accumulate_, "numba": cpu_stats.accumulate_}
    notes, first = {}, {}
    with tempfile.TemporaryDirectory() as work:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(work) / "inductor")  # its compile timed cold
        try:
            candidates["torch_compile"] = compiled_accumulate()
        except Exception as exc:  # noqa: BLE001  (a candidate that cannot run is a result)
            notes["torch_compile"] = f"{type(exc).__name__}: {exc}"[:300]
        t = time.perf_counter()
        fn, why = cpp_accumulate(Path(work))
        if fn is None:
            notes["cpp"] = why
        else:
            candidates["cpp"] = fn
            first["cpp_build_s"] = time.perf_counter() - t
        for name in list(candidates):
            try:
                first[f"{name}_first_call_s"] = first_call(candidates[name], x, lang, edges)
                problem = check(candidates[name], x, lang, edges)
            except Exception as exc:  # noqa: BLE001
                problem = f"{type(exc).__name__}: {exc}"[:300]
            if problem:
                notes[name] = problem
                del candidates[name]
        first.update({f"numba_{k}": v for k, v in numba_first_calls(Path(__file__).parents[1]).items()})
        results = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)  # each candidate runs as many threads as torch
            times = {k: [] for k in candidates}
            for _ in range(args.rounds):
                for name, fn in candidates.items():
                    acc = fresh(edges)
                    t = time.perf_counter()
                    fn(acc, 0, x, lang)
                    times[name].append(time.perf_counter() - t)
            for name, ts in times.items():
                med = statistics.median(ts)
                results.setdefault(name, {})[f"{threads}t"] = {
                    "ms_median": 1e3 * med, "ms_min": 1e3 * min(ts), "ms_max": 1e3 * max(ts), "gb_per_s": gb / med}
    out = {"machine": machine_info(), "block": {"tokens": T, "d_ff": F, "dtype": "float32", "languages": N,
                                                "uncounted_fraction": 0.05, "edges": len(edges)},
           "rounds": args.rounds, "candidates": results, "first_call": first, "not_run": notes}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'candidate':14} {'1 thread ms':>12} {'2 threads ms':>13}")
    for name, r in results.items():
        print(f"{name:14} {r['1t']['ms_median']:12.2f} {r['2t']['ms_median']:13.2f}")
    for name, why in notes.items():
        print(f"{name}: not run: {why}")
    print(json.dumps(first, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
