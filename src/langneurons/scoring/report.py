"""`score_report`: what `langneurons score` prints and writes. Computes, then hands results to plots."""

from __future__ import annotations

import json
from pathlib import Path

import xarray as xr

from langneurons.scoring.flatness import flatness, flatness_curves
from langneurons.scoring.lape import LapeConfig, LapeResult, firing_probability, lape
from langneurons.scoring.overlap import overlap, specificity_curves
from langneurons.scoring.thresholds import firing_probability_at


REPORT_MARKER = "langneurons-report.json"


def prepare_report_dir(d: Path) -> None:
    """Plots and exports go into a new or empty folder, or into an earlier report (it holds
    REPORT_MARKER): never among other files, which they could overwrite."""
    if d.exists() and not d.is_dir():
        raise ValueError(f"--out {d} is a file: give a folder for the report's plots and exports")
    if d.is_dir() and any(d.iterdir()) and not (d / REPORT_MARKER).is_file():
        raise ValueError(f"--out {d} is a folder of other files; `score` writes plots and exports only into "
                         "a new folder, an empty one, or an earlier report: choose another --out")
    d.mkdir(parents=True, exist_ok=True)
    (d / REPORT_MARKER).write_text(json.dumps({"written_by": "langneurons score"}) + "\n")


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


def _matrix(da: xr.DataArray, fmt: str) -> str:
    langs = [str(x) for x in da["language"].values]
    w = max(6, *(len(x) + 1 for x in langs))
    lines = [" " * 6 + "".join(f"{x:>{w}}" for x in langs)]
    for i, a in enumerate(langs):
        lines.append(f"{a:6s}" + "".join(f"{v:>{w}{fmt}}" for v in da.values[i]))
    return "\n".join(lines)


def score_report(ds: xr.Dataset, *, out_dir: str | Path | None = None, plot: bool = False,
                 export: bool = False, threshold: float | None = None, bootstrap: int = 0,
                 results_path: str | None = None, **lape_kwargs) -> str:
    """LAPE, flatness and overlap on a results Dataset, as text; with plot/export, files in out_dir.

    threshold: read firing probabilities at this histogram edge instead of the profiled threshold.
    bootstrap: resamples over shard partials (needs results_path) for per-layer 95% intervals.
    """
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
    summary = (f"tokens: {toks}\n{int(res.selected.sum())} neurons selected; language assignments: "
               f"{int(counts.sum())} (first third of layers {share(slice(0, third))}, middle "
               f"{share(slice(third, L - third))}, last third {share(slice(L - third, L))})")
    flat = flatness_curves(flatness(ds))
    fl = ("flatness of firing probability across languages (1 = agnostic), mean by layer thirds: "
          + ", ".join(f"{float(flat['probability'].isel(layer=sl).mean()):.3f}"
                      for sl in (slice(0, third), slice(third, L - third), slice(L - third, L))))
    ov = overlap(res.masks)
    out = [head, per_layer_table(res), summary, fl,
           "overlap of language-specific sets (IoU, all layers):\n" + _matrix(ov["iou_all"], ".2f")]
    if bootstrap:
        from langneurons.scoring.bootstrap import bootstrap as run_bootstrap
        from langneurons.store.reader import open_partials

        if results_path is None:
            raise ValueError("bootstrap needs the results store path (its shard partials)")
        b = run_bootstrap(open_partials(results_path), [str(x) for x in ds["language"].values],
                          n_resamples=bootstrap, config=cfg)
        lo, hi = b.per_layer_low.sum("language"), b.per_layer_high.sum("language")
        stable = float((b.stability.where(res.masks) >= 0.9).sum()) / max(int(res.masks.sum()), 1)
        out.append(f"bootstrap over shards ({bootstrap} resamples): per-layer 95% intervals (per-language bounds, summed) "
                   "assignments: " + ", ".join(f"{int(layer)}:[{a:.0f},{z:.0f}]" for layer, a, z in
                                               zip(lo["layer"].values, lo.values, hi.values))
                   + f"\n{100 * stable:.0f}% of assignments are re-selected in >= 90% of resamples")
    d = Path(out_dir) if out_dir else Path("langneurons-report")
    written = []
    if plot or export:
        prepare_report_dir(d)
    if plot:
        from langneurons.scoring import plots

        written += plots.per_layer_curves(counts, d / "lape_per_layer.png", title=head.split(" (")[0])
        written += plots.heatmap(specificity_curves(res.masks), d / "lape_heatmap.png",
                                 title="language-specific neurons, share of each layer")
        written += plots.overlap_matrix(ov["iou_all"], d / "overlap_iou.png", title="overlap (IoU), all layers")
        written += plots.flatness_curves(flat, d / "flatness.png", title="flatness across languages")
    if export:
        from langneurons.scoring.export import write_exports

        written += write_exports(p, res, d)
    if written:
        out.append("wrote: " + ", ".join(str(w) for w in written))
    return "\n\n".join(out)
