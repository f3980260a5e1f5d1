"""LAPE on a hand-computed example, post-hoc thresholds, and `langneurons score` on a real store."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from langneurons.scoring import LapeConfig, firing_probability, firing_probability_at, lape, n_above


def dataset(p_en, p_fr, n_tokens=100):
    """A results-shaped Dataset with 2 languages, 1 layer, given firing probabilities."""
    n_fired = np.round(np.array([p_en, p_fr])[:, None, :] * n_tokens).astype(np.int64)
    return xr.Dataset(
        {"n_fired": (("language", "layer", "neuron"), n_fired),
         "n_tokens": (("language",), np.array([n_tokens, n_tokens]))},
        coords={"language": ["en", "fr"], "layer": [0], "neuron": np.arange(n_fired.shape[-1])},
    )


def test_lape_hand_computed():
    # neuron:   0     1     2     3     4
    # en      0.9   0.5   0.0   0.1   0.0
    # fr      0.0   0.5   0.8   0.05  0.0
    # entropy 0     ln2   0     0.64  (0: never fires)
    # sorted p: 0 0 0 0 .05 .1 .5 .5 .8 .9
    # filter_rate 0.5 -> 5th smallest = 0.05: neuron 4 (no p > 0.05) is filtered out
    # top_rate 0.4 -> round(5 * 0.4) = 2 lowest-entropy candidates: neurons 0 and 2
    # activation_bar_ratio 0.7 -> 7th smallest = 0.5: en gets 0 (0.9 > 0.5), fr gets 2 (0.8)
    ds = dataset([0.9, 0.5, 0.0, 0.1, 0.0], [0.0, 0.5, 0.8, 0.05, 0.0])
    r = lape(firing_probability(ds), LapeConfig(top_rate=0.4, filter_rate=0.5, activation_bar_ratio=0.7))
    assert r.filter_value == pytest.approx(0.05) and r.activation_bar == pytest.approx(0.5)
    assert r.selected.values[0].tolist() == [True, False, True, False, False]
    assert np.flatnonzero(r.masks.sel(language="en").values[0]).tolist() == [0]
    assert np.flatnonzero(r.masks.sel(language="fr").values[0]).tolist() == [2]
    assert r.per_layer().values.tolist() == [[1, 1]]
    assert r.entropy.values[0, 1] == pytest.approx(np.log(2))

    # a higher bar (9th smallest = 0.8, strict) leaves French with no neuron
    r = lape(firing_probability(ds), LapeConfig(top_rate=0.4, filter_rate=0.5, activation_bar_ratio=0.9))
    assert r.per_layer().values.tolist() == [[1, 0]]


def test_lape_config_rejects_bad_rates():
    with pytest.raises(ValueError, match="top_rate"):
        LapeConfig(top_rate=0.0)
    with pytest.raises(ValueError, match="filter_rate"):
        LapeConfig(filter_rate=1.5)


def test_threshold_from_histogram_equals_direct_count():
    rng = np.random.default_rng(0)
    edges = np.array([-1.0, -0.1, 0.0, 0.25, 0.5, 1.0])
    acts = rng.normal(0, 0.8, size=(2, 3, 500, 7))             # [language, layer, token, neuron]
    acts[..., :50, 0] = 0.5                                      # values exactly on an edge
    idx = np.searchsorted(edges, acts, side="left")              # right-closed bins
    hist = np.stack([(idx == k).sum(2) for k in range(len(edges) + 1)], axis=-1)
    ds = xr.Dataset(
        {"act_hist": (("language", "layer", "neuron", "bin"), hist),
         "n_tokens": (("language",), np.array([500, 500]))},
        coords={"language": ["a", "b"], "bin_upper": ("bin", np.append(edges, np.inf))},
    )
    for t in edges:
        direct = (acts > t).sum(2)
        np.testing.assert_array_equal(n_above(ds, t).values, direct)
    np.testing.assert_allclose(firing_probability_at(ds, 0.5).values, (acts > 0.5).mean(2))
    with pytest.raises(ValueError, match="not a histogram edge"):
        n_above(ds, 0.3)


def test_score_command_on_a_profiled_store(tmp_path, capsys):
    from fixtures import SENTENCES, make_tiny_model

    from langneurons.cli import main

    model = make_tiny_model("qwen2", tmp_path / "m")
    corpus = tmp_path / "c"
    corpus.mkdir()
    for lang, s in SENTENCES.items():
        (corpus / f"{lang}.txt").write_text("\n".join(s) + "\n", encoding="utf-8")
    out = tmp_path / "r.zarr"
    assert main(["profile", "--model", str(model), "--corpus", str(corpus), "--out", str(out),
                 "--no-progress"]) == 0
    assert main(["score", str(out), "--plot", "--out", str(tmp_path / "rep"), "--top-rate", "0.2"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("layer"))
    assert lines[header].split() == ["layer", "en", "fr", "ru", "any"]
    assert lines[header + 1].split()[0] == "0" and lines[header + 3].split()[0] == "total"
    assert (tmp_path / "rep" / "lape_per_layer.png").stat().st_size > 1000
    assert main(["score", str(out), "--threshold", "0.3"]) == 2          # not an edge: clear error
    assert "not a histogram edge" in capsys.readouterr().err
