"""Exports: a neuron table (CSV/parquet) and per-language masks a steering script can load.

Mixture-of-experts stores also get `experts.csv`/`.parquet` (one row per language, routing layer
and expert: routing rate, expert LAPE entropy, selected, specific), `routing.csv` (per language and
routing layer: JS divergence from the pivot, routing entropy) and `expert_masks.npz` (per language,
the (layer, expert) rows of its language-specific experts).

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


def _table(df, d: Path, name: str) -> list[Path]:
    written = [d / f"{name}.csv"]
    df.to_csv(written[0], index=False)
    try:
        df.to_parquet(d / f"{name}.parquet", index=False)
        written.append(d / f"{name}.parquet")
    except ImportError:  # pyarrow is optional: CSV always works
        pass
    return written


def write_exports(p: xr.DataArray, result: LapeResult, out_dir: str | Path) -> list[Path]:
    import torch

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    written = _table(neuron_table(p, result), d, "neurons")
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


def write_expert_exports(r: xr.DataArray, result: LapeResult, div: xr.DataArray, ent: xr.DataArray,
                         out_dir: str | Path) -> list[Path]:
    """The MoE exports (see the module docstring); `result` is expert LAPE (scoring/routing.py)."""
    import pandas as pd

    from langneurons.scoring.routing import expert_export_table

    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    written = _table(expert_export_table(r, result), d, "experts")
    per_layer = pd.DataFrame({
        "language": np.repeat([str(x) for x in div["language"].values], div.sizes["layer"]),
        "layer": np.tile(div["layer"].values, div.sizes["language"]),
        "js_divergence_from_pivot": div.transpose("language", "layer").values.reshape(-1),
        "routing_entropy": ent.transpose("language", "layer").values.reshape(-1),
    })
    per_layer.to_csv(d / "routing.csv", index=False)
    written.append(d / "routing.csv")
    masks = result.masks.transpose("language", "layer", "expert")
    layers = masks["layer"].values
    as_np = {}
    for li, lang in enumerate(masks["language"].values):
        rows = np.argwhere(masks.values[li]).astype(np.int64)  # (layer position, expert)
        rows[:, 0] = layers[rows[:, 0]]                         # the model's layer index
        as_np[str(lang)] = rows
    np.savez(d / "expert_masks.npz", **as_np)
    return written + [d / "expert_masks.npz"]
