"""`score_report`: what `langneurons score` prints and writes. Computes, then hands results to plots."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from langneurons import outdir
from langneurons.scoring.flatness import flatness, flatness_curves
from langneurons.scoring.lape import LapeConfig, LapeResult, firing_probability, lape
from langneurons.scoring.options import ScoreConfig
from langneurons.scoring.overlap import overlap, specificity_curves
from langneurons.scoring.thresholds import firing_probability_at


REPORT_MARKER = "langneurons-report.json"


def default_report_dir(results: str) -> str:
    """`score`'s report folder beside the store: <store>.report. Built from the store's absolute
    path, not the string given: `score .` inside x.zarr must give x.zarr.report, not x.zarr/..report."""
    from langneurons.store.location import resolve

    loc = resolve(results)
    return (loc.path if loc.local else loc.url.rstrip("/")) + ".report"


def prepare_report_dir(d: Path) -> None:
    """Plots and exports go into a new or empty folder, or into an earlier report (it holds
    REPORT_MARKER): never among other files, which they could overwrite (`outdir`)."""
    outdir.check(d, REPORT_MARKER, "score")
    outdir.claim(d, REPORT_MARKER, "score")


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


def score_report(ds: xr.Dataset, options: ScoreConfig = ScoreConfig(), cfg: LapeConfig = LapeConfig(), *,
                 results_path: str | None = None) -> str:
    """LAPE, flatness and overlap on a results Dataset, as text; with plot/export, files in
    options.out. A mixture-of-experts store also gets its routing section (scoring/routing.py), and
    its neuron section covers the layers whose dense FFN was counted (none: the section says so).
    Bootstrap resamples the shard partials of the store at `results_path`."""
    from langneurons.scoring import routing

    out_dir, plot, export, threshold, bootstrap, pivot = (options.out, options.plot, options.export,
                                                          options.threshold, options.bootstrap, options.pivot)
    moe = ds.attrs.get("moe")
    if pivot is not None and not moe:
        raise ValueError("--pivot applies to mixture-of-experts stores (routing divergence); this store is "
                         "from a dense model")
    d = Path(out_dir) if out_dir else Path("langneurons-report")
    if plot or export:
        prepare_report_dir(d)
    dense = ds if not moe else ds.isel(layer=list(moe["dense_layers"]))
    out, written = [], []
    if dense.sizes["layer"] and dense.sizes["neuron"]:
        text, files = _neuron_section(dense, cfg, d, plot=plot, export=export, threshold=threshold,
                                      bootstrap=bootstrap, results_path=results_path)
        out.append(text)
        written += files
    else:
        out.append(f"no dense FFN neurons to score: every layer of this {ds.attrs.get('architecture')} model routes "
                   "its tokens to experts (see the routing section)")
    if moe:
        text, files = _routing_section(ds, pivot or routing.default_pivot(ds), d, plot=plot, export=export,
                                       bootstrap=bootstrap, results_path=results_path)
        out.append(text)
        written += files
    if written:
        out.append("wrote: " + ", ".join(str(w) for w in written))
    return "\n\n".join(out)


def _neuron_section(ds: xr.Dataset, cfg: LapeConfig, d: Path, *, plot: bool, export: bool,
                    threshold: float | None, bootstrap: int, results_path: str | None) -> tuple[str, list[Path]]:
    p = firing_probability(ds) if threshold is None else firing_probability_at(ds, threshold)
    res = lape(p, cfg)
    t = ds.attrs.get("threshold") if threshold is None else threshold
    what = "dense-FFN neurons" if ds.attrs.get("moe") else "neurons"
    head = (f"LAPE language-specific {what} per layer ({ds.attrs.get('model', '?')}, site "
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
        parts = open_partials(results_path)
        if ds.attrs.get("moe"):
            parts = parts.sel(layer=ds["layer"].values)
        b = run_bootstrap(parts, [str(x) for x in ds["language"].values], n_resamples=bootstrap, config=cfg)
        lo, hi = b.per_layer_low.sum("language"), b.per_layer_high.sum("language")
        stable = float((b.stability.where(res.masks) >= 0.9).sum()) / max(int(res.masks.sum()), 1)
        out.append(f"bootstrap over shards ({bootstrap} resamples): per-layer 95% intervals (per-language bounds, summed) "
                   "assignments: " + ", ".join(f"{int(layer)}:[{a:.0f},{z:.0f}]" for layer, a, z in
                                               zip(lo["layer"].values, lo.values, hi.values))
                   + f"\n{100 * stable:.0f}% of assignments are re-selected in >= 90% of resamples")
    written = []
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
    return "\n\n".join(out), written


def _routing_section(ds: xr.Dataset, pivot: str, d: Path, *, plot: bool, export: bool, bootstrap: int = 0,
                     results_path: str | None = None) -> tuple[str, list[Path]]:
    from langneurons.scoring import routing

    moe = ds.attrs["moe"]
    r = routing.routing_rate(ds)
    dist = routing.routing_distribution(ds)
    div = routing.routing_divergence(dist, pivot)
    ent = routing.routing_entropy(dist)
    res = routing.expert_lape(r)
    c = routing.EXPERT_LAPE
    head = (f"expert routing per layer ({moe['n_experts']} experts, top-{moe['top_k']}; router: {moe['router']}): "
            f"JS = Jensen-Shannon divergence of the language's routing from {pivot}'s (bits, 0..1), H = routing "
            f"entropy over experts / log2(E) (1 = uniform), # = language-specific experts by expert LAPE "
            f"(top_rate {c.top_rate}, filter {c.filter_rate}, bar {c.activation_bar_ratio} = rate > "
            f"{res.activation_bar:.4f})")
    langs = [str(x) for x in div["language"].values]
    mean_js = ", ".join(f"{lang} {float(div.sel(language=lang).mean()):.4f}" for lang in langs if lang != pivot)
    summary = (f"mean JS divergence from {pivot} over routing layers: {mean_js or '-'}; "
               f"{int(res.selected.sum())} of {res.selected.size} experts selected as language-specific")
    parts = [head, routing.expert_table(div, ent, res), summary]
    if bootstrap:
        from langneurons.store.reader import open_partials

        if results_path is None:
            raise ValueError("bootstrap needs the results store path (its shard partials)")
        lo, hi = routing.divergence_bootstrap(open_partials(results_path), ds, pivot, n_resamples=bootstrap)
        parts.append(f"bootstrap over shards ({bootstrap} resamples): JS divergence from {pivot}, 95% intervals "
                     "per routing layer:\n" + "\n".join(
                         f"  {lang}: " + ", ".join(f"{int(layer)}:[{a:.4f},{z:.4f}]" for layer, a, z in
                                                   zip(lo["layer"].values, lo.sel(language=lang).values,
                                                       hi.sel(language=lang).values))
                         for lang in langs if lang != pivot))
    written = []
    if plot:
        from langneurons.scoring import plots

        written += plots.routing_heatmap(dist, d / "routing_heatmap.png",
                                         title="share of each language's routing per expert")
        written += plots.per_layer_curves(div.drop_sel(language=pivot), d / "routing_divergence.png",
                                          title=f"routing divergence from {pivot}",
                                          ylabel="Jensen-Shannon divergence (bits)")
    if export:
        from langneurons.scoring.export import write_expert_exports

        written += write_expert_exports(r, res, div, ent, d)
    return "\n\n".join(parts), written
