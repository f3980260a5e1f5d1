"""Plots draw precomputed results; they never compute statistics."""

from __future__ import annotations

from pathlib import Path

import xarray as xr


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def per_layer_curves(counts: xr.DataArray, path: Path, *, title: str = "",
                     ylabel: str = "language-specific neurons") -> list[Path]:
    """One line per language: a per-layer value (by default language-specific neurons). Writes PNG and SVG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for lang in counts["language"].values:
        ax.plot(counts["layer"].values, counts.sel(language=lang).values, marker="o", ms=3, label=str(lang))
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> list[Path]:
    plt = _plt()
    out = [Path(path), Path(path).with_suffix(".svg")]
    fig.tight_layout()
    for p in out:
        fig.savefig(p)
    plt.close(fig)
    return out


def heatmap(share: xr.DataArray, path: Path, *, title: str = "") -> list[Path]:
    """Language x layer heatmap of the share of neurons specific to each language, in %."""
    plt = _plt()
    data = share.transpose("language", "layer")
    fig, ax = plt.subplots(figsize=(9, 0.4 * data.sizes["language"] + 1.6), dpi=120)
    im = ax.imshow(100 * data.values, aspect="auto", cmap="viridis")
    ax.set_yticks(range(data.sizes["language"]), [str(x) for x in data["language"].values])
    ax.set_xlabel("layer")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="% of the layer's neurons")
    return _save(fig, path)


def overlap_matrix(iou: xr.DataArray, path: Path, *, title: str = "") -> list[Path]:
    """IoU of the language-specific neuron sets (all layers)."""
    plt = _plt()
    langs = [str(x) for x in iou["language"].values]
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(langs), 0.8 + 0.6 * len(langs)), dpi=120)
    im = ax.imshow(iou.values, vmin=0, vmax=1, cmap="magma")
    ax.set_xticks(range(len(langs)), langs)
    ax.set_yticks(range(len(langs)), langs)
    for i in range(len(langs)):
        for j in range(len(langs)):
            v = iou.values[i, j]
            if v == v:
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < 0.5 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="IoU")
    return _save(fig, path)


def flatness_curves(curves: xr.Dataset, path: Path, *, title: str = "") -> list[Path]:
    """Mean normalised entropy across languages per layer (1 = language-agnostic)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    for name in curves.data_vars:
        ax.plot(curves["layer"].values, curves[name].values, marker="o", ms=3, label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("flatness (normalised entropy)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    return _save(fig, path)


def routing_heatmap(dist: xr.DataArray, path: Path, *, title: str = "") -> list[Path]:
    """Per routing layer, an expert x language heatmap of each language's routing distribution
    (share of its routing slots per expert, in %): one band of rows per layer, top to bottom."""
    plt = _plt()
    d = dist.transpose("layer", "language", "expert")
    L, N, E = d.shape
    image = 100 * d.values.reshape(L * N, E)
    fig, ax = plt.subplots(figsize=(min(5 + 0.12 * E, 30), min(2.5 + 0.16 * L * N, 60)), dpi=120)
    im = ax.imshow(image, aspect="auto", cmap="viridis", interpolation="nearest")
    langs = [str(x) for x in d["language"].values]
    if L * N <= 80:
        ax.set_yticks(range(L * N), [f"{int(layer)} {lang}" for layer in d["layer"].values for lang in langs],
                      fontsize=6)
    else:  # too many rows to name each: name the layers
        ax.set_yticks([i * N + (N - 1) / 2 for i in range(L)], [str(int(x)) for x in d["layer"].values], fontsize=6)
        ax.set_ylabel(f"layer (rows within a band: {', '.join(langs)})")
    for i in range(1, L):
        ax.axhline(i * N - 0.5, color="white", lw=0.6)
    ax.set_xlabel("expert")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="% of the language's routing")
    return _save(fig, path)
