"""Scoring: pure functions over a results Dataset (see store/schema.py); plots never compute."""

from langneurons.scoring.lape import LapeConfig, LapeResult, firing_probability, lape
from langneurons.scoring.report import per_layer_table, score_report
from langneurons.scoring.thresholds import firing_probability_at, n_above

__all__ = ["LapeConfig", "LapeResult", "firing_probability", "firing_probability_at", "lape",
           "n_above", "per_layer_table", "score_report"]
