"""Exports: a neuron table (CSV/parquet) and per-language masks a steering script can load.

Mask files:
- `masks.pt`: torch.save({language: {layer: LongTensor of neuron indices}}), load with torch.load;
- `masks.npz`: one int64 array per language of (layer, neuron) rows, key = language code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from langneurons.scoring.lape import LapeResult


def neuron_table(p: xr.DataArray, result: LapeResult):
    """One row per (language, layer, neuron) assigned by LAPE: probability and entropy."""
    import pandas as pd

    rows = []
    masks = result.masks.transpose("language", "layer", "neuron")
    for li, lang in enumerate(masks["language"].values):
        layers, neurons = np.nonzero(masks.values[li])
        rows.append(pd.DataFrame({
            "language": str(lang), "layer": masks["layer"].values[layers],
            "neuron": masks["neuron"].values[neurons],
            "p": p.sel(language=lang).values[layers, neurons],
            "entropy": result.entropy.values[layers, neurons],
        }))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def write_exports(p: xr.DataArray, result: LapeResult, out_dir: str | Path) -> list[Path]:
    import torch

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    table = neuron_table(p, result)
    written = [d / "neurons.csv"]
    table.to_csv(written[0], index=False)
    try:
        table.to_parquet(d / "neurons.parquet", index=False)
        written.append(d / "neurons.parquet")
    except ImportError:  # pyarrow is optional: CSV always works
        pass
    masks = result.masks.transpose("language", "layer", "neuron")
    as_pt, as_np = {}, {}
    for li, lang in enumerate(masks["language"].values):
        m = masks.values[li]
        as_pt[str(lang)] = {int(layer): torch.as_tensor(np.flatnonzero(m[i]), dtype=torch.long)
                            for i, layer in enumerate(masks["layer"].values)}
        as_np[str(lang)] = np.argwhere(m).astype(np.int64)
    torch.save(as_pt, d / "masks.pt")
    np.savez(d / "masks.npz", **as_np)
    return written + [d / "masks.pt", d / "masks.npz"]


def load_masks(path: str | Path) -> dict[str, dict[int, "torch.Tensor"]]:  # noqa: F821
    import torch

    return torch.load(path, weights_only=True)
