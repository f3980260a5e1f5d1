"""Mixture-of-experts counting: routing per language equals an independent per-sentence recount of
each router's choices, the neurons inside each expert equal a per-expert recomputation, the model
computes what it computes unprofiled, and the store holds, checks and scores it all."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import D_FF, E_FF, N_EXPERTS, SENTENCES, TOP_K, make_tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from langneurons.config import ProfileConfig
from langneurons.profiler import hooks, moe, moe_layout
from langneurons.profiler.architectures import ARCHITECTURES, UnsupportedArchitecture, arch_spec
from langneurons.profiler.backends.hf import HFBackend
from oracle import moe_oracle, reference_stats_numpy

MOE_ARCHS = sorted(k for k, v in ARCHITECTURES.items() if v.moe is not None)
# the fixtures' layouts (tests/fixtures.py): (moe_layers, dense_layers, d_ff)
LAYOUTS = {"mixtral": ((0, 1), (), 0), "olmoe": ((0, 1), (), 0), "gpt_oss": ((0, 1), (), 0),
           "qwen2_moe": ((1,), (0, 1), D_FF), "qwen3_moe": ((0,), (1,), D_FF)}


def test_every_moe_architecture_is_covered():
    assert set(MOE_ARCHS) == set(LAYOUTS) == {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "gpt_oss"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    return {a: make_tiny_model(a, root / a) for a in MOE_ARCHS}


def _seqs(path, sentences):
    tok = AutoTokenizer.from_pretrained(path)
    out = []
    for s in sentences:
        enc = tok(s, return_special_tokens_mask=True)
        out.append((enc["input_ids"], [not m for m in enc["special_tokens_mask"]]))
    return out


@pytest.mark.parametrize("site", ["gate", "down_in"])
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_routing_and_expert_neurons_equal_independent_recount(models, arch, site):
    sentences = SENTENCES["en"] + SENTENCES["ru"]
    cfg = ProfileConfig.from_flags(model=str(models[arch]), site=site, threshold=0.0, batch_tokens=48)
    backend = HFBackend(cfg)
    stats = backend.profile(sentences)
    seqs = _seqs(models[arch], sentences)
    n_routed, prob_sum, acts = moe_oracle(models[arch], seqs, site)
    moe_layers, dense_layers, d_ff = LAYOUTS[arch]

    lay = backend.info.moe
    assert (lay["n_experts"], lay["top_k"], lay["expert_d_ff"]) == (N_EXPERTS, TOP_K, E_FF)
    assert (tuple(lay["moe_layers"]), tuple(lay["dense_layers"]), backend.info.d_ff) == (moe_layers, dense_layers, d_ff)
    # routing: exactly the router's choices, counted once per counted token and chosen expert
    np.testing.assert_array_equal(stats.moe["n_routed"], n_routed)
    assert (stats.moe["n_routed"].sum(-1)[list(moe_layers)] == TOP_K * stats.n_tokens).all()
    assert stats.moe["n_routed"].min() >= 0 and (stats.moe["n_routed"][list(moe_layers)] > 0).sum() >= N_EXPERTS
    np.testing.assert_allclose(stats.moe["router_prob_sum"], prob_sum, rtol=1e-6, atol=1e-6)
    # the neurons inside each expert, over the tokens routed to it
    for layer in range(2):
        for e in range(N_EXPERTS):
            a = acts.get((layer, e), np.zeros((0, E_FF)))
            want = reference_stats_numpy([a], 0.0, (0.0,))
            np.testing.assert_array_equal(stats.moe["expert_n_fired"][layer, e], want["n_fired"][0])
            np.testing.assert_array_equal(stats.moe["expert_n_nonfinite"][layer, e], want["n_nonfinite"][0])
            np.testing.assert_allclose(stats.moe["expert_act_sum"][layer, e], want["act_sum"][0], rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(stats.moe["expert_act_sumsq"][layer, e], want["act_sumsq"][0],
                                       rtol=1e-4, atol=1e-3)
    assert 0 < stats.moe["expert_n_fired"].sum() < stats.moe["n_routed"].sum() * E_FF  # not vacuous
    # the dense FFN (dense layers, shared expert): the regular neuron variables, as for dense models
    assert stats.n_fired.shape == (2, d_ff)
    if d_ff:
        dense_acts = sequence_activations_dense(models[arch], seqs, site, dense_layers)
        want = reference_stats_numpy(dense_acts, 0.0, cfg.counting.bin_edges)
        np.testing.assert_array_equal(stats.n_fired[list(dense_layers)], want["n_fired"])
        np.testing.assert_array_equal(stats.act_hist[list(dense_layers)], want["act_hist"])
        others = [i for i in range(2) if i not in dense_layers]
        assert stats.act_hist[others].sum() == 0 and stats.n_fired[list(dense_layers)].sum() > 0


def sequence_activations_dense(path, seqs, site, dense_layers):
    """The dense FFN's site per dense layer: the MLP of a dense layer, or the shared expert."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, experts_implementation="eager").eval()
    captured = {}
    handles = []
    for i in dense_layers:
        mlp = model.model.layers[i].mlp
        ffn = getattr(mlp, "shared_expert", mlp)

        def pre(m, args, i=i):
            g = m.act_fn(m.gate_proj(args[0]))
            captured.setdefault(i, []).append(g if site == "gate" else g * m.up_proj(args[0]))
        handles.append(ffn.register_forward_pre_hook(pre))
    per_layer = {i: [] for i in dense_layers}
    with torch.no_grad():
        for ids, keep in seqs:
            captured.clear()
            model(input_ids=torch.tensor([ids]))
            for i in dense_layers:
                a = captured[i][0].reshape(-1, captured[i][0].shape[-1])
                per_layer[i].append(a[torch.tensor(keep)].double().numpy())
    for h in handles:
        h.remove()
    return [np.concatenate(per_layer[i]) for i in dense_layers]


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_profiling_leaves_the_model_output_unchanged(models, arch):
    """The experts' per-expert loop is transformers' eager one: hidden states equal the eager
    model's bit for bit, with routing and expert hooks installed."""
    model = AutoModelForCausalLM.from_pretrained(models[arch], dtype=torch.float32,
                                                 experts_implementation="eager").eval()
    ids = torch.tensor([[1, 40, 41, 42, 43, 44], [1, 50, 51, 52, 0, 0]])
    attn = (ids != 0).long()
    with torch.no_grad():
        want = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
        layout = moe_layout.moe_layout(model, arch_spec(arch), expert_neurons=True)
        from langneurons.kernels.reference import Accumulator, accumulate_
        state = hooks.HookState(Accumulator.zeros(1, 2, max(layout.expert_d_ff, 1), (0.0,), 0.0), accumulate_,
                                compact=False, site="down_in")
        macc = moe.MoeAccumulator.zeros(1, 2, layout.n_experts, 0.0, torch.device("cpu"), layout.expert_d_ff)
        state.set_batch(torch.where(attn.reshape(-1) > 0, 0, -1).int(), torch.device("cpu"))
        with moe.installed(model, arch_spec(arch), state, macc):
            got = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
        again = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state  # hooks removed
    assert torch.equal(got, want) and torch.equal(again, want)
    assert int(macc.n_routed.sum()) == len(layout.moe_layers) * TOP_K * int(attn.sum())
    assert all("forward" not in vars(getattr(b, "experts")) for _, b in moe_layout.sparse_blocks(model, arch_spec(arch)))
    # a wrapper another library installed on an experts module (accelerate does) is put back
    experts = moe_layout.sparse_blocks(model, arch_spec(arch))[0][1].experts
    wrapper = experts.forward
    experts.forward = wrapper
    with moe.installed(model, arch_spec(arch), state, macc):
        assert experts.forward is not wrapper
    assert vars(experts)["forward"] is wrapper


def test_padding_and_special_tokens_are_never_routed(models):
    """Counting only follows token_lang: the same sentence alone, and padded beside a long one,
    gives the same n_routed (BOS and padding excluded)."""
    cfg = ProfileConfig.from_flags(model=str(models["mixtral"]), threshold=0.0, batch_tokens=4096)
    backend = HFBackend(cfg)
    alone = backend.profile(["hello"])
    padded = backend.profile(["hello", "a fox jumps over the lazy dog today and then some more words"])
    long = backend.profile(["a fox jumps over the lazy dog today and then some more words"])
    np.testing.assert_array_equal(padded.moe["n_routed"], alone.moe["n_routed"] + long.moe["n_routed"])
    assert alone.moe["n_routed"].sum() == 2 * TOP_K * alone.n_tokens


def test_fused_mlp_refused_for_moe_with_a_clear_message(models):
    from langneurons.profiler.plan import model_plan

    cfg = ProfileConfig.from_flags(model=str(models["olmoe"]), fused_mlp=True)
    with pytest.raises(UnsupportedArchitecture, match="not the experts of olmoe"):
        model_plan(cfg, in_process=True)


# --- the store --------------------------------------------------------------------------------


@pytest.fixture()
def corpus(tmp_path):
    from fixtures import write_corpus

    return write_corpus(tmp_path / "corpus")


def _profile(models, arch, corpus, out, **kw):
    from langneurons.run import profile

    return profile(ProfileConfig.from_flags(model=str(models[arch]), corpus=corpus, out=str(out), shard_size=5,
                                            batch_tokens=64, **kw), progress=False)


@pytest.mark.parametrize("arch", ["qwen2_moe", "mixtral"])
def test_store_holds_routing_and_expert_variables(models, corpus, tmp_path, arch):
    import xarray as xr

    from langneurons import open_partials, open_results
    from langneurons.cluster.worker import Worker
    from langneurons.store import schema
    from langneurons.store.reader import verify_store

    out = tmp_path / "r.zarr"
    _profile(models, arch, corpus, out, keep_partials="counts")
    ds = open_results(str(out))  # checks: every token routed top_k times per routing layer, ...
    moe_layers, dense_layers, d_ff = LAYOUTS[arch]
    assert dict(ds.sizes) == {"language": 3, "layer": 2, "neuron": d_ff, "bin": 16, "expert": N_EXPERTS,
                              "expert_neuron": E_FF}
    assert ds["n_routed"].dims == ("language", "layer", "expert") and ds["n_routed"].dtype == np.int64
    assert ds["router_prob_sum"].dtype == np.float64
    assert ds["expert_n_fired"].dims == ("language", "layer", "expert", "expert_neuron")
    assert set(ds.attrs) == set(schema.ATTRS)
    assert ds.attrs["moe"]["moe_layers"] == list(moe_layers) and ds.attrs["moe"]["dense_layers"] == list(dense_layers)
    assert xr.open_zarr(out)["n_routed"].shape == (3, 2, N_EXPERTS)  # plain xarray reads it too
    # totals equal one backend run over each language's rows (the shards' sums)
    worker = Worker(ProfileConfig.from_flags(model=str(models[arch]), batch_tokens=64), str(out))
    try:
        for li, lang in enumerate(ds["language"].values):
            direct = worker.backend.profile(SENTENCES[str(lang)] * 3)
            np.testing.assert_array_equal(ds["n_routed"].values[li], direct.moe["n_routed"])
            np.testing.assert_array_equal(ds["expert_n_fired"].values[li], direct.moe["expert_n_fired"])
            np.testing.assert_allclose(ds["router_prob_sum"].values[li], direct.moe["router_prob_sum"], rtol=1e-6)
    finally:
        worker.close()
    # the kept count partials include routing, for bootstrap over experts
    parts = open_partials(str(out))
    assert {"n_routed", "expert_n_fired", "expert_n_nonfinite"} <= set(parts.data_vars)
    assert "router_prob_sum" not in parts and "expert_act_sum" not in parts
    np.testing.assert_array_equal(parts["n_routed"].sum("shard").values, ds["n_routed"].sum("language").values)
    rep = verify_store(str(out))
    assert rep.ok, rep.problems


def test_store_check_catches_inconsistent_routing(models, corpus, tmp_path):
    """A store whose n_routed does not add up to top_k per token is refused, naming the cause."""
    import zarr

    from langneurons import open_results
    from langneurons.store.reader import ResultsError

    out = tmp_path / "r.zarr"
    _profile(models, "olmoe", corpus, out)
    arr = zarr.open_array(str(out / "n_routed"), mode="r+")
    v = arr[...]
    v[1, 0, 2] += 1
    arr[...] = v
    with pytest.raises(ResultsError, match="n_routed does not add up to top_k"):
        open_results(str(out))


# --- scoring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe"])
def test_score_prints_the_expert_table_and_writes_the_heatmap(models, corpus, tmp_path, capsys, arch):
    from langneurons.cli import main

    out = tmp_path / "r.zarr"
    _profile(models, arch, corpus, out)
    report = tmp_path / "report"
    moe_layers, dense_layers, d_ff = LAYOUTS[arch]
    assert main(["score", str(out), "--plot", "--export", "--out", str(report), "--pivot", "fr",
                 "--bootstrap", "5"]) == 0
    text = capsys.readouterr().out
    # routing: JS intervals per routing layer for every language but the pivot, from kept n_routed
    boot = text.split("JS divergence from fr, 95% intervals per routing layer:\n")[1].splitlines()
    assert [b.split(":")[0].strip() for b in boot[:2]] == ["en", "ru"]
    assert all(f"{layer}:[" in boot[0] for layer in moe_layers)
    if d_ff:  # the dense layers' neurons, from kept n_fired
        assert "per-layer 95% intervals (per-language bounds, summed) assignments: 0:[" in text
    lines = text.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("layer") and "JS en" in ln)
    assert "JS fr" in lines[head] and "H ru" in lines[head] and "#en" in lines[head]
    rows = lines[head + 1: head + 1 + len(moe_layers)]
    assert [int(r.split()[0]) for r in rows] == list(moe_layers)
    fr_js = [float(r.split()[2]) for r in rows]  # columns: layer, JS en, JS fr, JS ru, ...
    assert fr_js == [0.0] * len(moe_layers)      # the pivot's divergence from itself
    assert all(0.0 < float(r.split()[1]) <= 1.0 for r in rows)
    assert "divergence from fr" in text
    if d_ff:
        assert "LAPE language-specific dense-FFN neurons" in text
    else:
        assert "no dense FFN neurons to score" in text
    for f in ("routing_heatmap.png", "routing_heatmap.svg", "routing_divergence.png", "experts.csv",
              "routing.csv", "expert_masks.npz"):
        assert (report / f).stat().st_size > 0, f
    import pandas as pd

    table = pd.read_csv(report / "experts.csv")
    assert len(table) == 3 * len(moe_layers) * N_EXPERTS
    assert set(table["layer"]) == set(moe_layers)
    assert np.allclose(table.groupby(["language", "layer"])["routing_rate"].sum(), TOP_K)


def test_pivot_on_a_dense_store_or_an_unknown_language_is_refused(models, corpus, tmp_path):
    from langneurons.scoring import routing

    out = tmp_path / "r.zarr"
    _profile(models, "olmoe", corpus, out)
    from langneurons import open_results

    ds = open_results(str(out))
    with pytest.raises(ValueError, match="--pivot 'de' is not a language of this store"):
        routing.routing_divergence(routing.routing_distribution(ds), "de")


def _routing_ds(n_routed, n_tokens, top_k):
    import xarray as xr

    n_routed = np.asarray(n_routed)
    N, L, E = n_routed.shape
    return xr.Dataset({"n_routed": (("language", "layer", "expert"), n_routed),
                       "n_tokens": (("language",), np.asarray(n_tokens))},
                      coords={"language": ["en", "fr", "ru"][:N], "layer": np.arange(L), "expert": np.arange(E)},
                      attrs={"moe": {"moe_layers": list(range(L)), "top_k": top_k, "n_experts": E}})


def test_routing_divergence_and_entropy_on_known_distributions():
    from langneurons.scoring import routing

    # layer 0: fr routes exactly like en; ru uses experts disjoint from en's -> JS = 1 bit.
    # layer 1: en uniform over 4 experts (entropy 1), fr on 2 of them (entropy 0.5, JS known).
    ds = _routing_ds([[[5, 5, 0, 0], [5, 5, 5, 5]],
                      [[10, 10, 0, 0], [0, 0, 10, 10]],
                      [[0, 0, 5, 5], [5, 5, 5, 5]]], [5, 10, 5], top_k=2)
    # (layer 1 of en: 20 slots for 5 tokens of top-2 would be 10; the rates, not the counts, matter here)
    d = routing.routing_distribution(ds.assign(n_routed=ds["n_routed"] / ds["n_routed"].sum("expert")
                                               * 2 * ds["n_tokens"]))
    div = routing.routing_divergence(d, "en")
    ent = routing.routing_entropy(d)
    np.testing.assert_allclose(div.sel(language="en").values, [0, 0], atol=1e-12)
    np.testing.assert_allclose(div.sel(language="fr").values[0], 0.0, atol=1e-12)
    np.testing.assert_allclose(div.sel(language="ru").values[0], 1.0, atol=1e-12)
    # JS(uniform4, half on experts 2,3): M = (1/8,1/8,3/8,3/8); H(M) - (2 + 1)/2
    hm = -(2 * (1 / 8) * np.log2(1 / 8) + 2 * (3 / 8) * np.log2(3 / 8))
    np.testing.assert_allclose(div.sel(language="fr").values[1], hm - 1.5, rtol=1e-12)
    np.testing.assert_allclose(ent.sel(language="en").values, [0.5, 1.0], rtol=1e-12)


def test_expert_lape_finds_the_language_specific_expert():
    from langneurons.scoring import routing

    # 3 languages, 1 layer, 8 experts, top-2; expert 7 is used by ru only, expert 6 by fr only,
    # the rest evenly by everyone
    base = np.full((3, 1, 8), 10)
    base[:, 0, 6:] = 0
    base[1, 0, 6] = base[2, 0, 7] = 60
    base[0, 0, 0] += 60
    ds = _routing_ds(base, [60, 60, 60], top_k=2)
    res = routing.expert_lape(routing.routing_rate(ds), routing.LapeConfig(top_rate=0.25, filter_rate=0.5,
                                                                           activation_bar_ratio=0.8))
    masks = res.masks.transpose("language", "layer", "expert").values[:, 0]
    assert masks[1, 6] and masks[2, 7] and not masks[:, 1:6].any()
    assert res.masks.dims == ("language", "layer", "expert")


def test_ablate_refuses_a_moe_store_without_dense_neurons(models, corpus, tmp_path):
    from langneurons.scoring.ablation import ablate_report
    from langneurons.scoring.options import AblateConfig

    out = tmp_path / "r.zarr"
    _profile(models, "mixtral", corpus, out)
    with pytest.raises(ValueError, match="this mixtral model has none"):
        ablate_report(str(out), AblateConfig(heldout=corpus))


def test_resume_with_another_moe_layout_is_refused(models, corpus, tmp_path, monkeypatch):
    """The MoE variables a run writes follow its backend (expert neurons: HF only): a resume that
    would write others (e.g. --backend vllm on an HF store) is refused before anything runs."""
    from langneurons.store.writer import StoreError

    out = tmp_path / "r.zarr"
    _profile(models, "olmoe", corpus, out)
    real = moe_layout.moe_layout
    monkeypatch.setattr(moe_layout, "moe_layout", lambda m, t, *, expert_neurons: real(m, t, expert_neurons=False))
    with pytest.raises(StoreError, match=r"resume with the backend that started it \(--backend hf\)"):
        _profile(models, "olmoe", corpus, out, resume=True)


@pytest.mark.parametrize("kernel", ["reference", "triton"])
def test_every_kernel_counts_experts_as_the_cpu_default(models, kernel):
    """The experts' sites go through the same dispatch as the dense ones: the torch reference and
    the Triton kernel (interpreted here) give the numba default's integers, sums to rounding."""
    pytest.importorskip("triton")
    sentences = SENTENCES["en"] + SENTENCES["fr"]
    path = str(models["qwen2_moe"])
    want = HFBackend(ProfileConfig.from_flags(model=path, batch_tokens=64, kernel="numba")).profile(sentences)
    got = HFBackend(ProfileConfig.from_flags(model=path, batch_tokens=64, kernel=kernel)).profile(sentences)
    for v in ("n_routed", "expert_n_fired", "expert_n_nonfinite"):
        np.testing.assert_array_equal(got.moe[v], want.moe[v])
    np.testing.assert_allclose(got.moe["expert_act_sum"], want.moe["expert_act_sum"], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got.n_fired, want.n_fired)


def test_divergence_bootstrap_is_seeded_and_brackets_the_spread(models, corpus, tmp_path):
    from langneurons import open_partials, open_results
    from langneurons.scoring import routing

    out = tmp_path / "r.zarr"
    _profile(models, "olmoe", corpus, out)
    ds, parts = open_results(str(out)), open_partials(str(out))
    lo, hi = routing.divergence_bootstrap(parts, ds, "en", n_resamples=30)
    lo2, hi2 = routing.divergence_bootstrap(parts, ds, "en", n_resamples=30)
    assert lo.equals(lo2) and hi.equals(hi2)                          # seeded
    assert lo.dims == ("language", "layer") and list(lo["layer"].values) == [0, 1]
    assert (lo.sel(language="en") == 0).all() and (hi.sel(language="en") == 0).all()
    assert (lo <= hi).all() and (hi.sel(language=["fr", "ru"]) > lo.sel(language=["fr", "ru"])).all()
    assert ((hi >= 0) & (hi <= 1)).all()
    with pytest.raises(ValueError, match="n_resamples must be >= 1"):
        routing.divergence_bootstrap(parts, ds, "en", n_resamples=0)
