"""Read and validate parallel corpora; plan shards.

A corpus is N aligned rows x L languages: row i of every language says the same thing. Formats:

- textdir: a directory with one UTF-8 `<code>.txt` per language, aligned by line. An `ids.txt`
  beside them, if present, gives the row ids (one per line; so "ids" is not a language code
  here). Other files (README.md, LICENSE.md, hidden files) are ignored.
- tsv:     a header row of language codes, then one tab-separated row per sentence (no quoting).
- jsonl:   one object per line, `{"<code>": "<text>", ...}`, the same keys on every line.
- tmx:     TMX 1.4 files, plain or inside .zip archives, joined across files on `tuid`.

Every sentence has its surrounding whitespace stripped, so one corpus reads identically from any
format (and so from any `fingerprint()`), and must not be empty. Only the selected languages are
read and checked. Lines are split on "\\n" alone: `str.splitlines` also splits on U+2028, U+0085
and form feeds, which occur inside real sentences and would silently shift the alignment.

Every bad input raises `CorpusError` on one line (the CLI prints it as is) with the file, the
1-based line (or TMX tuid) and what to do about it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import IO

log = logging.getLogger(__name__)

FORMATS = ("auto", "textdir", "tsv", "jsonl", "tmx")
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_BOM = "\ufeff"
IDS_FILE = "ids.txt"  # in a textdir: row ids, one per line, instead of line numbers


class CorpusError(ValueError):
    """A corpus that cannot be read as asked; the message names the file, the line and the fix."""


# ---------------------------------------------------------------------------------------------
# The corpus


@dataclass(frozen=True, repr=False)
class ParallelCorpus:
    languages: tuple[str, ...]
    """Language codes, in the order requested (or file/column order)."""
    sentences: dict[str, tuple[str, ...]] = field(hash=False)
    """Language -> its sentences; row i is aligned across languages."""
    ids: tuple[str, ...]
    """Row ids: the tuid for TMX, the 1-based line number in the file for textdir/TSV/JSONL
    (or the lines of a textdir's ids.txt)."""
    source: str
    """Where it was read from (paths), for people."""

    def __post_init__(self) -> None:
        # Coerce lists to tuples so a hand-built corpus is as immutable as a loaded one.
        object.__setattr__(self, "languages", tuple(self.languages))
        object.__setattr__(self, "ids", tuple(self.ids))
        object.__setattr__(self, "sentences", {k: tuple(v) for k, v in self.sentences.items()})
        if not self.languages:
            raise CorpusError(f"{self.source}: a corpus needs at least one language")
        for code in self.languages:
            check_code(code, self.source)
        _check_unique(self.languages, self.source)
        if set(self.sentences) != set(self.languages):
            raise CorpusError(f"{self.source}: sentences has languages {sorted(self.sentences)} but "
                              f"languages is {list(self.languages)}; they must name the same codes")
        if not self.ids:
            raise CorpusError(f"{self.source}: empty corpus (0 rows); give at least one aligned row")
        for code in self.languages:
            if len(self.sentences[code]) != len(self.ids):
                raise CorpusError(f"{self.source}: {code!r} has {len(self.sentences[code])} sentences "
                                  f"but there are {len(self.ids)} row ids; every language needs one per row")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:  # the default would print every sentence
        return (f"ParallelCorpus(languages={self.languages!r}, rows={len(self)}, "
                f"source={self.source!r})")

    def fingerprint(self) -> str:
        """sha256 over the language codes and every sentence, in order.

        Each string is length-prefixed so no two different corpora hash the same bytes (joining
        with a separator would let ("a\\tb",) and ("a", "b") collide). Row ids and the source are
        left out: the same text read from another format or path is the same corpus.
        """
        h = hashlib.sha256(b"langneurons-corpus-v1\0")

        def put(s: str) -> None:
            b = s.encode("utf-8")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)

        h.update(len(self.languages).to_bytes(8, "little"))
        h.update(len(self).to_bytes(8, "little"))
        for code in self.languages:
            put(code)
        for code in self.languages:
            for s in self.sentences[code]:
                put(s)
        return "sha256:" + h.hexdigest()

    def select(self, languages: Sequence[str] | None = None, max_sentences: int | None = None,
               start: int = 0) -> ParallelCorpus:
        """The rows [start, start + max_sentences) of `languages` (in that order; default all)."""
        langs = _choose(self.languages, _requested(languages), self.source)
        _check_range(start, max_sentences, self.source)
        n = len(self)
        if start >= n:
            raise CorpusError(f"{self.source}: start={start} is beyond the end of the corpus "
                              f"({n} rows); use a start below {n}")
        stop = n if max_sentences is None else min(n, start + max_sentences)
        return ParallelCorpus(languages=langs,
                              sentences={c: self.sentences[c][start:stop] for c in langs},
                              ids=self.ids[start:stop], source=self.source)


# ---------------------------------------------------------------------------------------------
# Loading


def load_corpus(path: str | os.PathLike | Sequence[str | os.PathLike], *, format: str = "auto",
                languages: Sequence[str] | None = None, max_sentences: int | None = None,
                start: int = 0) -> ParallelCorpus:
    """Read a parallel corpus (see the module docstring for the formats) and keep
    `languages` (default: all, in file/column order) and the rows [start, start + max_sentences)."""
    paths = _as_paths(path)
    requested = _requested(languages)
    where = ", ".join(str(p) for p in paths)
    _check_range(start, max_sentences, where)  # fail before reading a large corpus
    for p in paths:
        if not p.exists():
            raise CorpusError(f"{p}: no such file or directory; give a directory of <code>.txt files, "
                              "a .tsv, a .jsonl, or .tmx/.zip files")
    fmt = _detect_format(paths) if format == "auto" else format
    if fmt not in FORMATS:
        raise CorpusError(f"format={format!r} is not a corpus format; use one of {', '.join(FORMATS)}")
    if fmt != "tmx" and len(paths) != 1:
        raise CorpusError(f"{where}: format {fmt!r} reads one path, got {len(paths)}; "
                          "only TMX files can be joined (on tuid) from several paths")
    if fmt == "textdir":
        langs, sents, ids = _read_textdir(paths[0], requested)
    elif fmt == "tsv":
        langs, sents, ids = _read_tsv(paths[0], requested)
    elif fmt == "jsonl":
        langs, sents, ids = _read_jsonl(paths[0], requested)
    else:
        langs, sents, ids = _read_tmx(paths, requested)
    if not ids:
        raise CorpusError(f"{where}: empty corpus (0 rows); give at least one aligned row")
    corpus = ParallelCorpus(languages=langs, sentences=sents, ids=ids, source=where)
    if start or max_sentences is not None:
        corpus = corpus.select(max_sentences=max_sentences, start=start)
    return corpus


def demo_corpus_path() -> pathlib.Path:
    """The bundled TICO-19 demo corpus (textdir: en es fr hi ru zh, 600 rows; data/tico19/README.md)."""
    p = pathlib.Path(str(resources.files("langneurons") / "data" / "tico19"))
    if not (p / "en.txt").is_file():
        raise FileNotFoundError(f"the bundled demo corpus is missing at {p}; reinstall langneurons "
                                "(package data data/tico19) or regenerate it with scripts/make_demo_corpus.py")
    return p


Columns = tuple[tuple[str, ...], dict[str, tuple[str, ...]], tuple[str, ...]]  # languages, sentences, ids


def _read_textdir(root: pathlib.Path, requested: tuple[str, ...] | None) -> Columns:
    if not root.is_dir():
        raise CorpusError(f"{root}: format 'textdir' needs a directory of <code>.txt files")
    files: dict[str, pathlib.Path] = {}
    folded: dict[str, pathlib.Path] = {}
    for p in sorted(root.iterdir()):
        # Hidden files include macOS's "._en.txt" resource forks, which are not text.
        if p.name.startswith(".") or p.suffix.lower() != ".txt" or not p.is_file() or p.name == IDS_FILE:
            continue
        code = check_code(p.name[: -len(p.suffix)], str(p))
        if code.casefold() in folded:
            raise CorpusError(f"{p}: language {code!r} is also given by {folded[code.casefold()].name} "
                              "(codes are case-insensitive); keep one of the two files")
        folded[code.casefold()] = p
        files[code] = p
    if not files:
        others = ", ".join(sorted(p.name for p in root.iterdir())[:10]) or "nothing"
        raise CorpusError(f"{root}: no <code>.txt files (found {others}); put one UTF-8 file per "
                          "language, e.g. en.txt and fr.txt, aligned line by line")
    langs = _choose(tuple(files), requested, str(root))
    lines = {c: _read_lines(files[c]) for c in langs}
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
    ids = [line.strip() for line in _read_lines(path)]
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


def _read_tsv(path: pathlib.Path, requested: tuple[str, ...] | None) -> Columns:
    if not path.is_file():
        raise CorpusError(f"{path}: format 'tsv' needs a file")
    lines = _read_lines(path)
    if not lines or not lines[0].strip():
        raise CorpusError(f"{path}:1: no header row; the first line must be the language codes, "
                          "tab-separated (e.g. en<TAB>fr)")
    header = tuple(check_code(h.strip(), f"{path}:1") for h in lines[0].split("\t"))
    _check_unique(header, f"{path}:1 (header)")
    langs = _choose(header, requested, str(path))
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


class _Pairs(list):
    """A JSON object's (key, value) pairs as written, so duplicate keys can be reported
    (json.loads would silently keep the last one)."""


def _read_jsonl(path: pathlib.Path, requested: tuple[str, ...] | None) -> Columns:
    if not path.is_file():
        raise CorpusError(f"{path}: format 'jsonl' needs a file")
    keys: tuple[str, ...] = ()
    langs: tuple[str, ...] = ()
    sents: dict[str, list[str]] = {}
    ids = []
    for i, line in enumerate(_read_lines(path), start=1):
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
        _check_unique(row_keys, where)
        if i == 1:
            keys = tuple(check_code(k, where) for k in row_keys)
            langs = _choose(keys, requested, str(path))
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


def _read_tmx(paths: list[pathlib.Path], requested: tuple[str, ...] | None) -> Columns:
    """Join TMX files on tuid: a unit is kept when every selected language has a segment (inner
    join), in the order first seen (the first file's unit order, then later files' new units)."""
    wanted = set(requested) if requested is not None else None
    rows: dict[str, dict[str, str]] = {}
    first_file: dict[tuple[str, str], str] = {}   # (tuid, language) -> file its kept text came from
    spelled: dict[str, tuple[str, str]] = {}      # casefolded code -> (code as first written, file)
    available: list[str] = []
    n_conflicts = 0
    example = ""
    for name, stream in _tmx_sources(paths):
        with stream:
            for tuid, segs in _tmx_units(name, stream, wanted):
                row = rows.setdefault(tuid, {})
                for code, text in segs.items():
                    if code.casefold() not in spelled:
                        spelled[code.casefold()] = (code, name)
                        available.append(code)
                    elif spelled[code.casefold()][0] != code:
                        raise CorpusError(f"{name}: tuid {tuid!r}: language {code!r} is written "
                                          f"{spelled[code.casefold()][0]!r} in {spelled[code.casefold()][1]} "
                                          "(codes are case-insensitive); spell it the same in every file")
                    if wanted is not None and code not in wanted:
                        continue
                    if code not in row:
                        row[code] = text
                        first_file[tuid, code] = name
                    elif row[code] != text:
                        n_conflicts += 1
                        if not example:
                            example = (f"tuid {tuid!r} {code!r}: {row[code][:60]!r} in "
                                       f"{first_file[tuid, code]} vs {text[:60]!r} in {name}")
    langs = _choose(tuple(available), requested, ", ".join(map(str, paths)))
    if n_conflicts:
        # The same source text in several pair files (e.g. en in every TICO-19 file) was
        # sometimes edited per file; the first file's version is as good as any, so not an error.
        log.warning("%d segments differ between TMX files for the same tuid and language; kept the "
                    "first file's text (e.g. %s)", n_conflicts, example)
    kept = [t for t, row in rows.items() if all(c in row for c in langs)]
    if rows and not kept:
        raise CorpusError(f"{', '.join(map(str, paths))}: empty corpus: none of the {len(rows)} translation "
                          f"units has all of {', '.join(langs)} (the files are joined on tuid, an inner "
                          "join); check that the files share tuids, or select fewer languages")
    if len(kept) < len(rows):
        lacking = next(t for t, row in rows.items() if not all(c in row for c in langs))
        log.warning("%d of %d translation units lack at least one of %s and were dropped (inner join "
                    "on tuid; e.g. tuid %r lacks %s)", len(rows) - len(kept), len(rows), list(langs),
                    lacking, [c for c in langs if c not in rows[lacking]])
    return langs, {c: tuple(rows[t][c] for t in kept) for c in langs}, tuple(kept)


def _tmx_sources(paths: list[pathlib.Path]) -> Iterator[tuple[str, IO[bytes]]]:
    """(display name, binary stream) for every TMX file: plain .tmx, or each .tmx inside a .zip."""
    for p in paths:
        if not p.is_file():
            raise CorpusError(f"{p}: format 'tmx' needs .tmx or .zip files, not a directory")
        if not zipfile.is_zipfile(p):
            yield str(p), open(p, "rb")
            continue
        with zipfile.ZipFile(p) as z:
            # __MACOSX/ holds resource forks that macOS's archiver adds next to every file.
            members = [n for n in z.namelist()
                       if n.lower().endswith(".tmx") and not n.startswith("__MACOSX/")]
            if not members:
                raise CorpusError(f"{p}: no .tmx file inside this zip (it holds {z.namelist()[:5]}); "
                                  "give a zip with .tmx files, or the .tmx files themselves")
            for n in members:
                yield f"{p}/{n}", z.open(n)


def _tmx_units(name: str, stream: IO[bytes], wanted: set[str] | None) -> Iterator[tuple[str, dict[str, str]]]:
    """(tuid, {language: text}) per <tu>, streaming: each <tu> is dropped once read."""
    seen: dict[str, int] = {}
    body = None
    n = 0
    try:
        for event, el in ET.iterparse(stream, events=("start", "end")):
            tag = _local(el.tag)
            if event == "start":
                if tag == "body":
                    body = el
                continue
            if tag != "tu":
                continue
            n += 1
            tuid = el.get("tuid")
            if not tuid:
                raise CorpusError(f"{name}: <tu> number {n} has no tuid; files are joined on tuid, so "
                                  "give every <tu> a unique tuid attribute")
            if tuid in seen:
                raise CorpusError(f"{name}: tuid {tuid!r} appears twice (<tu> number {seen[tuid]} and "
                                  f"{n}); tuids must be unique within a file because files are joined on them")
            seen[tuid] = n
            segs: dict[str, str] = {}
            folded: set[str] = set()
            for tuv in el:
                if _local(tuv.tag) != "tuv":
                    continue
                code = tuv.get(_XML_LANG) or tuv.get("lang")  # "lang" is TMX 1.1's spelling
                if code is None:
                    raise CorpusError(f"{name}: tuid {tuid!r}: a <tuv> without xml:lang; "
                                      'add xml:lang="<code>" to it')
                check_code(code, f"{name}: tuid {tuid!r}")
                if code.casefold() in folded:
                    raise CorpusError(f"{name}: tuid {tuid!r}: language {code!r} appears twice in one <tu>; "
                                      "keep one <tuv> per language")
                folded.add(code.casefold())
                seg = next((c for c in tuv if _local(c.tag) == "seg"), None)
                if seg is None:
                    raise CorpusError(f"{name}: tuid {tuid!r}: the <tuv> for {code!r} has no <seg>; "
                                      "put the text in <seg>...</seg>")
                # Inline markup (<ph>, <bpt>, <hi>...) is part of the sentence: keep all its text.
                text = "".join(seg.itertext()).strip()
                if not text and (wanted is None or code in wanted):
                    raise CorpusError(f"{name}: tuid {tuid!r}: empty <seg> for language {code!r}; fill in "
                                      "the translation, remove that <tuv> (the join then drops the unit), "
                                      f"or leave {code!r} out of the languages")
                segs[code] = text
            yield tuid, segs
            el.clear()
            if body is not None:
                del body[:]
    except ET.ParseError as e:
        line, col = e.position
        what = re.sub(r": line \d+, column \d+$", "", e.msg)
        raise CorpusError(f"{name}:{line}:{col + 1}: XML error: {what}; TMX must be well-formed UTF-8 XML "
                          "(with < and & in text escaped): fix or re-export the file") from None
    if n == 0:
        raise CorpusError(f"{name}: no <tu> elements; is this a TMX file? Expected "
                          '<tmx><body><tu tuid="..."><tuv xml:lang="en"><seg>...</seg></tuv>...')


# ---------------------------------------------------------------------------------------------
# Shards


@dataclass(frozen=True)
class Shard:
    index: int
    """Position in the plan, 0..n-1."""
    language: str
    start: int
    """Rows [start, stop) of the corpus."""
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"Shard {self.index}: need 0 <= start < stop, got start={self.start} "
                             f"stop={self.stop}")

    @property
    def id(self) -> str:
        return f"{self.language}:{self.start}-{self.stop}"


def plan_shards(corpus: ParallelCorpus, shard_size: int) -> list[Shard]:
    """For each language in corpus order, consecutive row ranges of shard_size (the last shorter).

    A pure function of (languages, len(corpus), shard_size), so a resumed run plans the same shards
    and their indices name the same work.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be an integer >= 1, got {shard_size!r}")
    n = len(corpus)
    shards: list[Shard] = []
    for lang in corpus.languages:
        for start in range(0, n, shard_size):
            shards.append(Shard(index=len(shards), language=lang, start=start,
                                stop=min(start + shard_size, n)))
    return shards


# ---------------------------------------------------------------------------------------------
# Helpers


def _as_paths(path: str | os.PathLike | Sequence[str | os.PathLike]) -> list[pathlib.Path]:
    if isinstance(path, (str, os.PathLike)):
        return [pathlib.Path(path)]
    paths = [pathlib.Path(p) for p in path]
    if not paths:
        raise CorpusError("no corpus path given; give a directory, a .tsv, a .jsonl, or .tmx/.zip files")
    return paths


def _detect_format(paths: list[pathlib.Path]) -> str:
    kinds = []
    for p in paths:
        name = p.name.lower()
        if p.is_dir():
            kinds.append("textdir")
        elif name.endswith(".tsv"):
            kinds.append("tsv")
        elif name.endswith(".jsonl"):
            kinds.append("jsonl")
        elif name.endswith((".tmx", ".zip")):
            kinds.append("tmx")
        else:
            raise CorpusError(f"{p}: cannot tell the corpus format from the name (auto knows a directory, "
                              ".tsv, .jsonl, .tmx and .zip); pass format='textdir', 'tsv', 'jsonl' or 'tmx'")
    if len(paths) > 1 and set(kinds) != {"tmx"}:
        raise CorpusError(f"{', '.join(map(str, paths))}: several paths are only read as TMX files joined "
                          "on tuid; give one directory, .tsv or .jsonl")
    return kinds[0]


def _read_lines(path: pathlib.Path) -> list[str]:
    """The file's lines, decoded as UTF-8 (a leading BOM and CRLF endings allowed); a final
    newline ends the last line rather than starting an empty one."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CorpusError(f"{path}:{line}: invalid UTF-8 ({data[e.start:e.end]!r} at byte {e.start}); "
                          "re-encode the file as UTF-8, e.g. `iconv -f <its encoding> -t UTF-8`") from None
    text = text.removeprefix(_BOM)
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    lines = [ln.removesuffix("\r") for ln in lines]
    for i, ln in enumerate(lines, start=1):
        if "\r" in ln:  # old Mac line endings (CR only) would read a whole file as one sentence
            raise CorpusError(f"{path}:{i}: a carriage return (\\r) that does not end a line; the file has "
                              "old Mac (CR-only) line endings or a stray \\r inside a sentence. Convert it "
                              "to \\n line endings, e.g. `tr '\\r' '\\n' < in > out`, or remove the \\r")
    return lines


_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def check_code(code: str, where: str) -> str:
    """A language code: ASCII letters, digits, '-' and '_' (`pt-BR`, `zho_Hans`), at most 64 long.
    Codes name files of exports and plots, so '/', '..', spaces and the like never pass."""
    if not isinstance(code, str) or not _CODE.match(code):
        raise CorpusError(f"{where}: invalid language code {code!r}; use ASCII letters, digits, '-' and "
                          "'_' only (e.g. en, pt-BR, zho_Hans), at most 64 characters")
    return code


def _check_unique(codes: Sequence[str], where: str) -> None:
    # BCP 47 tags are case-insensitive: 'en' and 'EN' are one language given twice.
    seen: dict[str, str] = {}
    for c in codes:
        if c.casefold() in seen:
            also = ("" if seen[c.casefold()] == c else
                    f" (also given as {seen[c.casefold()]!r}; codes are case-insensitive)")
            raise CorpusError(f"{where}: duplicate language code {c!r}{also}; give each language once")
        seen[c.casefold()] = c


def _requested(languages: Sequence[str] | None) -> tuple[str, ...] | None:
    if languages is None:
        return None
    if isinstance(languages, str):
        raise CorpusError(f"languages must be a list of codes such as ['en', 'fr'], got the string "
                          f"{languages!r}")
    req = tuple(languages)
    if not req:
        raise CorpusError("languages is empty; give at least one code, or None for all")
    for c in req:
        check_code(c, "languages")
    _check_unique(req, "languages")
    return req


def _choose(available: tuple[str, ...], requested: tuple[str, ...] | None, where: str) -> tuple[str, ...]:
    if requested is None:
        return available
    for c in requested:
        if c not in available:
            near = [a for a in available if a.casefold() == c.casefold()]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise CorpusError(f"{where}: language {c!r} is not in the corpus{hint}; available: "
                              f"{', '.join(available)}")
    return requested


def _check_range(start: int, max_sentences: int | None, where: str) -> None:
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise CorpusError(f"{where}: start must be an integer >= 0, got {start!r}")
    if max_sentences is not None and (isinstance(max_sentences, bool) or not isinstance(max_sentences, int)
                                      or max_sentences < 1):
        raise CorpusError(f"{where}: max_sentences must be an integer >= 1 (or None for all rows), "
                          f"got {max_sentences!r}")


def _local(tag: object) -> str:
    # Tags are "{namespace}name" when a namespace is declared; TMX readers should not care.
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""
