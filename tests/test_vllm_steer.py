"""Steering on the vLLM backend gives the HF backend's greedy tokens under the same interventions
(tiny Llama and Qwen2, float32; both sites; replace, add, multiply): compiled (vLLM's default) and
eager (--vllm-eager) engines alike, so compiled steering gives eager steering's tokens; tensor
parallel 2 as well; and `steer --backend vllm` writes what `steer --backend hf` writes.

`make test` runs this module in `.venv-vllm`; elsewhere it is skipped. Each engine starts once."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: `make test` runs this in .venv-vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from fixtures import SENTENCES, tiny_vllm, write_corpus  # noqa: E402

from langneurons.cli import main  # noqa: E402
from langneurons.scoring.profiled import load_at  # noqa: E402
from langneurons.steering import neurons  # noqa: E402
from langneurons.steering.generate import Decoding, HFGenerator, encode_prompts  # noqa: E402

PROMPTS = SENTENCES["en"] + SENTENCES["fr"]
DECODING = Decoding(max_new_tokens=8, temperature=0.0, seed=0, batch_size=4)
D_FF = 106   # even: two tensor-parallel ranks take 53 neurons each


def tables(d_ff: int) -> dict[str, pd.DataFrame]:
    """The conditions compared: none, and each mode's operations on random neurons of both layers
    (a rank's slice boundary, 52/53, among them)."""
    rng = np.random.default_rng(0)
    layers = np.arange(2)
    deact, act = np.zeros((2, d_ff), bool), np.zeros((2, d_ff), bool)
    for i in layers:
        pick = rng.choice([n for n in range(d_ff) if n not in (52, 53)], size=18, replace=False)
        deact[i, pick[:8]], act[i, pick[8:]] = True, True
        act[i, [52, 53]] = True
    v = rng.normal(size=(2, d_ff)) * 2
    out = {"none": neurons.empty_table()}
    for mode, alpha in (("replace", None), ("add", 3.0), ("multiply", -2.0)):
        out[mode] = neurons.operations("steered", "fr", alpha, mode, "gate", layers, deact, act, v, 0.5)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """arch -> (tiny model path, HF generator of it), each made once, on first use."""
    made = {}

    def get(arch):
        if arch not in made:
            path = tiny_vllm(arch, tmp_path_factory.mktemp(arch) / "m", d_ff=D_FF, positions=128)
            made[arch] = path, HFGenerator(load_at(path, device="cpu"), "gate")
        return made[arch]
    return get


# Each engine costs ~20-30 s to start: vLLM's default compiled engine on both sites, on a second
# architecture, and the eager fallback (--vllm-eager; the same ops, installed after the start).
ENGINES = [("llama", "gate", False), ("llama", "down_in", False), ("llama", "gate", True), ("qwen2", "gate", False)]


@pytest.mark.parametrize("arch, site, eager", ENGINES,
                         ids=[f"{a}-{s}-{'eager' if e else 'compiled'}" for a, s, e in ENGINES])
def test_vllm_steers_as_hf_does(models, arch, site, eager):
    """The same greedy tokens as the HF backend under every condition (so compiled steering gives
    eager steering's tokens), and the fluency score (the engine with its operations cleared)
    equals the unsteered HF model's."""
    from langneurons.steering.vllm import VLLMGenerator

    path, hf = models(arch)
    hf.site = site
    vl = VLLMGenerator(load_at(path, device="cpu", backend="vllm", vllm_eager=eager), site)
    try:
        assert vl.plan.compiled is not eager and all(r.compiled is not eager for r in vl.ranks)
        prompts = encode_prompts(hf.tokenizer, PROMPTS, None)
        base = None
        for name, table in tables(D_FF).items():
            want, got = hf.generate(table, prompts, DECODING), vl.generate(table, prompts, DECODING)
            assert got == want, name
            base = base or want
            if name != "none":
                assert want != base, name   # the interventions changed the tokens: the test can fail
        np.testing.assert_allclose(vl.mean_logprob(prompts, base), hf.mean_logprob(prompts, base), rtol=1e-4,
                                   atol=1e-4)
        beyond = tables(D_FF)["add"].copy()
        beyond.loc[beyond.index[-1], "neuron"] = D_FF
        with pytest.raises(ValueError, match=f"neuron {D_FF} is not one of the model's {D_FF} FFN neurons"):
            vl.generate(beyond, prompts, DECODING)
        assert vl.generate(tables(D_FF)["none"], prompts, DECODING) == base   # nothing was left installed
        with pytest.raises(AttributeError):
            vl.site = "down_in" if site == "gate" else "gate"   # the engine's hooks are for its site only
    finally:
        vl.close()


def test_tensor_parallel_2_steers_as_hf_does(models):
    """Each rank steers its own slice of d_ff (the neurons either side of the boundary included),
    compiled."""
    from langneurons.steering.vllm import VLLMGenerator

    path, hf = models("llama")
    hf.site = "gate"
    prompts = encode_prompts(hf.tokenizer, PROMPTS, None)
    two = VLLMGenerator(load_at(path, device="cpu", backend="vllm", tensor_parallel=2), "gate")
    try:
        assert [r.offset for r in two.ranks] == [0, D_FF // 2]
        for name, table in tables(D_FF).items():
            assert two.generate(table, prompts, DECODING) == hf.generate(table, prompts, DECODING), name
    finally:
        two.close()


def test_steer_command_on_vllm_writes_what_hf_writes(tmp_path, capsys):
    model = tiny_vllm("llama", tmp_path / "m", d_ff=D_FF, positions=128)
    corpus = write_corpus(tmp_path / "corpus")
    store = tmp_path / "s.zarr"
    assert main(["profile", "--model", model, "--corpus", corpus, "--out", str(store), "--batch-tokens", "64",
                 "--no-progress"]) == 0
    args = ["steer", str(store), "--source", "en", "--target", "fr,ru", "--prompts", corpus, "--max-prompts", "6",
            "--max-new-tokens", "6", "--top-rate", "0.5", "--filter-rate", "0.5", "--activation-bar-ratio", "0.5",
            "--alpha", "1,3", "--no-plot"]
    got = {}
    for backend in ("hf", "vllm"):   # the eager engine (--vllm-eager): the tests above steer compiled ones
        flags = ["--backend", backend, *(["--vllm-eager"] if backend == "vllm" else [])]
        assert main([*args, *flags, "--out", str(tmp_path / backend)]) == 0, capsys.readouterr().err
        got[backend] = pd.read_json(tmp_path / backend / "generations.jsonl", lines=True)
    key = ["condition", "target", "alpha", "prompt_row"]
    hf, vl = (got[b].sort_values(key, na_position="first").reset_index(drop=True) for b in ("hf", "vllm"))
    assert hf["output_ids"].tolist() == vl["output_ids"].tolist()
    assert (hf["language"] == vl["language"]).all()
    np.testing.assert_allclose(vl["logprob"], hf["logprob"], rtol=1e-4, atol=1e-4)
    assert pd.read_parquet(tmp_path / "hf" / "interventions.parquet").equals(
        pd.read_parquet(tmp_path / "vllm" / "interventions.parquet"))
