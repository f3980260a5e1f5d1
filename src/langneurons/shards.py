"""Shards: the unit of scheduling, retry, resume and bootstrap. Planned from the corpus's row (and
token) counts alone, so the store (which records the plan) needs nothing from the corpus readers."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Shard:
    index: int
    """Position in the plan, 0..n-1."""
    language: str
    start: int
    """Rows [start, stop) of the corpus."""
    stop: int
    digest: str | None = None
    """`rows_digest` of its rows when the run was planned (`with_digests`); None before."""

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"Shard {self.index}: need 0 <= start < stop, got start={self.start} "
                             f"stop={self.stop}")

    @property
    def id(self) -> str:
        return f"{self.language}:{self.start}-{self.stop}"


class Sized(Protocol):
    """What planning reads of a corpus: its languages and each one's row count (and, when they
    were counted, per-row token counts: `token_counts(language)`)."""

    languages: Sequence[str]

    def n_rows(self, language: str) -> int: ...


class CorpusChanged(ValueError):
    """A shard's rows read now differ from the rows it was planned with."""


def rows_digest(rows: Iterable[str]) -> str:
    """sha256 over a shard's rows, each length-prefixed (no two row lists hash the same bytes)."""
    h = hashlib.sha256(b"langneurons-shard-v1\0")
    for r in rows:
        b = r.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def with_digests(corpus, shards: Sequence[Shard]) -> list[Shard]:
    """The plan with each shard's `rows_digest`: one pass over the corpus in plan order (a streamed
    corpus keeps its reader open from one shard to the next). The store records them, rows read
    later are checked against them (`shard_rows`), and so is every commit: a corpus file edited
    while a run reads it is an error, never counts of text the store does not describe."""
    return [dataclasses.replace(sh, digest=rows_digest(corpus.rows(sh.language, sh.start, sh.stop)))
            for sh in shards]


def shard_rows(corpus, shard: Shard) -> list[str]:
    """Rows [start, stop) of the shard's language, refused if they are not the rows it was planned with."""
    rows = corpus.rows(shard.language, shard.start, shard.stop)
    if shard.digest is not None and rows_digest(rows) != shard.digest:
        raise CorpusChanged(
            f"corpus {getattr(corpus, 'source', '?')}: language {shard.language}, rows {shard.start}-{shard.stop} "
            "differ from the rows read when this run was planned: a corpus file changed while the run read it. "
            "Restore it and run the same command with --resume (committed shards are kept), or profile the new "
            "text into a new --out")
    return rows


CHUNK = 1 << 20  # token counts are read this many rows at a time (they may be memory-mapped)


def plan_shards(corpus: Sized, shard_size: int | None = None, *, shard_tokens: int | None = None,
                min_shards: int = 1, max_tokens: int | None = None) -> list[Shard]:
    """Per language, in corpus order, consecutive row ranges covering every row once.

    By rows (`shard_size`): `ceil(rows / shard_size)` shards; each holds shard_size rows (the last
    fewer), or, when the corpus has per-row token counts, the same number of shards holds about
    equal numbers of counted tokens instead, so workers get even work (`_token_bounds`).
    By tokens (`shard_tokens`, needs the counts): `max(ceil(tokens / shard_tokens), min_shards)`
    shards of about equal counted tokens (never more shards than rows).
    A pure function of the row and token counts, so a resumed run plans the same shards and their
    indices name the same work. With token counts and `max_tokens`, a shard that would hold more
    counted tokens than that is refused here, before anything runs.
    """
    for name, v in (("shard_size", shard_size), ("shard_tokens", shard_tokens), ("min_shards", min_shards)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if (shard_size is None) == (shard_tokens is None):
        raise ValueError("plan shards either by rows (shard_size) or by tokens (shard_tokens), not both or neither")
    counts_of = getattr(corpus, "token_counts", None)
    if shard_tokens is not None and counts_of is None:
        raise ValueError("planning shards by tokens needs the corpus's per-row token counts "
                         "(corpus.Budgeted); plan by rows (shard_size) instead")
    shards: list[Shard] = []
    for lang in corpus.languages:
        n = corpus.n_rows(lang)
        if shard_tokens is not None:
            counts = counts_of(lang)
            total = int(np.sum(counts, dtype=np.int64))
            bounds = _token_bounds(counts, min(n, max(-(-total // shard_tokens), min_shards)))
        elif counts_of is not None:
            bounds = _token_bounds(counts_of(lang), -(-n // shard_size))
        else:
            bounds = list(range(0, n, shard_size)) + [n]
        if max_tokens is not None and counts_of is not None:
            _check_sizes(lang, counts_of(lang), bounds, max_tokens)
        for start, stop in zip(bounds, bounds[1:]):
            shards.append(Shard(index=len(shards), language=lang, start=start, stop=stop))
    return shards


def _check_sizes(language: str, counts, bounds: list[int], max_tokens: int) -> None:
    """Refuse a shard holding more than max_tokens counted tokens (reads one shard at a time)."""
    for start, stop in zip(bounds, bounds[1:]):
        size = int(np.sum(counts[start:stop], dtype=np.int64))
        if size > max_tokens:
            raise ValueError(f"{language}: a shard of rows {start}-{stop} would hold {size:,} counted tokens, more "
                             f"than a shard may hold ({max_tokens:,}): plan smaller shards (fewer rows with "
                             "--shard-size, or --shard-tokens)")


def _token_bounds(counts, n_shards: int) -> list[int]:
    """Row boundaries [0, ..., n] splitting `counts` into min(n_shards, n) runs of about equal
    sums: boundary k sits where the running sum comes closest to k/n_shards of the total, moved
    just enough that every shard keeps at least one row. Streams over the counts CHUNK rows at a
    time."""
    n = len(counts)
    n_shards = min(n_shards, n)
    if n_shards <= 1:
        return [0, n]
    total = int(np.sum(counts, dtype=np.int64))
    if total == 0:  # nothing counted anywhere: rows it is
        return [j * n // n_shards for j in range(n_shards + 1)]
    bounds, k, running = [0], 1, 0
    for lo in range(0, n, CHUNK):
        cum = running + np.cumsum(np.asarray(counts[lo:lo + CHUNK], dtype=np.int64))
        while k < n_shards:
            target = k * total / n_shards
            i = int(np.searchsorted(cum, target, side="left"))   # first row whose running sum reaches it
            if i >= len(cum):
                break
            before = int(cum[i - 1]) if i > 0 else running      # the running sum without row i
            stop = lo + i if target - before < int(cum[i]) - target else lo + i + 1
            # every shard keeps a row, and each shard still to come one of its own
            bounds.append(min(max(stop, bounds[-1] + 1), n - (n_shards - k)))
            k += 1
        running = int(cum[-1])
    bounds.append(n)
    return bounds
