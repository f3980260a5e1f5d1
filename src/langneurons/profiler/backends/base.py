"""What every backend provides, and the model facts recorded with the results."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from langneurons.store.schema import Stats

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    model: str              # path or hub id as given
    fingerprint: str        # identifies the weights (see model_fingerprint)
    architecture: str       # config.model_type
    n_layers: int
    d_ff: int
    dtype: str              # torch dtype name actually used


class Backend(Protocol):
    info: ModelInfo

    def profile(self, sentences: Sequence[str]) -> Stats:
        """Statistics of `sentences` (all of one language), each one sequence."""

    def close(self) -> None:
        """Free the model and its device memory."""


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
