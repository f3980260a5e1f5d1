"""textdir: a directory with one UTF-8 `<code>.txt` per language, aligned by line; an `ids.txt`
beside them, if present, gives the row ids. Which files are languages is `layout`'s rule, the one
the streaming reader uses (README.txt, LICENSE.txt, hidden files and other suffixes are not)."""

from __future__ import annotations

import pathlib

from langneurons.corpus.checks import CorpusError, choose, read_lines
from langneurons.corpus.layout import IDS_FILE, language_entries

Columns = tuple[tuple[str, ...], dict[str, tuple[str, ...]], tuple[str, ...]]  # languages, sentences, ids


def read(root: pathlib.Path, requested: tuple[str, ...] | None) -> Columns:
    if not root.is_dir():
        raise CorpusError(f"{root}: format 'textdir' needs a directory of <code>.txt files")
    files = {c: p for c, p in language_entries(root).items() if p.is_file() and p.suffix.lower() == ".txt"}
    if not files:
        others = ", ".join(sorted(p.name for p in root.iterdir())[:10]) or "nothing"
        raise CorpusError(f"{root}: no <code>.txt files (found {others}); put one UTF-8 file per "
                          "language, e.g. en.txt and fr.txt, aligned line by line")
    langs = choose(tuple(files), requested, str(root))
    lines = {c: read_lines(files[c]) for c in langs}
    first = langs[0]
    for c in langs[1:]:
        if len(lines[c]) != len(lines[first]):
            raise CorpusError(f"{files[c]} has {len(lines[c])} lines but {files[first]} has "
                              f"{len(lines[first])}; the files must be aligned line by line "
                              "(find the missing or extra line, e.g. with `paste` or `diff`)")
    sents: dict[str, tuple[str, ...]] = {}
    for c in langs:
        out = []
        for i, line in enumerate(lines[c], start=1):
            text = line.strip()
            if not text:
                raise CorpusError(f"{files[c]}:{i}: empty line; every line is the sentence aligned with "
                                  "the same line of the other files: fill it in, or delete that row "
                                  "from every file")
            out.append(text)
        sents[c] = tuple(out)
    return langs, sents, _textdir_ids(root / IDS_FILE, len(lines[first]), files[first])


def _textdir_ids(path: pathlib.Path, n: int, first: pathlib.Path) -> tuple[str, ...]:
    """The row ids from ids.txt (e.g. the TMX tuids a textdir was made from), else line numbers."""
    if not path.is_file():
        return tuple(str(i) for i in range(1, n + 1))
    ids = [line.strip() for line in read_lines(path)]
    if len(ids) != n:
        raise CorpusError(f"{path} has {len(ids)} lines but {first} has {n}; ids.txt must give one row "
                          "id per line of the language files (or delete it to number the rows by line)")
    seen: dict[str, int] = {}
    for i, row_id in enumerate(ids, start=1):
        if not row_id:
            raise CorpusError(f"{path}:{i}: empty row id; give every row an id (or delete ids.txt)")
        if row_id in seen:
            raise CorpusError(f"{path}:{i}: row id {row_id!r} is also on line {seen[row_id]}; "
                              "row ids must be unique")
        seen[row_id] = i
    return tuple(ids)
