"""The worker: loads the model once, profiles whole shards, writes each shard's partial.

A plain class (testable without Ray); `cluster.driver` wraps it in a Ray actor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from langneurons.config import ProfileConfig
from langneurons.corpus import ParallelCorpus, Shard
from langneurons.profiler.backends import make_backend
from langneurons.store.writer import ResultsStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShardResult:
    index: int
    n_tokens: int
    seconds: float


class Worker:
    def __init__(self, cfg: ProfileConfig, corpus: ParallelCorpus, store_url: str):
        self.cfg = cfg
        self.corpus = corpus
        self.backend = make_backend(cfg)
        self.store = ResultsStore.open_for_shards(store_url)

    def run_shard(self, shard: Shard) -> ShardResult:
        """Profile one shard and commit its partial (data first, marker last)."""
        t0 = time.perf_counter()
        sentences = self.corpus.sentences[shard.language][shard.start:shard.stop]
        stats = self.backend.profile(sentences)
        self.store.write_shard(shard.index, stats)
        return ShardResult(shard.index, stats.n_tokens, time.perf_counter() - t0)

    def close(self) -> None:
        self.backend.close()
