"""Mixture-of-experts routing per language: which experts each language uses, and how far each
language's routing is from a pivot language's, layer by layer (the routing layers only).

With n_routed[n, l, e] (counted tokens of language n whose top-k at layer l includes expert e):
- routing rate        r[n, l, e] = n_routed / n_tokens: the probability that a token of language
                      n is routed to expert e (sums to top_k over the experts);
- routing distribution d[n, l, e] = r / top_k: language n's share of layer l's routing slots per
                      expert (sums to 1);
- expert LAPE: LAPE (scoring/lape.py) with experts in place of neurons and r in place of the
  firing probability: low entropy of r across languages = a language-specific expert. Experts are
  few (tens per layer, not thousands of neurons), so its defaults keep a larger share
  (EXPERT_LAPE: the lowest-entropy 5% of experts, filter and bar at the median of r);
- routing divergence from a pivot: the Jensen-Shannon divergence (base 2, in [0, 1]) between d of
  a language and d of the pivot, per layer (Bandarkar et al. measure routing divergence from
  English on parallel text this way);
- routing entropy: the entropy of d over the experts divided by log(E): 1 = uniform use of the
  experts, 0 = one expert takes every slot.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from langneurons.scoring.lape import LapeConfig, LapeResult, lape

#: Expert LAPE's defaults (see the module docstring).
EXPERT_LAPE = LapeConfig(top_rate=0.05, filter_rate=0.5, activation_bar_ratio=0.5)


def is_moe(ds: xr.Dataset) -> bool:
    return bool(ds.attrs.get("moe")) and "n_routed" in ds


def _routing_layers(ds: xr.Dataset) -> xr.Dataset:
    if not is_moe(ds):
        raise ValueError("this store has no routing statistics: it was profiled from a dense model")
    n = ds["n_tokens"]
    if (n.values <= 0).any():
        empty = [str(x) for x in ds["language"].values[n.values <= 0]]
        raise ValueError(f"languages {empty} have no tokens: profile them before scoring")
    return ds.isel(layer=list(ds.attrs["moe"]["moe_layers"]))


def routing_rate(ds: xr.Dataset) -> xr.DataArray:
    """r = n_routed / n_tokens, [language, layer, expert], routing layers only."""
    d = _routing_layers(ds)
    return (d["n_routed"] / d["n_tokens"]).rename("routing_rate")


def routing_distribution(ds: xr.Dataset) -> xr.DataArray:
    """d = r / top_k, [language, layer, expert]: each language's distribution over the experts."""
    return (routing_rate(ds) / ds.attrs["moe"]["top_k"]).rename("routing_distribution")


def expert_lape(r: xr.DataArray, config: LapeConfig = EXPERT_LAPE) -> LapeResult:
    """LAPE over experts: `lape` on the routing rates, experts standing in for neurons. The
    result's arrays have an `expert` dimension."""
    res = lape(r.rename(expert="neuron"), config)
    ren = lambda a: a.rename(neuron="expert")  # noqa: E731
    return LapeResult(masks=ren(res.masks), selected=ren(res.selected), entropy=ren(res.entropy),
                      filter_value=res.filter_value, activation_bar=res.activation_bar)


def _entropy(p: np.ndarray, axis: int) -> np.ndarray:
    logp = np.log2(p, out=np.zeros_like(p), where=p > 0)
    return -(p * logp).sum(axis)


def routing_divergence(d: xr.DataArray, pivot: str) -> xr.DataArray:
    """Jensen-Shannon divergence (bits, 0..1) of each language's routing distribution from the
    pivot's, [language, layer] (0 for the pivot itself)."""
    langs = [str(x) for x in d["language"].values]
    if pivot not in langs:
        raise ValueError(f"--pivot {pivot!r} is not a language of this store ({', '.join(langs)})")
    d = d.transpose("language", "layer", "expert")
    P = np.asarray(d.values, dtype=np.float64)
    Q = P[langs.index(pivot)][None]
    M = (P + Q) / 2
    js = _entropy(M, -1) - (_entropy(P, -1) + _entropy(np.broadcast_to(Q, P.shape).copy(), -1)) / 2
    return xr.DataArray(np.clip(js, 0.0, 1.0), dims=("language", "layer"),
                        coords={"language": d["language"].values, "layer": d["layer"].values},
                        name="routing_js_divergence", attrs={"pivot": pivot})


def divergence_bootstrap(partials: xr.Dataset, ds: xr.Dataset, pivot: str, *, n_resamples: int = 100,
                         ci: float = 0.95, seed: int = 0) -> tuple[xr.DataArray, xr.DataArray]:
    """95% (ci) intervals of the routing divergence from `pivot`, [language, layer] (low, high):
    each resample draws every language's shards with replacement (the pivot's too), sums their
    kept n_routed and n_tokens partials, and recomputes the Jensen-Shannon divergences; seeded.
    (JS between estimated distributions is biased upward when languages have few tokens: the
    interval shows the sampling spread around that, it does not correct it.)"""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if "n_routed" not in partials:
        raise ValueError("this store kept no n_routed partials (--keep-partials none): re-profile with "
                         "--keep-partials counts to bootstrap routing")
    langs = [str(x) for x in ds["language"].values]
    layers = list(ds.attrs["moe"]["moe_layers"])
    shard_lang = np.array([str(x) for x in partials["shard_language"].values])
    groups = [np.flatnonzero(shard_lang == lang) for lang in langs]
    routed = partials["n_routed"].sel(layer=layers).values            # [S, L', E]
    tok = partials["n_tokens"].values                                 # [S]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        draw = [rng.choice(g, size=g.size, replace=True) for g in groups]
        r = np.stack([routed[d].sum(0) for d in draw]) / np.array([tok[d].sum() for d in draw])[:, None, None]
        dist = xr.DataArray(r / ds.attrs["moe"]["top_k"], dims=("language", "layer", "expert"),
                            coords={"language": langs, "layer": layers})
        out.append(routing_divergence(dist, pivot).values)
    lo, hi = np.quantile(np.stack(out), [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=0)
    da = lambda a: xr.DataArray(a, dims=("language", "layer"), coords={"language": langs, "layer": layers})  # noqa: E731
    return da(lo), da(hi)


def routing_entropy(d: xr.DataArray) -> xr.DataArray:
    """Entropy of each language's routing distribution over the experts / log2(E), [language, layer]."""
    d = d.transpose("language", "layer", "expert")
    E = d.sizes["expert"]
    h = _entropy(np.asarray(d.values, dtype=np.float64), -1) / np.log2(E)
    return xr.DataArray(h, dims=("language", "layer"),
                        coords={"language": d["language"].values, "layer": d["layer"].values},
                        name="routing_entropy")


def default_pivot(ds: xr.Dataset) -> str:
    """English when profiled (the usual pivot), else the first language."""
    langs = [str(x) for x in ds["language"].values]
    return next((x for x in langs if x.lower() in ("en", "eng", "eng_latn", "en-us", "en-gb")), langs[0])


def expert_table(div: xr.DataArray, ent: xr.DataArray, res: LapeResult) -> str:
    """Routing layers as rows; per language: JS divergence from the pivot, routing entropy, and the
    language-specific experts expert LAPE assigns to it."""
    langs = [str(x) for x in div["language"].values]
    w = max(7, *(len(x) + 2 for x in langs))
    counts = res.masks.sum("expert").transpose("layer", "language").values
    head = "layer" + "".join(f"{'JS ' + x:>{w + 3}}" for x in langs) + "  |" + "".join(
        f"{'H ' + x:>{w + 2}}" for x in langs) + "  |" + "".join(f"{'#' + x:>{w}}" for x in langs)
    lines = [head]
    for i, layer in enumerate(div["layer"].values):
        lines.append(f"{int(layer):5d}" + "".join(f"{v:>{w + 3}.4f}" for v in div.values[:, i]) + "  |"
                     + "".join(f"{v:>{w + 2}.3f}" for v in ent.values[:, i]) + "  |"
                     + "".join(f"{int(v):>{w}d}" for v in counts[i]))
    return "\n".join(lines)


def expert_export_table(r: xr.DataArray, res: LapeResult):
    """One row per (layer, expert, language): routing rate, expert LAPE entropy, selected, assigned."""
    import pandas as pd

    r = r.transpose("language", "layer", "expert")
    L, E = r.sizes["layer"], r.sizes["expert"]
    masks = res.masks.transpose("language", "layer", "expert").values
    rows = []
    for li, lang in enumerate(r["language"].values):
        rows.append(pd.DataFrame({
            "language": str(lang),
            "layer": np.repeat(r["layer"].values, E),
            "expert": np.tile(r["expert"].values, L),
            "routing_rate": r.values[li].reshape(-1),
            "entropy": res.entropy.values.reshape(-1),
            "selected": res.selected.values.reshape(-1),
            "specific": masks[li].reshape(-1),
        }))
    return pd.concat(rows, ignore_index=True)
