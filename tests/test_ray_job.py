"""Cluster jobs as users launch them (README, "Running on a cluster"): a Ray head started with the
`ray` CLI, token authentication on, the profile submitted with `ray job submit`; the store it
writes equals an in-process run bit for bit, and a client without the token is turned away.

The head listens on loopback only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, ports picked free) and is
stopped afterwards; its session lives in a short temporary folder (Ray's socket paths must stay
under the 107 characters a Unix socket allows).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from langneurons.cli import main
from langneurons.store.schema import ALL_VARS

ray = pytest.importorskip("ray")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SAFETY_S = 900  # far beyond any start seen, even on a loaded 2-core machine (typical: 5-15 s)


def profile_args(model, corpus, out) -> list[str]:
    return ["profile", "--model", model, "--corpus", corpus, "--out", str(out), "--shard-size", "2",
            "--batch-tokens", "64", "--threads-per-worker", "1", "--no-progress"]


@pytest.fixture()
def head(tmp_path):
    """A one-node Ray cluster as `ray start --head` makes it, with token authentication."""
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    work = tmp_path / "head"
    work.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="lnray", dir="/tmp")
    port = free_port()
    dash = free_port()
    # every port with a fixed default too: another Ray instance on the machine holds the defaults
    # (measured: its job agent then cannot bind 52365, and no job can be submitted)
    ports = [f"--{flag}={free_port()}" for flag in (
        "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port")]
    log = open(tmp_path / "head.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", f"--port={port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", *ports, "--num-cpus=2", "--include-dashboard=true", f"--temp-dir={ray_tmp}",
         "--block"],
        cwd=work, env={**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        # wait for the event (the job API answers, or the head exits), not for a number of seconds:
        # a busy machine starts the head slowly. SAFETY_S only keeps a hung head from hanging CI.
        started = time.monotonic()
        while True:
            r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", url], env=env,
                               capture_output=True, text=True)
            if r.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() - started > SAFETY_S:
                raise AssertionError("the Ray head did not start:\n" + (tmp_path / "head.log").read_text()[-3000:])
            time.sleep(1)
        # the job API may answer before the node's job agent has registered (a submission then fails
        # with "No available agent to submit job", creating nothing): ready once a job is accepted
        while True:
            r = subprocess.run([str(BIN / "ray"), "job", "submit", "--no-wait", "--address", url, "--", "true"],
                               env=env, capture_output=True, text=True, timeout=SAFETY_S)
            if r.returncode == 0:
                break
            if "No available agent" not in r.stdout + r.stderr or proc.poll() is not None or \
                    time.monotonic() - started > SAFETY_S:
                raise AssertionError("the Ray head's job agent did not start:\n" + (r.stdout + r.stderr)[-3000:])
            time.sleep(1)
        yield url, env
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ray_job_submit_equals_in_process_run(model, corpus, tmp_path, head, capsys):
    url, env = head
    ref = tmp_path / "ref.zarr"
    assert main(profile_args(model, corpus, ref)) == 0
    out = tmp_path / "job.zarr"
    r = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", url, "--", "langneurons",
                        *profile_args(model, corpus, out), "--workers", "2", "--address", "auto"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "succeeded" in r.stdout + r.stderr, (r.stdout + r.stderr)[-4000:]
    a, b = xr.open_zarr(str(ref)), xr.open_zarr(str(out))
    assert b.attrs["complete"] is True
    for v in ALL_VARS:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)

    # without the cluster's token, the job API turns a client away
    r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", url],
                       env={**env, "RAY_AUTH_TOKEN": "not-the-token"}, capture_output=True, text=True)
    assert r.returncode != 0 and "token" in (r.stdout + r.stderr).lower()
