"""langneurons: a distributed, exactly-once activation profiler for language-specific neurons."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("langneurons")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from langneurons.store.reader import open_partials, open_results  # noqa: E402

__all__ = ["__version__", "open_partials", "open_results"]
