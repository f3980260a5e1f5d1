"""Kernel bandwidth on a GPU: each Triton kernel's GB/s against a device-to-device copy of the same
bytes, measured in the same run, and what fusing saves a gated MLP.

Per shape (d_ff 1536 SmolLM2, 4864 Qwen2-0.5B, 11008 Llama-2-7B, 14336 Llama-3-8B; 4k-64k tokens;
bf16), timed with CUDA events (warm-up, then the median of repeats):
- copy:       `dst.copy_(x)`; its GB/s counts the bytes read and written;
- stats:      `triton_stats` on x, with the 16-bin histogram and without (counts and sums only);
              GB/s = the block's bytes / time (it reads x once);
- fused:      `triton_fused` on gate and up (reads both, writes y): GB/s = 3 blocks / time;
- mlp:        what the unprofiled model runs, torch `silu(gate) * up`;
- unfused:    what the hooks run on a profiled model: `silu(gate) * up`, then `triton_stats` on y.
Targets (issue 4): stats >= 80% of copy bandwidth without histogram, >= 65% with. The profiling
cost of a gated MLP's activation step is (fused - mlp) / mlp, against (unfused - mlp) / mlp.

Writes benchmarks/results/kernels_<gpu>.json; without CUDA it says so and writes nothing.
`--smoke` runs two tiny shapes on any device (under TRITON_INTERPRET=1 on a CPU) and writes only
with `--out`: the tests use it so this script cannot rot between GPU sessions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SHAPES = [(t, f) for f in (1536, 4864, 11008, 14336) for t in (4096, 16384, 65536)]
SMOKE_SHAPES = [(64, 96), (33, 37)]
TARGETS = {"stats_no_hist_vs_copy": 0.80, "stats_vs_copy": 0.65}


def timer(dev: torch.device, repeats: int, warmup: int):
    """fn -> the median milliseconds of `repeats` calls (CUDA events on a GPU)."""
    def time_ms(fn) -> float:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            if dev.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize()
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize()
                out.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                fn()
                out.append(1e3 * (time.perf_counter() - t0))
        return statistics.median(out)
    return time_ms


def measure(dev: torch.device, shapes, repeats: int, warmup: int, dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    from langneurons.kernels import triton_fused, triton_stats
    from langneurons.kernels.reference import Accumulator
    from langneurons.store.schema import DEFAULT_EDGES

    time_ms = timer(dev, repeats, warmup)
    rows = []
    for T, F in shapes:
        g = torch.Generator(device=dev).manual_seed(0)
        gate = torch.randn(T, F, device=dev, dtype=dtype, generator=g)
        up = torch.randn(T, F, device=dev, dtype=dtype, generator=g)
        x = torch.nn.functional.silu(gate) * up
        lang = torch.zeros(T, dtype=torch.int32, device=dev)
        dst = torch.empty_like(x)
        acc = Accumulator.zeros(1, 1, F, DEFAULT_EDGES, 0.0, dev)
        counts_only = Accumulator.zeros(1, 1, F, (), 0.0, dev)  # no edges: counts and sums
        block = x.numel() * x.element_size()

        def unfused():
            y = torch.nn.functional.silu(gate) * up
            triton_stats.accumulate_(acc, 0, y, lang)

        ms = {
            "copy": time_ms(lambda: dst.copy_(x)),
            "stats": time_ms(lambda: triton_stats.accumulate_(acc, 0, x, lang)),
            "stats_no_hist": time_ms(lambda: triton_stats.accumulate_(counts_only, 0, x, lang)),
            "fused": time_ms(lambda: triton_fused.silu_mul_accumulate_(acc, 0, gate, up, lang, "down_in")),
            "mlp": time_ms(lambda: torch.nn.functional.silu(gate) * up),
            "unfused": time_ms(unfused),
        }
        copy_gbps = 2 * block / ms["copy"] / 1e6  # a copy reads and writes the block
        row = {"tokens": T, "d_ff": F, "dtype": {torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype)),
               "ms": ms, "copy_GBps": copy_gbps,
               "stats_GBps": block / ms["stats"] / 1e6,
               "stats_no_hist_GBps": block / ms["stats_no_hist"] / 1e6,
               "fused_GBps": 3 * block / ms["fused"] / 1e6,
               "fused_overhead_vs_mlp": ms["fused"] / ms["mlp"] - 1,
               "unfused_overhead_vs_mlp": ms["unfused"] / ms["mlp"] - 1}
        for k in ("stats", "stats_no_hist", "fused"):
            row[f"{k}_vs_copy"] = row[f"{k}_GBps"] / copy_gbps
        rows.append(row)
        print(f"T={T:6d} F={F:6d}  copy {copy_gbps:6.0f} GB/s | stats {row['stats_GBps']:6.0f} "
              f"({100 * row['stats_vs_copy']:3.0f}%), no hist {row['stats_no_hist_GBps']:6.0f} "
              f"({100 * row['stats_no_hist_vs_copy']:3.0f}%) | fused {row['fused_GBps']:6.0f} "
              f"({100 * row['fused_vs_copy']:3.0f}%) | MLP act step +{100 * row['fused_overhead_vs_mlp']:.0f}% "
              f"fused vs +{100 * row['unfused_overhead_vs_mlp']:.0f}% unfused", flush=True)
    return rows


def table() -> list[str]:
    """This benchmark's section of the results table in benchmarks/README.md (`run_all.py`)."""
    import glob
    import json
    from common import RESULTS_DIR

    out: list[str] = []
    kernels = sorted(glob.glob(str(RESULTS_DIR / "kernels_*.json")))
    if kernels:
        for path in kernels:
            k = json.loads(Path(path).read_text())
            out += [f"### Kernels on {k['device']} (bf16; GB/s and share of the copy bandwidth)", "",
                    "| tokens | d_ff | copy GB/s | stats | stats, no histogram | fused SiLU-gate | "
                    "MLP act step: fused / unfused |", "|---|---|---|---|---|---|---|"]
            out += [f"| {r['tokens']} | {r['d_ff']} | {r['copy_GBps']:.0f} | {r['stats_GBps']:.0f} "
                    f"({100 * r['stats_vs_copy']:.0f}%) | {r['stats_no_hist_GBps']:.0f} "
                    f"({100 * r['stats_no_hist_vs_copy']:.0f}%) | {r['fused_GBps']:.0f} "
                    f"({100 * r['fused_vs_copy']:.0f}%) | {100 * r['fused_overhead_vs_mlp']:+.0f}% / "
                    f"{100 * r['unfused_overhead_vs_mlp']:+.0f}% |" for r in k["rows"]]
            out += ["", f"Targets (share of copy, every shape): {k['targets']}; met: "
                    f"{k['targets_met_on_every_shape']}."]
            out.append("")
    else:
        out += ["### Kernels", "", "Not measured: no GPU was available to the session that ran this "
                "(`python benchmarks/bench_kernels.py` on a CUDA machine writes `results/kernels_<gpu>.json`).", ""]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="two tiny shapes on any device; writes only with --out")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: results/kernels_<gpu>.json)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("no CUDA device: kernel bandwidth not measured (run this on a GPU machine)")
        return 0
    import triton

    dev = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name(dev) if cuda else "cpu (TRITON_INTERPRET smoke run)"
    rows = measure(dev, SMOKE_SHAPES if args.smoke else SHAPES,
                   repeats=2 if args.smoke else args.repeats, warmup=1 if args.smoke else 3)
    out = args.out or (None if args.smoke else RESULTS / f"kernels_{name.replace(' ', '_')}.json")
    if out is None:
        return 0
    met = {k: min(r[k] for r in rows) >= v for k, v in TARGETS.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "torch": torch.__version__, "triton": triton.__version__,
                               "targets": TARGETS, "targets_met_on_every_shape": met, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
