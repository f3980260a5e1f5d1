"""Plots draw precomputed results; they never compute statistics."""

from __future__ import annotations

from pathlib import Path

import xarray as xr


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_layer_curves(counts: xr.DataArray, path: Path, *, title: str = "") -> list[Path]:
    """One line per language: language-specific neurons per layer. Writes PNG and SVG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for lang in counts["language"].values:
        ax.plot(counts["layer"].values, counts.sel(language=lang).values, marker="o", ms=3, label=str(lang))
    ax.set_xlabel("layer")
    ax.set_ylabel("language-specific neurons")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=8)
    fig.tight_layout()
    out = [Path(path), Path(path).with_suffix(".svg")]
    for p in out:
        fig.savefig(p)
    plt.close(fig)
    return out
