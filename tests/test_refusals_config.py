"""How users name things: `~` and $VARS in every path (flags, config files, the other commands'
arguments), config files that do not parse, a stale lock left in a store, and `score .` run from
inside a store. Every refusal is one line naming the file (and the line) with exit status 2; every
fix is checked through the CLI. HOME always points into tmp_path: nothing touches the real home.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_refusals import tree_digest

from langneurons.cli import build_parser, main
from langneurons.config import SPECS, ProfileConfig

RUN = ["--shard-size", "4", "--batch-tokens", "64", "--no-progress"]


@pytest.fixture(scope="module")
def store(model, corpus, tmp_path_factory) -> Path:
    """A finished store; tests that change it (a lock, a report) work on a copy."""
    out = tmp_path_factory.mktemp("store") / "run.zarr"
    assert main(["profile", "--model", model, "--corpus", corpus, "--out", str(out), *RUN]) == 0
    return out


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fake HOME, and an empty working folder: a literal `~` or `$VAR` folder would appear there."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    return h


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    return lines[0]


# --- 1. `~` and $VARS ------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["flags", "config-file"])
def test_profile_expands_home_and_vars(route, model, corpus, home, monkeypatch, capsys):
    """model, corpus and out given as ~/... and $VAR/..., by flags (as `--out=~/x` or a quoted
    argument reaches us: no shell expanded them) or in a config file itself named with `~`."""
    os.symlink(model, home / "model")
    monkeypatch.setenv("LN_CORPUS", corpus)
    if route == "flags":
        argv = ["--model", "~/model", "--corpus", "$LN_CORPUS", "--out=~/r.zarr"]
    else:
        (home / "run.yaml").write_text("model: ~/model\ncorpus: ${LN_CORPUS}\nout: ~/r.zarr\n")
        argv = ["--config", "~/run.yaml"]
    assert main(["profile", *argv, *RUN]) == 0, capsys.readouterr().err
    assert (home / "r.zarr" / "zarr.json").is_file()
    assert os.listdir(".") == [], "a folder named after the unexpanded path was created"
    assert capsys.readouterr().out.startswith(f"wrote {home}/r.zarr: ")


def test_path_fields_are_expanded_and_urls_are_not(home, monkeypatch):
    monkeypatch.setenv("LN_DATA", "/data")
    for flag in ("corpus", "model", "out"):
        got = ProfileConfig.from_flags(**{flag: "~/x"}).to_flags()[flag]
        assert got == f"{home}/x", flag
        assert ProfileConfig.from_flags(**{flag: "$LN_DATA/x"}).to_flags()[flag] == "/data/x", flag
    assert ProfileConfig.from_flags(corpus="~/a.tmx, $LN_DATA/b.tmx").corpus.corpus == f"{home}/a.tmx,/data/b.tmx"
    for url in ("memory://$LN_DATA/~/r.zarr", "s3://bucket/~x/r.zarr"):
        assert ProfileConfig.from_flags(out=url).store.out == url
    assert ProfileConfig.from_flags(model="org/name").backend.model == "org/name"  # a hub id stays one
    # a new path-valued field must be declared so (opt(path=...)) to be expanded too
    assert {s.flag for s in SPECS.values() if s.path} == {"corpus", "model", "out"}


@pytest.mark.parametrize("argv, dests", [
    (["score", "~/s.zarr", "--out", "~/report"], ("results", "out")),
    (["info", "$LN_DATA/s.zarr", "--verify"], ("results",)),
    (["ablate", "~/s.zarr", "--heldout", "$LN_DATA/h", "--out", "~/ppl.csv", "--model", "~/m"],
     ("results", "heldout", "out", "model")),
], ids=["score", "info", "ablate"])
def test_other_commands_expand_their_paths(argv, dests, home, monkeypatch):
    from langneurons.options import given, specs_of
    from langneurons.scoring.options import AblateConfig, ProfiledModel, ScoreConfig

    monkeypatch.setenv("LN_DATA", str(home))
    args = build_parser().parse_args(argv)
    # the store argument is expanded by the parser, the options when their section is built
    sections = {"score": (ScoreConfig,), "ablate": (AblateConfig, ProfiledModel)}.get(argv[0], ())
    options = [cls(**given(args, specs_of(cls))) for cls in sections]
    for d in dests:
        v = getattr(args, d) if d == "results" else next(getattr(o, d) for o in options if hasattr(o, d))
        assert v.startswith(f"{home}/"), (d, v)


def test_info_and_score_read_a_store_named_with_tilde(store, home, capsys):
    shutil.copytree(store, home / "s.zarr")
    assert main(["info", "~/s.zarr"]) == 0, capsys.readouterr().err
    assert main(["score", "~/s.zarr", "--export"]) == 0, capsys.readouterr().err
    assert (home / "s.zarr.report" / "neurons.csv").is_file()
    assert os.listdir(".") == []


# --- 2. config files -------------------------------------------------------------------------


CONFIG_PROBLEMS = {  # id: (file name, content, what the one error line says)
    "yaml-syntax": ("bad.yaml", b"threshold: [0.5\n", ("bad.yaml, line 2", "fix the YAML")),
    "yaml-tab": ("tab.yaml", b"site: gate\n\tthreshold: 0.5\n", ("tab.yaml, line 2", "replace the tab with spaces")),
    "json-syntax": ("bad.json", b'{"threshold": 0.5,\n "site" "gate"}',
                    ("bad.json, line 2, column 9", "not valid JSON")),
    "yaml-in-txt": ("run.txt", b"threshold: 0.5\nsite: gate\n", ("run.txt", "holds YAML", "rename it to run.yaml")),
    "not-utf8": ("latin1.yaml", b"site: gate\nmodel: caf\xe9\n", ("latin1.yaml, line 2", "not UTF-8", "iconv")),
    "key-twice": ("twice.yaml", b"threshold: 0.1\nthreshold: 0.2\n", ("twice.yaml, line 2", "given twice")),
    "key-twice-json": ("twice.json", b'{"threshold": 0.1, "threshold": 0.2}', ("twice.json", "given twice")),
    "not-a-mapping": ("list.yaml", b"- threshold\n", ("list.yaml", "holds a list, not a mapping", "threshold: 0.5")),
    "not-a-number": ("abc.yaml", b"threshold: abc\n", ("abc.yaml", "--threshold must be a number", "'abc'")),
    "number-keys": ("keys.yaml", b"1: x\nmodle: y\n", ("keys.yaml", "unknown fields", "modle")),
}


@pytest.mark.parametrize("case", CONFIG_PROBLEMS, ids=str)
def test_config_file_problem_is_one_line_naming_the_file(case, model, corpus, home, capsys):
    name, content, says = CONFIG_PROBLEMS[case]
    (home / name).write_bytes(content)
    # the tiny model and corpus, so that a file wrongly accepted profiles in seconds, not the demo
    assert main(["profile", "--config", str(home / name), "--model", model, "--corpus", corpus, *RUN]) == 2
    line = one_error_line(capsys)
    for s in says:
        assert s in line, (s, line)
    assert os.listdir(".") == []


def test_config_file_that_is_a_folder(home, capsys):
    (home / "conf.yaml").mkdir()
    assert main(["profile", "--config", "~/conf.yaml", "--no-progress"]) == 2
    assert f"config file {home}/conf.yaml is a folder" in one_error_line(capsys)


def test_yaml_exponent_floats_are_numbers(tmp_path):
    """PyYAML reads 1e-3 (no dot) as a string; a float field takes it as the number it is."""
    f = tmp_path / "c.yaml"
    f.write_text("threshold: 1e-3\nbin_edges: [0, 1e-3, 1.0e-2, 5]\nvllm_gpu_memory_utilization: 5e-1\n")
    cfg = ProfileConfig.from_file(f)
    assert cfg.counting.threshold == 0.001 and type(cfg.counting.threshold) is float
    assert cfg.counting.bin_edges == [0.0, 0.001, 0.01, 5.0]
    assert cfg.backend.gpu_memory_utilization == 0.5
    with pytest.raises(ValueError, match="--shard-size must be int, got '5'"):  # int fields take no strings
        ProfileConfig.from_flags(shard_size="5")


def test_a_flags_error_is_not_blamed_on_the_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("threshold: abc\n")
    assert ProfileConfig.from_file(f, threshold=0.5).counting.threshold == 0.5  # the flag replaces it
    with pytest.raises(ValueError) as e:
        ProfileConfig.from_file(f, threshold=0.5, site="attn")
    assert str(e.value).startswith("--site 'attn'")
    with pytest.raises(ValueError, match=r"^config file .*c\.yaml: --threshold must be a number"):
        ProfileConfig.from_file(f, site="gate")


# --- 3. a stale lock ---------------------------------------------------------------------------


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


@pytest.mark.parametrize("argv", [["info"], ["info", "--verify"], ["score"]], ids=" ".join)
def test_stale_lock_reads_without_zarr_warnings(argv, store, tmp_path, capsys):
    """A killed run leaves langneurons.lock (and maybe the temporary copy a heartbeat was writing)
    in the store's folder; zarr lists that folder and warned that they are no zarr nodes."""
    s = tmp_path / "run.zarr"
    shutil.copytree(store, s)
    (s / "langneurons.lock").write_text(
        f'{{"tool": "langneurons", "command": "profile", "host": "{socket.gethostname()}", "pid": {_dead_pid()}, '
        '"started": "2025-01-01T00:00:00+00:00", "heartbeat_ts": 1735689600.0, "token": "0"}')
    (s / ("langneurons.lock." + "0" * 32 + ".partial")).write_text("{")
    before = tree_digest(s)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main([argv[0], str(s), *argv[1:]]) == 0, capsys.readouterr().err
    assert [str(w.message) for w in seen if "Zarr" in w.category.__name__ or "lock" in str(w.message)] == []
    assert tree_digest(s) == before  # reading never removes a lock, stale or not


def test_other_unknown_objects_still_warn(store, tmp_path, capsys):
    """Only the lock is expected in a store: zarr's warning about anything else is kept."""
    from zarr.errors import ZarrUserWarning

    s = tmp_path / "run.zarr"
    shutil.copytree(store, s)
    (s / "notes.txt").write_text("mine\n")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["info", str(s)]) == 0, capsys.readouterr().err
    assert any(issubclass(w.category, ZarrUserWarning) and "notes.txt" in str(w.message) for w in seen)


# --- 4. score's default report folder ------------------------------------------------------------


@pytest.mark.parametrize("cwd, arg", [("x.zarr", "."), ("x.zarr", "./"), ("x.zarr/partials", ".."),
                                      (".", "x.zarr/"), (".", "./x.zarr/.")])
def test_score_report_goes_beside_the_store(cwd, arg, store, tmp_path, monkeypatch, capsys):
    s = tmp_path / "x.zarr"
    shutil.copytree(store, s)
    before = tree_digest(s)
    monkeypatch.chdir(tmp_path / cwd)
    assert main(["score", arg, "--export"]) == 0, capsys.readouterr().err
    assert f"{tmp_path}/x.zarr.report/neurons.csv" in capsys.readouterr().out
    assert (tmp_path / "x.zarr.report" / "langneurons-report.json").is_file()
    assert tree_digest(s) == before, "score wrote into the store"
    assert sorted(os.listdir(tmp_path)) == ["x.zarr", "x.zarr.report"]
