"""What a store says it holds is what was profiled: every byte of the weights and the tokenizer in
the identity, each shard's rows checked against the plan when read and when committed, readers of
an unfinished run given the committed shards' sums (with a warning, never zeros), `--verify`
checking the plan and the counted tokens, and a failure while finishing named with its way on."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from fixtures import SENTENCES

from langneurons.cli import main
from langneurons.profiler import checkpoint
from langneurons.store import schema
from langneurons.store.reader import IncompleteRun, open_partials, open_results, verify_store


def args(model, corpus, out, *extra):
    return ["profile", "--model", model, "--corpus", corpus, "--out", str(out), "--shard-size", "2",
            "--batch-tokens", "64", "--keep-partials", "all", "--no-progress", *extra]


def run(argv, capsys):
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err.strip()


def totals(path) -> dict[str, np.ndarray]:
    ds = open_results(str(path))
    return {v: ds[v].values for v in schema.ALL_VARS}


@pytest.fixture(scope="module")
def reference(model, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    assert main(args(model, corpus, out)) == 0
    return out


# --- the model's files -----------------------------------------------------------------------


def test_the_weight_fingerprint_reads_every_byte(tmp_path, monkeypatch):
    """A byte changed anywhere (here the middle of a 5 MiB file, which the first and last MiB
    never saw) changes the fingerprint; hashed in blocks on threads or whole, the same file gives
    the same fingerprint, and a rewritten file is hashed again (the cache follows the inode's times)."""
    monkeypatch.setattr(checkpoint, "BLOCK", 1 << 20)
    (tmp_path / "config.json").write_text("{}")
    weights = tmp_path / "model.safetensors"
    data = bytearray(np.random.default_rng(0).integers(0, 256, 5 << 20, dtype=np.uint8).tobytes())
    weights.write_bytes(bytes(data))
    before = checkpoint.weights_fingerprint(str(tmp_path))
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    changed = checkpoint.weights_fingerprint(str(tmp_path))
    assert changed != before
    checkpoint._CACHE.clear()
    assert checkpoint.weights_fingerprint(str(tmp_path)) == changed          # not a stale cache entry
    monkeypatch.setattr(checkpoint, "HASH_THREADS", 1)
    checkpoint._CACHE.clear()
    assert checkpoint.weights_fingerprint(str(tmp_path)) == changed          # threads change nothing


def test_the_tokenizer_fingerprint_follows_its_files(model, tmp_path):
    copy = Path(shutil.copytree(model, tmp_path / "m"))
    fp = checkpoint.tokenizer_fingerprint(str(copy))
    assert checkpoint.weights_fingerprint(str(copy)) == checkpoint.weights_fingerprint(model)
    cfg = copy / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace("{", '{"add_bos_token": false, ', 1))
    assert checkpoint.tokenizer_fingerprint(str(copy)) != fp


# --- the corpus rows -------------------------------------------------------------------------


def test_a_corpus_file_edited_during_the_run_is_refused_then_resumed(model, tmp_path, capsys, monkeypatch):
    """--unaligned corpora are read from disk shard by shard: an edit mid-run is an error naming the
    language, rows and corpus; with the file restored, --resume finishes, equal to a run that was
    never disturbed."""
    from langneurons.cluster import worker

    corpus = tmp_path / "mono"
    corpus.mkdir()
    for lang, sents in SENTENCES.items():
        (corpus / f"{lang}.txt").write_text("\n".join(sents * 2) + "\n", encoding="utf-8")
    ru = corpus / "ru.txt"
    original = ru.read_text(encoding="utf-8")
    clean = tmp_path / "clean.zarr"
    assert main(args(model, str(corpus), clean, "--unaligned")) == 0

    def edit_ru(shard, store, stats):  # before the first commit: ru's shards are read later
        ru.write_text(original.replace("собака", "кошка"), encoding="utf-8")

    monkeypatch.setattr(worker, "_load_hook", lambda: edit_ru)
    out = tmp_path / "r.zarr"
    rc, err = run(args(model, str(corpus), out, "--unaligned"), capsys)
    assert rc == 2 and "language ru" in err and "a corpus file changed while the run read it" in err, err
    assert "--resume" in err
    monkeypatch.setattr(worker, "_load_hook", lambda: None)
    ru.write_text(original, encoding="utf-8")
    rc, err = run(args(model, str(corpus), out, "--unaligned", "--resume"), capsys)
    assert rc == 0, err
    for v, want in totals(clean).items():
        np.testing.assert_array_equal(totals(out)[v], want, err_msg=v)


def test_a_commit_of_other_rows_than_planned_is_refused(reference, tmp_path):
    """The store's own check, whoever read the rows: the digest of the rows profiled must be the
    one recorded for that shard when the run was planned."""
    from langneurons.shards import rows_digest
    from langneurons.store.writer import ResultsStore, StoreError

    out = Path(shutil.copytree(reference, tmp_path / "s.zarr"))
    store = ResultsStore.open_for_shards(str(out))
    stats = store.read_shard(0)
    rows = SENTENCES[str(store.partials["shard_language"][0])][:2]
    assert store.planned_digests()[0] == rows_digest(rows)
    before = (out / "partials" / "committed" / "c" / "0").read_bytes()
    with pytest.raises(StoreError, match="shard 0 was not committed: the rows profiled are not the rows"):
        store.write_shard(0, stats, rows_digest(rows[::-1]))
    assert (out / "partials" / "committed" / "c" / "0").read_bytes() == before
    store.write_shard(0, stats, rows_digest(rows))


# --- an unfinished run ---------------------------------------------------------------------


def test_readers_of_an_unfinished_run_get_the_committed_sums_with_a_warning(model, corpus, tmp_path, capsys,
                                                                           monkeypatch):
    from langneurons.cluster import worker

    def fail_at_fourth(shard, store, stats):
        if shard.index == 3:
            raise RuntimeError("injected")

    monkeypatch.setattr(worker, "_load_hook", lambda: fail_at_fourth)
    out = tmp_path / "r.zarr"
    rc, err = run(args(model, corpus, out), capsys)
    assert rc == 2 and "injected" in err
    assert xr.open_zarr(str(out))["n_tokens"].values.sum() == 0       # plain xarray: zeros until complete
    with pytest.warns(IncompleteRun, match="3 of 18 shards committed"):
        parts = open_partials(str(out))
    with pytest.warns(IncompleteRun, match="3 of 18 shards committed"):
        ds = open_results(str(out), allow_incomplete=True)
    assert parts.sizes["shard"] == 3 and ds["n_tokens"].values.sum() > 0
    for v in schema.ALL_VARS:
        for lang in ds["language"].values:
            mine = parts[v].values[parts["shard_language"].values == lang].astype(schema.DTYPES[v]).sum(0)
            np.testing.assert_array_equal(ds[v].sel(language=lang).values, mine, err_msg=v)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Exception, match="incomplete run"):
            open_results(str(out))


def test_a_full_disk_while_finishing_names_the_file_and_resume_finishes(reference, model, corpus, tmp_path,
                                                                        capsys, monkeypatch):
    from langneurons.store.writer import ResultsStore

    def full(self):
        raise OSError(28, "No space left on device", str(tmp_path / "r.zarr" / "n_fired" / "c" / "0" / "0" / "0"))

    monkeypatch.setattr(ResultsStore, "_sum_totals", full)
    out = tmp_path / "r.zarr"
    rc, err = run(args(model, corpus, out), capsys)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "n_fired/c/0/0/0" in err and "No space left on device" in err and "--resume" in err, err
    monkeypatch.undo()
    rc, err = run(args(model, corpus, out, "--resume"), capsys)
    assert rc == 0, err
    for v, want in totals(reference).items():
        np.testing.assert_array_equal(totals(out)[v], want, err_msg=v)


# --- --verify ----------------------------------------------------------------------------------


def test_verify_checks_the_counted_tokens_and_the_plan(reference, tmp_path):
    out = Path(shutil.copytree(reference, tmp_path / "s.zarr"))
    assert verify_store(str(out)).ok
    g = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    attrs = dict(g.attrs)
    attrs["tokens_per_language"] = {"en": 1, "fr": 2, "ru": 3}   # as if counted with another tokenizer
    g.attrs.put(schema.sealed(attrs))
    problems = verify_store(str(out)).problems
    assert any("language 'en': n_tokens is" in p and "tokens_per_language" in p for p in problems), problems
    g.attrs.put(schema.sealed({**attrs, "tokens_per_language": None}))
    stop = g["partials"]["shard_stop"]
    stop[0] = int(stop[0]) + 1
    problems = verify_store(str(out)).problems
    assert any("shard plan of language 'en' does not cover its" in p for p in problems), problems


def test_a_store_from_a_newer_langneurons_is_not_called_damaged(reference, model, corpus, tmp_path, capsys):
    """info, --verify, --resume and --overwrite each say the store is newer than this langneurons
    (not damaged, no --resume advice), and touch nothing."""
    out = Path(shutil.copytree(reference, tmp_path / "s.zarr"))
    g = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    g.attrs.put(schema.sealed({**dict(g.attrs), "schema_version": schema.SCHEMA_VERSION + 1}))
    before = sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*"))
    for argv in (["info", str(out)], ["info", str(out), "--verify"], args(model, corpus, out, "--resume"),
                 args(model, corpus, out, "--overwrite")):
        rc, err = run(argv, capsys)
        assert rc == 2 and len(err.splitlines()) == 1, (argv, err)
        assert f"schema version {schema.SCHEMA_VERSION + 1}" in err and "DAMAGED" not in err, (argv, err)
        assert "newer langneurons" in err or "knows the layout of versions" in err, (argv, err)
    assert sorted((p, p.stat().st_mtime_ns) for p in out.rglob("*")) == before
