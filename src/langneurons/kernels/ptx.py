"""Compile the Triton kernels for a CUDA target without a GPU, and report what the PTX does.

Triton compiles ahead of time for any target (it ships ptxas), so on a CPU-only machine this
checks that the native code paths build (the interpreter never runs them) and lets tests read the
arithmetic the fused kernel will execute: IEEE division, no flush-to-zero, no approximate exp.
`python -m langneurons.kernels.ptx` prints the summary as JSON. Must run without TRITON_INTERPRET.
"""

from __future__ import annotations

import json
import os
import re
import sys

SIGNATURE_COMMON = {
    "lang_ptr": "*i32", "edges_ptr": "*fp32", "fired_ptr": "*i32", "finite_ptr": "*i32",
    "sum_ptr": "*fp32", "sumsq_ptr": "*fp32", "above_ptr": "*i32", "T": "i32", "F": "i32",
}
PATTERNS = {  # what the summary counts in the PTX
    "div_rn": r"\bdiv\.rn\.f32\b",
    "div_approx": r"\bdiv\.(?:full|approx)\.",
    "ftz_arith": r"\b(?:fma|add|mul|sub)\.[a-z.]*ftz",
    "ex2_approx": r"\bex2\.approx",
    "expf_constant": r"0f32A57060",  # a constant of libdevice's expf range reduction
    "cvt_rn_bf16": r"\bcvt\.rn\.bf16(?:x2)?\.f32\b",
    "cvt_rn_f16": r"\bcvt\.rn\.f16(?:x2)?\.f32\b",
    "mul_rn_16x2": r"\bmul\.rn\.(?:bf16|f16)x2\b",
    "atomics": r"\batom\.",
    "fma_any": r"\bfma\.",
}


def compile_ptx(kernel: str, dtype: str = "bf16", arch: int = 90) -> str:
    """PTX of `kernel` ('stats' or 'fused') for sm_<arch>, bf16/fp16/fp32 activations."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("compile_ptx needs the real compiler: unset TRITON_INTERPRET")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from langneurons.kernels import triton_fused, triton_stats

    t = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}[dtype]
    blocks = {"NUM_EDGES": 15, "BLOCK_E": 16, "BLOCK_T": triton_stats.BLOCK_T, "BLOCK_F": triton_stats.BLOCK_F}
    if kernel == "stats":
        fn = triton_stats._stats_kernel
        sig = {"x_ptr": f"*{t}", **SIGNATURE_COMMON, "stride_t": "i32", "threshold": "fp32",
               "n_languages": "i32", "tokens_per_split": "i32"}
        consts, options = blocks, {"num_warps": 4}
    elif kernel == "fused":
        fn = triton_fused._silu_mul_stats_kernel
        sig = {"gate_ptr": f"*{t}", "up_ptr": f"*{t}", "y_ptr": f"*{t}", **SIGNATURE_COMMON,
               "stride_g": "i32", "stride_u": "i32", "threshold": "fp32", "n_languages": "i32",
               "tokens_per_split": "i32"}
        consts = {"SITE_GATE": False, "NATIVE": True, "IS_BF16": dtype == "bf16", **blocks}
        options = {"num_warps": 4, **triton_fused.NATIVE_OPTIONS}
    else:
        raise ValueError(f"kernel {kernel!r} is not 'stats' or 'fused'")
    # the signature in the kernel's own parameter order, constexprs included
    names = fn.arg_names
    full = {n: (sig[n] if n in sig else "constexpr") for n in names}
    compiled = triton.compile(ASTSource(fn, full, consts), target=GPUTarget("cuda", arch, 32), options=options)
    return compiled.asm["ptx"]


def summary(ptx: str) -> dict[str, int]:
    return {k: len(re.findall(p, ptx)) for k, p in PATTERNS.items()}


def main() -> int:
    out = {f"{k}_{d}": summary(compile_ptx(k, d)) for k in ("stats", "fused") for d in ("fp32", "fp16", "bf16")}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
