"""Activation flatness: how evenly a neuron's activity is spread over languages.

Per neuron, the entropy across languages of a non-negative profile, divided by log(#languages):
1.0 = the same in every language (language-agnostic), 0.0 = active in one language only.
- `probability`: the firing probability p = n_fired / n_tokens (what LAPE ranks);
- `magnitude`: |mean activation| = |act_sum / n_tokens|. The stored sums cannot separate positive
  and negative parts, so the absolute value of the mean is used (for SiLU/GELU gates the mean is
  dominated by the positive tail; near-zero means read as "inactive", as intended).
A neuron whose profile is zero everywhere has no defined flatness: NaN, skipped by the curves.
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def normalised_entropy(profile: xr.DataArray, dim: str = "language") -> xr.DataArray:
    """Entropy over `dim` of profile / sum(profile), divided by log(size of dim); NaN if all zero."""
    n = profile.sizes[dim]
    if n < 2:
        raise ValueError(f"flatness needs at least 2 languages, got {n}")
    if (profile < 0).any():
        raise ValueError("flatness needs a non-negative profile (probabilities or |mean|)")
    total = profile.sum(dim)
    q = profile / total.where(total > 0)
    h = -(q * np.log(q.where(q > 0))).sum(dim, skipna=True)
    return (h / np.log(n)).where(total > 0)


def flatness(ds: xr.Dataset) -> xr.Dataset:
    """Flatness per [layer, neuron] of firing probability and of |mean activation|."""
    n = ds["n_tokens"]
    return xr.Dataset({
        "probability": normalised_entropy(ds["n_fired"] / n),
        "magnitude": normalised_entropy(abs(ds["act_sum"] / n)),
    })


def flatness_curves(flat: xr.Dataset) -> xr.Dataset:
    """Mean flatness per layer (NaN neurons skipped)."""
    return flat.mean("neuron", skipna=True)
