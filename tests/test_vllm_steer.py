"""Steering on the vLLM backend gives the HF backend's greedy tokens under the same interventions
(tiny Llama and Qwen2, float32; both sites; replace, add, multiply), tensor parallel 2 gives tensor
parallel 1's, and `steer --backend vllm` writes what `steer --backend hf` writes.

`make test` runs this module in `.venv-vllm`; elsewhere it is skipped. Each engine starts once per
module (fixtures)."""

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


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def pair(request, tmp_path_factory):
    """(HF generator, vLLM generator) of one tiny model, the vLLM engine started once."""
    from langneurons.steering.vllm import VLLMGenerator

    path = tiny_vllm(request.param, tmp_path_factory.mktemp(request.param) / "m", d_ff=D_FF, positions=128)
    hf = HFGenerator(load_at(path, device="cpu"), "gate")
    vl = VLLMGenerator(load_at(path, device="cpu", backend="vllm"), "gate")
    yield request.param, path, hf, vl
    vl.close()


@pytest.mark.parametrize("site", ["gate", "down_in"])
def test_vllm_steers_as_hf_does(pair, site):
    arch, _, hf, vl = pair
    hf.site = vl.site = site
    prompts = encode_prompts(hf.tokenizer, PROMPTS, None)
    base = None
    for name, table in tables(D_FF).items():
        want, got = hf.generate(table, prompts, DECODING), vl.generate(table, prompts, DECODING)
        assert got == want, (arch, site, name)
        base = base or want
        if name != "none":
            assert want != base, (arch, site, name)   # the interventions changed the tokens: the test can fail
    np.testing.assert_allclose(vl.mean_logprob(prompts, base), hf.mean_logprob(prompts, base), rtol=1e-4, atol=1e-4)


def test_tensor_parallel_2_steers_as_1(pair):
    """Each rank steers its own slice of d_ff (the neurons either side of the boundary included)."""
    from langneurons.steering.vllm import VLLMGenerator

    arch, path, hf, vl = pair
    if arch != "llama":
        pytest.skip("one architecture is enough for the split; each engine start costs ~20 s")
    hf.site = vl.site = "gate"
    prompts = encode_prompts(hf.tokenizer, PROMPTS, None)
    two = VLLMGenerator(load_at(path, device="cpu", backend="vllm", tensor_parallel=2), "gate")
    try:
        for name, table in tables(D_FF).items():
            assert two.generate(table, prompts, DECODING) == vl.generate(table, prompts, DECODING), name
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
    for backend in ("hf", "vllm"):
        assert main([*args, "--backend", backend, "--out", str(tmp_path / backend)]) == 0, capsys.readouterr().err
        got[backend] = pd.read_json(tmp_path / backend / "generations.jsonl", lines=True)
    key = ["condition", "target", "alpha", "prompt_row"]
    hf, vl = (got[b].sort_values(key, na_position="first").reset_index(drop=True) for b in ("hf", "vllm"))
    assert hf["output_ids"].tolist() == vl["output_ids"].tolist()
    assert (hf["language"] == vl["language"]).all()
    np.testing.assert_allclose(vl["logprob"], hf["logprob"], rtol=1e-4, atol=1e-4)
    assert pd.read_parquet(tmp_path / "hf" / "interventions.parquet").equals(
        pd.read_parquet(tmp_path / "vllm" / "interventions.parquet"))
