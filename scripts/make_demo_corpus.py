"""Regenerate the bundled demo corpus, src/langneurons/data/tico19/, from the TICO-19 TMX files.

    python scripts/make_demo_corpus.py [--source DIR_WITH_ZIPS] [--out DIR]

The source is TICO-19 (tico-19/tico-19.github.io, commit d97615f9cffa28ec7de571e00fbd513e5a1c7fc7,
data/TM/all.en-<lang>.tmx.zip). The selection is deterministic (data/tico19/README.md says why):

1. join the en-fr, en-es-LA, en-ru, en-hi and en-zh files on tuid (langneurons.corpus.load_corpus);
   en-fr comes first, so English is taken from it (it agrees with the ar/hi/ru/zh files; the
   es-LA file drops a leading quote mark in 7 units);
2. candidates: units with every language present and non-empty, no tab or newline in any
   segment, and an English segment of 5 to 14 words (whitespace-separated);
3. shuffle the candidates (in file order) with random.Random(0) and keep the first 600, so the
   rows mix the sources (PubMed, Wikipedia, Wikinews, dialogues...) in every row range.

Rows 0-499 are what the demo profiles; rows 500-599 are held out.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
from pathlib import Path

from langneurons.corpus import load_corpus

# Output code -> TICO-19 code, in the order the zip files are joined (English from the first).
LANGUAGES = {"fr": "fr", "es": "es-LA", "ru": "ru", "hi": "hi", "zh": "zh"}
ROWS = 600
MIN_WORDS, MAX_WORDS = 5, 14  # short units keep `make run` within 15 min on 2 CPU cores
SEED = 0

REPO = Path(__file__).resolve().parent.parent


def select(source: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(tuids, {output code: sentences}) of the demo rows, in demo order."""
    zips = [source / f"all.en-{code}.tmx.zip" for code in LANGUAGES.values()]
    tico_codes = ["en", *LANGUAGES.values()]
    corpus = load_corpus(zips, languages=tico_codes)
    candidates = [
        i for i in range(len(corpus))
        if all("\t" not in corpus.sentences[c][i] and "\n" not in corpus.sentences[c][i]
               for c in tico_codes)
        and MIN_WORDS <= len(corpus.sentences["en"][i].split()) <= MAX_WORDS
    ]
    random.Random(SEED).shuffle(candidates)
    if len(candidates) < ROWS:
        sys.exit(f"only {len(candidates)} candidate units in {source}, need {ROWS}: wrong source files?")
    rows = candidates[:ROWS]
    out_codes = {"en": "en", **LANGUAGES}
    return ([corpus.ids[i] for i in rows],
            {out: [corpus.sentences[tico][i] for i in rows] for out, tico in out_codes.items()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", type=Path, default=Path("/work/shared/corpora/tico19"),
                    help="directory with TICO-19's all.en-<lang>.tmx.zip files and LICENSE.md")
    ap.add_argument("--out", type=Path, default=REPO / "src" / "langneurons" / "data" / "tico19",
                    help="output directory (textdir format)")
    args = ap.parse_args(argv)

    ids, sentences = select(args.source)
    args.out.mkdir(parents=True, exist_ok=True)
    for code, sents in sentences.items():
        (args.out / f"{code}.txt").write_text("\n".join(sents) + "\n", encoding="utf-8")
    (args.out / "ids.txt").write_text("\n".join(ids) + "\n", encoding="utf-8")
    shutil.copyfile(args.source / "LICENSE.md", args.out / "LICENSE.md")

    # Read it back the way the profiler will: the text files must round-trip exactly.
    back = load_corpus(args.out)
    assert back.languages == tuple(sorted(sentences)), back.languages
    assert all(list(back.sentences[c]) == s for c, s in sentences.items())
    n_words = [len(s.split()) for s in sentences["en"]]
    print(f"wrote {len(ids)} rows x {len(sentences)} languages to {args.out}; English words per row: "
          f"min {min(n_words)}, median {statistics.median(n_words)}, max {max(n_words)}, "
          f"total {sum(n_words)}; {back.fingerprint()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
