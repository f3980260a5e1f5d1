"""Corpora read as streams: per-language files or folders of any size, in bounded memory.

A directory holds one entry per language: `<code>.txt`, `<code>.jsonl`, `<code>.parquet`, or a
folder `<code>/` of .parquet files (FLORES+ style, e.g. `hin_Deva/`) or written by
`save_to_disk`; which entries are languages is `layout`'s rule, the one textdir reads by too.
Codes are kept as given (`zho_Hans`). One pass over each language (`scan`) counts its rows,
fingerprints them and keeps a checkpoint every CHECKPOINT_ROWS rows; a shard's rows are then read
from the nearest checkpoint (`rows`). Nothing holds more than one Parquet row group or Arrow
batch, and the checkpoints, whatever the corpus size.

Monolingual (`unaligned=True`): each language has its own rows; empty rows are skipped (their
number is logged). Aligned: every language must have the same number of rows, and an empty row
is an error naming the file and line, as for the in-memory formats.

Token budgets are a view over any corpus (`budget.Budgeted`).
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from langneurons.corpus.checks import (CorpusError, aligned_fingerprint, choose, hash_row, monolingual_fingerprint,
                                       requested_codes, row_hasher)
from langneurons.corpus.layout import language_entries
from langneurons.corpus.sources import LanguageSource, source_for

log = logging.getLogger(__name__)

CHECKPOINT_ROWS = 4096


def is_language_dir(root: pathlib.Path) -> bool:
    """A directory of per-language entries that needs streaming (anything beyond <code>.txt files)."""
    if not root.is_dir():
        return False
    entries = language_entries(root)
    return bool(entries) and not all(p.is_file() and p.suffix.lower() == ".txt" for p in entries.values())


@dataclass
class _Index:
    n_rows: int = 0
    n_skipped: int = 0
    digest: str = ""
    checkpoints: list[tuple[int, object]] = field(default_factory=list)   # (row, resume position)


class StreamCorpus:
    """Per-language sources read lazily (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, *, unaligned: bool, languages: Sequence[str] | None = None,
                 max_sentences: int | None = None, field: str = "text"):
        self.root = pathlib.Path(root)
        self.source = str(self.root)
        self.unaligned = unaligned
        self.aligned = not unaligned
        entries = language_entries(self.root) if self.root.is_dir() else {}
        if not entries:
            raise CorpusError(f"{self.root}: no per-language files or folders (<code>.txt, <code>.jsonl, "
                              "<code>.parquet, <code>/*.parquet, <code>/ from save_to_disk)")
        self.languages = choose(tuple(entries), requested_codes(languages), str(self.root))
        self.sources = {c: source_for(c, entries[c], field) for c in self.languages}
        self.max_sentences = max_sentences
        self._cursors: dict[str, tuple[int, Iterator[str]]] = {}  # language -> (next row, open reader)
        self.index: dict[str, _Index] = {c: self._scan(self.sources[c]) for c in self.languages}
        if self.aligned:
            counts = {c: self.index[c].n_rows for c in self.languages}
            if len(set(counts.values())) > 1:
                raise CorpusError(f"{self.root}: languages have different row counts {counts}; aligned input "
                                  "needs one row per language per sentence. Profile monolingual corpora "
                                  "with --unaligned")

    def __repr__(self) -> str:
        rows = {c: i.n_rows for c, i in self.index.items()}
        return f"StreamCorpus({self.source!r}, rows={rows}, unaligned={self.unaligned})"

    # --- reading -----------------------------------------------------------------------------
    def _empty_row(self, where: str) -> None:
        """An empty row is skipped in monolingual input and refused in aligned input."""
        if self.aligned:
            raise CorpusError(f"{where}: empty row; aligned input needs the sentence of every language "
                              "in every row: fill it in or delete that row everywhere (or use --unaligned)")

    def _kept(self, src: LanguageSource, start: object = None) -> Iterator[tuple[object, str, str]]:
        """(position or None, text, where) of the rows this corpus keeps, from `start`."""
        for pos, text, where in src.records(start):
            if text is None:
                self._empty_row(where)
                continue
            yield pos, text, where

    def _scan(self, src: LanguageSource) -> _Index:
        ix = _Index()
        h = row_hasher(src.language)
        n_records = 0
        for pos, text, where in src.records():
            n_records += 1
            if text is None:
                self._empty_row(where)
                continue
            if self.max_sentences is not None and ix.n_rows >= self.max_sentences:
                break
            if pos is not None and (not ix.checkpoints or ix.n_rows - ix.checkpoints[-1][0] >= CHECKPOINT_ROWS):
                ix.checkpoints.append((ix.n_rows, pos))
            hash_row(h, text)
            ix.n_rows += 1
        ix.n_skipped = n_records - ix.n_rows if self.max_sentences is None else 0
        if ix.n_rows == 0:
            raise CorpusError(f"{src.where}: no rows for language {src.language!r}; give at least one")
        if ix.n_skipped:
            log.info("%s: %d empty rows skipped", src.where, ix.n_skipped)
        ix.digest = h.hexdigest()
        return ix

    def n_rows(self, language: str) -> int:
        return self.index[language].n_rows

    def iter_rows(self, language: str, start: int = 0, stop: int | None = None) -> Iterator[str]:
        """Rows [start, stop) of `language`, streamed from the nearest checkpoint."""
        ix = self.index[language]
        stop = ix.n_rows if stop is None else min(stop, ix.n_rows)
        row, pos = 0, None
        for r, p in ix.checkpoints:
            if r <= start:
                row, pos = r, p
        for _pos, text, _where in self._kept(self.sources[language], pos):
            if row >= stop:
                return
            if row >= start:
                yield text
            row += 1

    def rows(self, language: str, start: int, stop: int) -> list[str]:
        """Rows [start, stop) as a list. Shards are mostly read in plan order, so the reader of
        `language` stays open where the last call ended: the next shard continues it instead of
        seeking to a checkpoint and skipping up to CHECKPOINT_ROWS rows (a retried or resumed
        shard out of order seeks)."""
        stop = min(stop, self.index[language].n_rows)
        cur = self._cursors.get(language)
        if cur is None or cur[0] != start:
            cur = (start, self.iter_rows(language, start))
        out = [t for _, t in zip(range(stop - start), cur[1])]
        self._cursors[language] = (start + len(out), cur[1])
        return out

    def fingerprint(self) -> str:
        """Aligned: the in-memory corpus's fingerprint (one more pass), so the same text read from
        per-language files or a table is the same corpus. Monolingual: from the scan's digests."""
        if self.aligned:
            return aligned_fingerprint(self.languages, self.n_rows(self.languages[0]), self.iter_rows)
        return monolingual_fingerprint([(c, self.index[c].n_rows, self.index[c].digest) for c in self.languages])
