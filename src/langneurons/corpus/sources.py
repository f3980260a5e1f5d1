"""One language's rows, read as a stream from a text, JSONL, Parquet or Arrow source.

A source yields its records in order, each with a resume position where one exists (`records`):
any line of a text or JSONL file (its byte offset), the first row of each Parquet row group or
Arrow record batch. `stream.StreamCorpus` keeps a few of those positions as checkpoints, so a
shard's rows are read by seeking to the nearest checkpoint, never by holding the corpus.

Rows are stripped of surrounding whitespace. A record that is empty after stripping yields
None (the corpus skips it in monolingual corpora and refuses it in aligned ones); one that cannot
be read as text (invalid UTF-8, a bare carriage return, bad JSON, a missing field, a non-string
value) raises `CorpusError` naming the file and the line or row.

Kinds:
- lines:   a UTF-8 .txt file, one row per line ("\\n"; CRLF allowed; UTF-16/32 refused);
- jsonl:   one JSON object per line, the row in its `field` (default "text");
- parquet: one or more .parquet files read in name order, the row in column `field`;
- arrow:   a folder written by `datasets.Dataset.save_to_disk` (Arrow IPC files listed in its
           state.json), the row in column `field`; read with pyarrow, no `datasets` needed.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from langneurons.corpus.checks import HEAD_BYTES, CorpusError, check_utf8_head

BATCH = 4096     # Parquet rows decoded at a time
Position = Any   # source-specific: (byte offset, line number) | (file index, group/batch index)
Record = tuple[Position | None, str | None, str]   # (resume position or None, text or None, where)


@dataclass(frozen=True)
class LanguageSource:
    language: str
    kind: str                          # lines | jsonl | parquet | arrow
    files: tuple[pathlib.Path, ...]
    field: str = "text"

    @property
    def where(self) -> str:
        return str(self.files[0].parent if self.kind == "arrow" else self.files[0]) + (
            f" (+{len(self.files) - 1} files)" if len(self.files) > 1 and self.kind == "parquet" else "")

    def records(self, start: Position | None = None) -> Iterator[Record]:
        if self.kind in ("lines", "jsonl"):
            return self._lines(start)
        if self.kind == "parquet":
            return self._parquet(start)
        return self._arrow(start)

    # --- line files --------------------------------------------------------------------------
    def _lines(self, start: Position | None) -> Iterator[Record]:
        offset, lineno = start or (0, 1)
        path = self.files[0]
        with open(path, "rb") as f:
            if offset == 0:
                check_utf8_head(path, f.read(HEAD_BYTES))
            f.seek(offset)
            for raw in f:
                where = f"{path}:{lineno}"
                pos = (offset, lineno)
                offset += len(raw)
                lineno += 1
                if pos[0] == 0 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise CorpusError(f"{where}: invalid UTF-8 ({raw[e.start:e.end]!r}); re-encode the file "
                                      "as UTF-8, e.g. `iconv -f <its encoding> -t UTF-8`") from None
                line = line.removesuffix("\n").removesuffix("\r")
                if "\r" in line:
                    raise CorpusError(f"{where}: a carriage return (\\r) that does not end a line (old Mac "
                                      "line endings or a stray \\r); convert to \\n line endings, e.g. "
                                      "`tr '\\r' '\\n' < in > out`, or remove the \\r")
                yield pos, self._text(line, where) if self.kind == "jsonl" else (line.strip() or None), where

    def _text(self, line: str, where: str) -> str | None:
        if not line.strip():
            return None
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{where}:{e.colno}: not valid JSON ({e.msg}); each line must be one JSON "
                              f'object with a "{self.field}" string') from None
        if not isinstance(obj, dict) or self.field not in obj:
            raise CorpusError(f'{where}: no "{self.field}" field; each line must be a JSON object with the '
                              f'row in "{self.field}" (or name the field with --text-field)')
        return _as_text(obj[self.field], where, self.field)

    # --- columnar files ----------------------------------------------------------------------
    def _parquet(self, start: Position | None) -> Iterator[Record]:
        pq = pyarrow().parquet
        f0, g0 = start or (0, 0)
        for fi in range(f0, len(self.files)):
            path = self.files[fi]
            try:
                pf = pq.ParquetFile(path)
            except Exception as e:  # pyarrow raises ArrowInvalid & co. for a file that is not Parquet
                raise CorpusError(f"{path}: not a readable Parquet file ({e})") from None
            self._check_column(pf.schema_arrow.names, path)
            row = sum(pf.metadata.row_group(g).num_rows for g in range(g0 if fi == f0 else 0))
            for g in range(g0 if fi == f0 else 0, pf.num_row_groups):
                k = 0  # a row group may hold millions of rows: decode it BATCH rows at a time
                for batch in pf.iter_batches(batch_size=BATCH, row_groups=[g], columns=[self.field]):
                    for v in batch.column(0).to_pylist():
                        where = f"{path}: row {row + 1}"
                        yield ((fi, g) if k == 0 else None), _as_text(v, where, self.field), where
                        row += 1
                        k += 1

    def _arrow(self, start: Position | None) -> Iterator[Record]:
        pa = pyarrow()
        f0, b0 = start or (0, 0)
        for fi in range(f0, len(self.files)):
            path = self.files[fi]
            with pa.memory_map(str(path)) as src:
                try:
                    reader = pa.ipc.open_stream(src)
                except pa.ArrowInvalid:
                    src.seek(0)
                    reader = pa.ipc.open_file(src)
                    batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
                    names = reader.schema.names
                else:
                    batches, names = iter(reader), reader.schema.names
                self._check_column(names, path)
                row = 0
                for b, batch in enumerate(batches):
                    if fi == f0 and b < b0:
                        row += batch.num_rows
                        continue
                    for k, v in enumerate(batch.column(names.index(self.field)).to_pylist()):
                        where = f"{path}: row {row + 1}"
                        yield ((fi, b) if k == 0 else None), _as_text(v, where, self.field), where
                        row += 1

    def _check_column(self, names: list[str], path: pathlib.Path) -> None:
        if self.field not in names:
            raise CorpusError(f"{path}: no column {self.field!r} (columns: {', '.join(names)}); name the text "
                              "column with --text-field")


def pyarrow():
    """pyarrow, or an error saying how to install it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401  (the submodule pyarrow.parquet is used through pyarrow)
    except ImportError:
        raise CorpusError("reading Parquet or Arrow corpora needs pyarrow: pip install 'langneurons[parquet]'") from None
    return pyarrow


def _as_text(v: object, where: str, field: str) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise CorpusError(f"{where}: {field!r} is a {type(v).__name__}, not a string; give the row's text as a string")
    return v.strip() or None


def arrow_files(folder: pathlib.Path) -> tuple[pathlib.Path, ...]:
    """The Arrow files of a `save_to_disk` folder, in the order its state.json lists them."""
    if (folder / "dataset_dict.json").is_file():
        splits = json.loads((folder / "dataset_dict.json").read_text()).get("splits", [])
        raise CorpusError(f"{folder}: a DatasetDict with splits {splits}; give one split's folder, e.g. "
                          f"{folder / (splits[0] if splits else 'train')}")
    state = folder / "state.json"
    if state.is_file():
        names = [d["filename"] for d in json.loads(state.read_text()).get("_data_files", [])]
        files = tuple(folder / n for n in names)
    else:
        files = tuple(sorted(folder.glob("*.arrow")))
    if not files or not all(f.is_file() for f in files):
        raise CorpusError(f"{folder}: no Arrow files (state.json lists none, or they are missing); give a "
                          "folder written by datasets' save_to_disk")
    return files


def source_for(language: str, path: pathlib.Path, field: str) -> LanguageSource:
    """The source of one language's entry in a per-language directory."""
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return LanguageSource(language, "arrow", arrow_files(path), field)
        parquet = tuple(sorted(p for p in path.iterdir() if p.suffix == ".parquet" and not p.name.startswith(".")))
        if parquet:
            return LanguageSource(language, "parquet", parquet, field)
        raise CorpusError(f"{path}: neither .parquet files nor a save_to_disk dataset (state.json) inside")
    kind = {".txt": "lines", ".jsonl": "jsonl", ".parquet": "parquet"}[path.suffix.lower()]
    return LanguageSource(language, kind, (path,), field)
