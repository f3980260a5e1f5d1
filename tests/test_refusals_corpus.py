"""Corpus refusals and corpus housekeeping: two files of one language, UTF-16/32 text, the rule for
which files of a folder are languages, a --corpus path holding a comma, and the temporary
token-count files of killed runs.

Refusals go through `langneurons profile` as a user runs it (tests/test_refusals.py's contract):
exit 2, one error line naming the files and the fix, no traceback, no store, nothing changed.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import xarray as xr
from test_refusals import tree_digest

from langneurons.cli import main
from langneurons.corpus import CorpusError, ParallelCorpus, load_corpus, open_corpus, split_paths
from langneurons.corpus.budget import PREFIX, Budgeted, counts_prefix, remove_leftovers
from langneurons.corpus.checks import wide_encoding
from langneurons.corpus.layout import language_entries

EN = ["the dog sleeps", "a fox jumps", "hello"]
FR = ["le chien dort", "un renard saute", "bonjour"]


def write(d: Path, files: dict[str, str | bytes]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return d


def lines(rows: list[str], encoding: str = "utf-8") -> bytes:
    return "".join(r + "\n" for r in rows).encode(encoding)


def jsonl(rows: list[str]) -> str:
    return "".join(json.dumps({"text": r}) + "\n" for r in rows)


def refused(argv: list[str], root: Path, capsys) -> str:
    """Run `langneurons profile argv` (out: root/new.zarr); the one error line, checked as refusals are."""
    out = root / "new.zarr"
    before = tree_digest(root)
    capsys.readouterr()
    rc = main(["profile", *argv, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    said = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert rc == 2, (rc, err)
    assert len(said) == 1 and "error:" in said[0] and "Traceback" not in err, err
    assert not out.exists(), "a store was created"
    assert tree_digest(root) == before, "a pre-existing file changed"
    return said[0]


# --- 1. two files of one language --------------------------------------------------------------


@pytest.mark.parametrize("unaligned", [True, False], ids=["unaligned", "aligned"])
def test_two_files_of_one_language_are_refused_naming_both(model, tmp_path, capsys, unaligned):
    d = write(tmp_path / "dup", {"en.txt": lines(EN), "en.jsonl": jsonl(EN[:2]), "fr.txt": lines(FR)})
    msg = refused(["--model", model, "--corpus", str(d)] + (["--unaligned"] if unaligned else []), tmp_path, capsys)
    assert str(d / "en.txt") in msg and "en.jsonl" in msg and "keep one of the two" in msg, msg


def test_two_files_of_one_language_in_a_text_folder_are_refused(tmp_path):
    d = write(tmp_path / "dup", {"en.txt": lines(EN), "EN.TXT": lines(EN), "fr.txt": lines(FR)})
    with pytest.raises(CorpusError, match=r"en\.txt: language 'en' is also given by EN\.TXT \(codes are "):
        load_corpus(d)
    d = write(tmp_path / "mixed", {"en.txt": lines(EN), "en.jsonl": jsonl(EN), "fr.txt": lines(FR)})
    with pytest.raises(CorpusError, match=r"en\.txt: language 'en' is also given by en\.jsonl; keep one"):
        load_corpus(d, format="textdir")


# --- 2. UTF-16 and UTF-32 text -----------------------------------------------------------------

TEXTS = {"en": "the quick brown fox\njumps over the lazy dog\n" * 60,
         "ru": "быстрая коричневая лиса\nпрыгает через собаку\n" * 60,
         "zh": "敏捷的棕色狐狸跳过了懒狗\n一只狐狸\n" * 60}
WIDE = {"utf-16-le": "UTF-16LE", "utf-16-be": "UTF-16BE", "utf-32-le": "UTF-32LE", "utf-32-be": "UTF-32BE"}


@pytest.mark.parametrize("lang", TEXTS)
def test_wide_encodings_are_told_from_utf8_by_their_nul_bytes(lang):
    text = TEXTS[lang]
    assert wide_encoding(text.encode("utf-8")[:4096]) is None
    for enc, name in WIDE.items():
        assert wide_encoding(text.encode(enc)[:4096]) == (name, "NUL bytes between its characters, and no "
                                                                "byte-order mark"), enc
    assert wide_encoding(text.encode("utf-16")) == ("UTF-16LE", "its byte-order mark")
    # UTF-8 with a few stray NULs (a damaged file, but not a UTF-16 one) is left to the other checks
    damaged = bytearray(text.encode("utf-8")[:4096])
    for i in range(7, len(damaged), 500):
        damaged[i] = 0
    assert wide_encoding(bytes(damaged)) is None


# (id, corpus files, extra flags, the file named)
WIDE_CASES = [
    ("textdir-utf16le", {"en.txt": lines(EN, "utf-16-le"), "fr.txt": lines(FR)}, [], "en.txt"),
    ("textdir-utf32be", {"en.txt": lines(EN), "fr.txt": lines(FR, "utf-32-be")}, [], "fr.txt"),
    ("unaligned-txt-utf16le", {"en.txt": lines(EN, "utf-16-le"), "fr.txt": lines(FR)}, ["--unaligned"], "en.txt"),
    ("unaligned-jsonl-utf16be", {"en.jsonl": jsonl(EN).encode("utf-16-be"), "fr.txt": lines(FR)}, ["--unaligned"],
     "en.jsonl"),
    ("ids-utf16le", {"en.txt": lines(EN), "fr.txt": lines(FR), "ids.txt": lines(["a", "b", "c"], "utf-16-le")}, [],
     "ids.txt"),
]


@pytest.mark.parametrize("files, flags, named", [c[1:] for c in WIDE_CASES], ids=[c[0] for c in WIDE_CASES])
def test_utf16_and_utf32_text_files_are_refused(model, tmp_path, capsys, files, flags, named):
    d = write(tmp_path / "c", files)
    msg = refused(["--model", model, "--corpus", str(d), *flags], tmp_path, capsys)
    assert str(d / named) in msg and "not UTF-8" in msg and "re-save it as UTF-8" in msg, msg


@pytest.mark.parametrize("name, data", [
    ("c.tsv", "en\tfr\nhello\tbonjour\n".encode("utf-16-le")),
    ("c.jsonl", '{"en": "hello", "fr": "bonjour"}\n'.encode("utf-32-le")),
], ids=["tsv-utf16le", "jsonl-utf32le"])
def test_utf16_and_utf32_tables_are_refused(model, tmp_path, capsys, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    msg = refused(["--model", model, "--corpus", str(p)], tmp_path, capsys)
    assert f"{p}: this file is UTF-" in msg and "without" not in msg and "iconv -f UTF-" in msg, msg


# --- 3. one rule for which files are languages -------------------------------------------------


def test_text_folders_and_streams_take_the_same_files_as_languages(tmp_path):
    d = write(tmp_path / "c", {"en.txt": lines(EN), "fr.txt": lines(FR), "LICENSE.txt": "CC0\n",
                               "README.txt": "two languages\n", "Notice.txt": "x\n", "source.txt": "y\n",
                               "_SUCCESS.txt": "", ".hidden.txt": "z\n", "notes.md": "w\n"})
    assert tuple(language_entries(d)) == ("en", "fr")
    aligned = open_corpus(d)
    assert isinstance(aligned, ParallelCorpus) and aligned.languages == ("en", "fr")
    assert open_corpus(d, unaligned=True).languages == ("en", "fr")
    assert load_corpus(d, format="textdir").sentences == {"en": tuple(EN), "fr": tuple(FR)}


# --- 4. a --corpus path holding a comma --------------------------------------------------------


def test_a_corpus_path_with_a_comma_is_one_path(model, tmp_path, capsys):
    d = write(tmp_path / "data,v2", {"en.txt": lines(EN), "fr.txt": lines(FR)})
    assert split_paths(str(d)) == str(d)
    out = tmp_path / "run.zarr"
    assert main(["profile", "--model", model, "--corpus", str(d), "--out", str(out), "--shard-size", "2",
                 "--batch-tokens", "64", "--no-progress"]) == 0, capsys.readouterr().err
    assert list(xr.open_zarr(out)["language"].values) == ["en", "fr"]


def test_comma_separated_paths_are_split_only_when_no_path_is_named_so(model, tmp_path, capsys):
    a, b = write(tmp_path, {"a.tmx": "", "b.tmx": ""}) / "a.tmx", tmp_path / "b.tmx"
    assert split_paths(f"{a}, {b}") == [str(a), str(b)]
    msg = refused(["--model", model, "--corpus", f"{tmp_path / 'nope'},v2"], tmp_path, capsys)
    assert f"--corpus {tmp_path / 'nope'},v2" in msg and f"{tmp_path / 'nope'}, v2 do not exist" in msg, msg
    msg = refused(["--model", model, "--corpus", f"{a},{tmp_path / 'gone.tmx'}"], tmp_path, capsys)
    assert f"{tmp_path / 'gone.tmx'} does not exist" in msg and f"{a} do" not in msg, msg


# --- 5. temporary token-count files ------------------------------------------------------------


@pytest.fixture()
def own_tmp(tmp_path, monkeypatch) -> Path:
    """A temporary folder of this test's own, for this process and the processes it starts."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    monkeypatch.setenv("TMPDIR", str(d))
    return d


def counts_files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir() if p.name.startswith(PREFIX)}


def word_count(texts: list[str], wheres: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def small_corpus() -> ParallelCorpus:
    return ParallelCorpus(languages=("en", "fr"), sentences={"en": EN, "fr": FR}, ids=("1", "2", "3"), source="mem")


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()  # reaped: the pid names no process now
    return p.pid


KILLED_RUN = """
import os, signal
from langneurons.corpus import Budgeted, ParallelCorpus
c = ParallelCorpus(languages=("en",), sentences={"en": ("a b", "c")}, ids=("1", "2"), source="mem")
b = Budgeted(c, lambda texts, wheres: [len(t.split()) for t in texts], None)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_files_of_killed_runs_are_deleted_and_live_runs_files_kept(own_tmp):
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN])
    assert killed.returncode == -9
    left = counts_files(own_tmp)
    assert len(left) == 1, left                                  # what a killed run leaves behind
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        keep = {counts_prefix(live.pid) + "en-a1.u32", counts_prefix(os.getpid()) + "fr-b2.u32",  # live runs
                PREFIX + "en-old.u32", PREFIX + "notes.txt", counts_prefix(10**20) + "en-d4.u32"}  # not ours
        gone = {counts_prefix(dead_pid()) + "zh-Hans-c3.u32"}
        for name in keep | gone:
            (own_tmp / name).write_bytes(b"\0" * 8)
        b = Budgeted(small_corpus(), word_count, None)
        assert counts_files(own_tmp) == keep | {Path(c.counts_file).name for c in b.cuts.values()}
        b.close()
        assert counts_files(own_tmp) == keep
        assert remove_leftovers() == []
    finally:
        live.stdin.close()
        live.wait()
    assert remove_leftovers() == [str(own_tmp / (counts_prefix(live.pid) + "en-a1.u32"))]


def test_counts_files_are_deleted_on_error_collection_and_exit(own_tmp):
    def fails_on_fr(texts, wheres):
        if texts[0] == FR[0]:
            raise ValueError("no")
        return word_count(texts, wheres)

    with pytest.raises(ValueError):
        Budgeted(small_corpus(), fails_on_fr, None)   # en counted, fr half-written
    assert counts_files(own_tmp) == set()
    b = Budgeted(small_corpus(), word_count, None)
    assert len(counts_files(own_tmp)) == 2
    del b
    gc.collect()
    assert counts_files(own_tmp) == set()
    exits = subprocess.run([sys.executable, "-c", KILLED_RUN.replace("os.kill(os.getpid(), signal.SIGKILL)",
                                                                     "raise SystemExit(3)")])
    assert exits.returncode == 3 and counts_files(own_tmp) == set()


def test_a_refused_budgeted_run_leaves_no_counts_files(model, own_tmp, tmp_path, capsys):
    d = write(tmp_path / "mono", {"fr.txt": lines(["bonjour", "le chien " * 40])})
    msg = refused(["--model", model, "--corpus", str(d), "--unaligned", "--long-documents", "refuse",
                   "--max-length", "16"], tmp_path, capsys)
    assert "fr row 2" in msg, msg
    assert counts_files(own_tmp) == set()


def test_a_language_folder_of_text_files_is_named_not_silently_skipped(tmp_path, caplog):
    """A folder `en/` of .txt files is no layout of a language (one file, or .parquet/save_to_disk
    folders): it is left out, but a warning names it and says what a language folder holds."""
    import logging

    from langneurons.corpus import open_corpus

    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "part1.txt").write_text("the dog\n", encoding="utf-8")
    for lang in ("fr", "ru"):
        (tmp_path / f"{lang}.txt").write_text("x\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="langneurons.corpus.layout"):
        corpus = open_corpus(str(tmp_path))
    assert list(corpus.languages) == ["fr", "ru"]
    assert any("en/ is not read as a language" in r.getMessage() for r in caplog.records), caplog.text
