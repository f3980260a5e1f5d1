"""The worker: loads the model once, profiles whole shards, writes each shard's partial.

A plain class (testable without Ray); `cluster.driver` wraps it in a Ray actor (`cluster.actor`).

Testing hook: `LANGNEURONS_BEFORE_COMMIT="module:factory"` (off when unset; the driver forwards
`LANGNEURONS_*` variables to its workers). The worker imports `module` at start and calls
`factory()`, which returns None or a callable run as `fn(shard, store, stats)` before each
shard's commit. The tests inject faults through it (tests/faults.py: slow commits, a death in
mid-commit, a shard that always fails); nothing of theirs ships in this package.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from langneurons.config import ProfileConfig
from langneurons.shards import Shard, rows_digest
from langneurons.profiler.backends import make_backend
from langneurons.store.stats import Stats
from langneurons.store.writer import ResultsStore, StoreError

if TYPE_CHECKING:
    from langneurons.profiler.plan import ModelPlan

log = logging.getLogger(__name__)

HOOK_ENV = "LANGNEURONS_BEFORE_COMMIT"


@dataclass(frozen=True, slots=True)
class ShardResult:
    index: int
    n_tokens: int
    seconds: float


class Worker:
    def __init__(self, cfg: ProfileConfig, store_url: str, plan: ModelPlan | None = None, *,
                 threads: int | None = None):
        """Loads `plan`'s model (the driver's plan; made from cfg when None) for cfg's counting
        section. `threads` (default --threads-per-worker; None leaves torch's setting) CPU threads
        are set before the model loads and restored by close()."""
        import torch

        self.cfg = cfg
        self.before_commit = _load_hook()
        self._threads_before = None
        threads = threads or cfg.cluster.threads_per_worker
        if threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)
        try:
            self.backend = make_backend(cfg, plan)
            self.store = ResultsStore.open_for_shards(store_url)
        except BaseException:
            self._restore_threads()
            raise

    def run_shard(self, shard: Shard, sentences: Sequence[str]) -> ShardResult:
        """Profile one shard (its sentences, rows shard.start..stop of shard.language) and commit
        its partial (data first, marker last)."""
        if len(sentences) != shard.stop - shard.start:
            raise ValueError(f"shard {shard.id} has {shard.stop - shard.start} rows but {len(sentences)} "
                             "sentences were sent")
        t0 = time.perf_counter()
        stats = self.backend.profile(sentences)
        if self.before_commit is not None:
            self.before_commit(shard, self.store, stats)
        try:
            self.store.write_shard(shard.index, stats, rows_digest(sentences))
        except OSError as e:
            raise StoreError(f"writing shard {shard.id} (#{shard.index}) to {self.store.url} failed: {e}. "
                             "Committed shards are kept: fix the cause (disk space, permissions) and run the "
                             "same command with --resume") from e
        return ShardResult(shard.index, stats.n_tokens, time.perf_counter() - t0)

    def close(self) -> None:
        self.backend.close()
        self._restore_threads()

    def _restore_threads(self) -> None:
        if self._threads_before:
            import torch

            torch.set_num_threads(self._threads_before)


def _load_hook() -> Callable[[Shard, ResultsStore, Stats], None] | None:
    """The testing hook of the module docstring, or None."""
    spec = os.environ.get(HOOK_ENV)
    if not spec:
        return None
    module, _, factory = spec.partition(":")
    if not module or not factory:
        raise ValueError(f"{HOOK_ENV}={spec!r}: give 'module:factory'")
    hook = getattr(importlib.import_module(module), factory)()
    if hook is not None:
        log.warning("%s is set: %s runs before every commit", HOOK_ENV, spec)
    return hook
