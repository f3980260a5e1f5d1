"""One contract: identity, config and layering defined once, and checked from their one definition.

- the store's identity is built from the counting section of the config, the model the workers
  loaded and the corpus, and nothing else; every other flag is run-only;
- every config field is validated from its own declaration (type, choice, lower bound) before
  anything runs, and the CLI is built from the same declarations;
- a worker that loaded another model (or dtype) than the store records is refused;
- the package's layers import downwards only, and no module grows past ~400 lines.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from langneurons.config import RUN_ONLY_FIELDS, SPECS, CountingConfig, ProfileConfig
from langneurons.store import schema

SRC = Path(__file__).resolve().parents[1] / "src" / "langneurons"


def test_identity_is_counting_section_plus_model_and_corpus():
    assert tuple(f.name for f in dataclasses.fields(CountingConfig)) == schema.IDENTITY_COUNTING
    assert RUN_ONLY_FIELDS == {s.flag for s in SPECS.values() if s.section != "counting"}
    info = schema.ModelInfo(model="/m", fingerprint="sha256:x", tokenizer_fingerprint="sha256:t", bos="none",
                            architecture="llama", n_layers=2, d_ff=8, dtype="float32")
    corpus = schema.CorpusFacts(source="c", languages=("en", "fr"), fingerprint="sha256:c", rows={"en": 3, "fr": 3})
    ident = schema.identity(dataclasses.asdict(ProfileConfig().counting), info, corpus)
    assert set(ident) == ({"schema_version"} | set(schema.IDENTITY_MODEL) | set(schema.IDENTITY_COUNTING)
                          | set(schema.IDENTITY_CORPUS))
    assert ident["dtype"] == "float32" and ident["languages"] == ["en", "fr"]
    with pytest.raises(ValueError, match="counting config"):
        schema.identity({"site": "gate"}, info, corpus)


def test_every_holder_of_the_statistics_follows_their_declaration():
    """The statistics are declared once (store/variables.py): the in-memory Stats and the device
    accumulators hold exactly the declared variables, in the declared order, and a zero Stats has
    each variable's declared dims and total dtype (what the store's arrays and the kernels' output
    order are built from)."""
    from langneurons.kernels.reference import Accumulator
    from langneurons.store.stats import Stats
    from langneurons.store.variables import VARIABLES, names

    fields = [f.name for f in dataclasses.fields(Stats)]
    assert fields == [*names("tokens", "neuron"), "moe"]
    assert [f.name for f in dataclasses.fields(Accumulator)][:len(schema.ALL_VARS)] == list(schema.ALL_VARS)
    moe = {"n_experts": 3, "expert_d_ff": 5, "expert_neurons": True}
    z = Stats.zeros(n_layers=2, d_ff=7, n_bins=4, moe=moe)
    size = {"layer": 2, "neuron": 7, "bin": 4, "expert": 3, "expert_neuron": 5}
    for v in VARIABLES:
        if v.name == "n_tokens":
            continue
        a = getattr(z, v.name) if v.group == "neuron" else z.moe[v.name]
        assert a.shape == tuple(size[d] for d in v.dims) and a.dtype == np.dtype(v.total), v.name
    assert set(z.moe) == set(names("routing", "expert"))


def test_model_mismatch_names_every_differing_fact():
    a = schema.ModelInfo(model="/m", fingerprint="f", tokenizer_fingerprint="t", bos="added by the tokenizer",
                         architecture="llama", n_layers=2, d_ff=8, dtype="float32")
    assert schema.model_mismatch(a, dataclasses.replace(a, model="/elsewhere/m")) is None  # paths may differ
    msg = schema.model_mismatch(a, dataclasses.replace(a, dtype="bfloat16", d_ff=16))
    assert "dtype: the store has 'float32', the worker loaded 'bfloat16'" in msg and "d_ff" in msg
    msg = schema.model_mismatch(a, dataclasses.replace(a, tokenizer_fingerprint="other"))
    assert msg == "tokenizer_fingerprint: the store has 't', the worker loaded 'other'"
    msg = schema.model_mismatch(a, dataclasses.replace(a, bos="none"))  # a worker that would feed other tokens
    assert msg == "bos: the store has 'added by the tokenizer', the worker loaded 'none'"


@pytest.mark.parametrize("spec", [s for s in SPECS.values() if s.choices], ids=lambda s: s.flag)
def test_every_choice_field_refuses_an_unknown_value_naming_its_flag(spec):
    with pytest.raises(ValueError, match=rf"^{spec.option} 'bogus' is not one of: {', '.join(spec.choices)}$"):
        ProfileConfig.from_flags(**{spec.flag: "bogus"})


@pytest.mark.parametrize("spec", [s for s in SPECS.values() if s.min is not None], ids=lambda s: s.flag)
def test_every_bounded_field_refuses_a_value_below_its_bound(spec):
    with pytest.raises(ValueError, match=rf"^{spec.option} must be >= {spec.min:g}"):
        ProfileConfig.from_flags(**{spec.flag: int(spec.min) - 1})


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=lambda s: s.flag)
def test_every_field_refuses_a_value_of_another_type(spec):
    wrong = 1.5 if spec.base is str else "x"
    with pytest.raises(ValueError, match=rf"^{spec.option} must be "):
        ProfileConfig.from_flags(**{spec.flag: [wrong] if spec.is_list else wrong})


def test_flags_round_trip_and_sections_are_typed():
    cfg = ProfileConfig.from_flags(model="/m", threshold=1, kernel="numba", languages=["en"], workers=2)
    assert ProfileConfig.from_flags(**cfg.to_flags()) == cfg
    assert cfg.counting.threshold == 1.0 and isinstance(cfg.counting.threshold, float)
    assert cfg.replace(threshold=0.5).counting.threshold == 0.5 and cfg.counting.threshold == 1.0
    with pytest.raises(ValueError, match=r"unknown fields \['modle'\]"):
        ProfileConfig.from_flags(modle="/m")
    with pytest.raises(TypeError, match="from_flags"):
        ProfileConfig(counting="gate")
    for s in SPECS.values():  # every section field's type is what the CLI and checks read
        cls = {"corpus": "CorpusConfig", "counting": "CountingConfig", "backend": "BackendConfig",
               "cluster": "ClusterConfig", "store": "StoreConfig"}[s.section]
        assert s.doc, f"{cls}.{s.name} has no help text"


def test_cli_is_built_from_the_declarations():
    from langneurons.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["profile"]
    actions = {a.dest: a for a in sub._actions}
    for s in SPECS.values():
        assert actions[s.flag].option_strings[0] == s.option
        assert actions[s.flag].help.startswith(s.doc)
        if s.choices:
            assert actions[s.flag].metavar == "{" + ",".join(s.choices) + "}"
    src = (SRC / "cli.py").read_text()
    assert "import ast" not in src and "eval(" not in src


def test_worker_that_loaded_another_dtype_is_refused_in_process(model, corpus, tmp_path, monkeypatch):
    from langneurons.cluster import worker as worker_mod
    from langneurons.run import profile

    real = worker_mod.make_backend

    def reports_bf16(cfg, plan=None):  # a worker whose device made "auto" mean bfloat16
        b = real(cfg, plan)
        b.info = dataclasses.replace(b.info, dtype="bfloat16")
        return b

    monkeypatch.setattr(worker_mod, "make_backend", reports_bf16)
    out = tmp_path / "r.zarr"
    cfg = ProfileConfig.from_flags(model=model, corpus=corpus, out=str(out), shard_size=5, batch_tokens=64)
    with pytest.raises(RuntimeError, match=r"dtype: the store has 'float32', the worker loaded 'bfloat16'"):
        profile(cfg, progress=False)
    import zarr

    assert not zarr.open_array(str(out / "partials" / "committed"), mode="r")[:].any()


# --- layering ----------------------------------------------------------------------------------

#: Lower layers never import higher ones (data flows corpus -> shards -> workers -> kernels ->
#: store -> scoring; the schema and the config are what every stage shares).
LAYERS = {
    "langneurons.store.variables": 0, "langneurons.store.schema": 0, "langneurons.store.stats": 0,
    "langneurons.options": 0, "langneurons.outdir": 0,
    "langneurons.config": 1,
    "langneurons.corpus": 2, "langneurons.shards": 2,
    "langneurons.kernels": 3,
    "langneurons.profiler": 4,
    "langneurons.store": 5, "langneurons.demo": 5,
    "langneurons.cluster": 6,
    "langneurons.run": 7,
    "langneurons.scoring": 8,
    "langneurons.steering": 9,
    "langneurons.cli": 10,
}


def _layer(module: str) -> int | None:
    best = None
    for prefix, rank in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, rank)
    return None if best is None else best[1]


def _modules():
    for p in sorted(SRC.rglob("*.py")):
        rel = p.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, p


def test_layers_import_downwards_only():
    bad = []
    for name, p in _modules():
        mine = _layer(name)
        if mine is None:
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                theirs = _layer(t)
                if theirs is not None and theirs > mine:
                    bad.append(f"{name} imports {t}")
    assert not bad, bad


def test_no_module_over_400_lines():
    long = {name: n for name, p in _modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_no_test_or_development_code_in_the_package():
    names = {name for name, _ in _modules()}
    assert "langneurons.kernels.ptx" not in names
    text = "\n".join(p.read_text() for _, p in _modules())
    for marker in ("reference_stats_numpy", "LANGNEURONS_TEST_FAULTS", "injected failure"):
        assert marker not in text, marker

