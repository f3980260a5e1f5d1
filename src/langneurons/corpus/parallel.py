"""The parallel corpus (N aligned rows x L languages) and `load_corpus`, which picks the format."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

from langneurons.config import FORMATS
from langneurons.corpus.checks import CorpusError, aligned_fingerprint, check_range, check_unique, choose, requested_codes, check_code
from langneurons.corpus import jsonl, tables, textdir, tmx, tsv
from langneurons.corpus.stream import StreamCorpus, is_language_dir


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
        check_unique(self.languages, self.source)
        if set(self.sentences) != set(self.languages):
            raise CorpusError(f"{self.source}: sentences has languages {sorted(self.sentences)} but "
                              f"languages is {list(self.languages)}; they must name the same codes")
        if not self.ids:
            raise CorpusError(f"{self.source}: empty corpus (0 rows); give at least one aligned row")
        for code in self.languages:
            if len(self.sentences[code]) != len(self.ids):
                raise CorpusError(f"{self.source}: {code!r} has {len(self.sentences[code])} sentences "
                                  f"but there are {len(self.ids)} row ids; every language needs one per row")

    aligned = True  # the rows of every language say the same thing

    def __len__(self) -> int:
        return len(self.ids)

    # The interface every corpus offers the run (stream.StreamCorpus and budget.Budgeted too).
    def n_rows(self, language: str) -> int:
        return len(self.ids)

    def iter_rows(self, language: str, start: int = 0, stop: int | None = None):
        return iter(self.sentences[language][start:stop])

    def rows(self, language: str, start: int, stop: int) -> list[str]:
        return list(self.sentences[language][start:stop])

    def __repr__(self) -> str:  # the default would print every sentence
        return (f"ParallelCorpus(languages={self.languages!r}, rows={len(self)}, "
                f"source={self.source!r})")

    def fingerprint(self) -> str:
        """sha256 over the language codes and every sentence, in order.

        Each string is length-prefixed so no two different corpora hash the same bytes (joining
        with a separator would let ("a\\tb",) and ("a", "b") collide). Row ids and the source are
        left out: the same text read from another format or path is the same corpus.
        """
        return aligned_fingerprint(self.languages, len(self), lambda c: self.sentences[c])

    def select(self, languages: Sequence[str] | None = None, max_sentences: int | None = None,
               start: int = 0) -> ParallelCorpus:
        """The rows [start, start + max_sentences) of `languages` (in that order; default all)."""
        langs = choose(self.languages, requested_codes(languages), self.source)
        check_range(start, max_sentences, self.source)
        n = len(self)
        if start >= n:
            raise CorpusError(f"{self.source}: start={start} is beyond the end of the corpus "
                              f"({n} rows); use a start below {n}")
        stop = n if max_sentences is None else min(n, start + max_sentences)
        return ParallelCorpus(languages=langs,
                              sentences={c: self.sentences[c][start:stop] for c in langs},
                              ids=self.ids[start:stop], source=self.source)


def open_corpus(path: str | os.PathLike | Sequence[str | os.PathLike], *, format: str = "auto",
                languages: Sequence[str] | None = None, max_sentences: int | None = None,
                unaligned: bool = False, text_field: str = "text") -> "ParallelCorpus | StreamCorpus":
    """The corpus at `path`: per-language files and folders are streamed (`stream.StreamCorpus`,
    aligned or, with `unaligned`, monolingual); every other layout is read whole (`load_corpus`)."""
    paths = _as_paths(path)
    p = paths[0]
    streamed = (len(paths) == 1 and p.is_dir() and not _is_table_dir(p)
                and (unaligned or format == "parquet" or (format == "auto" and is_language_dir(p))))
    if streamed:
        check_range(0, max_sentences, str(p))
        return StreamCorpus(p, unaligned=unaligned, languages=languages, max_sentences=max_sentences,
                            field=text_field)
    if unaligned:
        raise CorpusError(f"{', '.join(map(str, paths))}: --unaligned reads a directory of per-language files or "
                          "folders (<code>.txt, <code>.jsonl, <code>.parquet, <code>/); this is one file with "
                          "all languages, which is aligned input: drop --unaligned")
    return load_corpus(paths, format=format, languages=languages, max_sentences=max_sentences)


def _is_table_dir(p: pathlib.Path) -> bool:
    return (p / "state.json").is_file() or (p / "dataset_dict.json").is_file()


def load_corpus(path: str | os.PathLike | Sequence[str | os.PathLike], *, format: str = "auto",
                languages: Sequence[str] | None = None, max_sentences: int | None = None,
                start: int = 0) -> ParallelCorpus:
    """Read a parallel corpus (see the module docstring for the formats) and keep
    `languages` (default: all, in file/column order) and the rows [start, start + max_sentences)."""
    paths = _as_paths(path)
    requested = requested_codes(languages)
    where = ", ".join(str(p) for p in paths)
    check_range(start, max_sentences, where)  # fail before reading a large corpus
    for p in paths:
        if not p.exists():
            raise CorpusError(f"{p}: no such file or directory; give a directory of <code>.txt files, "
                              "a .tsv, a .jsonl, a .parquet, or .tmx/.zip files")
    fmt = _detect_format(paths) if format == "auto" else format
    if fmt not in FORMATS:
        raise CorpusError(f"format={format!r} is not a corpus format; use one of {', '.join(FORMATS)}")
    if fmt != "tmx" and len(paths) != 1:
        raise CorpusError(f"{where}: format {fmt!r} reads one path, got {len(paths)}; "
                          "only TMX files can be joined (on tuid) from several paths")
    if fmt == "textdir":
        langs, sents, ids = textdir.read(paths[0], requested)
    elif fmt == "tsv":
        langs, sents, ids = tsv.read(paths[0], requested)
    elif fmt == "jsonl":
        langs, sents, ids = jsonl.read(paths[0], requested)
    elif fmt in ("parquet", "arrow"):
        langs, sents, ids = tables.read(paths[0], requested, fmt)
    else:
        langs, sents, ids = tmx.read(paths, requested)
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


def split_paths(spec: str) -> str | list[str]:
    """A corpus given as one string (--corpus): one path, or several joined by commas (TMX files).
    A path that exists is one path, commas and all (`/data/corpus,v2`); only a string that names
    nothing is split, and then every part must exist."""
    if "," not in spec or pathlib.Path(spec).exists():
        return spec
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    missing = [p for p in parts if not pathlib.Path(p).exists()]
    if missing:
        raise CorpusError(f"--corpus {spec}: no such file or directory, and read as paths separated by commas, "
                          f"{', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not exist either; give an "
                          "existing path, or existing .tmx/.zip files separated by commas")
    return parts


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
            kinds.append("arrow" if _is_table_dir(p) else "textdir")
        elif name.endswith(".parquet"):
            kinds.append("parquet")
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
