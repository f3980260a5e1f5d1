"""The model plan (profiler/plan.py): resolved once per run, shipped whole to the workers, recorded
in the store, and the one loader refusing weights that are not the plan's."""

from __future__ import annotations

import pickle
import shutil

import pytest

from fixtures import make_tiny_model
from langneurons.cli import main
from langneurons.config import ProfileConfig


def test_a_run_resolves_the_model_once_and_records_the_plan(model, corpus, tmp_path, monkeypatch, capsys):
    """max_length and the BOS rule are resolved by the plan alone: once per run however many
    shards and workers use them; the store's `plan` is that plan, and `info` prints it."""
    import zarr

    from langneurons import run
    from langneurons.profiler import plan as plan_mod
    from langneurons.profiler import tokens

    calls = {"max_length": 0, "bos": 0}
    real_max, real_bos = tokens.resolve_max_length, tokens.bos_rule

    def count_max(*a, **kw):
        calls["max_length"] += 1
        return real_max(*a, **kw)

    def count_bos(*a, **kw):
        calls["bos"] += 1
        return real_bos(*a, **kw)

    monkeypatch.setattr(tokens, "resolve_max_length", count_max)
    monkeypatch.setattr(tokens, "bos_rule", count_bos)
    made = []
    real_plan = run.model_plan
    monkeypatch.setattr(run, "model_plan", lambda *a, **kw: made.append(real_plan(*a, **kw)) or made[-1])
    out = tmp_path / "r.zarr"
    cfg = ProfileConfig.from_flags(model=model, corpus=corpus, out=str(out), shard_size=4, batch_tokens=64,
                                   max_length=48)
    summary = run.profile(cfg, progress=False)
    assert summary.n_shards == 9 and calls == {"max_length": 1, "bos": 1}, calls
    (plan,) = made
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert attrs["plan"] == plan.record()
    assert (plan.backend, plan.device, plan.dtype, plan.max_length) == ("hf", "cpu", "float32", 48)
    assert (plan.n_layers, plan.d_ff) == (attrs["n_layers"], attrs["d_ff"])
    assert plan.kernel in ("numba", "reference") and plan.activation == "silu"
    # what a Ray worker receives is the same plan
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert plan_mod.ModelPlan.record(pickle.loads(pickle.dumps(plan))) == attrs["plan"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("plan "))
    assert f"hf on cpu in float32, kernel {plan.kernel}" in line and "max_length 48" in line, line


def test_the_loader_refuses_a_model_folder_replaced_after_planning(tmp_path):
    """The plan was made for one model; if its folder now holds another architecture, loading
    stops with an error naming both, instead of counting another model's neurons."""
    from langneurons.profiler.loader import load_model
    from langneurons.profiler.plan import model_plan

    path = make_tiny_model("llama", tmp_path / "m")
    plan = model_plan(ProfileConfig.from_flags(model=str(path)))
    shutil.rmtree(path)
    make_tiny_model("qwen2", path)
    with pytest.raises(RuntimeError, match="now holds a qwen2 model, the run was planned for llama"):
        load_model(plan)


def test_a_backend_given_a_plan_runs_it(model):
    """A backend takes the driver's plan as it is (nothing re-resolved from the folder): the
    BOS rule, max_length and kernel it applies are the plan's, and what it loaded matches it."""
    import dataclasses

    from langneurons.profiler.backends import make_backend
    from langneurons.profiler.plan import model_plan

    cfg = ProfileConfig.from_flags(model=model, batch_tokens=64, kernel="reference")
    plan = model_plan(cfg)
    planned = dataclasses.replace(plan, max_length=7)  # as if --max-length 7 had been resolved
    backend = make_backend(cfg.replace(max_length=7), planned)
    try:
        assert backend.plan is planned and backend.max_length == 7 and backend.kernel == "reference"
        assert planned.mismatch(backend.info) is None
        assert backend.profile(["a sentence long enough to be cut into windows of seven tokens"]).n_tokens > 0
    finally:
        backend.close()
