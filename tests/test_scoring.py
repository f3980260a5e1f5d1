"""Flatness, overlap, bootstrap, exports and ablation on constructed inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from langneurons.scoring import LapeConfig, bootstrap, flatness, normalised_entropy, overlap
from langneurons.scoring.export import load_masks, write_exports


def masks(sets: dict[str, list[tuple[int, int]]], L=2, F=4) -> xr.DataArray:
    m = np.zeros((len(sets), L, F), dtype=bool)
    for i, cells in enumerate(sets.values()):
        for layer, n in cells:
            m[i, layer, n] = True
    return xr.DataArray(m, dims=("language", "layer", "neuron"),
                        coords={"language": list(sets), "layer": range(L), "neuron": range(F)})


def test_normalised_entropy_known_values():
    p = xr.DataArray(np.array([[0.5, 0.2, 0.0, 0.0], [0.5, 0.0, 0.0, 0.3], [0.5, 0.0, 0.0, 0.3]]),
                     dims=("language", "neuron"))
    h = normalised_entropy(p).values
    assert h[0] == pytest.approx(1.0)             # equal in all three languages
    assert h[1] == pytest.approx(0.0)             # one language only
    assert np.isnan(h[2])                         # never active: undefined, not "specific"
    assert h[3] == pytest.approx(np.log(2) / np.log(3))


def test_flatness_of_a_dataset():
    ds = xr.Dataset({"n_fired": (("language", "layer", "neuron"), np.array([[[10, 0]], [[10, 5]]])),
                     "act_sum": (("language", "layer", "neuron"), np.array([[[-4.0, 0.0]], [[4.0, 2.0]]])),
                     "n_tokens": (("language",), np.array([100, 100]))})
    f = flatness(ds)
    assert f["probability"].values[0].tolist() == pytest.approx([1.0, 0.0])
    assert f["magnitude"].values[0, 0] == pytest.approx(1.0)  # |-0.04| == |0.04|: equally strong


def test_overlap_iou_and_intersections():
    m = masks({"en": [(0, 0), (0, 1), (1, 2)], "fr": [(0, 1), (1, 2), (1, 3)], "zh": []})
    ov = overlap(m)
    assert ov["intersection"].sel(layer=0, language="en", language2="fr") == 1
    assert ov["iou"].sel(layer=0, language="en", language2="fr") == pytest.approx(1 / 2)
    assert ov["iou"].sel(layer=1, language="en", language2="fr") == pytest.approx(1 / 2)
    assert ov["intersection_all"].sel(language="en", language2="fr") == 2
    assert ov["iou_all"].sel(language="en", language2="fr") == pytest.approx(2 / 4)
    assert ov["iou_all"].sel(language="en", language2="en") == 1.0
    assert np.isnan(ov["iou_all"].sel(language="zh", language2="zh"))


def partials(consistent: bool, seed=0):
    """3 shards per language; language a fires neuron 0, b fires neuron 1 (others rarely)."""
    rng = np.random.default_rng(seed)
    S, L, F = 6, 1, 50
    fired = rng.integers(0, 3, size=(S, L, F))
    for s in range(S):
        fired[s, 0, s // 3] = 90 if consistent or s % 3 == 2 else 1  # else: 1 shard of 3 fires
    return xr.Dataset({"n_fired": (("shard", "layer", "neuron"), fired),
                       "n_tokens": (("shard",), np.full(S, 100))},
                      coords={"shard_language": ("shard", ["a"] * 3 + ["b"] * 3), "layer": [0],
                              "neuron": np.arange(F)})


def test_bootstrap_is_deterministic_and_stable_on_consistent_data():
    cfg = LapeConfig(top_rate=0.04)  # 2 of 50 neurons
    b1 = bootstrap(partials(True), ["a", "b"], n_resamples=20, config=cfg, seed=3)
    b2 = bootstrap(partials(True), ["a", "b"], n_resamples=20, config=cfg, seed=3)
    assert b1.stability.equals(b2.stability)
    assert float(b1.stability.sel(language="a", layer=0, neuron=0)) == 1.0
    assert float(b1.stability.sel(language="b", layer=0, neuron=1)) == 1.0
    # one shard disagreeing makes the selection less stable
    b3 = bootstrap(partials(False), ["a", "b"], n_resamples=50, config=cfg, seed=3)
    assert float(b3.stability.sel(language="a", layer=0, neuron=0)) < 1.0
    assert (b1.per_layer_low <= b1.per_layer_median).all() and (b1.per_layer_median <= b1.per_layer_high).all()


def test_exports_round_trip(tmp_path):
    m = masks({"en": [(0, 0), (1, 3)], "fr": [(1, 2)]})
    p = xr.DataArray(np.full((2, 2, 4), 0.5), dims=m.dims, coords=m.coords)
    from langneurons.scoring.lape import LapeResult

    res = LapeResult(masks=m, selected=m.any("language"), entropy=xr.zeros_like(m.any("language"), float),
                     filter_value=0.0, activation_bar=0.0)
    write_exports(p, res, tmp_path)
    loaded = load_masks(tmp_path / "masks.pt")
    assert loaded["en"][0].tolist() == [0] and loaded["en"][1].tolist() == [3] and loaded["fr"][1].tolist() == [2]
    npz = np.load(tmp_path / "masks.npz")
    assert npz["fr"].tolist() == [[1, 2]]
    import pandas as pd

    table = pd.read_csv(tmp_path / "neurons.csv")
    assert len(table) == 3 and set(table["language"]) == {"en", "fr"}


def test_ablation_changes_only_what_it_zeroes(tmp_path):
    from fixtures import SENTENCES, make_tiny_model

    from langneurons.scoring.ablation import ablate, diagonal_report
    from langneurons.scoring.profiled import load_at

    path = load_at(str(make_tiny_model("llama", tmp_path / "m")))
    m = masks({"en": [(layer, n) for layer in range(2) for n in range(37)], "fr": []}, L=2, F=37)
    res = ablate(path, m, {"en": SENTENCES["en"], "fr": SENTENCES["fr"]}, site="gate")
    assert (res["ratio"].sel(ablated="fr").values == 1.0).all()       # nothing zeroed: identical
    assert (res["ratio"].sel(ablated="en").values != 1.0).all()       # every neuron zeroed: changed
    text = diagonal_report(res)
    assert "perplexity ratio" in text and "diagonal" in text
    # the hooks are gone afterwards: perplexity is back to the base value
    res2 = ablate(path, m.sel(language=["fr"]), {"en": SENTENCES["en"]}, site="down_in")
    assert res2["ratio"].values.tolist() == [[1.0]]
    assert torch.isfinite(torch.tensor(res["base"].values)).all()
