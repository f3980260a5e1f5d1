"""What `steer` prints and writes: per (source, target, condition, alpha) the target-language rate,
source retention and other-language rate with 95% bootstrap intervals over prompts, and fluency
(mean log-probability of the output under the unsteered model; share of degenerate outputs).

Files in --out, each written beside and renamed into place, so none is ever half-written:
generations.jsonl, interventions.parquet, summary.csv and steer.png.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from langneurons.steering.options import SteerConfig

RATES = ("target", "source", "other")


def check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("steer.png needs matplotlib: pip install 'langneurons[plot]', or pass --no-plot") from None


def rate_intervals(flags: np.ndarray, draws: np.ndarray) -> tuple[float, float, float]:
    """The share of True in `flags` and its 95% percentile bootstrap interval (`draws`: [B, n] indices)."""
    means = flags[draws].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(flags.mean()), float(lo), float(hi)


def summarize(gen: pd.DataFrame, cfg: SteerConfig, labels: dict[str, str]) -> pd.DataFrame:
    """summary.csv's rows (see the module docstring); the baseline is reported once per target."""
    n = int((gen["condition"] == "baseline").sum())
    draws = np.random.default_rng(cfg.seed).integers(0, n, size=(cfg.bootstrap, n))  # the same resamples in every row
    base = gen[gen["condition"] == "baseline"].sort_values("prompt_row")
    rows = []
    for target in cfg.target:
        groups = [("baseline", np.nan, base)]
        for alpha, g in gen[gen["target"] == target].groupby("alpha", dropna=False, sort=True):
            for cond in ("steered", "control"):
                groups.append((cond, alpha, g[g["condition"] == cond].sort_values("prompt_row")))
        for cond, alpha, g in groups:
            lang = g["language"].to_numpy()
            hit = {"target": lang == labels[target], "source": lang == labels[cfg.source]}
            hit["other"] = ~(hit["target"] | hit["source"])
            row = {"source": cfg.source, "target": target, "condition": cond, "alpha": alpha, "n": len(g)}
            for k in RATES:
                row[f"{k}_rate"], row[f"{k}_low"], row[f"{k}_high"] = rate_intervals(hit[k], draws)
            row["mean_logprob"] = float(np.nanmean(g["logprob"])) if g["logprob"].notna().any() else np.nan
            row["degenerate_rate"] = float(g["degenerate"].mean())
            rows.append(row)
    return pd.DataFrame(rows)


def table(summary: pd.DataFrame, cfg: SteerConfig, selection: str, lid_name: str, model: str) -> str:
    """The printed table: one block per target."""
    a = "" if cfg.mode == "replace" else " alpha"
    lines = [f"steering {model}: {len(summary) and int(summary['n'].iloc[0])} prompts in {cfg.source}, --mode {cfg.mode}, "
             f"neurons from {selection}; output language by {lid_name}; [95% bootstrap interval over prompts]"]
    for target, g in summary.groupby("target", sort=False):
        lines += ["", f"{cfg.source} -> {target}",
                  f"{'condition':10s}{a:>6s}  {'target rate':>19s}  {'source kept':>19s}  {'other':>19s}  "
                  f"{'logprob':>8s}  {'degenerate':>10s}"]
        for r in g.itertuples():
            al = "" if cfg.mode == "replace" else ("-" if np.isnan(r.alpha) else f"{r.alpha:g}")
            cells = [f"{getattr(r, k + '_rate'):.2f} [{getattr(r, k + '_low'):.2f}, {getattr(r, k + '_high'):.2f}]"
                     for k in RATES]
            lines.append(f"{r.condition:10s}{al:>6s}  " + "  ".join(f"{c:>19s}" for c in cells)
                         + f"  {r.mean_logprob:8.3f}  {r.degenerate_rate:10.2f}")
    return "\n".join(lines)


def temporary(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp")


def _replace(path: Path, write) -> None:
    tmp = temporary(path)
    write(tmp)
    os.replace(tmp, path)


def write(out: Path, gen: pd.DataFrame, interventions: pd.DataFrame, summary: pd.DataFrame, cfg: SteerConfig) -> None:
    def jsonl(p: Path) -> None:
        with open(p, "w", encoding="utf-8") as f:
            for rec in gen.to_dict("records"):
                rec = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in rec.items()}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    _replace(out / "generations.jsonl", jsonl)
    _replace(out / "interventions.parquet", lambda p: interventions.to_parquet(p, index=False))
    _replace(out / "summary.csv", lambda p: summary.to_csv(p, index=False))
    if cfg.plot:
        _replace(out / "steer.png", lambda p: plot(summary, cfg, p))


def plot(summary: pd.DataFrame, cfg: SteerConfig, path: Path) -> None:
    """Target rate with its interval: by target and condition (one alpha), or against alpha (a sweep)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(summary["target"]))
    sweep = cfg.mode != "replace" and len(cfg.alpha) > 1
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(targets) + 2) if not sweep else 6, 3.6))
    colors = {"baseline": "0.6", "steered": "tab:blue", "control": "tab:orange"}
    if sweep:
        for i, t in enumerate(targets):
            for cond, style in (("steered", "-"), ("control", "--")):
                g = summary[(summary["target"] == t) & (summary["condition"] == cond)].sort_values("alpha")
                ax.errorbar(g["alpha"], g["target_rate"], yerr=[g["target_rate"] - g["target_low"],
                                                                g["target_high"] - g["target_rate"]],
                            fmt="o" + style, color=f"C{i}", capsize=2, label=f"{t} {cond}")
            b = summary[(summary["target"] == t) & (summary["condition"] == "baseline")]
            ax.axhline(float(b["target_rate"].iloc[0]), color=f"C{i}", lw=0.8, ls=":")
        ax.set_xlabel(f"alpha (--mode {cfg.mode}); dotted: baseline")
    else:
        width = 0.26
        for j, cond in enumerate(("baseline", "steered", "control")):
            g = summary[summary["condition"] == cond].set_index("target").loc[targets]
            x = np.arange(len(targets)) + (j - 1) * width
            ax.bar(x, g["target_rate"], width, color=colors[cond], label=cond,
                   yerr=[g["target_rate"] - g["target_low"], g["target_high"] - g["target_rate"]], capsize=2)
        ax.set_xticks(np.arange(len(targets)), targets)
        ax.set_xlabel(f"target language (from {cfg.source}; --mode {cfg.mode})")
    ax.set_ylabel("outputs in the target language")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)
