"""The Ray actor's body: one `Worker` per process, its model loaded once, a fixed thread count.

A plain class: `cluster.driver` makes it remote (`ray.remote(WorkerActor)`) with the resources
and restart policy of a run, so importing this module needs no Ray.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from langneurons.cluster.worker import ShardResult, Worker
from langneurons.config import ProfileConfig
from langneurons.shards import Shard
from langneurons.store.schema import ModelInfo

if TYPE_CHECKING:
    from langneurons.profiler.plan import ModelPlan


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and Ray respect)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_threads(cfg: ProfileConfig, cores: int) -> int:
    """Torch CPU threads per worker: --threads-per-worker, else this node's cores / workers."""
    return cfg.cluster.threads_per_worker or max(1, cores // max(1, cfg.cluster.workers))


@dataclass(frozen=True, slots=True)
class Ready:
    """A worker's answer once its model is loaded: where and how it runs, and what it loaded
    (compared with the plan by the driver)."""

    node: str
    host: str
    pid: int
    threads: int
    device: str
    loaded: ModelInfo


class WorkerActor:
    def __init__(self, cfg: ProfileConfig, store_url: str, plan: ModelPlan):
        # Constructor arguments are small and inline (no object-store refs): a restarted actor gets
        # them again from Ray's actor table, and nothing it needs can go out of scope.
        self.threads = worker_threads(cfg, cpu_cores())
        self.worker = Worker(cfg, store_url, plan, threads=self.threads)  # threads set before loading

    def ready(self) -> Ready:
        """Answers once the model is loaded."""
        import socket

        import torch

        import ray

        return Ready(ray.get_runtime_context().get_node_id(), socket.gethostname(), os.getpid(),
                     torch.get_num_threads(), self.worker.backend.plan.device, self.worker.backend.info)

    def run_shard(self, shard: Shard, sentences: Sequence[str]) -> ShardResult:
        return self.worker.run_shard(shard, sentences)

    def close(self) -> None:
        self.worker.close()
