"""`score_report`: what `langneurons score` prints and writes. Computes, then hands results to plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from langneurons.scoring.lape import LapeConfig, LapeResult, firing_probability, lape
from langneurons.scoring.thresholds import firing_probability_at


def per_layer_table(result: LapeResult) -> str:
    """Layers as rows, languages as columns: counts of language-specific neurons."""
    counts = result.per_layer()
    langs = [str(x) for x in counts["language"].values]
    w = max(6, *(len(x) + 1 for x in langs))
    lines = ["layer" + "".join(f"{x:>{w}}" for x in langs) + f"{'any':>{w}}"]
    any_lang = result.masks.any("language").sum("neuron").values
    for i, layer in enumerate(counts["layer"].values):
        row = counts.isel(layer=i).values
        lines.append(f"{int(layer):5d}" + "".join(f"{int(v):>{w}d}" for v in row) + f"{int(any_lang[i]):>{w}d}")
    tot = counts.sum("layer").values
    lines.append("total" + "".join(f"{int(v):>{w}d}" for v in tot) + f"{int(any_lang.sum()):>{w}d}")
    return "\n".join(lines)


def score_report(ds: xr.Dataset, *, out_dir: str | Path | None = None, plot: bool = False,
                 threshold: float | None = None, **lape_kwargs) -> str:
    """LAPE on a results Dataset: the per-layer table and a summary; with plot, PNG/SVG in out_dir."""
    cfg = LapeConfig(**lape_kwargs)
    p = firing_probability(ds) if threshold is None else firing_probability_at(ds, threshold)
    res = lape(p, cfg)
    t = ds.attrs.get("threshold") if threshold is None else threshold
    head = (f"LAPE language-specific neurons per layer ({ds.attrs.get('model', '?')}, site "
            f"{ds.attrs.get('site', '?')}, activation > {t}; top_rate {cfg.top_rate}, filter "
            f"{cfg.filter_rate}, activation bar {cfg.activation_bar_ratio} = p > {res.activation_bar:.4f})")
    toks = ", ".join(f"{lang} {int(n):,}" for lang, n in zip(ds["language"].values, ds["n_tokens"].values))
    counts = res.per_layer()
    L = counts.sizes["layer"]
    third = max(L // 3, 1)
    share = lambda sl: int(counts.isel(layer=sl).sum())  # noqa: E731
    total = int(counts.sum())
    summary = (f"tokens: {toks}\n{int(res.selected.sum())} neurons selected; language assignments: "
               f"{total} (first third of layers {share(slice(0, third))}, middle "
               f"{share(slice(third, L - third))}, last third {share(slice(L - third, L))})")
    out = [head, per_layer_table(res), summary]
    if plot:
        from langneurons.scoring import plots

        d = Path(out_dir) if out_dir else Path("langneurons-report")
        d.mkdir(parents=True, exist_ok=True)
        written = plots.per_layer_curves(counts, d / "lape_per_layer.png", title=head.split(" (")[0])
        out.append("plots: " + ", ".join(str(w) for w in written))
    return "\n\n".join(out)
