"""Store faults: a damaged store is never read as numbers, damage is named (array and chunk), and
what can be repaired (a damaged partial, a full disk, a killed run, an unfinished creation) is
repaired by running again, ending bit-identical to an undisturbed run. Two writers never share a
store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from fixtures import committed_count, start_cli, wait_for_commits

from langneurons.cli import main
from langneurons.store import schema
from langneurons.store.location import LOCK_NAME
from langneurons.store.schema import ALL_VARS

SHARD = "2"


def args(model, corpus, out, *extra):
    return ["profile", "--model", model, "--corpus", corpus, "--out", str(out), "--shard-size", SHARD,
            "--batch-tokens", "64", "--threads-per-worker", "1", "--keep-partials", "all", "--no-progress", *extra]


def arrays(path):
    ds = xr.open_zarr(str(path))
    assert ds.attrs["complete"] is True
    return {v: ds[v].values for v in ALL_VARS}


def assert_identical(a, b):
    for v in ALL_VARS:
        np.testing.assert_array_equal(a[v], b[v], err_msg=v)


@pytest.fixture(scope="module")
def reference(model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert main(args(model, corpus, out)) == 0
    return out


@pytest.fixture()
def store(reference, tmp_path):
    """A fresh copy of the finished reference store."""
    out = tmp_path / "copy.zarr"
    shutil.copytree(reference, out)
    return out


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def run(argv, capsys):
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err.strip()


def one_error(err: str, *says: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for s in says:
        assert s in lines[0], (s, lines[0])


def test_intact_store_verifies(store, capsys):
    rc, out, err = run(["info", str(store), "--verify"], capsys)
    assert rc == 0, err
    assert "verified" in out and "totals equal the sum of the committed partials" in out
    rc, out, _ = run(["info", str(store)], capsys)
    assert rc == 0 and "complete (totals checked)" in out


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_damaged_total_chunk_is_named_everywhere(store, capsys, damage):
    chunk = store / "n_fired" / "c" / "1" / "0" / "0"
    flip_byte(chunk) if damage == "flip" else chunk.unlink()
    word = "corrupt" if damage == "flip" else "missing"
    for argv in (["score", str(store)], ["info", str(store)], ["info", str(store), "--verify"]):
        rc, out, err = run(argv, capsys)
        assert rc == 2, (argv, out, err)
        one_error(err)
        if argv[0] == "score":
            assert f"array 'n_fired' chunk 'n_fired/c/1/0/0' is {word}" in err
        else:
            assert f"array 'n_fired' chunk 'n_fired/c/1/0/0' is {word}" in out + err


@pytest.mark.parametrize("damage", ["flip", "delete"])
def test_damaged_committed_partial_is_reprofiled_on_resume(store, reference, model, corpus, capsys, caplog, damage):
    chunk = store / "partials" / "act_sum" / "c" / "3" / "0" / "0"
    flip_byte(chunk) if damage == "flip" else chunk.unlink()
    rc, out, err = run(["info", str(store), "--verify"], capsys)
    assert rc == 2 and "partials/act_sum' chunk 'partials/act_sum/c/3/0/0'" in out, out
    rc, _, err = run(["score", str(store), "--bootstrap", "2"], capsys)
    assert rc == 2 and "partials/act_sum" in err, err
    # --resume checks the committed shards it relies on and profiles the damaged one again
    rc, out, err = run(args(model, corpus, store, "--resume"), capsys)
    assert rc == 0, err
    assert "1 already committed" not in out and "17 already committed" in out
    assert any("shard 3 is committed but damaged" in r.getMessage() for r in caplog.records)
    assert_identical(arrays(reference), arrays(store))
    assert run(["info", str(store), "--verify"], capsys)[0] == 0


def test_deleted_partial_of_an_interrupted_run_is_not_summed_as_zeros(reference, model, corpus, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    shutil.copytree(reference, out)
    g = zarr.open_group(str(out), mode="r+")
    attrs = dict(g.attrs)
    attrs.update(complete=False, state="profiling")
    g.attrs.update(schema.sealed(attrs))             # as if the run had stopped before finalize
    (out / "partials" / "n_fired" / "c" / "5" / "0" / "0").unlink()
    rc, _, err = run(args(model, corpus, out, "--resume"), capsys)
    assert rc == 0, err
    assert_identical(arrays(reference), arrays(out))


def test_edited_attribute_is_refused(store, model, corpus, capsys):
    meta = store / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["threshold"] = 0.5             # what a hand edit would do
    meta.write_text(json.dumps(doc))
    for argv in (["score", str(store)], ["info", str(store)], ["info", str(store), "--verify"],
                 ["ablate", str(store)], args(model, corpus, store, "--resume")):
        rc, out, err = run(argv, capsys)
        assert rc == 2, argv
        one_error(err, "edited")


def test_edited_complete_flag_is_refused(reference, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    shutil.copytree(reference, out)
    meta = out / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["complete"] = "yes"
    meta.write_text(json.dumps(doc))
    rc, _, err = run(["score", str(out)], capsys)
    assert rc == 2 and "edited" in err


def test_interrupted_creation_is_replaced_by_the_same_command(reference, model, corpus, tmp_path, capsys,
                                                              monkeypatch):
    from langneurons.store import create

    real, calls = create._array, {"n": 0}

    def disk_full_after_ten(*a, **kw):
        calls["n"] += 1
        if calls["n"] > 10:
            raise OSError(28, "No space left on device")
        return real(*a, **kw)

    out = tmp_path / "r.zarr"
    monkeypatch.setattr(create, "_array", disk_full_after_ten)
    rc, _, err = run(args(model, corpus, out), capsys)
    assert rc == 2
    one_error(err, "creating the store", "No space left on device", "run the same command again")
    assert zarr.open_group(str(out), mode="r").attrs["state"] == "creating"
    assert not (out / LOCK_NAME).exists()
    monkeypatch.setattr(create, "_array", real)
    rc, _, err = run(args(model, corpus, out), capsys)  # no --overwrite needed: it held no results
    assert rc == 0, err
    assert_identical(arrays(reference), arrays(out))


def test_full_disk_mid_run_then_resume(reference, model, corpus, tmp_path, capsys):
    """A real full disk: a small tmpfs. The run stops with a clear error; after the disk grows,
    --resume finishes it, bit-identical to an undisturbed run."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; this environment is not root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        out = mnt / "r.zarr"
        rc, _, err = run(args(model, corpus, out), capsys)
        assert rc == 2
        one_error(err, "No space left on device")
        assert "--resume" in err, err   # the disk filled up while shards were written
        done = zarr.open_array(str(out / "partials" / "committed"), mode="r")[:]
        assert 0 < done.sum() < done.size, done
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        rc, _, err = run(args(model, corpus, out, "--resume"), capsys)
        assert rc == 0, err
        assert_identical(arrays(reference), arrays(out))
        assert run(["info", str(out), "--verify"], capsys)[0] == 0
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_sigkill_mid_commit_then_resume(reference, model, corpus, tmp_path, capsys):
    """The driver itself (in-process worker) is SIGKILLed halfway through writing shard 3's partial:
    its lock is left behind (stale: the process is gone), the half-written shard is not committed,
    and --resume finishes bit-identical."""
    out = tmp_path / "r.zarr"
    proc = start_cli(args(model, corpus, out), faults={"kill": [3], "state": str(tmp_path)})
    assert proc.wait(timeout=900) == -signal.SIGKILL  # a hang guard, not a deadline
    assert (out / LOCK_NAME).exists() and committed_count(out) == 3
    rc, _, err = run(args(model, corpus, out, "--resume"), capsys)
    assert rc == 0, err
    assert_identical(arrays(reference), arrays(out))
    assert not (out / LOCK_NAME).exists()


def test_two_writers_never_share_a_store(reference, model, corpus, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    first = start_cli(args(model, corpus, out), faults={"sleep": 0.3})
    try:
        wait_for_commits(out, first, 1)
        for extra in (["--resume"], ["--overwrite"]):
            rc, _, err = run(args(model, corpus, out, *extra), capsys)
            assert rc == 2, extra
            one_error(err, "is being written by", f"pid {first.pid}", socket.gethostname())
        assert first.wait(timeout=900) == 0, first.stderr.read().decode()[-2000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert_identical(arrays(reference), arrays(out))  # the first run was neither corrupted nor deleted


def test_lock_of_another_host(reference, model, corpus, tmp_path, capsys, caplog):
    out = tmp_path / "r.zarr"
    shutil.copytree(reference, out)
    lock = {"tool": "langneurons", "command": "profile", "host": "node-17.cluster", "pid": 4242,
            "started": "2026-01-01T00:00:00+00:00", "heartbeat_ts": time.time(), "token": "x"}
    (out / LOCK_NAME).write_text(json.dumps(lock))
    rc, _, err = run(args(model, corpus, out, "--overwrite"), capsys)
    assert rc == 2
    one_error(err, "node-17.cluster", "pid 4242", "stale")
    lock["heartbeat_ts"] = time.time() - 3600          # that host died an hour ago
    (out / LOCK_NAME).write_text(json.dumps(lock))
    rc, _, err = run(args(model, corpus, out, "--resume"), capsys)
    assert rc == 0, err
    assert any("breaking a stale lock" in r.getMessage() for r in caplog.records)
    assert not (out / LOCK_NAME).exists()


def test_ablate_refuses_changed_weights_unless_told(reference, model, corpus, tmp_path, capsys):
    changed = tmp_path / "changed"
    shutil.copytree(model, changed)
    weights = changed / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0x01                                   # one bit of one weight
    weights.write_bytes(bytes(data))
    base = ["ablate", str(reference), "--heldout", corpus, "--max-sentences", "2", "--device", "cpu"]
    rc, _, err = run(base + ["--model", str(changed)], capsys)
    assert rc == 2
    one_error(err, "not the one profiled", "--allow-model-mismatch")
    rc, out, err = run(base + ["--model", str(changed), "--allow-model-mismatch"], capsys)
    assert rc == 0 and "perplexity ratio" in out, err
    rc, out, err = run(base, capsys)                   # the stored path, unchanged weights
    assert rc == 0 and "perplexity ratio" in out, err


# --- a fault at every write of a store's creation ------------------------------------------------


def _create(out: Path, *, resume=False, overwrite=False):
    """Create (or replace) a small store at `out` the way `profile` does, with its lock held."""
    from langneurons.shards import Shard
    from langneurons.store.lock import StoreLock
    from langneurons.store.schema import CorpusFacts, ModelInfo
    from langneurons.store.writer import ResultsStore, check_out

    info = ModelInfo("m", "sha256:0", "sha256:1", "added by the tokenizer", "llama", 2, 7, "float32")
    facts = CorpusFacts("c", ("en",), "sha256:2", {"en": 3})
    ident = schema.identity({k: None for k in schema.IDENTITY_COUNTING}, info, facts)
    attrs = schema.root_attrs(ident, info, facts, revision=None, backend="hf", config={}, run_only=[],
                              versions={}, version="test")
    shards = [Shard(0, "en", 0, 2, digest="0" * 64), Shard(1, "en", 2, 3, digest="1" * 64)]
    loc = check_out(str(out), resume=resume, overwrite=overwrite)
    with StoreLock(loc) as lock:
        return ResultsStore.open_for_run(loc, lock, resume=resume, overwrite=overwrite, identity=ident,
                                         attrs=attrs, languages=("en",), n_layers=2, d_ff=7,
                                         edges=(0.0, 1.0), shards=shards)


def _nodes(out: Path) -> dict:
    found = {}
    for f in out.rglob("zarr.json"):
        doc = json.loads(f.read_text())
        rel = str(f.parent.relative_to(out)).replace(os.sep, "/")
        found["" if rel == "." else rel] = (doc["node_type"], len(doc.get("shape", ())))
    return found


def test_a_fault_at_any_write_of_the_creation_is_recovered_by_the_command_it_names(tmp_path, monkeypatch):
    """Disk full or a kill at each write while a store is created, taking turns: between the
    write's folder and its file ("folder"), or mid-file (zarr's temporary file left behind, as a
    SIGKILL leaves it); every later write fails too. Each time the same command (which the error
    names), --overwrite, or --resume (once the root zarr.json exists; before, it says to run without
    it) recovers it, and the recovered store holds exactly the schema's nodes."""
    import threading
    import uuid

    import zarr.storage._local as local

    from langneurons.store.writer import StoreError

    real, calls, idle = local._put, {"n": 0, "fail_from": 0, "inflight": 0}, threading.Condition()

    def faulty(path, value, exclusive=False):
        with idle:
            calls["n"] += 1
            calls["inflight"] += 1
            n = calls["n"]
        try:
            if calls["fail_from"] and n >= calls["fail_from"]:
                if n == calls["fail_from"]:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    if n % 2:
                        path.with_suffix(f".{uuid.uuid4().hex}.partial").write_bytes(b"\x00" * 3)
                raise OSError(28, "No space left on device")
            return real(path, value, exclusive=exclusive)
        finally:
            with idle:
                calls["inflight"] -= 1
                idle.notify_all()

    monkeypatch.setattr(local, "_put", faulty)
    _create(tmp_path / "count.zarr")
    total = calls["n"]
    want = schema.store_nodes(dict(zarr.open_group(str(tmp_path / "count.zarr"), mode="r").attrs))
    assert _nodes(tmp_path / "count.zarr") == want and total > 40
    recoveries = ({}, {"overwrite": True}, {"resume": True})
    for k in range(1, total + 1):
        out = tmp_path / f"r{k}.zarr"
        calls.update(n=0, fail_from=k)
        with pytest.raises(StoreError, match="run the same command again"):
            _create(out)
        with idle:  # writes zarr still had in flight when the error came end (as at a process exit)
            idle.wait_for(lambda: calls["inflight"] == 0)
        calls.update(fail_from=0)
        recover = recoveries[k % 3]
        if recover.get("resume") and not (out / "zarr.json").exists():  # nothing of the store exists yet
            with pytest.raises(StoreError, match="run without --resume to start one"):
                _create(out, **recover)
            recover = {}
        _create(out, **recover)
        assert _nodes(out) == want, (k, recover)
        shutil.rmtree(out)


def test_a_kill_at_any_point_of_an_overwrite_is_finished_by_the_same_command(tmp_path, monkeypatch):
    """--overwrite deletes the old store file by file: interrupted after any of them, what is left
    is still recognisably a store of ours (its root zarr.json goes last), so the same command
    finishes the deletion and creates the new store."""
    from langneurons.store.writer import StoreError

    from langneurons.store.stats import Stats

    out = tmp_path / "r.zarr"
    store = _create(out)
    for i in range(2):  # a complete store: partial and total chunks in folders c/<i>/<j>/...
        store.write_shard(i, Stats.zeros(2, 7, 3), str(i) * 64)
    store.finalize(keep="all")
    want = _nodes(out)
    assert any(len(f.relative_to(out).parts) == 5 for f in out.rglob("*") if "c" in f.parts)
    n_files = sum(1 for f in out.rglob("*") if f.is_file())
    real = os.unlink
    for k in range(1, n_files + 1):
        calls = {"n": 0}

        def dies_at_k(path, *a, **kw):
            calls["n"] += 1
            if calls["n"] == k:
                raise OSError(5, "Input/output error (the process is killed here)")
            return real(path, *a, **kw)

        monkeypatch.setattr(os, "unlink", dies_at_k)
        with pytest.raises((OSError, StoreError)):
            _create(out, overwrite=True)
        monkeypatch.setattr(os, "unlink", real)
        _create(out, overwrite=True)
        assert _nodes(out) == want, k
