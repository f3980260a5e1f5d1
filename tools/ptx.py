"""Compile the Triton kernels for a CUDA target without a GPU, and report what the code does.

Triton compiles ahead of time for any target (it ships ptxas and nvdisasm), so on a CPU-only
machine this checks that the native code paths build (the interpreter never runs them), lets tests
read the arithmetic the fused kernel will execute (IEEE division, no flush-to-zero, libdevice's
expf), and reads the hot loop's machine code (SASS): no shared memory or barriers inside it, and
how many instructions it issues per activation value, the static cost model behind the kernels'
design. Pointers and strides are specialised as 16-byte aligned, as Triton does at launch for
d_ff a multiple of 16 (every real model's).

`python tools/ptx.py` prints the summaries as JSON. Must run without TRITON_INTERPRET.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter

SIGNATURE_COMMON = {
    "lang_ptr": "*i32", "edges_ptr": "*fp32", "fired_ptr": "*i64", "sum_ptr": "*fp64",
    "sumsq_ptr": "*fp64", "hist_ptr": "*i64", "nonfinite_ptr": "*i64", "T": "i32", "F": "i32",
    "stride_n": "i32", "stride_hn": "i32", "stride_hf": "i32", "threshold": "fp32",
    "n_languages": "i32", "tokens_per_split": "i32",
}
# arguments that are multiples of 16 (bytes for pointers, elements for sizes) in a real launch
ALIGNED = {"x_ptr", "gate_ptr", "up_ptr", "y_ptr", "lang_ptr", "edges_ptr", "fired_ptr", "sum_ptr",
           "sumsq_ptr", "hist_ptr", "nonfinite_ptr", "F", "stride_t", "stride_g", "stride_u",
           "stride_n", "stride_hn", "stride_hf"}
PATTERNS = {  # what the PTX summary counts
    "div_rn": r"\bdiv\.rn\.f32\b",
    "div_approx": r"\bdiv\.(?:full|approx)\.",
    "ftz_arith": r"\b(?:fma|add|mul|sub)\.[a-z.]*ftz",
    "ex2_approx": r"\bex2\.approx",
    "expf_constant": r"0f32A57060",  # a constant of libdevice's expf range reduction
    "cvt_rn_bf16": r"\bcvt\.rn\.bf16(?:x2)?\.f32\b",
    "cvt_rn_f16": r"\bcvt\.rn\.f16(?:x2)?\.f32\b",
    "mul_rn_16x2": r"\bmul\.rn\.(?:bf16|f16)x2\b",
    "atomics": r"\b(?:atom|red)\.global\.",
    "atomics_ordered": r"\b(?:atom|red)\.global\.[a-z.]*(?:acq_rel|release|acquire)",
    "vector_loads": r"\bld\.global(?:\.[a-z_]+)*\.v[24]\.",
    "fma_any": r"\bfma\.",
}


def _warps(dtype: str) -> dict:
    """The launchers' num_warps for activations of `dtype` ('fp32', 'fp16' or 'bf16')."""
    import torch

    from langneurons.kernels import triton_stats
    return triton_stats.launch_options(torch.float32 if dtype == "fp32" else torch.bfloat16)


def compile_kernel(kernel: str, dtype: str = "bf16", arch: int = 90):
    """The compiled `kernel` ('stats' or 'fused') for sm_<arch> and bf16/fp16/fp32 activations
    (`.asm["ptx"]`, `.asm["cubin"]`), with the default 15 edges."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_kernel needs the real compiler: unset TRITON_INTERPRET")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from langneurons.kernels import triton_fused, triton_stats

    t = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}[dtype]
    blocks = {"NUM_EDGES": 15, "NUM_GROUPS": 1, "ROWS": triton_stats.ROWS,
              "BLOCK_F": triton_stats.BLOCK_F}
    warps = _warps(dtype)
    if kernel == "stats":
        fn = triton_stats._stats_kernel
        sig = {"x_ptr": f"*{t}", **SIGNATURE_COMMON, "stride_t": "i32"}
        consts, options = blocks, warps
    elif kernel == "fused":
        fn = triton_fused._silu_mul_stats_kernel
        sig = {"gate_ptr": f"*{t}", "up_ptr": f"*{t}", "y_ptr": f"*{t}", **SIGNATURE_COMMON,
               "stride_g": "i32", "stride_u": "i32"}
        consts = {"SITE_GATE": False, "NATIVE": True, "IS_BF16": dtype == "bf16", **blocks}
        options = {**warps, **triton_fused.NATIVE_OPTIONS}
    else:
        raise ValueError(f"kernel {kernel!r} is not 'stats' or 'fused'")
    # the signature in the kernel's own parameter order, constexprs included
    names = fn.arg_names
    full = {n: (sig[n] if n in sig else "constexpr") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n in ALIGNED}
    return triton.compile(ASTSource(fn, full, consts, attrs), target=GPUTarget("cuda", arch, 32),
                          options=options)


def compile_ptx(kernel: str, dtype: str = "bf16", arch: int = 90) -> str:
    return compile_kernel(kernel, dtype, arch).asm["ptx"]


def summary(ptx: str) -> dict[str, int]:
    return {k: len(re.findall(p, ptx)) for k, p in PATTERNS.items()}


def sass(compiled) -> list[str]:
    """The kernel's SASS, one instruction a line (labels kept), from the cubin via nvdisasm."""
    from triton.tools.disasm import get_sass
    out = []
    for line in get_sass(compiled.asm["cubin"]).splitlines():
        line = line.strip()
        if re.match(r"^LBB\d+:$", line):  # a label
            out.append(line)
        elif "\t" in line:  # "<control bits>\t<instruction>;"
            out.append(line.split("\t", 1)[1].rstrip(";"))
    return out


def resource_usage(compiled) -> dict[str, int]:
    """Registers per thread and spill bytes, as cuobjdump reads them from the cubin."""
    import subprocess
    import tempfile

    from triton import knobs
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", f.name],
                             capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+).*?LOCAL:(\d+)", out)
    return {"registers": int(m.group(1)), "stack_bytes": int(m.group(2)), "local_bytes": int(m.group(3))}


def hot_loop(lines: list[str]) -> list[str]:
    """The instructions of the innermost loop: between a label and the backward branch to it
    that encloses the fewest instructions."""
    labels = {ln[:-1]: i for i, ln in enumerate(lines) if ln.endswith(":")}
    best = None
    for i, ln in enumerate(lines):
        m = re.search(r"\bBRA\s+(LBB\d+)", ln)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            body = [x for x in lines[labels[m.group(1)] + 1:i + 1] if not x.endswith(":")]
            if len(body) > 2 and (best is None or len(body) < len(best)):  # not `EXIT; BRA self`
                best = body
    if best is None:
        raise ValueError("no loop found in the SASS")
    return best


def loop_profile(kernel: str, dtype: str = "bf16", arch: int = 90) -> dict:
    """Static cost of the hot loop: instructions per activation value, by kind, and whether the
    loop touches shared memory or waits at barriers."""
    from langneurons.kernels import triton_stats

    compiled = compile_kernel(kernel, dtype, arch)
    body = hot_loop(sass(compiled))
    ops = Counter(re.sub(r"^@!?U?P\w+\s+", "", x).split()[0].split(".")[0] for x in body)
    values = triton_stats.ROWS * triton_stats.BLOCK_F  # per loop iteration, per program
    threads = 32 * _warps(dtype)["num_warps"]
    per_value = len(body) * threads / values
    return {
        "kernel": kernel, "dtype": dtype, "arch": f"sm_{arch}", "loop_instructions": len(body),
        "values_per_thread_per_iteration": values // threads,
        "instructions_per_value": round(per_value, 2),
        "shared_memory_ops": sum(v for k, v in ops.items() if k in ("LDS", "STS", "ATOMS", "LDSM", "STSM")),
        "barriers": ops.get("BAR", 0),  # bar.sync (BSSY/BSYNC are only convergence points)
        "global_loads": ops.get("LDG", 0), "atomics": ops.get("RED", 0) + ops.get("ATOM", 0),
        **resource_usage(compiled),
        "local_memory_ops": sum(v for k, v in ops.items() if k in ("LDL", "STL")),
        "by_opcode": dict(ops.most_common()),
    }


def main() -> int:
    out = {f"{k}_{d}": summary(compile_ptx(k, d)) for k in ("stats", "fused") for d in ("fp32", "fp16", "bf16")}
    out["loops"] = [loop_profile(k, d) for k in ("stats", "fused") for d in ("bf16", "fp32")]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
