"""The Ray session of a run, and where its workers run.

    with RaySession(cfg) as session:              # connect first: where do the workers run?
        cfg_w = worker_config(cfg, session.gpu)   # device pinned: the driver resolves dtype for it
        ...                                       # model info, store (run.py)
        n_tokens = session.run(cfg_w, corpus, todo, plan=plan)   # cluster/driver.py

Connecting. In a process that already has a Ray session (`ray.is_initialized()`) that session is
used as it is. Otherwise `cfg.address` ('auto', 'host:port', 'ray://host:10001') or the
RAY_ADDRESS variable (which `ray job submit` sets for its entry point) names a cluster to join.
Otherwise a local instance is started for this run and shut down after it: no dashboard, usage
stats off, every Ray process bound to 127.0.0.1 (whether or not `ray` was imported before; checked
after the start, and refused otherwise), worker logs kept out of the terminal (they are in
/tmp/ray/session_latest/logs), and enough CPUs declared for the workers asked for. A watcher
process (`cluster.reaper`) stops the instance's processes if the driver is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

from langneurons.cluster.actor import cpu_cores
from langneurons.cluster.driver import run_shards
from langneurons.cluster.reaper import Reaper
from langneurons.config import ProfileConfig
from langneurons.corpus import Corpus
from langneurons.shards import Shard

if TYPE_CHECKING:
    from langneurons.profiler.plan import ModelPlan

log = logging.getLogger(__name__)


class RaySession:
    """Ray used, joined or started for one run (see `connect`), shut down on exit if started here."""

    def __init__(self, cfg: ProfileConfig):
        if cfg.cluster.workers < 1:
            raise ValueError(f"workers must be >= 1 to run on Ray, got {cfg.cluster.workers}")
        self.cfg = cfg
        self.started, self.reaper, self.gpu = False, None, False

    def __enter__(self) -> "RaySession":
        self.started, self.reaper = connect(self.cfg)
        try:
            self.gpu = use_gpus(self.cfg)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.started:
                import ray

                ray.shutdown()
        finally:
            if self.reaper is not None:
                self.reaper.close()

    def run(self, cfg: ProfileConfig, corpus: Corpus, todo: list[Shard], *, plan: ModelPlan,
            progress: bool = True) -> int:
        """Profile `todo` on the workers; returns the tokens of the shards completed. `cfg` is the
        workers' config (`worker_config`); a worker whose model differs from `plan` is refused."""
        on_ready = self.reaper.report_children if self.reaper is not None else None
        return run_shards(cfg, corpus, todo, gpu=self.gpu, plan=plan, on_ready=on_ready,
                          progress=progress)


def worker_config(cfg: ProfileConfig, gpu: bool) -> ProfileConfig:
    """The config the workers run: `device` pinned to what they will use (Ray maps a worker's GPU
    to cuda:0, and a CPU worker sees no GPU), so the driver can resolve "auto" dtypes for it."""
    if gpu:
        return cfg.replace(device="cuda")
    return cfg.replace(device="cpu") if cfg.backend.device == "auto" else cfg


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray binds its node to 127.0.0.1
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def connect(cfg: ProfileConfig) -> tuple[bool, Reaper | None]:
    """Use, join or start Ray (see the module docstring): (whether the caller must shut it down,
    the watcher of a local instance's processes)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    ray = _import_ray()
    if ray.is_initialized():
        log.info("using this process's Ray session")
        return False, None
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address)
        return True, None
    n_cpus = max(cpu_cores(), cfg.cluster.workers * (cfg.cluster.threads_per_worker or 1))
    reaper = Reaper.start()
    try:
        with _loopback_only(), _quiet_token_notice():
            ray.init(address="local", num_cpus=n_cpus, include_dashboard=False, log_to_driver=False)
        ip = ray.util.get_node_ip_address()
        if ip != "127.0.0.1":
            ray.shutdown()
            raise RuntimeError(f"the local Ray instance bound to {ip}, not 127.0.0.1, so other machines could "
                               "reach it; refusing to run. Start Ray yourself (`ray start --head "
                               "--node-ip-address 127.0.0.1`) and pass --address auto")
        if reaper is not None:
            reaper.report_children()
    except BaseException:
        if reaper is not None:
            reaper.close()
        raise
    return True, reaper


@contextlib.contextmanager
def _quiet_token_notice():
    """Ray turns token authentication on for every new local instance (other local users could
    reach even a loopback port) and logs a warning that it did, suggesting to turn it off. It stays
    on; the notice, which asks nothing of a langneurons user, is not printed. (Setting RAY_AUTH_MODE
    ourselves would not do: Ray reads it once, when `ray` is imported.)"""
    logger = logging.getLogger(TOKEN_NOTICE_LOGGER)
    before = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


@contextlib.contextmanager
def _loopback_only():
    """Make the local instance listen on 127.0.0.1 only, whether `ray` was imported before or not.

    Ray reads LOOPBACK_ENV once, when `ray` is imported, into `ray_constants.ENABLE_RAY_CLUSTER`
    (its processes read the variable again at their own start). So both are set for the start
    and restored afterwards; `connect` then checks the address Ray actually used."""
    before_env = os.environ.get(LOOPBACK_ENV)
    os.environ[LOOPBACK_ENV] = "0"
    try:
        from ray._private import ray_constants
    except ImportError:  # a Ray without this module: the check in `connect` still holds
        ray_constants = None
    before = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if ray_constants is not None and before is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if ray_constants is not None and before is not None:
            ray_constants.ENABLE_RAY_CLUSTER = before
        if before_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = before_env


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("--workers needs Ray: pip install 'langneurons[ray]' "
                           "(or run in this process with --workers 0)") from e
    return ray


def use_gpus(cfg: ProfileConfig) -> bool:
    """One GPU per worker when device names cuda, or is auto and the cluster has GPUs."""
    import ray

    if cfg.backend.device == "auto":
        return ray.cluster_resources().get("GPU", 0) >= 1
    return cfg.backend.device.startswith("cuda")
