"""Run shards on Ray workers: dynamic scheduling, bounded retries, an exactly-once token tally.

`cluster.session.RaySession` connects and calls `run_shards` here; see session.py for how Ray is
used, joined or started.

Workers. `--workers` actors (`cluster.actor.WorkerActor`), each loading the model once: one GPU
each when the cluster has GPUs (or `device` names cuda), else `threads_per_worker` CPUs each
(default: the node's cores / workers), spread over the nodes. Each worker reports the model it
loaded (fingerprint, architecture, layers, d_ff, dtype); one that differs from what the store
records (the driver's `plan.ModelPlan`) stops the run before it profiles anything, so the store's provenance is what
the workers computed (a CPU driver with GPU workers records bfloat16, as the workers run). An
actor is constructed from the config, the store's URL and the plan only (small, inline: a restart cannot lose them); each shard's
sentences travel with its task. `LANGNEURONS_*`, `HF_HUB_OFFLINE` and `TRANSFORMERS_OFFLINE`
are forwarded to the workers' environment.

Scheduling. Each ready actor holds at most IN_FLIGHT (2) shards, one running and one queued
behind it so it never idles; when one finishes (`ray.wait`) the next is submitted, so fast workers
take more shards and the unsubmitted rest stays with the driver (backpressure: nothing piles up in
Ray's queues, and a lost worker takes at most two shards with it).

Exactly once. A worker commits a shard's partial to the store itself: its data chunks, then its
marker (`store.writer`). A shard that runs again (retry, resume) rewrites its own chunks and no
others, and the totals are summed from committed partials by `ResultsStore.finalize()`. The
token tally returned here counts each completed shard index once, whatever ran how often.

Failures. Actors restart without limit when their process or node dies (`max_restarts=-1`), on a
surviving node if the node is gone and resources allow; shards do not retry inside Ray
(`max_task_retries=0`): the driver resubmits them, at the front of the queue, to whichever worker is
ready. A failed attempt counts against its shard whether the worker raised (bad data, full disk) or
died (SIGKILL, OOM, lost node); a shard that fails 1 + max_retries times stops the run with
`ShardFailed` naming it, and the run resumes with --resume once the cause is fixed. Before the
driver raises, the shards still in flight end (STOP_WAIT_S at most; their commits are kept) and the
workers are killed, so no worker of a failed run writes afterwards; ^C kills them at once. A worker that
cannot start (bad model path, store not reachable) stops the run at once. While no worker is
ready the driver logs every 30 s whom it is waiting for. A killed driver loses nothing committed:
`langneurons profile --resume` skips committed shards.

Concurrent writers. Every worker writes its shards' chunks of the same store, so:
- every worker must reach the store at the same URL: a path on a shared file system mounted at the
  same place on every node, or an fsspec URL (s3://, gs://, ...) with credentials on every node
  (a local path on a multi-node cluster fails at worker start: the store is not there);
- one writer per chunk: a shard's partial is its own chunks, and only one attempt of a shard runs
  at a time (the driver resubmits a shard only after its attempt has failed; an attempt on a
  vanished node may still finish late, but it writes the same bytes to the same chunks);
- atomic chunk writes: on a POSIX file system zarr writes a temporary file and renames it over the
  chunk; object stores replace whole objects per PUT; either way a reader sees the old chunk or
  the new one, never half of one;
- NFS: rename is atomic on the server, but attribute and directory caching can hide a fresh
  chunk or marker from another client for a few seconds; the driver reads markers only at start
  (resume) and in finalize() after its own workers reported, so this is safe, but do not run two
  drivers on one store, and prefer `actimeo=0`/`lookupcache=none`-like mounts for monitoring.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langneurons.cluster.actor import WorkerActor
from langneurons.cluster.progress import ShardProgress
from langneurons.config import ProfileConfig
from langneurons.corpus import Corpus
from langneurons.shards import Shard, shard_rows

if TYPE_CHECKING:
    from langneurons.profiler.plan import ModelPlan

log = logging.getLogger(__name__)

IN_FLIGHT = 2          # shards per actor: one running, one queued behind it
WAIT_LOG_S = 30.0      # with no news for this long, log whom the driver is waiting for
STOP_WAIT_S = 60.0     # when the run fails, wait this long at most for the shards in flight
FORWARD_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
FORWARD_PREFIX = "LANGNEURONS_"


class ShardFailed(RuntimeError):
    """A shard failed on every attempt it was allowed."""


class WorkerMismatch(RuntimeError):
    """A worker loaded a different model (or dtype) than the store records."""


def run_shards(cfg: ProfileConfig, corpus: Corpus, todo: list[Shard], *, gpu: bool, plan: ModelPlan,
               on_ready=None, progress: bool = True) -> int:
    """Profile `todo` on cfg's workers in the connected Ray session, each loading `plan`'s model;
    the tokens of the shards done."""
    if not todo:
        return 0
    return _Scheduler(cfg, corpus, todo, gpu=gpu, plan=plan, on_ready=on_ready).run(progress=progress)


def actor_options(cfg: ProfileConfig, gpu: bool) -> dict[str, Any]:
    """A worker's resources: on GPUs one per tensor-parallel rank (a vLLM engine's ranks are
    processes beside its worker, so all of them on the worker's node: Ray places an actor whole);
    on CPUs --threads-per-worker, at least one core per rank."""
    tp = cfg.backend.tensor_parallel if cfg.backend.name == "vllm" else 1
    opts: dict[str, Any] = dict(max_restarts=-1, max_task_retries=0, scheduling_strategy="SPREAD",
                                num_gpus=tp if gpu else 0,
                                num_cpus=1 if gpu else max(cfg.cluster.threads_per_worker or 1, tp))
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_PREFIX) or k in FORWARD_ENV}
    if env:
        opts["runtime_env"] = {"env_vars": env}
    return opts


@dataclass(eq=False)
class _Slot:
    """One actor as the driver sees it."""

    name: str
    handle: Any
    state: str = "starting"       # starting: loading or restarting | ready | dead
    ping: Any = None              # the ready() call in flight while starting
    ping_after: float = 0.0       # when starting without a ping: ask again from then on
    ping_errors: int = 0          # consecutive failed pings (backoff)
    inflight: int = 0
    life: int = 0                 # counts deaths: a late error from an earlier life is not news


class _Scheduler:
    def __init__(self, cfg: ProfileConfig, corpus: Corpus, todo: list[Shard], *, gpu: bool,
                 plan: ModelPlan, on_ready=None):
        import ray

        self.cfg = cfg
        self.plan = plan
        self.on_ready = on_ready                      # called when a worker becomes ready
        self.todo = todo
        self.queue: deque[Shard] = deque(todo)
        self.failures: Counter[int] = Counter()      # shard index -> failed attempts
        self.tokens: dict[int, int] = {}             # shard index -> n_tokens, once per shard
        self.tasks: dict[Any, tuple[Shard, _Slot, int]] = {}  # ref -> (shard, slot, slot's life)
        self.pings: dict[Any, _Slot] = {}
        self.corpus = corpus
        opts = actor_options(cfg, gpu)
        n, threads = cfg.cluster.workers, cfg.cluster.threads_per_worker
        _warn_if_short(n, opts)
        cls = ray.remote(WorkerActor).options(**opts)
        self.slots = [_Slot(f"w{i}", cls.remote(cfg, cfg.store.out, plan)) for i in range(n)]
        log.info("%d Ray workers (%s) for %d shards", n,
                 f"{opts['num_gpus']} GPU(s) each" if gpu else f"{threads or 'cores/workers'} CPU threads each",
                 len(todo))

    # --- the loop --------------------------------------------------------------------------
    def run(self, *, progress: bool) -> int:
        import ray

        last_news = time.monotonic()
        try:
            with ShardProgress(self.todo, enabled=progress) as bar:
                while len(self.tokens) < len(self.todo):
                    self._ping_due()
                    self._submit()
                    refs = list(self.tasks) + list(self.pings)
                    if not refs and not any(s.state == "starting" for s in self.slots):
                        raise RuntimeError(f"all {len(self.slots)} Ray workers died; "
                                           "see the worker logs, then resume with --resume")
                    if refs:
                        ready, _ = ray.wait(refs, num_returns=1, timeout=self._timeout())
                    else:  # every live worker is between pings
                        ready = []
                        time.sleep(self._timeout())
                    if not ready:
                        if time.monotonic() - last_news >= WAIT_LOG_S:
                            self._log_waiting()
                            last_news = time.monotonic()
                        continue
                    last_news = time.monotonic()
                    ref = ready[0]
                    if ref in self.tasks:
                        self._on_shard(ref, bar)
                    else:
                        self._on_ping(ref)
        except KeyboardInterrupt:
            self._stop(drain=False)
            raise
        except BaseException:
            self._stop(drain=True)
            raise
        self._stop(drain=False)  # nothing is in flight
        return sum(self.tokens.values())

    def _stop(self, *, drain: bool) -> None:
        """Kill every actor; with `drain`, first let the shards in flight end (their commits are
        kept), so that none of this run's workers writes to the store once the driver has raised
        (unless a shard outlasts STOP_WAIT_S). A kill is not enough: it takes effect a moment later."""
        import ray

        try:
            if drain and self.tasks:
                log.info("stopping: waiting up to %.0f s for %d shards in flight", STOP_WAIT_S,
                         len(self.tasks))
                ray.wait(list(self.tasks), num_returns=len(self.tasks), timeout=STOP_WAIT_S)
        finally:
            for s in self.slots:
                ray.kill(s.handle, no_restart=True)

    def _submit(self) -> None:
        """Top every ready actor up to IN_FLIGHT shards, emptiest first."""
        ready = [s for s in self.slots if s.state == "ready"]
        while self.queue and ready:
            s = min(ready, key=lambda s: s.inflight)
            if s.inflight >= IN_FLIGHT:
                return
            shard = self.queue.popleft()
            sentences = shard_rows(self.corpus, shard)  # read now: bounded memory
            self.tasks[s.handle.run_shard.remote(shard, sentences)] = (shard, s, s.life)
            s.inflight += 1

    def _timeout(self) -> float:
        due = [s.ping_after for s in self.slots if s.state == "starting" and s.ping is None]
        if not due:
            return WAIT_LOG_S
        return min(WAIT_LOG_S, max(0.05, min(due) - time.monotonic()))

    # --- results ---------------------------------------------------------------------------
    def _on_shard(self, ref, bar: ShardProgress) -> None:
        import ray
        from ray.exceptions import RayError, RayTaskError

        shard, slot, life = self.tasks.pop(ref)
        slot.inflight -= 1
        try:
            r = ray.get(ref)
        except RayTaskError as e:  # the shard's own code raised; the worker lives on
            cause = getattr(e, "cause", None) or e
            self._failed(shard, f"{type(cause).__name__}: {_last_line(str(cause))}", e)
        except RayError as e:      # the worker's process or node died with the shard in flight
            self._failed(shard, f"worker {slot.name} died: {_first_line(str(e))}", e)
            if life == slot.life:
                self._restarting(slot)
        else:
            if r.index not in self.tokens:  # count a shard once, however often it ran
                self.tokens[r.index] = r.n_tokens
                bar.update(shard, r.n_tokens)

    def _failed(self, shard: Shard, why: str, err: Exception) -> None:
        self.failures[shard.index] += 1
        n = self.failures[shard.index]
        if n > self.cfg.cluster.max_retries:
            raise ShardFailed(f"shard {shard.id} (#{shard.index}) failed {n} times: {why}; "
                              "fix the cause and resume with --resume") from err
        log.warning("shard %s failed (attempt %d of %d), retrying: %s", shard.id, n,
                    self.cfg.cluster.max_retries + 1, why)
        self.queue.appendleft(shard)

    def _restarting(self, slot: _Slot) -> None:
        if slot.state == "ready":  # its other shard in flight fails too: one restart per death
            log.warning("worker %s died; Ray restarts it (on another node if its node is gone)", slot.name)
            slot.state, slot.ping_after, slot.life = "starting", time.monotonic(), slot.life + 1

    # --- worker readiness ------------------------------------------------------------------
    def _ping_due(self) -> None:
        now = time.monotonic()
        for s in self.slots:
            if s.state == "starting" and s.ping is None and now >= s.ping_after:
                s.ping = s.handle.ready.remote()
                self.pings[s.ping] = s

    def _on_ping(self, ref) -> None:
        import ray
        from ray.exceptions import ActorDiedError, RayError

        slot = self.pings.pop(ref)
        slot.ping = None
        try:
            ready = ray.get(ref)
        except ActorDiedError as e:
            if e.actor_init_failed:  # deterministic: the model or the store is not there
                raise RuntimeError(f"Ray worker {slot.name} failed to start: {_last_line(str(e))}") from e
            log.error("worker %s is gone for good: %s", slot.name, _first_line(str(e)))
            slot.state = "dead"
        except RayError as e:      # restarting, or its node is unreachable for now: ask again later
            slot.ping_errors += 1
            slot.ping_after = time.monotonic() + min(WAIT_LOG_S, 2.0 ** slot.ping_errors)
            log.debug("worker %s not available yet: %s", slot.name, _first_line(str(e)))
        else:
            problem = self.plan.mismatch(ready.loaded)
            if problem:
                raise WorkerMismatch(f"Ray worker {slot.name} on {ready.host} loaded another model than the "
                                     f"store records ({problem}); refusing its counts. Give every node the same "
                                     "model files, and --dtype explicitly if nodes differ in devices")
            slot.state, slot.ping_errors = "ready", 0
            log.debug("worker %s ready: %s", slot.name, ready)
            if self.on_ready is not None:
                self.on_ready()

    def _log_waiting(self) -> None:
        waiting = [s.name for s in self.slots if s.state == "starting"]
        busy = sum(s.inflight for s in self.slots)
        if not waiting:  # every worker is busy with long shards: nothing to act on
            log.debug("%d of %d shards done, %d running", len(self.tokens), len(self.todo), busy)
            return
        log.warning("%d of %d shards done, %d running; workers not ready: %s (loading the model, "
                    "restarting, or waiting for resources: check `ray status` and the worker logs)",
                    len(self.tokens), len(self.todo), busy, ", ".join(waiting))


def _warn_if_short(workers: int, opts: dict[str, Any]) -> None:
    import ray

    have = ray.cluster_resources()
    for res, key in (("GPU", "num_gpus"), ("CPU", "num_cpus")):
        need = workers * opts[key]
        if need > have.get(res, 0):
            log.warning("%d workers need %g %ss but the cluster has %g now: the others wait for "
                        "resources (see `ray status`)", workers, need, res, have.get(res, 0))


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), text)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else text
