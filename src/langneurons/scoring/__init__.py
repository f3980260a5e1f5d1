"""Scoring: pure functions over a results Dataset (see store/schema.py); plots never compute."""

from langneurons.scoring.bootstrap import BootstrapResult, bootstrap
from langneurons.scoring.flatness import flatness, flatness_curves, normalised_entropy
from langneurons.scoring.lape import LapeConfig, LapeResult, firing_probability, lape
from langneurons.scoring.overlap import overlap, specificity_curves
from langneurons.scoring.report import per_layer_table, score_report
from langneurons.scoring.thresholds import firing_probability_at, n_above

__all__ = ["BootstrapResult", "LapeConfig", "LapeResult", "bootstrap", "firing_probability",
           "firing_probability_at", "flatness", "flatness_curves", "lape", "n_above", "normalised_entropy",
           "overlap", "per_layer_table", "score_report", "specificity_curves"]
