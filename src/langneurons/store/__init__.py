"""The results store: schema (the contract), writer (exactly-once), reader (xarray)."""

from langneurons.store.reader import ResultsError, open_partials, open_results
from langneurons.store.schema import SCHEMA_VERSION
from langneurons.store.stats import Stats

__all__ = ["ResultsError", "SCHEMA_VERSION", "Stats", "open_partials", "open_results"]
