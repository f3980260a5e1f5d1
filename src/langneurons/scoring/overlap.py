"""Overlap of language-specific neuron sets: raw intersections and IoU, per layer and overall."""

from __future__ import annotations

import numpy as np
import xarray as xr


def overlap(masks: xr.DataArray) -> xr.Dataset:
    """masks [language, layer, neuron] bool -> intersection and IoU [layer, language, language2],
    plus `*_all` over all layers. IoU of two empty sets is NaN (undefined), not 0 or 1."""
    m = masks.transpose("language", "layer", "neuron").values.astype(np.int64)   # [N, L, F]
    inter = np.einsum("alf,blf->lab", m, m)                                      # [L, N, N]
    size = m.sum(-1)                                                             # [N, L]
    union = size.T[:, :, None] + size.T[:, None, :] - inter
    langs = masks["language"].values
    coords = {"layer": masks["layer"].values, "language": langs, "language2": langs}
    dims = ("layer", "language", "language2")
    inter_all = inter.sum(0)
    union_all = union.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
        iou_all = np.where(union_all > 0, inter_all / np.maximum(union_all, 1), np.nan)
    return xr.Dataset({
        "intersection": (dims, inter), "iou": (dims, iou),
        "intersection_all": (dims[1:], inter_all), "iou_all": (dims[1:], iou_all),
    }, coords=coords)


def specificity_curves(masks: xr.DataArray) -> xr.DataArray:
    """Share of each layer's neurons specific to each language, [layer, language]."""
    return (masks.sum("neuron") / masks.sizes["neuron"]).transpose("layer", "language")
