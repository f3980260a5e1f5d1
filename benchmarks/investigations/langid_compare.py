"""Which offline language-ID model judges `steer`'s outputs? (An investigation, not in `make bench`:
it needs lingua-language-detector beside py3langid; gcld3 has no wheel and needs protoc to build.)

Accuracy on the bundled TICO-19 corpus (rows 0-599 of en, es, fr, hi, ru, zh): whole sentences,
and two stand-ins for short generations: the first 5 words (zh: 8 characters) and the first 24
characters. Each model judges among the corpus' 6 languages (as `steer --lid-languages store`
does) and among all it knows (`--lid-languages all`). Speed: texts/s on whole sentences, one thread.

    pip install py3langid lingua-language-detector
    python benchmarks/investigations/langid_compare.py

Writes benchmarks/results/langid.json and prints a table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results" / "langid.json"
LANGS = ("en", "es", "fr", "hi", "ru", "zh")
VIEWS = {"sentence": lambda t, lang: t,
         "5 words": lambda t, lang: t[:8] if lang == "zh" else " ".join(t.split()[:5]),
         "24 chars": lambda t, lang: t[:24]}


def py3langid(restrict: bool):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    m = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    if restrict:
        m.set_languages(list(LANGS))
    return lambda t: m.classify(t)[0], len(set(m.nb_classes))


def lingua(restrict: bool):
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    b = (LanguageDetectorBuilder.from_iso_codes_639_1(*[IsoCode639_1.from_str(c) for c in LANGS]) if restrict
         else LanguageDetectorBuilder.from_all_languages())
    det = b.with_preloaded_language_models().build()

    def label(t):
        lang = det.detect_language_of(t)
        return None if lang is None else lang.iso_code_639_1.name.lower()
    return label, len(LANGS) if restrict else len(Language.all())


def main() -> int:
    import importlib.metadata as md

    data = {lang: (ROOT / "src/langneurons/data/tico19" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:600]
            for lang in LANGS}
    res = {}
    for name, make, pkg in (("py3langid", py3langid, "py3langid"), ("lingua", lingua, "lingua-language-detector")):
        try:
            version = md.version(pkg)
        except md.PackageNotFoundError:
            print(f"{pkg} is not installed: skipped", file=sys.stderr)
            continue
        for restrict in (True, False):
            label, n = make(restrict)
            row = {"package": f"{name} {version}", "among": n, "accuracy": {}}
            for view, cut in VIEWS.items():
                row["accuracy"][view] = {lang: sum(label(cut(t, lang)) == lang for t in data[lang]) / len(data[lang])
                                         for lang in LANGS}
            texts = [t for lang in LANGS for t in data[lang]]
            t0 = time.perf_counter()
            for t in texts:
                label(t)
            row["texts_per_s"] = len(texts) / (time.perf_counter() - t0)
            res[f"{name}/{'store' if restrict else 'all'}"] = row
    RESULTS.write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(table()))
    return 0


def table() -> list[str]:
    """This investigation's section of the results table in benchmarks/README.md."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import load

    r = load("langid.json")
    if not r:
        return []
    out = ["### Offline language ID on the bundled corpus (600 rows x 6 languages; `investigations/langid_compare.py`)",
           "", "| model, judging among | " + " | ".join(f"{v} (mean; worst language)" for v in VIEWS) + " | texts/s |",
           "|---|" + "---|" * (len(VIEWS) + 1)]
    for row in r.values():
        cells = []
        for v in VIEWS:
            acc = row["accuracy"][v]
            worst = min(acc, key=acc.get)
            cells.append(f"{sum(acc.values()) / len(acc):.4f}; {worst} {acc[worst]:.3f}")
        out.append(f"| {row['package']}, {row['among']} languages | " + " | ".join(cells) + f" | {row['texts_per_s']:,.0f} |")
    out.append("")
    return out


if __name__ == "__main__":
    sys.exit(main())
