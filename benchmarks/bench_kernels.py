"""Kernel bandwidth: GB/s of the Triton reduction vs a device-to-device copy of the same bytes.

Both are timed in the same run with CUDA events (warm-up, then the median of repeats), for the
shapes of real models (d_ff 1536 SmolLM2, 4864 Qwen2-0.5B, 11008 Llama-2-7B, 14336 Llama-3-8B)
at 4k-64k tokens in bf16. Bytes moved = the activation block read once (the partials are tiny).
Writes benchmarks/results/kernels_<gpu>.json. Without CUDA it says so and writes nothing.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
SHAPES = [(t, f) for f in (1536, 4864, 11008, 14336) for t in (4096, 16384, 65536)]


def time_ms(fn, repeats=20, warmup=3) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b))
    return out


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: kernel bandwidth not measured (run this on a GPU machine)")
        return 0
    import triton

    from langneurons.kernels import reference, triton_stats
    from langneurons.kernels.reference import Accumulator
    from langneurons.store.schema import DEFAULT_EDGES

    dev = torch.device("cuda")
    name = torch.cuda.get_device_name(dev)
    rows = []
    for T, F in SHAPES:
        x = torch.randn(T, F, device=dev, dtype=torch.bfloat16)
        lang = torch.zeros(T, dtype=torch.int32, device=dev)
        dst = torch.empty_like(x)
        acc = Accumulator.zeros(1, 1, F, DEFAULT_EDGES, 0.0, dev)
        nbytes = x.numel() * x.element_size()
        copy = statistics.median(time_ms(lambda: dst.copy_(x)))
        kern = statistics.median(time_ms(lambda: triton_stats.accumulate_(acc, 0, x, lang)))
        ref = statistics.median(time_ms(lambda: reference.accumulate_(acc, 0, x, lang), repeats=5))
        # a device copy reads and writes: its bandwidth counts both; the kernel only reads
        row = {"tokens": T, "d_ff": F, "dtype": "bf16", "copy_GBps": 2 * nbytes / copy / 1e6,
               "kernel_GBps": nbytes / kern / 1e6, "reference_GBps": nbytes / ref / 1e6,
               "copy_ms": copy, "kernel_ms": kern, "reference_ms": ref}
        row["kernel_vs_copy"] = row["kernel_GBps"] / row["copy_GBps"]
        rows.append(row)
        print(f"T={T:6d} F={F:6d}  copy {row['copy_GBps']:7.0f} GB/s  kernel {row['kernel_GBps']:7.0f} GB/s "
              f"({100 * row['kernel_vs_copy']:.0f}%)  torch reference {row['reference_GBps']:6.0f} GB/s")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"kernels_{name.replace(' ', '_')}.json"
    out.write_text(json.dumps({"device": name, "torch": torch.__version__, "triton": triton.__version__,
                               "histogram": "always on (16 bins)", "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
