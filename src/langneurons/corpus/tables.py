"""Aligned tables: a Parquet file, or a `save_to_disk` folder, with one string column per language.

Row i of every language column is one aligned row (read whole, like TSV; tables of this shape
are test sets such as FLORES+). Language columns are the string columns whose names are language
codes, except the usual metadata columns (METADATA); an `id` column, if present, gives the row
ids. `--languages` picks columns explicitly. Per-language files and folders are `stream.py`.
"""

from __future__ import annotations

import pathlib

from langneurons.corpus.checks import CorpusError, choose, language_code_ok
from langneurons.corpus.sources import arrow_files, pyarrow
from langneurons.corpus.textdir import Columns

METADATA = frozenset({"id", "idx", "index", "url", "domain", "topic", "split", "source", "license", "title",
                      "has_image", "has_hyperlink", "last_updated", "iso_639_3", "iso_15924", "glottocode"})


def read(path: pathlib.Path, requested: tuple[str, ...] | None, kind: str) -> Columns:
    pa = pyarrow()
    table = _parquet(path) if kind == "parquet" else _arrow(path)
    strings = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    available = tuple(c for c in strings if language_code_ok(c) and c.lower() not in METADATA)
    if requested is None and not available:
        raise CorpusError(f"{path}: no language columns (string columns named by language codes; columns: "
                          f"{', '.join(table.schema.names)}); name them with --languages")
    langs = choose(tuple(strings) if requested else available, requested, str(path))
    sents: dict[str, tuple[str, ...]] = {}
    for c in langs:
        out = []
        for i, v in enumerate(table.column(c).to_pylist(), start=1):
            text = v.strip() if isinstance(v, str) else ""
            if not text:
                raise CorpusError(f"{path}: row {i}: empty or missing text for language {c!r}; fill it in or "
                                  "delete the row")
            out.append(text)
        sents[c] = tuple(out)
    n = table.num_rows
    if "id" in table.schema.names:
        ids = tuple(str(v) for v in table.column("id").to_pylist())
        if len(set(ids)) != n:
            raise CorpusError(f"{path}: the id column repeats values; row ids must be unique")
    else:
        ids = tuple(str(i) for i in range(1, n + 1))
    return langs, sents, ids


def _parquet(path: pathlib.Path):
    try:
        return pyarrow().parquet.read_table(path)
    except Exception as e:  # ArrowInvalid & co.
        raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None


def _arrow(folder: pathlib.Path):
    pa = pyarrow()
    tables = []
    for f in arrow_files(folder):
        with pa.memory_map(str(f)) as src:
            try:
                tables.append(pa.ipc.open_stream(src).read_all())
            except pa.ArrowInvalid:
                src.seek(0)
                tables.append(pa.ipc.open_file(src).read_all())
    return pa.concat_tables(tables)
