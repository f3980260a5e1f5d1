"""The options of `score`, `ablate` and the profiled model they (and `steer`) load again, declared once like `profile`'s (`options.opt`): the CLI is
generated from these sections, and the library functions take them, so each default lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

from langneurons.options import check_section, opt


@dataclass(frozen=True, kw_only=True, slots=True)
class LapeConfig:
    """LAPE's selection (Tang et al. 2024), shared by `score`, `ablate` and bootstrap."""

    top_rate: float = opt(0.01, "LAPE: share of all neurons kept as language-specific (lowest entropy first).")
    filter_rate: float = opt(0.95, """LAPE: quantile of all firing probabilities a neuron must exceed in some
        language to be a candidate.""")
    activation_bar_ratio: float = opt(0.95, """LAPE: quantile of all firing probabilities a language's must
        exceed for a selected neuron to be assigned to it.""")

    def __post_init__(self) -> None:
        check_section(self)
        for name in ("top_rate", "filter_rate", "activation_bar_ratio"):
            v = getattr(self, name)
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {v}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoreConfig:
    """`langneurons score STORE`: what to compute and write beyond the per-layer tables."""

    plot: bool = opt(False, "Write PNG/SVG plots into --out.")
    export: bool = opt(False, "Write neuron tables (CSV/parquet) and masks into --out.")
    out: str | None = opt(None, "Folder for plots and exports (default: <results>.report, beside the store).",
                          path="one")
    threshold: float | None = opt(None, """Read firing probabilities at this histogram edge instead of the
        profiled threshold.""")
    bootstrap: int = opt(0, "Bootstrap resamples over shards for 95% intervals (0: off).", min=0)
    pivot: str | None = opt(None, """Mixture-of-experts stores: the language routing divergence is measured
        from (default: en if profiled, else the first language).""")

    def __post_init__(self) -> None:
        check_section(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class ProfiledModel:
    """The profiled model, loaded again by `ablate` and `steer`: the store names it, and its weights
    and tokenizer must be the ones profiled (`scoring.profiled.check_model`)."""

    model: str | None = opt(None, "The profiled model's folder, if it moved (default: the path stored in "
                                  "the results).", path="one")
    allow_model_mismatch: bool = opt(False, "Go on even if the model's weights or tokenizer differ from the "
                                            "profiled ones.")
    trust_remote_code: bool = opt(False, "Allow the model's own code from the hub, as for profile (off unless "
                                         "you ask for it).")
    device: str = opt("auto", "Torch device: auto (cuda if available), cpu, cuda, cuda:1, ...")

    def __post_init__(self) -> None:
        check_section(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class AblateConfig:
    """`langneurons ablate STORE`: zero each language's LAPE neurons, measure held-out perplexity."""

    heldout: str | None = opt(None, "Corpus of held-out sentences (default: rows 500-599 of the bundled "
                                    "demo corpus).", path="one")
    max_sentences: int = opt(100, "Held-out sentences per language.", min=1)
    out: str | None = opt(None, "Write the perplexity-ratio matrix as CSV here.", path="one")

    def __post_init__(self) -> None:
        check_section(self)
