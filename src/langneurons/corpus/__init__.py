"""Read and validate parallel corpora.

A corpus is N aligned rows x L languages: row i of every language says the same thing. Formats,
one module each:

- textdir: a directory with one UTF-8 `<code>.txt` per language, aligned by line. An `ids.txt`
  beside them, if present, gives the row ids (one per line). Which files of a folder are languages
  is one rule (`layout`), the same for the streamed layouts below: README, LICENSE, NOTICE,
  SOURCE, ids and hidden files are not, and two files of one language are refused.
- tsv:     a header row of language codes, then one tab-separated row per sentence (no quoting).
- jsonl:   one object per line, `{"<code>": "<text>", ...}`, the same keys on every line.
- tmx:     TMX 1.4 files, plain or inside .zip archives, joined across files on `tuid`.
- parquet / arrow: a Parquet file, or a folder written by `datasets`' save_to_disk, with one
  string column per language (`tables`).

These are read whole (test sets). Per-language files or folders (`<code>.jsonl`, `<code>.parquet`,
`<code>/*.parquet`, `<code>/` from save_to_disk, or `<code>.txt` with --unaligned) are streamed in
bounded memory, aligned or monolingual (`stream`, `sources`); `budget` cuts any corpus to a
per-language token budget. `open_corpus` picks the reader.

`parallel` holds the in-memory corpus, `load_corpus` and `open_corpus`; `checks` the validation
every format shares.
Shard planning is `langneurons.shards` (the store records the plan without reading corpora).

Every sentence has its surrounding whitespace stripped, so one corpus reads identically from any
format (and so from any `fingerprint()`), and must not be empty. Only the selected languages are
read and checked. Lines are split on "\\n" alone: `str.splitlines` also splits on U+2028, U+0085
and form feeds, which occur inside real sentences and would silently shift the alignment. Text
files in UTF-16 or UTF-32 are refused (`checks.check_utf8_head`), with or without a BOM.

Every bad input raises `CorpusError` on one line (the CLI prints it as is) with the file, the
1-based line (or TMX tuid) and what to do about it.
"""

from langneurons.corpus.checks import CorpusError, check_code
from collections.abc import Iterator
from typing import Protocol

from langneurons.corpus.budget import Budgeted
from langneurons.corpus.parallel import ParallelCorpus, demo_corpus_path, load_corpus, open_corpus, split_paths
from langneurons.corpus.stream import StreamCorpus



class Corpus(Protocol):
    """What a run reads of any corpus (ParallelCorpus, StreamCorpus, Budgeted)."""

    languages: tuple[str, ...]
    source: str
    aligned: bool

    def n_rows(self, language: str) -> int: ...

    def iter_rows(self, language: str, start: int = 0, stop: int | None = None) -> Iterator[str]: ...

    def rows(self, language: str, start: int, stop: int) -> list[str]: ...

    def fingerprint(self) -> str: ...


__all__ = ["Corpus", "Budgeted", "CorpusError", "ParallelCorpus", "StreamCorpus", "check_code", "demo_corpus_path",
           "load_corpus", "open_corpus", "split_paths"]
