"""The worker: loads the model once, profiles whole shards, writes each shard's partial.

A plain class (testable without Ray); `cluster.driver` wraps it in a Ray actor (`cluster.actor`).

Testing hook: set `LANGNEURONS_TEST_FAULTS` to JSON to inject faults (off when unset; the driver
forwards `LANGNEURONS_*` variables to its workers), e.g.
`{"sleep": 0.2, "kill": [3], "fail": [5], "state": "/tmp/faults"}`:
- `sleep`: seconds to wait before each shard's commit (slows a run down so a test can interrupt it);
- `kill`: shard indices whose first attempt writes a wrong chunk of that shard's partial and then
  SIGKILLs its own process (a death mid-commit); a marker file in the `state` directory makes it
  happen once per shard across processes;
- `fail`: shard indices that always raise `RuntimeError` (a shard that cannot succeed).
With `state` set, every attempt appends its shard index to `state`/attempts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from langneurons.config import ProfileConfig
from langneurons.corpus import Shard
from langneurons.profiler.backends import make_backend
from langneurons.store.schema import Stats
from langneurons.store.writer import ResultsStore, StoreError

log = logging.getLogger(__name__)

FAULTS_ENV = "LANGNEURONS_TEST_FAULTS"


@dataclass(frozen=True, slots=True)
class ShardResult:
    index: int
    n_tokens: int
    seconds: float


class Worker:
    def __init__(self, cfg: ProfileConfig, store_url: str, *, threads: int | None = None):
        """`threads` (default cfg.threads_per_worker; None leaves torch's setting) CPU threads are
        set before the model loads and restored by close()."""
        import torch

        self.cfg = cfg
        self.faults = _Faults.from_env()
        self._threads_before = None
        threads = threads or cfg.threads_per_worker
        if threads:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(threads)
        try:
            self.backend = make_backend(cfg)
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
        if self.faults is not None:
            self.faults.before_commit(shard, self.store, stats)
        try:
            self.store.write_shard(shard.index, stats)
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


@dataclass(frozen=True, slots=True)
class _Faults:
    """The testing hook described in the module docstring."""

    sleep: float = 0.0
    kill: tuple[int, ...] = ()
    fail: tuple[int, ...] = ()
    state: str | None = None

    @classmethod
    def from_env(cls) -> "_Faults | None":
        spec = os.environ.get(FAULTS_ENV)
        if not spec:
            return None
        d = json.loads(spec)
        if d.get("kill") and not d.get("state"):
            raise ValueError(f"{FAULTS_ENV}: 'kill' needs a 'state' directory to kill only once")
        log.warning("%s is set: injecting test faults %s", FAULTS_ENV, d)
        return cls(sleep=float(d.get("sleep", 0.0)), kill=tuple(d.get("kill", ())),
                   fail=tuple(d.get("fail", ())), state=d.get("state"))

    def before_commit(self, shard: Shard, store: ResultsStore, stats: Stats) -> None:
        if self.state:
            with open(Path(self.state) / "attempts", "a") as f:
                f.write(f"{shard.index}\n")
        time.sleep(self.sleep)
        if shard.index in self.fail:
            raise RuntimeError(f"injected failure in shard {shard.id} ({FAULTS_ENV})")
        if shard.index in self.kill:
            marker = Path(self.state) / f"killed-{shard.index}"
            try:
                marker.touch(exist_ok=False)
            except FileExistsError:
                return  # killed once already: this attempt succeeds
            store.partials["act_sum"][shard.index] = stats.act_sum + 1.0  # half a commit, wrong
            os.kill(os.getpid(), signal.SIGKILL)
