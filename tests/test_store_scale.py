"""The store at scale: shards planned by tokens, narrow partials (exact within their bound), and
--keep-partials (what stays once a run is complete, deleting only the store's own files)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

from langneurons.cli import main
from langneurons.config import ProfileConfig
from langneurons.run import profile
from langneurons.scoring.bootstrap import bootstrap
from langneurons.shards import Shard, plan_shards
from langneurons.store import schema
from langneurons.store.location import resolve
from langneurons.store.lock import StoreLock
from langneurons.store.reader import ResultsError, open_partials, open_results, verify_store
from langneurons.store.schema import ALL_VARS, KEEP_PARTIALS, PARTIAL_DTYPES, PARTIAL_MAX_TOKENS
from langneurons.store.stats import Stats
from langneurons.store.writer import ResultsStore, StoreError

STATS = ("act_sum", "act_sumsq", "act_hist")  # what --keep-partials counts deletes


def cfg(model, corpus, out, **kw):
    kw.setdefault("shard_size", 2)
    return ProfileConfig.from_flags(model=model, corpus=corpus, out=str(out), batch_tokens=64, **kw)


@pytest.fixture(scope="module")
def kept_all(model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("all") / "all.zarr"
    profile(cfg(model, corpus, out, keep_partials="all"), progress=False)
    return out


def partial_arrays(out) -> set[str]:
    return {p.name for p in (out / "partials").iterdir() if (p / "zarr.json").is_file()}


# --- planning by tokens ------------------------------------------------------------------------


class Counted:
    """A corpus with per-row token counts (what corpus.Budgeted gives the planner)."""

    def __init__(self, counts: dict[str, list[int]]):
        self.languages = list(counts)
        self.counts = {k: np.asarray(v, np.uint32) for k, v in counts.items()}

    def n_rows(self, language):
        return len(self.counts[language])

    def token_counts(self, language):
        return self.counts[language]


@pytest.mark.parametrize("shard_tokens,min_shards", [(100, 1), (1000, 1), (250, 8), (10**9, 3), (1, 1), (37, 500)])
def test_token_plan_gives_each_language_enough_even_shards(shard_tokens, min_shards):
    rng = np.random.default_rng(shard_tokens)
    counts = {"en": rng.integers(1, 60, 300).tolist(), "hi": rng.integers(20, 200, 40).tolist(), "zh": [7]}
    c = Counted(counts)
    shards = plan_shards(c, shard_tokens=shard_tokens, min_shards=min_shards)
    assert shards == plan_shards(c, shard_tokens=shard_tokens, min_shards=min_shards)   # a pure function
    assert [s.index for s in shards] == list(range(len(shards)))
    for lang, k in counts.items():
        mine = [s for s in shards if s.language == lang]
        assert [(s.start, s.stop) for s in mine] == list(zip([0] + [s.stop for s in mine[:-1]], [s.stop for s in mine]))
        assert mine[-1].stop == len(k)                                                  # every row once
        want = min(len(k), max(-(-sum(k) // shard_tokens), min_shards))
        assert len(mine) == want, (lang, len(mine), want)
        sums = [sum(k[s.start:s.stop]) for s in mine]
        # about equal: no shard exceeds the even share by more than its largest row
        assert max(sums) <= sum(k) / want + max(k) + 1e-9


def test_token_plan_needs_token_counts_and_one_rule():
    class Rows:
        languages = ["en"]

        def n_rows(self, language):
            return 10

    with pytest.raises(ValueError, match="needs the corpus's per-row token counts"):
        plan_shards(Rows(), shard_tokens=5)
    with pytest.raises(ValueError, match="either by rows"):
        plan_shards(Rows(), 2, shard_tokens=5)
    with pytest.raises(ValueError, match="min_shards must be an integer >= 1"):
        plan_shards(Counted({"en": [1, 2]}), shard_tokens=5, min_shards=0)


def test_default_run_plans_by_tokens_and_counts_the_same(model, corpus, kept_all, tmp_path):
    """The default plan (by counted tokens, --min-shards) profiles every row once: the integer totals
    equal a row-planned run's exactly (the sums within float32 rounding of each shard)."""
    out = tmp_path / "tok.zarr"
    s = profile(ProfileConfig.from_flags(model=model, corpus=corpus, out=str(out), batch_tokens=64,
                                         shard_tokens=40, min_shards=3), progress=False)
    ds, ref = open_results(str(out)), open_results(str(kept_all))
    assert s.tokens == dict(zip(ref["language"].values, ref["n_tokens"].values.tolist()))  # counted up front
    for v in ("n_tokens", "n_fired", "act_hist", "n_nonfinite"):
        np.testing.assert_array_equal(ds[v].values, ref[v].values, err_msg=v)
    for v in ("act_sum", "act_sumsq"):
        np.testing.assert_allclose(ds[v].values, ref[v].values, rtol=1e-5, atol=1e-5)
    parts = zarr.open_group(str(out), mode="r")["partials"]
    lang = parts["shard_language"][:]
    for code, n_tok in zip(ref["language"].values, ref["n_tokens"].values):
        mine = lang == code
        assert mine.sum() == max(-(-int(n_tok) // 40), 3)                                # ceil(tokens/40), >= 3
    assert ds.attrs["identity"]["shard_tokens"] == 40 and ds.attrs["identity"]["shard_size"] is None


# --- narrow partials ---------------------------------------------------------------------------


def test_partials_are_narrow_and_sum_exactly_into_wide_totals(kept_all):
    parts = zarr.open_group(str(kept_all), mode="r")["partials"]
    g = zarr.open_group(str(kept_all), mode="r")
    for v in ALL_VARS:
        assert parts[v].dtype == PARTIAL_DTYPES[v], v
        assert g[v].dtype == schema.DTYPES[v], v
    lang = parts["shard_language"][:]
    for li, code in enumerate(g["language"][:]):
        idx = np.flatnonzero(lang == code)
        for v in ALL_VARS:   # summed in shard order, in int64/float64: bit for bit
            total = np.zeros_like(g[v][li])
            for i in idx:
                total = total + parts[v][int(i)].astype(schema.DTYPES[v])
            np.testing.assert_array_equal(total, g[v][li], err_msg=v)


def tiny_store(tmp_path, n_shards=2):
    loc = resolve(str(tmp_path / "s.zarr"))
    lock = StoreLock(loc)
    lock.__enter__()
    store = ResultsStore.open_for_run(loc, lock, resume=False, overwrite=False, identity={}, attrs={},
                                      languages=["en"], n_layers=1, d_ff=3, edges=[0.0],
                                      shards=[Shard(i, "en", i, i + 1) for i in range(n_shards)])
    return store, lock


def test_a_shard_beyond_the_narrow_bound_is_refused_not_wrapped(tmp_path):
    store, lock = tiny_store(tmp_path)
    try:
        big = Stats.zeros(1, 3, 2)
        big.n_tokens = PARTIAL_MAX_TOKENS + 1
        with pytest.raises(StoreError, match=r"shard 0 cannot be stored: 2,147,483,648 counted tokens.*--shard-tokens"):
            store.write_shard(0, big)
        huge = Stats.zeros(1, 3, 2)
        huge.n_tokens, huge.act_sumsq[0, 1] = 5, 1e39
        with pytest.raises(StoreError, match="act_sumsq reaches 1e\\+39, beyond float32's range"):
            store.write_shard(1, huge)
        assert not store.committed().any()                     # nothing half-written is marked done
        ok = Stats.zeros(1, 3, 2)
        ok.n_tokens, ok.n_fired[0] = PARTIAL_MAX_TOKENS, PARTIAL_MAX_TOKENS   # the bound itself is exact
        ok.act_hist[0, :, 1] = PARTIAL_MAX_TOKENS
        store.write_shard(0, ok)
        assert store.read_shard(0).n_fired[0, 0] == PARTIAL_MAX_TOKENS
    finally:
        lock.__exit__(None, None, None)


def test_shard_tokens_beyond_the_bound_is_refused():
    with pytest.raises(ValueError, match="--shard-tokens 2,147,483,648 is more than a shard may hold"):
        ProfileConfig.from_flags(shard_tokens=PARTIAL_MAX_TOKENS + 1)


# --- --keep-partials ---------------------------------------------------------------------------


def test_keep_counts_is_the_default_and_deletes_only_the_other_partials(model, corpus, kept_all, tmp_path, capsys):
    out = tmp_path / "counts.zarr"
    profile(cfg(model, corpus, out), progress=False)
    ds = xr.open_zarr(str(out))                                # consolidated metadata matches what is left
    assert ds.attrs["partials_kept"] == "counts"
    assert partial_arrays(out) == {"shard", "shard_language", "shard_start", "shard_stop", "committed", "shard_digest",
                                   "layer",
                                   "neuron", "bin", "bin_lower", "bin_upper", "n_tokens", "n_fired", "n_nonfinite"}
    for v in STATS:
        assert not (out / "partials" / v).exists()
    # the totals are whole and equal the all-partials run's; what is kept verifies
    a, b = open_results(str(out)), open_results(str(kept_all))
    for v in ALL_VARS:
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
    rep = verify_store(str(out))
    assert rep.ok, rep.problems
    # bootstrap reads only counts: intervals identical to those from every partial
    langs = [str(x) for x in a["language"].values]
    p1, p2 = open_partials(str(out)), open_partials(str(kept_all))
    assert set(p1.data_vars) & set(ALL_VARS) == {"n_tokens", "n_fired", "n_nonfinite"}
    b1, b2 = bootstrap(p1, langs, n_resamples=20, seed=1), bootstrap(p2, langs, n_resamples=20, seed=1)
    for name in ("per_layer_low", "per_layer_high", "stability"):
        np.testing.assert_array_equal(getattr(b1, name).values, getattr(b2, name).values)
    assert main(["score", str(out), "--bootstrap", "5"]) == 0
    assert main(["info", str(out)]) == 0
    assert "partials_kept        counts (n_tokens, n_fired, n_nonfinite)" in capsys.readouterr().out


def test_keep_none_leaves_the_plan_and_says_what_bootstrap_needs(model, corpus, tmp_path, capsys):
    out = tmp_path / "none.zarr"
    assert main(["profile", "--model", model, "--corpus", corpus, "--out", str(out), "--shard-size", "3",
                 "--batch-tokens", "64", "--keep-partials", "none", "--no-progress"]) == 0
    assert not partial_arrays(out) & set(ALL_VARS)
    assert {"shard_language", "shard_start", "shard_stop", "committed"} <= partial_arrays(out)
    assert verify_store(str(out)).ok
    capsys.readouterr()
    assert main(["score", str(out), "--bootstrap", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "kept no shard partials (--keep-partials none)" in err
    assert "--keep-partials counts or all" in err


def test_resume_of_a_complete_store_narrows_but_never_widens(model, corpus, kept_all, tmp_path, caplog):
    out = tmp_path / "r.zarr"
    shutil.copytree(kept_all, out)
    before = open_results(str(out))
    s = profile(cfg(model, corpus, out, keep_partials="counts", resume=True), progress=False)
    assert s.n_skipped == s.n_shards                           # nothing profiled again
    assert not partial_arrays(out) & set(STATS)
    s = profile(cfg(model, corpus, out, keep_partials="all", resume=True), progress=False)
    assert any("cannot be restored" in r.getMessage() for r in caplog.records)
    attrs = zarr.open_group(str(out), mode="r").attrs
    assert attrs["partials_kept"] == "counts" and attrs["complete"] is True
    after = open_results(str(out))
    for v in ALL_VARS:
        np.testing.assert_array_equal(before[v].values, after[v].values, err_msg=v)


def test_interrupted_deletion_is_ignored_by_readers_and_finished_by_resume(model, corpus, kept_all, tmp_path):
    """finalize records partials_kept before it deletes: a crash in between leaves arrays that every
    reader ignores, and --resume deletes them."""
    out = tmp_path / "r.zarr"
    shutil.copytree(kept_all, out)
    g = zarr.open_group(str(out), mode="r+")
    attrs = dict(g.attrs)
    attrs["partials_kept"] = "counts"
    g.attrs.update(schema.sealed(attrs))
    shutil.rmtree(out / "partials" / "act_sum")                # one deleted, two not yet
    assert set(open_partials(str(out)).data_vars) & set(ALL_VARS) == {"n_tokens", "n_fired", "n_nonfinite"}
    assert verify_store(str(out)).ok
    profile(cfg(model, corpus, out, resume=True), progress=False)
    assert not partial_arrays(out) & set(STATS)


def test_deletion_touches_only_files_the_store_wrote(model, corpus, kept_all, tmp_path, caplog):
    """A file someone put in a partial's folder keeps that array (and the file); a partial folder
    replaced by a link keeps what it points to; everything else is deleted."""
    out = tmp_path / "r.zarr"
    shutil.copytree(kept_all, out)
    note = out / "partials" / "act_hist" / "my_notes.txt"
    note.write_text("mine")
    elsewhere = tmp_path / "user_data"
    shutil.move(str(out / "partials" / "act_sumsq"), elsewhere)
    os.symlink(elsewhere, out / "partials" / "act_sumsq")
    mine = sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*"))
    profile(cfg(model, corpus, out, keep_partials="counts", resume=True), progress=False)
    assert note.read_text() == "mine" and (out / "partials" / "act_hist" / "zarr.json").is_file()
    assert sorted(p.relative_to(elsewhere) for p in elsewhere.rglob("*")) == mine
    assert not (out / "partials" / "act_sum").exists()
    kept = [r.getMessage() for r in caplog.records if "did not write" in r.getMessage()]
    assert any("partials/act_hist" in m for m in kept) and any("partials/act_sumsq" in m for m in kept)


def test_version_2_stores_still_read_but_are_not_resumed(model, corpus, kept_all, tmp_path, capsys):
    out = tmp_path / "v2.zarr"
    shutil.copytree(kept_all, out)
    g = zarr.open_group(str(out), mode="r+")
    attrs = {k: v for k, v in g.attrs.items() if k != "partials_kept"}
    attrs["schema_version"] = 2
    attrs["identity"] = {k: v for k, v in attrs["identity"].items() if k not in ("shard_tokens", "min_shards")}
    attrs["identity"]["schema_version"] = 2
    g.attrs.put(schema.sealed(attrs))
    assert open_results(str(out))["n_fired"].shape[0] == 3
    assert set(open_partials(str(out)).data_vars) >= set(ALL_VARS)
    assert verify_store(str(out)).ok
    capsys.readouterr()
    assert main(["profile", "--model", model, "--corpus", corpus, "--out", str(out), "--shard-size", "2",
                 "--batch-tokens", "64", "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and f"schema_version: store has 2, this run has {schema.SCHEMA_VERSION}" in err


def test_keep_partials_values_are_checked():
    with pytest.raises(ValueError, match="--keep-partials 'some' is not one of: counts, all, none"):
        ProfileConfig.from_flags(keep_partials="some")
    assert set(KEEP_PARTIALS) == {"counts", "all", "none"}
    # a dense store keeps exactly what bootstrap over LAPE reads; a MoE store also its routing counts
    assert schema.kept_partials({"partials_kept": "counts"}) == ("n_tokens", "n_fired", "n_nonfinite")
    moe = {"partials_kept": "counts", "moe": {"expert_neurons": True}}
    assert schema.kept_partials(moe) == ("n_tokens", "n_fired", "n_nonfinite", "n_routed", "expert_n_fired",
                                         "expert_n_nonfinite")
    assert json.dumps(KEEP_PARTIALS["counts"][:3]) == '["n_tokens", "n_fired", "n_nonfinite"]'


def test_a_row_planned_shard_beyond_the_bound_is_refused_before_anything_runs():
    c = Counted({"en": [2**30, 2**30, 5, 7]})
    with pytest.raises(ValueError, match=r"en: a shard of rows 0-4 would hold 2,147,483,660 counted tokens.*"
                                         r"--shard-size"):
        plan_shards(c, 4, max_tokens=PARTIAL_MAX_TOKENS)
    assert len(plan_shards(c, 2, max_tokens=PARTIAL_MAX_TOKENS)) == 2     # token-even halves fit


def test_plain_resume_of_a_complete_store_keeps_what_it_kept(model, corpus, kept_all, tmp_path):
    """--keep-partials defaults to counts for a new run only: a --resume without the flag (say, to
    check a finished run) never deletes partials a run chose to keep."""
    out = tmp_path / "r.zarr"
    shutil.copytree(kept_all, out)
    profile(cfg(model, corpus, out, resume=True), progress=False)
    assert set(STATS) <= partial_arrays(out)
    assert zarr.open_group(str(out), mode="r").attrs["partials_kept"] == "all"


def test_damaged_kept_partial_of_a_pruned_store_is_reported_not_reprofiled(model, corpus, tmp_path, caplog):
    out = tmp_path / "r.zarr"
    profile(cfg(model, corpus, out), progress=False)
    before = open_results(str(out))
    (out / "partials" / "n_fired" / "c" / "1" / "0" / "0").unlink()
    s = profile(cfg(model, corpus, out, resume=True), progress=False)
    assert s.n_skipped == s.n_shards                        # nothing profiled: the totals stand
    assert any("kept partial of shard 1 is damaged" in r.getMessage() for r in caplog.records)
    after = open_results(str(out))
    for v in ALL_VARS:
        np.testing.assert_array_equal(before[v].values, after[v].values, err_msg=v)
    with pytest.raises(ResultsError, match="committed partials are damaged.*partials/n_fired/c/1/0/0"):
        open_partials(str(out))
    assert any("partials/n_fired/c/1/0/0" in p for p in verify_store(str(out)).problems)


def test_a_resume_that_plans_other_shards_is_refused(model, corpus, tmp_path, monkeypatch, capsys):
    """Shards planned by tokens move if the tokenizer changed (its files are not in the model
    fingerprint): the resumed plan must be the recorded one, or rows would count twice or never."""
    from langneurons.cluster.worker import Worker

    out = tmp_path / "r.zarr"
    real = Worker.run_shard
    monkeypatch.setattr(Worker, "run_shard", lambda self, *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        profile(cfg(model, corpus, out, shard_size=None, shard_tokens=30, min_shards=1), progress=False)
    monkeypatch.setattr(Worker, "run_shard", real)
    stop = zarr.open_array(str(out / "partials" / "shard_stop"), mode="r+")
    stop[0] = stop[0] + 1                                  # as a different tokenizer would have planned it
    rc = main(["profile", "--model", model, "--corpus", corpus, "--out", str(out), "--batch-tokens", "64",
               "--shard-tokens", "30", "--min-shards", "1", "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "plans other shards than the store recorded" in err and "shard 0 is en:0-" in err


def test_deletion_done_up_to_the_metadata_leaves_nothing_stale(model, corpus, kept_all, tmp_path, monkeypatch):
    """A crash after the partials are deleted but before the metadata is consolidated again: the
    consolidated copy (which listed them) went with the attribute write, so xarray never reads a
    deleted array as zeros; and the next --resume finishes, empty folders included."""
    import langneurons.store.writer as writer

    out = tmp_path / "r.zarr"
    shutil.copytree(kept_all, out)
    real = writer.remove_arrays

    def deletes_then_dies(loc, names):
        real(loc, names)
        for name in names:                                 # even the folders' zarr.json gone, folders left
            (out / name).mkdir(exist_ok=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "remove_arrays", deletes_then_dies)
    with pytest.raises(KeyboardInterrupt):
        profile(cfg(model, corpus, out, keep_partials="counts", resume=True), progress=False)
    monkeypatch.setattr(writer, "remove_arrays", real)
    with pytest.warns(RuntimeWarning, match="Failed to open Zarr store with consolidated metadata"):
        ds = xr.open_zarr(str(out), group="partials")     # no consolidated copy: read as stored
    assert not set(ds.data_vars) & set(STATS)
    assert open_results(str(out))["n_fired"].shape[0] == 3
    profile(cfg(model, corpus, out, resume=True), progress=False)
    assert not any((out / "partials" / v).exists() for v in STATS)
    assert main(["profile", "--model", model, "--corpus", corpus, "--out", str(out), "--shard-size", "2",
                 "--batch-tokens", "64", "--overwrite", "--no-progress"]) == 0   # nothing foreign left behind


@pytest.mark.parametrize("url", ["plain", "local://", "file://"])
def test_links_and_nested_nodes_keep_an_array_whatever_the_url(kept_all, tmp_path, url):
    from langneurons.store.location import remove_arrays

    out = tmp_path / "r.zarr"
    shutil.copytree(kept_all, out)
    elsewhere = tmp_path / "theirs"
    shutil.move(str(out / "partials" / "act_sumsq"), elsewhere)
    os.symlink(elsewhere, out / "partials" / "act_sumsq")          # a link to someone's array
    nested = zarr.create_group(str(out / "partials" / "act_hist" / "mine"))
    nested.create_array("x", shape=(2,), dtype="int32")[...] = 7   # someone's zarr node inside ours
    before = sorted(r for p in tmp_path.rglob("*")
                    if (r := p.relative_to(tmp_path)).parts[:3] != ("r.zarr", "partials", "act_sum"))
    loc = resolve(str(out) if url == "plain" else url + str(out))
    kept = remove_arrays(loc, ["partials/act_sum", "partials/act_sumsq", "partials/act_hist"])
    assert kept == ["partials/act_sumsq", "partials/act_hist"]
    assert not (out / "partials" / "act_sum").exists()
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in before if p in after] == before                # nothing else touched
    assert zarr.open_array(str(out / "partials" / "act_hist" / "mine" / "x"), mode="r")[:].tolist() == [7, 7]
