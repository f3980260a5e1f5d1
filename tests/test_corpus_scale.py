"""Corpora at scale: monolingual (unaligned) corpora in every per-language layout, token budgets,
long documents, Parquet / save_to_disk tables, shards of even token counts, and bounded memory.

Counts are checked against an independent recomputation (tests/oracle.py): each row's token ids
come from the tokenizer directly, each sequence runs alone through the model, and the statistics
come from the float64 numpy oracle, not from langneurons' hooks or kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr
from oracle import reference_stats_numpy, sequence_activations
from transformers import AutoTokenizer

from langneurons.config import ProfileConfig
from langneurons.corpus import Budgeted, CorpusError, StreamCorpus, open_corpus
from langneurons.profiler.tokens import TooLong
from langneurons.run import profile
from langneurons.shards import plan_shards

EN = ["the dog sleeps", "a fox jumps over the lazy dog today", "hello", "brown dogs and quick foxes run",
      "the lazy dog", "quick brown fox"]
FR = ["le chien dort", "un renard saute", "bonjour à tous les chiens"]
RU = ["собака спит", "лиса прыгает через собаку", "привет", "коричневая лиса", "быстрая лиса",
      "ленивая собака спит", "собака"]
HI = ["तेज़ भूरी लोमड़ी", "आलसी कुत्ता", "लोमड़ी कूदती है", "कुत्ता", "भूरी लोमड़ी"]
ZH = ["敏捷的棕色狐狸", "懒狗", "狐狸跳过了懒狗", "棕色狐狸"]


def write_parquet(path, texts, field="text", row_group_size=None):
    pq.write_table(pa.table({"id": list(range(len(texts))), field: texts}), path, row_group_size=row_group_size)


def write_save_to_disk(folder, columns: dict):
    """The layout `datasets.Dataset.save_to_disk` writes: Arrow IPC stream files listed in state.json."""
    folder.mkdir(parents=True)
    table = pa.table(columns)
    half = table.num_rows // 2
    names = []
    for k, part in enumerate((table.slice(0, half), table.slice(half))):
        name = f"data-{k:05d}-of-00002.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, part.schema) as w:
            w.write_table(part, max_chunksize=2)
        names.append(name)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names],
                                                   "_split": None}))
    (folder / "dataset_info.json").write_text("{}")


@pytest.fixture()
def mixed_dir(tmp_path):
    """One language in each per-language layout, with different row counts (monolingual)."""
    d = tmp_path / "mono"
    d.mkdir()
    # blank lines (document breaks) are skipped in monolingual text; CRLF is fine
    (d / "en.txt").write_text("\n".join(EN[:3]) + "\n\n\r\n" + "\n".join(EN[3:]) + "\n", encoding="utf-8")
    (d / "fr.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(FR)),
                                encoding="utf-8")
    write_parquet(d / "ru.parquet", RU, row_group_size=3)
    (d / "hin_Deva").mkdir()                                  # FLORES+ style: <lang>_<Script>/*.parquet
    write_parquet(d / "hin_Deva" / "a.parquet", HI[:2])
    write_parquet(d / "hin_Deva" / "b.parquet", HI[2:])
    write_save_to_disk(d / "zho_Hans", {"text": ZH})
    (d / "README.md").write_text("not a language")
    return d


def oracle(model, rows, site="gate", max_length=None, mode="window"):
    """n_tokens and the oracle statistics of `rows`, each row's sequences built by hand."""
    tok = AutoTokenizer.from_pretrained(model)
    seqs = []
    for r in rows:
        body = tok(r, add_special_tokens=False)["input_ids"]
        pre = [tok.bos_token_id]                                  # the fixture tokenizer: "<s> $A"
        if max_length is None or len(body) + 1 <= max_length:
            chunks = [body]
        elif mode == "window":
            chunks = [body[k:k + max_length - 1] for k in range(0, len(body), max_length - 1)]
        else:
            chunks = [body[:max_length - 1]]
        seqs += [(pre + c, [False] + [True] * len(c)) for c in chunks]
    n, acts = sequence_activations(model, seqs, site)
    return n, reference_stats_numpy(acts, 0.0, ProfileConfig().counting.bin_edges)


def assert_stats(ds, lang, n, want):
    got = ds.sel(language=lang)
    assert int(got["n_tokens"]) == n
    for v in ("n_fired", "act_hist", "n_nonfinite"):
        np.testing.assert_array_equal(got[v].values, want[v], err_msg=f"{lang} {v}")
    for v in ("act_sum", "act_sumsq"):
        np.testing.assert_allclose(got[v].values, want[v], rtol=1e-4, atol=1e-4, err_msg=f"{lang} {v}")


def run(model, corpus, out, **kw):
    kw.setdefault("shard_size", 2)
    cfg = ProfileConfig.from_flags(model=model, corpus=str(corpus), out=str(out), batch_tokens=64, **kw)
    return profile(cfg, progress=False)


def test_monolingual_corpus_in_every_layout_profiles_each_language_on_its_own_rows(model, mixed_dir, tmp_path):
    out = tmp_path / "r.zarr"
    s = run(model, mixed_dir, out, unaligned=True)
    ds = xr.open_zarr(out)
    rows = {"en": EN, "fr": FR, "hin_Deva": HI, "ru": RU, "zho_Hans": ZH}
    assert list(ds["language"].values) == sorted(rows)       # codes kept as given, scripts included
    assert ds.attrs["rows_per_language"] == {k: len(v) for k, v in rows.items()}
    assert ds.attrs["aligned"] is False
    assert s.tokens == ds.attrs["tokens_per_language"]        # counted before profiling, reported
    for lang, texts in rows.items():
        n, want = oracle(model, texts)
        assert s.tokens[lang] == n
        assert_stats(ds, lang, n, want)
    # shards hold a language's own rows only, and cover each exactly once
    parts = xr.open_zarr(out, group="partials")
    for lang, texts in rows.items():
        sel = parts["shard_language"].values == lang
        starts, stops = parts["shard_start"].values[sel], parts["shard_stop"].values[sel]
        assert starts[0] == 0 and stops[-1] == len(texts) and (starts[1:] == stops[:-1]).all()


def test_per_language_files_aligned_by_default_must_have_equal_rows(model, tmp_path):
    d = tmp_path / "flores"
    d.mkdir()
    write_parquet(d / "eng_Latn.parquet", EN[:4])
    write_parquet(d / "fra_Latn.parquet", FR)
    with pytest.raises(CorpusError, match=r"different row counts .*'eng_Latn': 4.*'fra_Latn': 3.*--unaligned"):
        open_corpus(d)
    write_parquet(d / "fra_Latn.parquet", FR + ["le renard"])
    c = open_corpus(d)
    assert isinstance(c, StreamCorpus) and c.aligned and [c.n_rows(x) for x in c.languages] == [4, 4]
    assert c.rows("fra_Latn", 1, 3) == FR[1:3]
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "eng_Latn.txt").write_text("\n".join(EN[:4]) + "\n")
    (tmp_path / "txt" / "fra_Latn.txt").write_text("\n".join(FR + ["le renard"]) + "\n")
    assert c.fingerprint() == open_corpus(tmp_path / "txt").fingerprint()   # same text, same corpus
    write_parquet(d / "fra_Latn.parquet", FR + [""])          # aligned rows may not be empty
    with pytest.raises(CorpusError, match=r"fra_Latn.parquet: row 4: empty row"):
        open_corpus(d)
    with pytest.raises(CorpusError, match="--unaligned reads a directory"):
        open_corpus(tmp_path / "x.tsv", unaligned=True)


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_shard_reads_in_any_order_return_their_rows(tmp_path, kind):
    """Checkpoints every 4,096 rows, an open reader continued by the next shard in order, and a
    seek for anything else (retries, resumes): every read returns exactly its rows."""
    import random

    rows = [f"row {i}" for i in range(10_000)]
    d = tmp_path / "c"
    d.mkdir()
    if kind == "txt":
        (d / "en.txt").write_text("\n".join(rows) + "\n")
    elif kind == "jsonl":
        (d / "en.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    else:
        write_parquet(d / "en.parquet", rows, row_group_size=3000)
    c = open_corpus(d, unaligned=True)
    spans = [(a, min(a + 700, len(rows))) for a in range(0, len(rows), 700)]
    order = spans + random.Random(0).sample(spans, len(spans)) + spans[3:6]
    for a, b in order:
        assert c.rows("en", a, b) == rows[a:b], (a, b)


def test_aligned_tables_parquet_and_save_to_disk(tmp_path):
    cols = {"id": [f"r{i}" for i in range(3)], "en": EN[:3], "fr": FR, "url": ["u"] * 3}
    pq.write_table(pa.table(cols), tmp_path / "t.parquet")
    write_save_to_disk(tmp_path / "saved", cols)
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "en.txt").write_text("\n".join(EN[:3]) + "\n")
    (tmp_path / "txt" / "fr.txt").write_text("\n".join(FR) + "\n")
    a, b, c = (open_corpus(tmp_path / p) for p in ("t.parquet", "saved", "txt"))
    assert a.languages == b.languages == ("en", "fr")         # id and url are not languages
    assert a.ids == b.ids == ("r0", "r1", "r2")
    assert a.fingerprint() == b.fingerprint() == c.fingerprint()   # the same corpus, three formats
    (tmp_path / "dd").mkdir()
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["dev", "devtest"]}))
    with pytest.raises(CorpusError, match=r"DatasetDict with splits \['dev', 'devtest'\]; give one split's folder"):
        open_corpus(tmp_path / "dd")


def test_token_budget_keeps_the_longest_prefix_within_it(model, tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "en.txt").write_text("\n".join(EN) + "\n")
    (d / "ru.txt").write_text("\n".join(RU) + "\n")
    tok = AutoTokenizer.from_pretrained(model)
    budget = 20
    want = {}
    for lang, texts in (("en", EN), ("ru", RU)):          # independent: the tokenizer, row by row
        total = k = 0
        for t in texts:
            n = len(tok(t, add_special_tokens=False)["input_ids"])
            if total + n > budget:
                break
            total, k = total + n, k + 1
        want[lang] = (k, total)
    assert 0 < want["en"][0] < len(EN) and 0 < want["ru"][0] < len(RU)  # the budget cuts both
    out = tmp_path / "r.zarr"
    s = run(model, d, out, unaligned=True, max_tokens_per_language=budget)
    ds = xr.open_zarr(out)
    assert ds.attrs["max_tokens_per_language"] == budget
    for lang, (k, total) in want.items():
        assert s.rows[lang] == ds.attrs["rows_per_language"][lang] == k
        assert s.tokens[lang] == int(ds["n_tokens"].sel(language=lang)) == total
        n, stats = oracle(model, (EN if lang == "en" else RU)[:k])
        assert_stats(ds, lang, n, stats)
    # the cut is a function of the rows and the tokenizer: a second run states the same corpus
    s2 = run(model, d, tmp_path / "r2.zarr", unaligned=True, max_tokens_per_language=budget, shard_size=1)
    assert xr.open_zarr(tmp_path / "r2.zarr").attrs["corpus_fingerprint"] == ds.attrs["corpus_fingerprint"]
    assert s2.tokens == s.tokens
    # an aligned corpus under a budget is profiled per language, on its own prefix
    (d / "ru.txt").write_text("\n".join(RU[:len(EN)]) + "\n")
    s3 = run(model, d, tmp_path / "r3.zarr", max_tokens_per_language=budget)
    assert s3.rows == {lang: k for lang, (k, _) in want.items()} and s3.tokens == s.tokens
    assert xr.open_zarr(tmp_path / "r3.zarr").attrs["aligned"] is False
    with pytest.raises(CorpusError, match=r"first row of 'en' alone has more counted tokens than "
                                          r"--max-tokens-per-language 1"):
        run(model, d, tmp_path / "r4.zarr", unaligned=True, max_tokens_per_language=1)
    assert not (tmp_path / "r4.zarr").exists()


@pytest.mark.parametrize("mode", ["window", "truncate"])
def test_long_documents_window_or_truncate(model, tmp_path, mode):
    long = " ".join(EN * 3)
    d = tmp_path / "c"
    d.mkdir()
    (d / "en.txt").write_text("\n".join([EN[0], long, EN[2]]) + "\n")
    tok = AutoTokenizer.from_pretrained(model)
    assert len(tok(long)["input_ids"]) > 3 * 16                  # at least four windows
    out = tmp_path / "r.zarr"
    run(model, d, out, max_length=16, long_documents=mode)
    n, want = oracle(model, [EN[0], long, EN[2]], max_length=16, mode=mode)
    ds = xr.open_zarr(out)
    if mode == "window":  # every text token counted once
        assert n == sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in (EN[0], long, EN[2]))
    assert_stats(ds, "en", n, want)


def test_long_documents_refuse_names_the_row_before_anything_is_written(model, tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    (d / "en.txt").write_text("\n".join([EN[0], " ".join(EN * 3)]) + "\n")
    out = tmp_path / "r.zarr"
    with pytest.raises(TooLong, match=r"en row 2 has \d+ tokens, more than --max-length 16"):
        run(model, d, out, max_length=16, long_documents="refuse")
    assert not out.exists()


def test_shards_are_planned_by_tokens_when_counted(model, tmp_path):
    d = tmp_path / "c"
    d.mkdir()
    rows = ["a"] * 30 + [" ".join(["dog"] * 30)] * 2 + ["a"] * 30    # two heavy rows in the middle
    (d / "en.txt").write_text("\n".join(rows) + "\n")
    tok = AutoTokenizer.from_pretrained(model)

    def count(texts, wheres):
        return [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]

    c = Budgeted(open_corpus(d, unaligned=True), count, None)
    try:
        by_tokens = plan_shards(c, 16)
        sums = [int(np.sum(c.token_counts("en")[s.start:s.stop])) for s in by_tokens]
        assert len(by_tokens) == 4 and by_tokens[-1].stop == len(rows)
        heaviest = int(np.max(c.token_counts("en")))
        assert max(sums) - min(sums) < heaviest                 # even, up to one row that cannot be split
        by_rows = plan_shards(open_corpus(d, unaligned=True), 16)
        row_sums = [int(np.sum(c.token_counts("en")[s.start:s.stop])) for s in by_rows]
        assert max(row_sums) - min(row_sums) > max(sums) - min(sums)
    finally:
        c.close()
    assert not any(os.path.exists(x.counts_file) for x in c.cuts.values())  # the temporary counts are gone


MEMORY_SCRIPT = r"""
import sys, time
from pathlib import Path
from langneurons.corpus import Budgeted, open_corpus
from langneurons.shards import plan_shards
d = Path(sys.argv[1])
# VmHWM: this process's own peak resident memory (ru_maxrss would include the parent's, kept across exec)
hwm = lambda: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
base = hwm()   # Python, numpy, zarr, xarray and langneurons imported
t0 = time.perf_counter()
c = Budgeted(open_corpus(d, unaligned=True), lambda texts, wheres: [len(t.split()) for t in texts], None)
t1 = time.perf_counter()
shards = plan_shards(c, 128)
rows = sum(len(c.rows(s.language, s.start, s.stop)) for s in shards[::997])
c.close()
print(f"{c.n_rows('en')} {len(shards)} {base:.1f} {hwm() - base:.1f} {c.n_rows('en') / (t1 - t0):.0f}")
"""


def test_streaming_two_million_rows_in_bounded_memory(tmp_path):
    """A 2,000,000-row monolingual corpus (~170 MB of text): opened, fingerprinted, token-counted,
    planned and read by shards while the process's peak resident memory grows by less than 48 MB
    over what its imports take; holding the rows as Python strings alone would take ~300 MB."""
    d = tmp_path / "big"
    d.mkdir()
    n = 2_000_000
    line = ("row {:07d} " + "lorem ipsum dolor sit amet consectetur " * 2).rstrip() + "\n"
    with open(d / "en.txt", "w", encoding="utf-8") as f:
        for start in range(0, n, 100_000):
            f.write("".join(line.format(i) for i in range(start, start + 100_000)))
    assert (d / "en.txt").stat().st_size > 150e6
    r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(d)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rows, shards, base_mb, grown_mb, rows_per_s = r.stdout.split()
    print(f"2M-row corpus: peak RSS {base_mb} MB after imports, grew {grown_mb} MB; "
          f"read+count {float(rows_per_s):,.0f} rows/s")
    assert int(rows) == n and int(shards) == -(-n // 128)
    assert float(grown_mb) < 48


def test_budgeted_monolingual_run_interrupted_and_resumed_equals_uninterrupted(model, mixed_dir, tmp_path,
                                                                              monkeypatch):
    from langneurons.cluster.worker import Worker

    kw = dict(unaligned=True, max_tokens_per_language=40, shard_size=1)
    full = tmp_path / "full.zarr"
    run(model, mixed_dir, full, **kw)
    real, calls = Worker.run_shard, {"n": 0}

    def dies_after_three(self, *a):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(self, *a)

    monkeypatch.setattr(Worker, "run_shard", dies_after_three)
    out = tmp_path / "r.zarr"
    with pytest.raises(KeyboardInterrupt):
        run(model, mixed_dir, out, **kw)
    monkeypatch.setattr(Worker, "run_shard", real)
    s = run(model, mixed_dir, out, resume=True, **kw)        # the same cut, so the same store identity
    assert s.n_skipped == 3
    a, b = xr.open_zarr(full), xr.open_zarr(out)
    for v in ("n_tokens", "n_fired", "act_sum", "act_sumsq", "act_hist", "n_nonfinite"):
        np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=v)
