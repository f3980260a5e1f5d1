"""Offline language identification of the generations: py3langid (langid.py's model, 140 labels,
shipped inside its wheel; nothing is downloaded). Chosen over lingua-language-detector and gcld3 on
the figures in benchmarks/bench_langid.py (README: "Language identification").

Outputs are judged among the store's languages by default (`--lid-languages store`): on the
bundled corpus' short prefixes the model restricted to its 6 languages errs on 0.6% of them, and
unrestricted on 9-11% (zh read as wuu/yue, hi as ne/mr, es as ext/gl), which would count as
"other" languages. `--lid-languages all` judges among all 140 labels, to see outputs drift into
a language the store does not hold. An output without a single letter has no language (NONE).

Store codes map to the model's labels: ISO 639-1 (`fr`), ISO 639-3 (`fra`, and common individual
codes of a macrolanguage: `cmn` -> zh), FLORES-style `fra_Latn` and tags like `zh-CN` (the part
before `_` or `-`). A code that maps to no label is refused before anything generates.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

NONE = ""   # the label of an output without a letter: no language, counted as "other"

# ISO 639-3 (and a few individual languages of a macrolanguage) -> the model's ISO 639-1 label
_ISO3 = {
    "afr": "af", "amh": "am", "arg": "an", "ara": "ar", "arb": "ar", "asm": "as", "aze": "az", "azj": "az",
    "bak": "ba", "bel": "be", "bul": "bg", "ben": "bn", "bre": "br", "bos": "bs", "cat": "ca", "ces": "cs",
    "cym": "cy", "dan": "da", "deu": "de", "dzo": "dz", "ell": "el", "eng": "en", "epo": "eo", "spa": "es",
    "est": "et", "ekk": "et", "eus": "eu", "fas": "fa", "pes": "fa", "fin": "fi", "fao": "fo", "fra": "fr",
    "fry": "fy", "gle": "ga", "gla": "gd", "glg": "gl", "guj": "gu", "hau": "ha", "heb": "he", "hin": "hi",
    "hrv": "hr", "hat": "ht", "hun": "hu", "hye": "hy", "ind": "id", "ibo": "ig", "isl": "is", "ita": "it",
    "jpn": "ja", "jav": "jv", "kat": "ka", "kaz": "kk", "khm": "km", "kan": "kn", "kor": "ko", "kur": "ku",
    "kmr": "ku", "kir": "ky", "lat": "la", "ltz": "lb", "lug": "lg", "lin": "ln", "lao": "lo", "lit": "lt",
    "lav": "lv", "lvs": "lv", "mlg": "mg", "plt": "mg", "mkd": "mk", "mal": "ml", "mon": "mn", "khk": "mn",
    "mar": "mr", "msa": "ms", "zsm": "ms", "mlt": "mt", "mya": "my", "nep": "ne", "npi": "ne", "nld": "nl",
    "nno": "nn", "nor": "no", "nob": "no", "oci": "oc", "orm": "om", "gaz": "om", "ori": "or", "ory": "or",
    "pan": "pa", "pol": "pl", "pus": "ps", "pbt": "ps", "por": "pt", "que": "qu", "quy": "qu", "ron": "ro",
    "rus": "ru", "kin": "rw", "san": "sa", "sme": "se", "sin": "si", "slk": "sk", "slv": "sl", "sna": "sn",
    "som": "so", "sqi": "sq", "als": "sq", "srp": "sr", "sot": "st", "swe": "sv", "swa": "sw", "swh": "sw",
    "tam": "ta", "tel": "te", "tgk": "tg", "tha": "th", "tuk": "tk", "tgl": "tl", "fil": "tl", "tur": "tr",
    "tat": "tt", "uig": "ug", "ukr": "uk", "urd": "ur", "uzb": "uz", "uzn": "uz", "vie": "vi", "vol": "vo",
    "wln": "wa", "xho": "xh", "yor": "yo", "zho": "zh", "cmn": "zh", "zul": "zu",
}


@dataclass(frozen=True, slots=True)
class Identified:
    label: str          # the model's label (ISO 639-1 where there is one), NONE for an empty output
    confidence: float   # the label's normalised probability (0 for an empty output)


class LanguageId:
    """The language-ID model: `labels`, `label_for(code)`, `identify(texts)`."""

    def __init__(self) -> None:
        try:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier
        except ImportError:
            raise ImportError("`steer` identifies the output language with py3langid: "
                              "pip install 'langneurons[steer]' (or pip install py3langid)") from None
        import importlib.metadata

        self._model = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        self.labels: frozenset[str] = frozenset(self._model.nb_classes)
        self.name = f"py3langid {importlib.metadata.version('py3langid')}"

    def label_for(self, code: str) -> str | None:
        """The model's label for a store's language code, or None if it has none."""
        c = code.strip().replace("-", "_").split("_")[0].lower()
        if c in self.labels:
            return c
        c = _ISO3.get(c, c)
        return c if c in self.labels else None

    def labels_for(self, codes: Sequence[str], *, what: str = "language") -> dict[str, str]:
        """Each code's label; a code without one is refused, with the labels the model knows."""
        out = {c: self.label_for(c) for c in codes}
        unknown = [c for c, label in out.items() if label is None]
        if unknown:
            raise ValueError(f"{what} {', '.join(unknown)}: the language-ID model ({self.name}) does not know "
                             f"{'it' if len(unknown) == 1 else 'them'}, so its outputs could not be judged; it knows "
                             f"{', '.join(sorted(self.labels))} (ISO 639-1, or 639-3 where there is no 639-1 code)")
        labels = list(out.values())
        if len(set(labels)) != len(labels):
            raise ValueError(f"{what}s {', '.join(codes)} map to the language-ID labels {', '.join(labels)}: two are "
                             "the same language to it, so their outputs could not be told apart")
        return out  # type: ignore[return-value]

    def identify(self, texts: Sequence[str], among: Sequence[str] | None = None) -> list[Identified]:
        """Each text's label and confidence, judged among the labels `among` (None: all of them)."""
        self._model.set_languages(None if among is None else sorted(set(among)))
        try:
            out = []
            for t in texts:
                if not any(ch.isalpha() for ch in t):
                    out.append(Identified(NONE, 0.0))
                else:
                    label, p = self._model.classify(t)
                    out.append(Identified(str(label), float(p)))
            return out
        finally:
            self._model.set_languages(None)


@functools.cache
def language_id() -> LanguageId:
    """The model, loaded once per process."""
    return LanguageId()
