"""Shards: the unit of scheduling, retry, resume and bootstrap. Planned from the corpus's row (and
token) counts alone, so the store (which records the plan) needs nothing from the corpus readers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence


@dataclass(frozen=True)
class Shard:
    index: int
    """Position in the plan, 0..n-1."""
    language: str
    start: int
    """Rows [start, stop) of the corpus."""
    stop: int

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


CHUNK = 1 << 20  # token counts are read this many rows at a time (they may be memory-mapped)


def plan_shards(corpus: Sized, shard_size: int) -> list[Shard]:
    """Per language, in corpus order, consecutive row ranges: `ceil(rows / shard_size)` shards.

    Without token counts each holds shard_size rows (the last fewer). With them (a corpus cut to a
    token budget, or streamed), the same number of shards holds about equal numbers of counted
    tokens instead, so workers get even work (`_token_bounds`). A pure function of the row (and token) counts,
    so a resumed run plans the same shards and their indices name the same work.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    counts_of = getattr(corpus, "token_counts", None)
    shards: list[Shard] = []
    for lang in corpus.languages:
        n = corpus.n_rows(lang)
        bounds = (_token_bounds(counts_of(lang), -(-n // shard_size)) if counts_of is not None
                  else list(range(0, n, shard_size)) + [n])
        for start, stop in zip(bounds, bounds[1:]):
            shards.append(Shard(index=len(shards), language=lang, start=start, stop=stop))
    return shards


def _token_bounds(counts, n_shards: int) -> list[int]:
    """Row boundaries [0, ..., n] splitting `counts` into up to n_shards runs of about equal sums:
    boundary k sits where the running sum comes closest to k/n_shards of the total (every shard
    keeps at least one row). Streams over the counts CHUNK rows at a time."""
    import numpy as np

    n = len(counts)
    if n_shards <= 1:
        return [0, n]
    total = int(np.sum(counts, dtype=np.int64))
    if total == 0:  # nothing counted anywhere: rows it is
        return list(range(0, n, -(-n // n_shards))) + [n]
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
            stop = max(stop, bounds[-1] + 1)
            if stop >= n:
                break
            bounds.append(stop)
            k += 1
        running = int(cum[-1])
    bounds.append(n)
    return bounds
