"""Where a model runs and in what dtype: "auto" resolved one way for every backend, the driver's
checks and ablation, so the dtype the store records is the one the workers compute in.

The driver resolves for the device its workers will use (Ray workers holding a GPU run on
"cuda"), not its own; workers then report what they loaded, and a mismatch is refused.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """auto: cuda if this process sees a GPU, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device | str) -> torch.dtype:
    """auto: bfloat16 on CUDA, float32 elsewhere (CPU bf16 matmuls are slow and not exact)."""
    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return DTYPES[dtype]


def placement(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    d = resolve_device(device)
    return d, resolve_dtype(dtype, d)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_device(device: torch.device) -> None:
    """Refuse a device this process cannot use, with what to use instead."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device} but torch sees no CUDA GPU here; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("--device mps but MPS is not available here; use --device cpu (or auto)")
