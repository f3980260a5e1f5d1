"""Which entries of a folder are languages: the one rule every per-language layout reads by.

A language is named by an entry's stem: `<code>.txt`, `<code>.jsonl`, `<code>.parquet`, or a folder
`<code>/` holding .parquet files or a `save_to_disk` dataset. A textdir (`textdir`) reads the
`.txt` ones, the streaming reader (`stream`) all of them. Skipped everywhere:

- hidden entries: "." (macOS writes "._en.txt" resource forks beside the data) and "_" (tools'
  metadata, e.g. "_SUCCESS"; no language code starts with "_");
- documentation and row ids beside the data: README, LICENSE, NOTICE, SOURCE and ids, in any case
  (a textdir's ids.txt gives its row ids);
- folders holding no data (e.g. notes).

Two entries naming one language (en.txt and en.jsonl, or en.txt and EN.txt: codes are
case-insensitive) are refused, naming both: reading either one silently would profile whichever
file happened to win.
"""

from __future__ import annotations

import logging
import pathlib

from langneurons.corpus.checks import CorpusError, check_code

log = logging.getLogger(__name__)

LANGUAGE_SUFFIXES = (".txt", ".jsonl", ".parquet")
IDS_FILE = "ids.txt"  # in a textdir: row ids, one per line, instead of line numbers
NOT_LANGUAGES = frozenset({"readme", "license", "notice", "source", IDS_FILE.removesuffix(".txt")})


def language_entries(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Language code -> its file or folder in `root`, in name order (see the module docstring)."""
    out: dict[str, pathlib.Path] = {}
    folded: dict[str, tuple[str, pathlib.Path]] = {}
    for p in sorted(root.iterdir()):
        code = _code_of(p)
        if code is None:
            continue
        check_code(code, str(p))
        if code.casefold() in folded:
            first, other = folded[code.casefold()]
            case = "" if first == code else " (codes are case-insensitive)"
            raise CorpusError(f"{p}: language {code!r} is also given by {other.name}{case}; keep one of the "
                              f"two and move the other out of {root}")
        folded[code.casefold()] = (code, p)
        out[code] = p
    return out


def _code_of(p: pathlib.Path) -> str | None:
    if p.name.startswith((".", "_")):
        return None
    if p.is_dir():
        code = p.name if is_data_dir(p) else None
        if code is None and any(q.suffix.lower() in (".txt", ".jsonl") for q in p.iterdir()):
            log.warning("%s/ is not read as a language: a language's rows are one file (%s.txt, %s.jsonl) or a "
                        "folder of .parquet files or save_to_disk; concatenate its files into one if it is one",
                        p, p.name, p.name)
    elif p.suffix.lower() in LANGUAGE_SUFFIXES:
        code = p.name[: -len(p.suffix)]
    else:
        return None
    return None if code is None or code.lower() in NOT_LANGUAGES else code


def is_data_dir(p: pathlib.Path) -> bool:
    """A folder of one language's data: .parquet files, or a `save_to_disk` dataset."""
    return ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file()
            or any(q.suffix == ".parquet" for q in p.iterdir()))
