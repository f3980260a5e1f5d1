"""Corpus validation shared by every format: the error type, language codes, language selection,
row ranges, and reading UTF-8 text files line by line without shifting alignment (and refusing
UTF-16 and UTF-32 ones, `check_utf8_head`)."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Callable, Iterable, Sequence

from langneurons.store.schema import LANGUAGE_CODE_RULE, language_code_ok  # noqa: F401  (re-exported)

_BOM = "\ufeff"
HEAD_BYTES = 4096  # how much of a text file `check_utf8_head` looks at
_WIDE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"),
              (b"\xff\xfe", "UTF-16LE"), (b"\xfe\xff", "UTF-16BE"))


class CorpusError(ValueError):
    """A corpus that cannot be read as asked; the message names the file, the line and the fix."""


def check_code(code: str, where: str) -> str:
    """A language code as the store schema allows it (`store.schema.language_code_ok`)."""
    if not language_code_ok(code):
        raise CorpusError(f"{where}: invalid language code {code!r}; {LANGUAGE_CODE_RULE}")
    return code


def check_unique(codes: Sequence[str], where: str) -> None:
    # BCP 47 tags are case-insensitive: 'en' and 'EN' are one language given twice.
    seen: dict[str, str] = {}
    for c in codes:
        if c.casefold() in seen:
            also = ("" if seen[c.casefold()] == c else
                    f" (also given as {seen[c.casefold()]!r}; codes are case-insensitive)")
            raise CorpusError(f"{where}: duplicate language code {c!r}{also}; give each language once")
        seen[c.casefold()] = c


def requested_codes(languages: Sequence[str] | None) -> tuple[str, ...] | None:
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
    check_unique(req, "languages")
    return req


def choose(available: tuple[str, ...], requested: tuple[str, ...] | None, where: str) -> tuple[str, ...]:
    if requested is None:
        return available
    for c in requested:
        if c not in available:
            near = [a for a in available if a.casefold() == c.casefold()]
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise CorpusError(f"{where}: language {c!r} is not in the corpus{hint}; available: "
                              f"{', '.join(available)}")
    return requested


def check_range(start: int, max_sentences: int | None, where: str) -> None:
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise CorpusError(f"{where}: start must be an integer >= 0, got {start!r}")
    if max_sentences is not None and (isinstance(max_sentences, bool) or not isinstance(max_sentences, int)
                                      or max_sentences < 1):
        raise CorpusError(f"{where}: max_sentences must be an integer >= 1 (or None for all rows), "
                          f"got {max_sentences!r}")


def wide_encoding(head: bytes) -> tuple[str, str] | None:
    """(encoding, how it shows) when a file starting with `head` is UTF-16 or UTF-32, else None.

    Without a byte-order mark, NUL bytes give it away: UTF-8 text has none, while UTF-16 puts one
    beside every ASCII character (spaces, digits, newlines), always on the same side, and UTF-32
    puts two or three in every 4-byte character. Such a file decodes as "valid UTF-8" with a NUL
    between every letter, so it must be caught before decoding. A stray NUL in UTF-8 text is not
    enough: most newlines must be NUL-padded, on one side only (which tells the byte order even in
    CJK text, whose characters such as U+4E00 put NULs on both sides), or else a 32nd of one
    side's bytes must be NUL and at most a third as many of the other side's."""
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            return name, "its byte-order mark"
    if b"\0" not in head:
        return None
    how = "NUL bytes between its characters, and no byte-order mark"
    units = len(head) // 4
    z = [head[i:units * 4:4].count(0) for i in range(4)]  # NULs at each byte of a 4-byte unit
    if units and z[3] == units and 2 * z[2] > units:
        return "UTF-32LE", how
    if units and z[0] == units and 2 * z[1] > units:
        return "UTF-32BE", how
    n = len(head) // 2 * 2
    units16 = [head[i:i + 2] for i in range(0, n, 2)]
    le, be = units16.count(b"\n\0"), units16.count(b"\0\n")  # newlines, NUL-padded
    lf = head.count(b"\n")
    if le >= 2 and not be and 2 * le > lf:
        return "UTF-16LE", how
    if be >= 2 and not le and 2 * be > lf:
        return "UTF-16BE", how
    even, odd = head[0:n:2].count(0), head[1:n:2].count(0)
    enough = max(1, n // 64)
    if odd >= enough and 3 * even <= odd:
        return "UTF-16LE", how
    if even >= enough and 3 * odd <= even:
        return "UTF-16BE", how
    return None


def check_utf8_head(path: pathlib.Path, head: bytes) -> None:
    """Refuse a text file whose first bytes (`head`, up to HEAD_BYTES) are UTF-16 or UTF-32."""
    wide = wide_encoding(head)
    if wide is not None:
        name, how = wide
        raise CorpusError(f"{path}: this file is {name} ({how}), not UTF-8; re-save it as UTF-8, e.g. "
                          f"`iconv -f {name} -t UTF-8 {path.name} > utf8.tmp && mv utf8.tmp {path.name}`")


def read_lines(path: pathlib.Path) -> list[str]:
    """The file's lines, decoded as UTF-8 (a leading BOM and CRLF endings allowed); a final
    newline ends the last line rather than starting an empty one."""
    data = path.read_bytes()
    check_utf8_head(path, data[:HEAD_BYTES])
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


def local_tag(tag: object) -> str:
    # Tags are "{namespace}name" when a namespace is declared; TMX readers should not care.
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""



def aligned_fingerprint(languages: Sequence[str], n_rows: int, rows: Callable[[str], Iterable[str]]) -> str:
    """sha256 over the language codes and every row, language by language (`rows(code)` may
    stream). Each string is length-prefixed so no two different corpora hash the same bytes
    (joining with a separator would let ("a\\tb",) and ("a", "b") collide). Row ids and the source
    are left out: the same text read from another format or path is the same corpus."""
    h = hashlib.sha256(b"langneurons-corpus-v1\0")

    def put(s: str) -> None:
        b = s.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    h.update(len(languages).to_bytes(8, "little"))
    h.update(n_rows.to_bytes(8, "little"))
    for code in languages:
        put(code)
    for code in languages:
        for s in rows(code):
            put(s)
    return "sha256:" + h.hexdigest()


def row_hasher(code: str):
    """The digest of one language's rows, fed one row at a time by `hash_row`."""
    h = hashlib.sha256(b"langneurons-rows-v1\0")
    h.update(code.encode() + b"\0")
    return h


def hash_row(h, s: str) -> None:
    b = s.encode("utf-8")  # length-prefixed, so no two row lists hash the same bytes
    h.update(len(b).to_bytes(8, "little"))
    h.update(b)


def monolingual_fingerprint(parts: Sequence[tuple[str, int, str]]) -> str:
    """The fingerprint of per-language rows from (code, rows, row digest) in corpus order."""
    h = hashlib.sha256(b"langneurons-corpus-v2\0")
    h.update(len(parts).to_bytes(8, "little"))
    for code, n, digest in parts:
        h.update(f"{code}\0{n}\0{digest}\0".encode())
    return "sha256:" + h.hexdigest()
