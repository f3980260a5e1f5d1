"""What the Triton kernels compile to on a Hopper GPU, read without one: the static cost model.

Triton compiles for sm_90 on any machine (it ships ptxas and nvdisasm). This reads the machine
code (SASS) of each kernel's hot loop, the one that runs once per ROWS rows of activations, and
reports, per activation value: instructions issued, global loads, and whether the loop touches
shared memory, waits at barriers or spills registers. Why it matters: at H100 bandwidth a bf16
block streams ~1.5e12 values/s, while the SMs issue ~2.9e13 thread-instructions/s (132 SMs x 4
schedulers x 32 lanes x ~1.7 GHz), so a kernel that issues more than ~20-25 instructions per bf16
value is compute-bound, not memory-bound. It is an estimate of the ceiling, not a measurement:
`bench_kernels.py` measures GB/s on a GPU.

Writes benchmarks/results/kernel_code_sm90.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ISSUE_RATE = 132 * 4 * 32 * 1.7e9  # H100 SXM: SMs x schedulers x lanes x clock (thread-instructions/s)


def table() -> list[str]:
    """This benchmark's section of the results table in benchmarks/README.md (`run_all.py`)."""
    from common import load

    out: list[str] = []
    code = load("kernel_code_sm90.json")
    if code:
        out += ["### Kernel machine code for sm_90 (static: read from the compiled SASS, no GPU)", "",
                "| kernel | dtype | instructions / value | registers | shared-memory ops in loop | "
                "barriers in loop | local-memory ops | issue-bound GB/s (H100 estimate) |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['kernel']} | {r['dtype']} | {r['instructions_per_value']:.1f} | {r['registers']} | "
                f"{r['shared_memory_ops']} | {r['barriers']} | {r['local_memory_ops']} | "
                f"{r['issue_bound_GBps']} |" for r in code["rows"]]
        out += ["", "An estimate of the compute ceiling (see `bench_kernel_code.py`), not a measurement: "
                "a kernel runs at the lower of this and the memory bandwidth.", ""]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS / "kernel_code_sm90.json")
    args = ap.parse_args(argv)
    import triton

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import ptx

    rows = []
    for kernel in ("stats", "fused"):
        for dtype in ("bf16", "fp32"):
            p = ptx.loop_profile(kernel, dtype, 90)
            # bytes of activations moved per value: stats reads x; fused reads gate, up, writes y
            moved = (2 if dtype == "bf16" else 4) * (3 if kernel == "fused" else 1)
            p["issue_bound_GBps"] = round(ISSUE_RATE / p["instructions_per_value"] * moved / 1e9)
            rows.append(p)
            print(f"{kernel:5s} {dtype}: {p['instructions_per_value']:5.1f} instructions/value, "
                  f"{p['registers']} registers, shared-memory ops {p['shared_memory_ops']}, barriers "
                  f"{p['barriers']}, local-memory ops {p['local_memory_ops']}; issue-bound "
                  f"~{p['issue_bound_GBps']} GB/s of activations", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "what": "static SASS profile of the kernels' hot loops for sm_90 (no GPU involved)",
        "triton": triton.__version__, "date": datetime.date.today().isoformat(),
        "issue_rate_thread_instructions_per_s": ISSUE_RATE, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
