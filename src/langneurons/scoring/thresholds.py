"""Firing probabilities at any histogram edge, read from stored histograms (no re-run)."""

from __future__ import annotations

import numpy as np
import xarray as xr


def edges(ds: xr.Dataset) -> np.ndarray:
    """The finite histogram edges of a results Dataset."""
    return np.asarray(ds["bin_upper"].values[:-1], dtype=np.float64)


def n_above(ds: xr.Dataset, threshold: float) -> xr.DataArray:
    """#tokens with activation > threshold, [language, layer, neuron]; threshold must be an edge.

    Bins are right-closed, (lower, upper], so the tokens above edge e are exactly those in the
    bins whose lower bound is >= e.
    """
    e = edges(ds)
    hit = np.flatnonzero(np.isclose(e, threshold, rtol=0, atol=1e-12))
    if hit.size == 0:
        raise ValueError(f"threshold {threshold} is not a histogram edge; edges are "
                         f"{', '.join(f'{x:g}' for x in e)}. Re-profile with --bin-edges including it")
    return ds["act_hist"].isel(bin=slice(int(hit[0]) + 1, None)).sum("bin")


def firing_probability_at(ds: xr.Dataset, threshold: float) -> xr.DataArray:
    """P(activation > threshold) per [language, layer, neuron], from the histograms."""
    return n_above(ds, threshold) / ds["n_tokens"]
