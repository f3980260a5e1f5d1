"""--fused-mlp: the fused SiLU-gated kernel returns the model's own activation and the statistics
of the chosen site, equal to its torch twin; the shadowed MLP forward changes nothing.

On CPU the kernel runs under TRITON_INTERPRET=1, where numpy's exp stands in for CUDA's expf, so
the twin is given the same exp to compare bit for bit; on a CUDA machine the twin is torch's own
silu and the same tests demand bit-identity with it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton is imported
triton = pytest.importorskip("triton", reason="triton is not installed: pip install 'langneurons[triton]'")

from fixtures import SENTENCES, make_tiny_model  # noqa: E402

from langneurons.config import ProfileConfig  # noqa: E402
from langneurons.kernels import dispatch, reference, triton_fused  # noqa: E402
from langneurons.kernels.reference import Accumulator  # noqa: E402
from langneurons.profiler import fused, hooks  # noqa: E402
from langneurons.profiler.architectures import UnsupportedArchitecture, arch_spec  # noqa: E402
from langneurons.profiler.backends.hf import HFBackend  # noqa: E402
from langneurons.store.schema import DEFAULT_EDGES, NEURON_VARS  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
GATED_SILU = ["llama", "mistral", "qwen2", "qwen3", "cohere", "cohere2", "olmo2"]


def device_silu(gate: torch.Tensor) -> torch.Tensor:
    """The silu the kernel must equal on this machine: torch's on CUDA; under the interpreter the
    same formula in fp32 with numpy's exp (the interpreter's exp), rounded once to the dtype."""
    if DEVICE == "cuda":
        return torch.nn.functional.silu(gate)
    g = gate.float()
    e = torch.from_numpy(np.exp(-g.numpy()))
    return (g / (1 + e)).to(gate.dtype)


def gate_up(T, F, dtype, seed=0, merged=False, nonfinite=False):
    """gate and up [T, F]; `merged`: both slices of one [T, 2F+3] tensor (row stride 2F+3), as
    a merged gate_up projection gives."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(T, 2 * F + 3, generator=g) * 4
    w[1::3, ::2] = 0.0  # silu(0) * up = 0: values exactly on the threshold, which never fire
    if nonfinite and T > 2:
        w[0, 0], w[1, min(1, F - 1)], w[2, F] = float("nan"), float("inf"), float("-inf")
    w = w.to(dtype).to(DEVICE)
    if merged:
        return w[:, :F], w[:, F + 3:2 * F + 3]
    return w[:, :F].contiguous(), w[:, F + 3:2 * F + 3].contiguous()


def run_both(gate, up, lang, n_languages, site, threshold=0.0):
    accs, ys = [], []
    for fn, kw in ((triton_fused.silu_mul_accumulate_, {}),
                   (reference.silu_mul_accumulate_, {"act": device_silu})):
        acc = Accumulator.zeros(n_languages, 2, gate.shape[-1], DEFAULT_EDGES, threshold, DEVICE)
        ys.append(fn(acc, 1, gate, up, lang, site, **kw))
        fn(acc, 1, gate, up, lang, site, **kw)  # accumulates
        accs.append(acc)
    return ys, accs


def assert_same(ys, accs, dtype):
    y, y_ref = ys
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    same = (y == y_ref) | (torch.isnan(y) & torch.isnan(y_ref))
    assert bool(same.all()), f"{int((~same).sum())} of {y.numel()} activation values differ"
    for v in ("n_fired", "act_hist", "n_nonfinite"):
        assert torch.equal(getattr(accs[0], v), getattr(accs[1], v)), v
    for v in ("act_sum", "act_sumsq"):
        torch.testing.assert_close(getattr(accs[0], v), getattr(accs[1], v),
                                   rtol=TOL[dtype], atol=TOL[dtype] * 10, msg=v)


@pytest.mark.parametrize("site", ["gate", "down_in"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("T,F", [(1, 1), (37, 37), (1023, 131)], ids=lambda v: str(v))
def test_fused_kernel_equals_twin(T, F, dtype, site):
    gate, up = gate_up(T, F, dtype)
    lang = torch.zeros(T, dtype=torch.int32, device=DEVICE)
    lang[1::5] = -1  # padding and special tokens: activation computed, never counted
    ys, accs = run_both(gate, up, lang, 1, site)
    assert_same(ys, accs, dtype)
    assert T * F < 100 or int(accs[0].n_fired.sum()) > 0


@pytest.mark.parametrize("site", ["gate", "down_in"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_fused_several_languages_strided_nonfinite(dtype, site):
    gate, up = gate_up(97, 67, dtype, seed=1, merged=True, nonfinite=True)
    assert gate.stride(0) == 2 * 67 + 3
    lang = torch.randint(-1, 3, (97,), generator=torch.Generator().manual_seed(1), dtype=torch.int32)
    lang[:3] = torch.tensor([0, 1, 2], dtype=torch.int32)  # the non-finite rows are counted
    ys, accs = run_both(gate, up, lang.to(DEVICE), 3, site, threshold=0.1)
    assert_same(ys, accs, dtype)
    assert int(accs[0].n_nonfinite.sum()) > 0
    counted = torch.stack([(lang == n).sum() for n in range(3)]).to(DEVICE) * 2
    per_neuron = accs[0].act_hist[:, 1].sum(-1) + accs[0].n_nonfinite[:, 1]
    assert bool((per_neuron == counted[:, None]).all())  # every counted value lands exactly once


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_fused_output_against_torch_silu(dtype):
    """What the model computes itself: on CUDA bit for bit; under the interpreter the only
    difference is numpy's exp vs torch's, which moves the fp32 silu by at most an ulp or two."""
    gate, up = gate_up(513, 96, dtype, seed=3)
    y = triton_fused.silu_mul_accumulate_(Accumulator.zeros(1, 1, 96, DEFAULT_EDGES, 0.0, DEVICE), 0,
                                          gate, up, torch.zeros(513, dtype=torch.int32, device=DEVICE), "down_in")
    want = torch.nn.functional.silu(gate) * up
    if DEVICE == "cuda":
        assert torch.equal(y, want)
    else:
        rel = {torch.float32: 2.5e-7, torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}[dtype]
        torch.testing.assert_close(y.float(), want.float(), rtol=2 * rel, atol=1e-6)


def test_fused_kernel_rejects_bad_arguments():
    acc = Accumulator.zeros(1, 1, 8, DEFAULT_EDGES, 0.0, DEVICE)
    g = torch.zeros(4, 8, device=DEVICE)
    lang = torch.zeros(4, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="must match gate"):
        triton_fused.silu_mul_accumulate_(acc, 0, g, g[:, :4], lang, "gate")
    with pytest.raises(ValueError, match="site"):
        triton_fused.silu_mul_accumulate_(acc, 0, g, g, lang, "attn")
    with pytest.raises(TypeError, match="dtype"):
        triton_fused.silu_mul_accumulate_(acc, 0, g.double(), g.double(), lang, "gate")


@pytest.mark.parametrize("arch", GATED_SILU)
def test_shadowed_forward_is_the_model_and_is_removed(arch, tmp_path):
    """The fused forward (torch twin) leaves the model's output bit-identical, and is gone after."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(arch, tmp_path / arch)).eval()
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model.base_model(input_ids=ids).last_hidden_state
        mlps = fused.fusable_mlps(model, arch_spec(arch))
        acc = Accumulator.zeros(1, len(mlps), mlps[0].down_proj.in_features, DEFAULT_EDGES, 0.0)
        state = hooks.HookState(acc, reference.accumulate_, compact=False,
                                fuse=reference.silu_mul_accumulate_, site="gate")
        state.set_batch(torch.zeros(18, dtype=torch.int32), torch.device("cpu"))
        with fused.installed(mlps, state):
            got = model.base_model(input_ids=ids).last_hidden_state
    assert torch.equal(got, want)
    assert int(acc.n_fired.sum()) > 0 and int(acc.act_hist.sum()) == 18 * acc.act_hist.shape[1] * acc.act_hist.shape[2]
    assert all("forward" not in m.__dict__ for m in mlps)


@pytest.mark.parametrize("site", ["gate", "down_in"])
@pytest.mark.parametrize("arch", GATED_SILU)
def test_hf_fused_mlp_equals_hooks(arch, site, tmp_path):
    """End to end with the torch twin: --fused-mlp gives the hooks' totals (integers exactly)."""
    path = str(make_tiny_model(arch, tmp_path / arch))
    sentences = SENTENCES["en"] + SENTENCES["ru"]
    base = dict(model=path, kernel="reference", batch_tokens=64, site=site)
    got = HFBackend(ProfileConfig.from_flags(fused_mlp=True, **base)).profile(sentences)
    want = HFBackend(ProfileConfig.from_flags(**base)).profile(sentences)
    assert got.n_tokens == want.n_tokens
    for v in NEURON_VARS:
        if v.startswith("act_sum"):  # float32 sums in another order: rounding relative to the largest
            w = getattr(want, v)
            np.testing.assert_allclose(getattr(got, v), w, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(w).max())))
        else:
            assert (getattr(got, v) == getattr(want, v)).all(), v


def test_exactness_guard():
    """The fused kernel only stands in for an MLP whose activation it reproduces bit for bit on the
    device (every fp16 gate value here). On CUDA torch's own silu must pass in every dtype; under
    the interpreter torch's CPU silu differs by an ulp on a few values and must be refused, while
    a twin computing the interpreter's formula passes. (bf16 is not checked under the interpreter:
    it converts bf16 denormals to fp32 wrongly; natively that conversion is an exact shift.)"""
    class Twin(torch.nn.Module):
        def forward(self, gate):
            return device_silu(gate)

    if DEVICE == "cuda":
        for dtype in DTYPES.values():
            triton_fused.check_exact(torch.nn.SiLU(), dtype, DEVICE)
        return
    triton_fused.check_exact(Twin(), torch.float16, DEVICE)
    with pytest.raises(RuntimeError, match=r"differs from the model's own SiLU on cpu in \d+ of 65536 "
                                           r"float16 values .*run without --fused-mlp"):
        triton_fused.check_exact(torch.nn.SiLU(), torch.float16, DEVICE)


def test_hf_fused_mlp_with_triton(tmp_path, monkeypatch):
    """End to end with the Triton kernel: the same totals as the hooks and the reference. On CUDA
    exactly. Under the interpreter the backend first refuses (its exp is not torch's CPU exp, see
    test_exactness_guard); with that check bypassed, every layer's input moves by the exp's ulps,
    so the integer statistics may differ on a value that sits on a bin edge: at most 0.1% of them."""
    path = str(make_tiny_model("llama", tmp_path / "m"))
    sentences = SENTENCES["en"] + SENTENCES["fr"]
    cfg = ProfileConfig.from_flags(model=path, kernel="triton", fused_mlp=True, batch_tokens=64)
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="differs from the model's own SiLU"):
            HFBackend(cfg)
        monkeypatch.setattr(triton_fused, "check_exact", lambda *a: None)
    got = HFBackend(cfg).profile(sentences)
    want = HFBackend(ProfileConfig.from_flags(model=path, kernel="reference", batch_tokens=64)).profile(sentences)
    assert got.n_tokens == want.n_tokens
    for v in ("n_fired", "act_hist", "n_nonfinite"):
        a, b = getattr(got, v), getattr(want, v)
        if DEVICE == "cuda":
            assert (a == b).all(), v
        else:
            assert np.abs(a - b).sum() <= 0.001 * b.sum(), v
    np.testing.assert_allclose(got.act_sum, want.act_sum, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,match", [("gemma", "gemma has a GELU-tanh-gated MLP"), ("gpt2", "gpt2 has an ungated MLP")])
def test_fused_mlp_refuses_other_mlps(arch, match, tmp_path, capsys):
    from langneurons.cli import main

    path = str(make_tiny_model(arch, tmp_path / arch))
    with pytest.raises(UnsupportedArchitecture, match=match):
        HFBackend(ProfileConfig.from_flags(model=path, fused_mlp=True))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang, lines in SENTENCES.items():
        (corpus / f"{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.zarr"
    capsys.readouterr()
    assert main(["profile", "--model", path, "--corpus", str(corpus), "--out", str(out),
                 "--fused-mlp", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # refused before a store was created


def test_fused_mlp_refuses_a_non_silu_activation(tmp_path):
    from transformers import AutoModelForCausalLM

    from fixtures import config_for

    cfg = config_for("llama")
    cfg.hidden_act = "gelu"
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedArchitecture, match="layer 0's activation is GELU"):
        fused.fusable_mlps(model, arch_spec("llama"))
    with pytest.raises(ValueError, match="needs backend 'hf'"):
        ProfileConfig.from_flags(fused_mlp=True, backend="vllm")


def test_dispatch_fused(monkeypatch):
    monkeypatch.setenv("LANGNEURONS_KERNEL", "reference")
    assert dispatch.get_fused("auto", DEVICE) is reference.silu_mul_accumulate_
    monkeypatch.setenv("LANGNEURONS_KERNEL", "triton")
    assert dispatch.get_fused("auto", DEVICE) is triton_fused.silu_mul_accumulate_
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if DEVICE == "cpu":
        with pytest.raises(RuntimeError, match="cannot run on device cpu"):
            dispatch.get_fused("triton", "cpu")
