"""LAPE: language activation probability entropy (Tang et al. 2024, "Language-Specific Neurons:
The Key to Multilingual Capabilities in Large Language Models", ACL 2024).

With p[l, f, n] = n_fired / n_tokens, the probability that neuron f of layer l fires (activation
> threshold) on a token of language n:
1. normalise over languages: q = p / sum_n p (0 where a neuron never fires);
2. entropy H[l, f] = -sum_n q log q;
3. filter: a neuron is a candidate only if some language has p above the `filter_rate` quantile
   of all p values (the kth-smallest value, k = round(filter_rate * #values));
4. select the round(top_rate * L * F) candidates with the lowest entropy;
5. assign a selected neuron to every language whose p exceeds the `activation_bar_ratio`
   quantile of all p (same kth-smallest rule). A selected neuron may belong to several languages
   or, rarely, to none.
This follows the authors' released identify.py (quantiles as kth values, ties in the entropy ranking
broken here by layer-major neuron order so results are deterministic).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from langneurons.scoring.options import LapeConfig  # noqa: F401  (declared with the commands' options)


@dataclass(frozen=True, slots=True)
class LapeResult:
    masks: xr.DataArray        # [language, layer, neuron] bool: neuron is specific to language
    selected: xr.DataArray     # [layer, neuron] bool: passed filter and entropy ranking
    entropy: xr.DataArray      # [layer, neuron] float, inf where filtered out
    filter_value: float        # the filter_rate quantile of p
    activation_bar: float      # the activation_bar_ratio quantile of p

    def per_layer(self) -> xr.DataArray:
        """Counts of language-specific neurons, [layer, language]."""
        return self.masks.sum("neuron").transpose("layer", "language")


def firing_probability(ds: xr.Dataset) -> xr.DataArray:
    """p = n_fired / n_tokens, [language, layer, neuron]."""
    n = ds["n_tokens"]
    if (n.values <= 0).any():
        empty = [str(x) for x in ds["language"].values[n.values <= 0]]
        raise ValueError(f"languages {empty} have no tokens: profile them before scoring")
    return ds["n_fired"] / n


def _kth(values: np.ndarray, rate: float) -> float:
    """torch.kthvalue(flat, round(len * rate)): the kth smallest, 1-based, as the authors use."""
    k = min(max(int(round(values.size * rate)), 1), values.size)
    return float(np.partition(values, k - 1)[k - 1])


def lape(p: xr.DataArray, config: LapeConfig = LapeConfig()) -> LapeResult:
    """LAPE on firing probabilities p [language, layer, neuron]."""
    p = p.transpose("language", "layer", "neuron")
    P = np.moveaxis(np.asarray(p.values, dtype=np.float64), 0, -1)   # [L, F, N]
    L, F, N = P.shape
    tot = P.sum(-1, keepdims=True)
    q = np.divide(P, tot, out=np.zeros_like(P), where=tot > 0)
    logq = np.log(q, out=np.zeros_like(q), where=q > 0)
    H = -(q * logq).sum(-1)                                          # [L, F]

    flat = P.reshape(-1)
    filter_value = _kth(flat, config.filter_rate)
    H = np.where((P > filter_value).any(-1), H, np.inf)
    n_keep = int(round(L * F * config.top_rate))
    order = np.argsort(H.reshape(-1), kind="stable")[:n_keep]
    order = order[np.isfinite(H.reshape(-1)[order])]                 # never select filtered neurons
    selected = np.zeros(L * F, dtype=bool)
    selected[order] = True
    selected = selected.reshape(L, F)

    bar = _kth(flat, config.activation_bar_ratio)
    masks = (P > bar) & selected[..., None]                          # [L, F, N]
    coords = {"layer": p["layer"].values, "neuron": p["neuron"].values}
    return LapeResult(
        masks=xr.DataArray(np.moveaxis(masks, -1, 0), dims=("language", "layer", "neuron"),
                           coords={"language": p["language"].values, **coords}, name="lape_mask"),
        selected=xr.DataArray(selected, dims=("layer", "neuron"), coords=coords, name="lape_selected"),
        entropy=xr.DataArray(H, dims=("layer", "neuron"), coords=coords, name="lape_entropy"),
        filter_value=filter_value,
        activation_bar=bar,
    )
