"""Shards: the unit of scheduling, retry, resume and bootstrap. Planned from the corpus's size
alone, so the store (which records the plan) needs nothing from the corpus readers."""

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
    """What planning reads of a corpus: its languages and its row count."""

    languages: Sequence[str]

    def __len__(self) -> int: ...


def plan_shards(corpus: Sized, shard_size: int) -> list[Shard]:
    """For each language in corpus order, consecutive row ranges of shard_size (the last shorter).

    A pure function of (languages, len(corpus), shard_size), so a resumed run plans the same shards
    and their indices name the same work.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    n = len(corpus)
    shards: list[Shard] = []
    for lang in corpus.languages:
        for start in range(0, n, shard_size):
            shards.append(Shard(index=len(shards), language=lang, start=start,
                                stop=min(start + shard_size, n)))
    return shards
