"""jsonl: one object per line, `{"<code>": "<text>", ...}`, the same keys on every line."""

from __future__ import annotations

import json
import pathlib

from langneurons.corpus.checks import CorpusError, check_unique, choose, read_lines, check_code
from langneurons.corpus.textdir import Columns


class _Pairs(list):
    """A JSON object's (key, value) pairs as written, so duplicate keys can be reported
    (json.loads would silently keep the last one)."""


def read(path: pathlib.Path, requested: tuple[str, ...] | None) -> Columns:
    if not path.is_file():
        raise CorpusError(f"{path}: format 'jsonl' needs a file")
    keys: tuple[str, ...] = ()
    langs: tuple[str, ...] = ()
    sents: dict[str, list[str]] = {}
    ids = []
    for i, line in enumerate(read_lines(path), start=1):
        where = f"{path}:{i}"
        if not line.strip():
            raise CorpusError(f"{where}: empty line; each line must be one JSON object "
                              '{"<code>": "<text>", ...}: delete the line')
        try:
            obj = json.loads(line, object_pairs_hook=_Pairs)
        except json.JSONDecodeError as e:
            raise CorpusError(f"{where}:{e.colno}: not valid JSON ({e.msg}); each line must be one "
                              'JSON object {"<code>": "<text>", ...}') from None
        if not isinstance(obj, _Pairs):
            raise CorpusError(f"{where}: a JSON {type(obj).__name__}, not an object; each line must be "
                              '{"<code>": "<text>", ...}')
        row_keys = tuple(k for k, _ in obj)
        check_unique(row_keys, where)
        if i == 1:
            keys = tuple(check_code(k, where) for k in row_keys)
            langs = choose(keys, requested, str(path))
            sents = {c: [] for c in langs}
        elif set(row_keys) != set(keys):
            missing = [k for k in keys if k not in row_keys]
            extra = [k for k in row_keys if k not in keys]
            raise CorpusError(f"{where}: " + "; ".join(
                ([f"missing language(s) {', '.join(map(repr, missing))}"] if missing else [])
                + ([f"extra key(s) {', '.join(map(repr, extra))}"] if extra else []))
                + f"; every line needs exactly the keys of line 1 ({', '.join(keys)})")
        row = dict(obj)
        for k, v in obj:
            if not isinstance(v, str):
                raise CorpusError(f"{where}: the value of {k!r} is a JSON {type(v).__name__}, "
                                  "not a string; give the sentence as a string")
        for c in langs:
            text = row[c].strip()
            if not text:
                raise CorpusError(f"{where}: empty text for language {c!r}; fill it in or delete the line")
            sents[c].append(text)
        ids.append(str(i))
    if not ids:
        raise CorpusError(f"{path}: empty file (0 rows); give one JSON object per line")
    return langs, {c: tuple(v) for c, v in sents.items()}, tuple(ids)
