"""Runs on Ray end bit-identical to one in-process worker: with 2 workers, through a worker
SIGKILLed mid-commit, a SIGKILLed driver resumed, a lost node, and a shard that always fails.

Faults are injected in the workers' processes through the worker's documented testing hook
(tests/faults.py)
(cluster/worker.py), which the driver forwards to its workers. Every run uses one torch thread per
worker: CPU matmuls may round differently with another thread count.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read at `import ray`: loopback only

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
import zarr  # noqa: E402
from fixtures import SENTENCES, start_cli, wait_for_commits  # noqa: E402

from langneurons.cli import main  # noqa: E402
from langneurons.cluster.driver import ShardFailed  # noqa: E402
from faults import FAULTS_ENV, environment  # noqa: E402
from langneurons.config import ProfileConfig  # noqa: E402
from langneurons.run import profile  # noqa: E402
from langneurons.store.schema import ALL_VARS  # noqa: E402

ray = pytest.importorskip("ray")

SHARD_SIZE = 2  # 3 languages x 12 rows -> 18 shards: a kill lands mid-run


def cfg(model, corpus, out, **kw):
    kw.setdefault("threads_per_worker", 1)
    return ProfileConfig.from_flags(model=model, corpus=corpus, out=str(out), shard_size=SHARD_SIZE,
                                    batch_tokens=64, **kw)


def arrays(path):
    ds = xr.open_zarr(path)
    assert ds.attrs["complete"] is True
    return {v: ds[v].values for v in ALL_VARS}


def committed(path) -> np.ndarray:
    return zarr.open_array(f"{path}/partials/committed", mode="r")[:].astype(bool)


def assert_identical(a, b):
    for v in ALL_VARS:
        np.testing.assert_array_equal(a[v], b[v], err_msg=v)  # bit for bit, floats included


@pytest.fixture(scope="module")
def reference(model, corpus, tmp_path_factory):
    """One in-process worker, one thread, uninterrupted."""
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    s = profile(cfg(model, corpus, out, workers=0), progress=False)
    assert s.n_shards == 18
    return arrays(out)


@pytest.fixture(scope="module", autouse=True)
def _ray_down_at_end():
    yield
    ray.shutdown()


@pytest.fixture()
def local_ray():
    """A local 2-CPU Ray shared by the tests (the driver uses a session that exists)."""
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield


@pytest.fixture()
def faults(monkeypatch, tmp_path):
    def set_faults(**spec):
        spec.setdefault("state", str(tmp_path))
        for k, v in environment(spec).items():
            monkeypatch.setenv(k, v)
    return set_faults


def test_two_workers_equal_one_in_process(model, corpus, reference, local_ray, tmp_path):
    out = tmp_path / "r.zarr"
    s = profile(cfg(model, corpus, out, workers=2), progress=False)
    assert_identical(reference, arrays(out))
    assert s.n_tokens == reference["n_tokens"].sum()


def test_worker_sigkilled_mid_commit_is_replaced(model, corpus, reference, local_ray, tmp_path, faults,
                                                 caplog):
    """Two workers each die once while writing a shard (half its chunks written, wrong); their
    in-flight shards are retried, the half-written chunks overwritten, no shard counted twice."""
    faults(kill=[3, 10])
    out = tmp_path / "r.zarr"
    s = profile(cfg(model, corpus, out, workers=2), progress=False)
    assert (tmp_path / "killed-3").exists() and (tmp_path / "killed-10").exists()
    assert any("died" in r.getMessage() for r in caplog.records)
    assert_identical(reference, arrays(out))
    assert s.n_tokens == reference["n_tokens"].sum()  # the driver's tally: each shard once


def test_killed_driver_resumes(model, corpus, reference, local_ray, tmp_path):
    """SIGKILL the CLI (its own local Ray) after some commits; --resume finishes the rest."""
    out = tmp_path / "r.zarr"
    args = ["profile", "--model", model, "--corpus", corpus, "--out", str(out), "--shard-size",
            str(SHARD_SIZE), "--batch-tokens", "64", "--workers", "2", "--threads-per-worker", "1"]
    proc = start_cli(args + ["--no-progress"], faults={"sleep": 0.4})
    try:
        wait_for_commits(out, proc, 3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        try:  # Ray's agents outlive a SIGKILLed driver for a minute; don't leave them to the next test
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done = committed(out)
    assert 3 <= done.sum() < done.size, done
    assert zarr.open_group(out, mode="r").attrs["complete"] is False

    assert main(args + ["--resume", "--no-progress"]) == 0
    assert_identical(reference, arrays(out))


def test_shard_that_always_fails_stops_the_run_naming_it(model, corpus, reference, local_ray, tmp_path,
                                                         faults, monkeypatch):
    faults(fail=[4])
    out = tmp_path / "r.zarr"
    with pytest.raises(ShardFailed, match=r"shard en:8-10 \(#4\) failed 3 times: RuntimeError: "
                                          r"injected failure in shard en:8-10 .*resume with --resume"):
        profile(cfg(model, corpus, out, workers=2, max_retries=2), progress=False)
    attempts = (tmp_path / "attempts").read_text().split()
    assert attempts.count("4") == 3  # 1 + max_retries, then fail fast
    assert not committed(out)[4]

    monkeypatch.delenv(FAULTS_ENV)  # the cause is fixed: resume
    before = committed(out)
    s = profile(cfg(model, corpus, out, workers=2, resume=True), progress=False)
    assert s.n_skipped == before.sum()
    assert_identical(reference, arrays(out))
    parts = zarr.open_array(f"{out}/partials/n_tokens", mode="r")[:]
    assert s.n_tokens == parts[~before].sum()  # tokens of this run's shards, each once


def test_worker_that_cannot_start_stops_the_run_at_once(model, corpus, local_ray, tmp_path, monkeypatch):
    for k, v in environment({"kill": [0]}).items():  # rejected in Worker.__init__
        monkeypatch.setenv(k, v)
    with pytest.raises(RuntimeError, match=r"Ray worker w\d failed to start: .*needs a 'state' directory"):
        profile(cfg(model, corpus, tmp_path / "r.zarr", workers=2), progress=False)


def test_workers_run_the_plan_and_one_that_loaded_another_model_is_refused(model, corpus, local_ray, tmp_path,
                                                                           monkeypatch):
    """The provenance bug: the driver resolved one dtype (as for a CPU head with GPU workers) and
    the workers computed in another. The workers now load the driver's plan, so they compute in
    the dtype the store records, whatever their own "auto" would say. A worker that loaded other
    weights than the plan's (a node holding other files) is refused before any shard is profiled,
    so the store never states a model its counts were not made with."""
    import dataclasses

    import zarr

    from langneurons import run

    real = run.model_plan
    monkeypatch.setattr(run, "model_plan", lambda *a, **kw: dataclasses.replace(real(*a, **kw), dtype="bfloat16"))
    profile(cfg(model, corpus, tmp_path / "bf16.zarr", workers=2), progress=False)
    attrs = zarr.open_group(str(tmp_path / "bf16.zarr"), mode="r").attrs
    assert attrs["dtype"] == attrs["plan"]["dtype"] == "bfloat16" and attrs["complete"]

    monkeypatch.setattr(run, "model_plan",
                        lambda *a, **kw: dataclasses.replace(real(*a, **kw), fingerprint="sha256:other"))
    out = tmp_path / "r.zarr"
    with pytest.raises(RuntimeError, match=r"Ray worker w\d .*loaded another model than the store records "
                                           r"\(fingerprint: the store has 'sha256:other', the worker loaded 'sha256:"):
        profile(cfg(model, corpus, out, workers=2), progress=False)
    assert not committed(out).any()


def test_budgeted_monolingual_corpus_on_two_workers_equals_in_process(model, local_ray, tmp_path):
    """Rows of a streamed monolingual corpus are read by the driver as each shard is submitted; the
    budget's cut is made before any worker starts, so worker count does not change what is counted."""
    d = tmp_path / "mono"
    d.mkdir()
    (d / "en.txt").write_text("\n".join(SENTENCES["en"] * 3) + "\n\n")
    (d / "ru.jsonl").write_text("".join(f'{{"text": "{t}"}}\n' for t in SENTENCES["ru"] * 2), encoding="utf-8")
    kw = dict(unaligned=True, max_tokens_per_language=40)
    profile(cfg(model, str(d), tmp_path / "one.zarr", **kw), progress=False)
    s = profile(cfg(model, str(d), tmp_path / "two.zarr", workers=2, **kw), progress=False)
    assert 0 < s.rows["en"] < 12 and s.rows["ru"] <= 8
    assert_identical(arrays(tmp_path / "one.zarr"), arrays(tmp_path / "two.zarr"))


def test_lost_node_does_not_stop_the_run(model, corpus, reference, tmp_path, faults):
    """Two 1-CPU nodes, one worker each; the non-head node is removed mid-run: its shards in flight
    go to the surviving worker (its own restart waits for a CPU that never frees)."""
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "_system_config": {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                           "health_check_failure_threshold": 3}})
    node = cluster.add_node(num_cpus=1)
    out = tmp_path / "r.zarr"
    removed, finished = {}, threading.Event()

    def remove_node_mid_run():  # waits for the event (3 commits), however slow the machine is
        while not finished.is_set():
            if (out / "partials" / "committed" / "zarr.json").exists() and committed(out).sum() >= 3:
                removed["committed"] = int(committed(out).sum())
                cluster.remove_node(node)
                return
            time.sleep(0.05)

    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        faults(sleep=0.3)
        killer = threading.Thread(target=remove_node_mid_run, daemon=True)
        killer.start()
        try:
            s = profile(cfg(model, corpus, out, workers=2), progress=False)
        finally:
            finished.set()
            killer.join()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert 3 <= removed.get("committed", -1) < 18, removed
    # Whether the lost worker still had a shard in flight depends on timing (under load it may
    # have finished its last one before the node went); either way the totals must be exact:
    assert_identical(reference, arrays(out))
    assert s.n_tokens == reference["n_tokens"].sum()


def _listening(pids) -> set[tuple[int, str]]:
    import psutil

    out = set()
    for pid in pids:
        try:
            for c in psutil.Process(pid).net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.add((pid, c.laddr.ip))
        except psutil.Error:
            pass
    return out


def test_local_ray_listens_on_loopback_only_even_if_imported_first(model, corpus, tmp_path):
    """This module imported ray before any langneurons code ran (the case where Ray used to listen
    on every interface): the instance langneurons starts binds 127.0.0.1 only, with no dashboard."""
    import psutil

    from langneurons.cluster.session import connect

    ray.shutdown()
    started, reaper = connect(cfg(model, corpus, tmp_path / "r.zarr", workers=1))
    try:
        assert started and ray.util.get_node_ip_address() == "127.0.0.1"
        pids = [os.getpid()] + [p.pid for p in psutil.Process().children(recursive=True)]
        sockets = _listening(pids)
        assert sockets, "no listening sockets found: the check would prove nothing"
        assert {ip for _, ip in sockets} <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}, sockets
        assert 8265 not in {c.laddr.port for p in pids for c in _conns(p)}, "a dashboard is listening"
    finally:
        ray.shutdown()
        reaper.close()


def _conns(pid):
    import psutil

    try:
        return [c for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        return []


def test_killed_driver_leaves_no_ray_processes(model, corpus, tmp_path):
    """SIGKILL the driver alone (not its process group): the local Ray instance it started goes too."""
    import psutil

    out = tmp_path / "r.zarr"
    argv = ["profile", "--model", model, "--corpus", corpus, "--out", str(out), "--shard-size", str(SHARD_SIZE),
            "--batch-tokens", "64", "--workers", "1", "--threads-per-worker", "1", "--no-progress"]
    proc = start_cli(argv, faults={"sleep": 0.3})
    try:
        wait_for_commits(out, proc, 2)
        ray_procs = [p for p in psutil.Process(proc.pid).children(recursive=True)
                     if "reaper" not in " ".join(p.cmdline())]
        assert any("raylet" in p.name() or "gcs_server" in p.name() for p in ray_procs), ray_procs
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gone, alive = psutil.wait_procs(ray_procs, timeout=30)
        assert not alive, [(p.pid, p.name()) for p in alive]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_local_run_prints_no_ray_warning(model, corpus, tmp_path):
    """What `make run` does (--workers 2, a local instance) prints no warning a user cannot act on:
    not Ray's token-authentication notice, not its constructor-arguments-in-the-object-store error."""
    import re

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    r = subprocess.run([sys.executable, "-m", "langneurons.cli", "profile", "--model", model, "--corpus", corpus,
                        "--out", str(tmp_path / "r.zarr"), "--shard-size", str(SHARD_SIZE), "--batch-tokens", "64",
                        "--workers", "2", "--threads-per-worker", "1", "--no-progress"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # langneurons's own note that workers are still loading depends on how busy the machine is
    # (it says what to check): not noise, and no test may depend on it
    noise = [ln for ln in r.stderr.splitlines() if ("WARNING" in ln or re.search(r"\.cc:\d+", ln))
             and "workers not ready" not in ln]
    assert not noise, noise
