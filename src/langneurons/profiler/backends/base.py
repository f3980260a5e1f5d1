"""What every backend provides, and the model facts recorded with the results."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Protocol, Sequence

from langneurons.store.schema import ModelInfo  # noqa: F401  (re-exported)
from langneurons.store.stats import Stats  # noqa: F401  (re-exported)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


class Backend(Protocol):
    info: ModelInfo

    def profile(self, sentences: Sequence[str]) -> Stats:
        """Statistics of `sentences` (all of one language), each one sequence."""

    def close(self) -> None:
        """Free the model and its device memory."""


def describe(model: str, revision: str | None, architecture: str, n_layers: int, d_ff: int,
             dtype: str, fingerprint: str | None = None, moe=None) -> ModelInfo:
    """The ModelInfo of a model (the driver's view before loading, or a worker's after): the one
    place it is built. `moe`: a MoE model's sites.MoeLayout."""
    return ModelInfo(model=model, fingerprint=fingerprint or model_fingerprint(model, revision),
                     architecture=architecture, n_layers=n_layers, d_ff=d_ff, dtype=dtype,
                     moe=None if moe is None else moe.record())


def model_fingerprint(model: str, revision: str | None = None) -> str:
    """A cheap, stable fingerprint of a model's weights.

    Local directory: sha256 over config.json and, per weight file, its name, size and first and
    last MiB (hashing every byte of a 140 GB checkpoint would cost minutes per run). Hub id: the
    id and the pinned revision (unpinned revisions are marked as such).
    """
    p = Path(model)
    if not p.is_dir():
        return f"hub:{model}@{revision or 'unpinned'}"
    h = hashlib.sha256()
    cfg = p / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    files = sorted(f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"model directory {p} has no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    mib = 1 << 20
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(mib))
            if size > 2 * mib:
                fh.seek(size - mib, os.SEEK_SET)
                h.update(fh.read(mib))
    return "sha256:" + h.hexdigest()
