"""tsv: a header row of language codes, then one tab-separated row per sentence (no quoting)."""

from __future__ import annotations

import pathlib

from langneurons.corpus.checks import CorpusError, check_unique, choose, read_lines, check_code
from langneurons.corpus.textdir import Columns


def read(path: pathlib.Path, requested: tuple[str, ...] | None) -> Columns:
    if not path.is_file():
        raise CorpusError(f"{path}: format 'tsv' needs a file")
    lines = read_lines(path)
    if not lines or not lines[0].strip():
        raise CorpusError(f"{path}:1: no header row; the first line must be the language codes, "
                          "tab-separated (e.g. en<TAB>fr)")
    header = tuple(check_code(h.strip(), f"{path}:1") for h in lines[0].split("\t"))
    check_unique(header, f"{path}:1 (header)")
    langs = choose(header, requested, str(path))
    cols = [header.index(c) for c in langs]
    sents: dict[str, list[str]] = {c: [] for c in langs}
    ids = []
    for i, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise CorpusError(f"{path}:{i}: {len(fields)} tab-separated fields, expected {len(header)} "
                              f"(one per header column: {' '.join(header)}); texts must not contain tabs, "
                              "and every row needs every column")
        for c, j in zip(langs, cols):
            text = fields[j].strip()
            if not text:
                raise CorpusError(f"{path}:{i}: empty cell for language {c!r} (column {j + 1}); "
                                  "fill it in or delete the row")
            sents[c].append(text)
        ids.append(str(i))
    return langs, {c: tuple(v) for c, v in sents.items()}, tuple(ids)
