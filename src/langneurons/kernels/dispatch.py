"""One dispatch point for the reduction: which implementation adds a block into an Accumulator.

`impl` is "auto" (Triton on CUDA, the numba kernel on the CPU, the torch reference elsewhere),
"reference", "triton" or "numba"; the environment variable LANGNEURONS_KERNEL overrides "auto".
Asking for a kernel where it cannot run is an error, never a silent fallback to something else.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch

from langneurons.config import KERNELS as IMPLS
from langneurons.kernels import cpu_stats, reference
from langneurons.kernels.reference import Accumulator

AccumulateFn = Callable[[Accumulator, int, torch.Tensor, torch.Tensor], None]
# (acc, layer, gate, up, token_lang, site, act) -> act(gate) * up
FusedFn = Callable[..., torch.Tensor]


def resolve(impl: str, device: torch.device | str) -> str:
    """The concrete implementation ("reference" or "triton") for `impl` on `device`."""
    if impl == "auto":
        impl = os.environ.get("LANGNEURONS_KERNEL", "auto")
    if impl not in IMPLS:
        raise ValueError(f"kernel implementation {impl!r} is not one of {IMPLS} "
                         "(check --kernel or LANGNEURONS_KERNEL)")
    if impl == "auto":
        kind = torch.device(device).type
        if kind == "cuda" and _triton_available():
            return "triton"
        return "numba" if kind == "cpu" and cpu_stats.available() else "reference"
    return impl


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _check_triton_can_run(device: torch.device | str) -> None:
    if not _triton_available():
        raise RuntimeError("kernel 'triton' was requested but triton is not installed: "
                           "pip install 'langneurons[triton]'")
    dev = torch.device(device)
    if dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"kernel 'triton' cannot run on device {dev}: use a CUDA device, "
                           "or set TRITON_INTERPRET=1 (slow, for tests), or --kernel reference")


def _check_numba_can_run(device: torch.device | str) -> None:
    if not cpu_stats.available():
        raise RuntimeError("kernel 'numba' was requested but numba is not installed: pip install numba")
    if torch.device(device).type != "cpu":
        raise RuntimeError(f"kernel 'numba' runs on the CPU, not on {device}: use --kernel triton or reference")


def get_accumulate(impl: str, device: torch.device | str) -> AccumulateFn:
    """The accumulate function for `impl` on `device`; raises if the kernel asked for cannot run."""
    chosen = resolve(impl, device)
    if chosen == "reference":
        return reference.accumulate_
    if chosen == "numba":
        _check_numba_can_run(device)
        return cpu_stats.accumulate_
    _check_triton_can_run(device)
    from langneurons.kernels import triton_stats
    return triton_stats.accumulate_


def get_fused(impl: str, device: torch.device | str) -> FusedFn:
    """The fused SiLU-gated MLP function (returns silu(gate) * up, accumulates the site) for
    `impl` on `device`: the Triton kernel, or its torch twin; same rules as `get_accumulate`."""
    chosen = resolve(impl, device)
    if chosen == "reference":
        return reference.silu_mul_accumulate_
    if chosen == "numba":  # the torch twin's arithmetic, the numba reduction
        _check_numba_can_run(device)
        return functools.partial(reference.silu_mul_accumulate_, accumulate=cpu_stats.accumulate_)
    _check_triton_can_run(device)
    from langneurons.kernels import triton_fused
    return triton_fused.silu_mul_accumulate_
