"""tmx: TMX 1.4 files, plain or inside .zip archives, joined across files on `tuid`, streamed."""

from __future__ import annotations

import logging
import pathlib
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from typing import IO

from langneurons.corpus.checks import CorpusError, choose, local_tag, check_code
from langneurons.corpus.textdir import Columns

log = logging.getLogger(__name__)

_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"


def read(paths: list[pathlib.Path], requested: tuple[str, ...] | None) -> Columns:
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
    langs = choose(tuple(available), requested, ", ".join(map(str, paths)))
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
            tag = local_tag(el.tag)
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
                if local_tag(tuv.tag) != "tuv":
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
                seg = next((c for c in tuv if local_tag(c.tag) == "seg"), None)
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
