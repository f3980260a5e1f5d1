"""Corpus reading (textdir, TSV, JSONL, TMX), its validation errors, fingerprints and shard plans."""

from __future__ import annotations

import json
import logging
import pickle
import re
import unicodedata
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from langneurons.corpus import CorpusError, ParallelCorpus, demo_corpus_path, load_corpus
from langneurons.shards import Shard, plan_shards

TICO19 = Path("/work/shared/corpora/tico19")

LANGS = ("en", "fr", "ru")
# Row 2 holds U+2028 (LINE SEPARATOR) inside a sentence: str.splitlines would cut the row in two.
ROWS = [
    {"en": "the dog sleeps", "fr": "le chien dort", "ru": "собака спит"},
    {"en": "a fox\u2028jumps", "fr": "un renard saute", "ru": "лиса прыгает"},
    {"en": "hello", "fr": "bonjour", "ru": "привет"},
    {"en": "brown dogs run", "fr": "des chiens bruns courent", "ru": "коричневые собаки бегут"},
]
FINGERPRINT = "9908f034ce52aafb5653fb4fd7800bea8cf0be03045dd1f8683eaa6fd09c4e9f"  # of ROWS


# --- writers: the same rows in every format --------------------------------------------------


def write_textdir(d: Path, rows=ROWS, langs=LANGS, newline="\n", bom="") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for c in langs:
        (d / f"{c}.txt").write_bytes((bom + newline.join(r[c] for r in rows) + newline).encode("utf-8"))
    return d


def write_tsv(p: Path, rows=ROWS, langs=LANGS) -> Path:
    p.write_text("\n".join(["\t".join(langs)] + ["\t".join(r[c] for c in langs) for r in rows]) + "\n",
                 encoding="utf-8")
    return p


def write_jsonl(p: Path, rows=ROWS, langs=LANGS) -> Path:
    p.write_text("".join(json.dumps({c: r[c] for c in langs}, ensure_ascii=False) + "\n" for r in rows),
                 encoding="utf-8")
    return p


def tmx_text(units: list[tuple[str, dict[str, str]]]) -> str:
    """A TMX 1.4 document; unit texts are inserted raw, so tests can put markup in a <seg>."""
    tus = "".join(
        f'<tu tuid="{tuid}"><prop type="note">x</prop>'
        + "".join(f'<tuv xml:lang="{c}"><seg>{t}</seg></tuv>' for c, t in segs.items()) + "</tu>\n"
        for tuid, segs in units)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<tmx version="1.4"><header srclang="en" '
            f'segtype="sentence" datatype="text" adminlang="en" o-tmf="x" creationtool="t" '
            f'creationtoolversion="1"/><body>\n{tus}</body></tmx>\n')


def write_tmx(p: Path, units) -> Path:
    p.write_text(tmx_text(units), encoding="utf-8")
    return p


def write_zip(p: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in members.items():
            z.writestr(name, text)
    return p


def rows_as_tmx(rows=ROWS, langs=LANGS):
    return [(f"u{i}", {c: escape(r[c]) for c in langs}) for i, r in enumerate(rows)]


def sentences(rows=ROWS, langs=LANGS):
    return {c: tuple(r[c] for r in rows) for c in langs}


# --- reading -----------------------------------------------------------------------------------


def test_every_format_reads_the_same_corpus(tmp_path):
    read = {
        "textdir": load_corpus(write_textdir(tmp_path / "dir")),
        "windows": load_corpus(write_textdir(tmp_path / "win", newline="\r\n", bom="\ufeff")),
        "tsv": load_corpus(write_tsv(tmp_path / "c.tsv")),
        "jsonl": load_corpus(write_jsonl(tmp_path / "c.jsonl")),
        "tmx": load_corpus(write_tmx(tmp_path / "c.tmx", rows_as_tmx())),
    }
    for name, c in read.items():
        assert c.languages == LANGS, name
        assert c.sentences == sentences(), name
        assert len(c) == 4, name
        assert c.fingerprint() == read["textdir"].fingerprint(), name
    # Row ids point back into the file: line numbers (TSV's header is line 1), TMX tuids.
    assert read["textdir"].ids == ("1", "2", "3", "4") == read["jsonl"].ids
    assert read["tsv"].ids == ("2", "3", "4", "5")
    assert read["tmx"].ids == ("u0", "u1", "u2", "u3")
    assert str(tmp_path / "c.tsv") in read["tsv"].source


def test_explicit_format_and_auto_detection_refusals(tmp_path):
    p = write_tsv(tmp_path / "corpus.txt.data")
    with pytest.raises(CorpusError, match=r"corpus\.txt\.data: cannot tell the corpus format.*format="):
        load_corpus(p)
    assert load_corpus(p, format="tsv").sentences == sentences()
    with pytest.raises(CorpusError, match="format='xml' is not a corpus format"):
        load_corpus(p, format="xml")


def test_textdir_ignores_other_files_and_reads_ids_txt(tmp_path):
    d = write_textdir(tmp_path / "d")
    (d / "README.md").write_text("# not a language\n")
    (d / "LICENSE.md").write_text("CC0\n")
    (d / "._en.txt").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    c = load_corpus(d)
    assert c.languages == LANGS and c.ids == ("1", "2", "3", "4")

    (d / "ids.txt").write_text("a:1\nb:2\nc:3\nd:4\n")
    c = load_corpus(d)
    assert c.languages == LANGS and c.ids == ("a:1", "b:2", "c:3", "d:4")

    (d / "ids.txt").write_text("a:1\nb:2\na:1\nd:4\n")
    with pytest.raises(CorpusError, match=r"ids\.txt:3: row id 'a:1' is also on line 1"):
        load_corpus(d)
    (d / "ids.txt").write_text("a:1\nb:2\n")
    with pytest.raises(CorpusError, match=r"ids\.txt has 2 lines but .*en\.txt has 4"):
        load_corpus(d)


def test_tmx_joins_files_and_zips_on_tuid(tmp_path, caplog):
    # File 1 (plain .tmx) sets the row order; file 2 (in a zip) lacks t2, orders units differently,
    # adds a unit absent from file 1, and edits t1's English, which must count as one conflict.
    first = write_tmx(tmp_path / "en-fr.tmx", [
        ("t1", {"en": "the <hi>dog</hi> sleeps", "fr": "le chien dort"}),   # inline markup in a seg
        ("t2", {"en": "hello", "fr": "bonjour"}),
        ("t3", {"en": "  a fox jumps\n", "fr": "un renard saute"}),         # surrounding whitespace
    ])
    second = write_zip(tmp_path / "en-pt.zip", {
        "__MACOSX/._en-pt.tmx": "not xml",
        "en-pt.tmx": tmx_text([
            ("t3", {"en": "a fox jumps", "pt-BR": "uma raposa pula"}),
            ("t9", {"en": "only here", "pt-BR": "só aqui"}),
            ("t1", {"en": "The dog sleeps.", "pt-BR": "o cão dorme"}),
        ]),
    })
    with caplog.at_level(logging.WARNING, logger="langneurons.corpus"):
        c = load_corpus([first, second])
    assert c.languages == ("en", "fr", "pt-BR")                       # as written, first-seen order
    assert c.ids == ("t1", "t3")                                      # t2 lacks pt-BR, t9 lacks fr
    assert c.sentences["en"] == ("the dog sleeps", "a fox jumps")     # the first file's English
    assert c.sentences["pt-BR"] == ("o cão dorme", "uma raposa pula")
    log = caplog.text
    assert "1 segments differ" in log and "'t1'" in log
    assert "2 of 4 translation units" in log and "dropped" in log

    # Selecting languages changes the join: without fr, t9 qualifies and comes after file 1's units.
    c = load_corpus([first, second], languages=["pt-BR", "en"])
    assert c.languages == ("pt-BR", "en") and c.ids == ("t1", "t3", "t9")
    # Without pt-BR, t2 comes back.
    assert load_corpus([first, second], languages=["fr"]).ids == ("t1", "t2", "t3")


def test_tmx_reader_keeps_every_unit_while_freeing_parsed_ones(tmp_path):
    units = [(f"id{i}", {"en": f"sentence {i}", "de": f"Satz {i}"}) for i in range(5000)]
    c = load_corpus(write_tmx(tmp_path / "big.tmx", units), max_sentences=3, start=4990)
    assert c.ids == ("id4990", "id4991", "id4992") and c.sentences["de"][-1] == "Satz 4992"


# --- validation ----------------------------------------------------------------------------------


def _bad_textdir(tmp_path, files: dict[str, bytes | str]) -> Path:
    d = tmp_path / "bad"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return d


def _one_tmx(tmp_path, body: str) -> Path:
    p = tmp_path / "bad.tmx"
    p.write_text('<?xml version="1.0" encoding="UTF-8"?>\n<tmx version="1.4"><body>\n' + body
                 + "\n</body></tmx>\n", encoding="utf-8")
    return p


def _write(tmp_path, name: str, data: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return p


# (id, make the input from tmp_path, load_corpus kwargs, regex the message must match)
BAD = [
    ("line-counts-differ", lambda t: _bad_textdir(t, {"en.txt": "a\nb\nc\n", "fr.txt": "a\nb\n"}), {},
     r"fr\.txt has 2 lines but .*en\.txt has 3"),
    ("empty-line", lambda t: _bad_textdir(t, {"en.txt": "a\n\nc\n", "fr.txt": "a\nb\nc\n"}), {},
     r"en\.txt:2: empty line"),
    ("whitespace-line", lambda t: _bad_textdir(t, {"en.txt": "a\nb\nc\n", "fr.txt": "a\nb\n \t \n"}), {},
     r"fr\.txt:3: empty line"),
    ("trailing-blank-line", lambda t: _bad_textdir(t, {"en.txt": "a\nb\n\n", "fr.txt": "a\nb\nc\n"}), {},
     r"en\.txt:3: empty line"),
    ("invalid-utf8", lambda t: _bad_textdir(t, {"en.txt": "a\nb\nc\n", "fr.txt": b"a\nb\nd\xe9j\xe0\n"}), {},
     r"fr\.txt:3: invalid UTF-8.*iconv"),
    ("missing-language", lambda t: write_textdir(t / "d"), {"languages": ["en", "de"]},
     r"language 'de' is not in the corpus; available: en, fr, ru"),
    ("language-case-hint", lambda t: write_textdir(t / "d"), {"languages": ["EN"]},
     r"language 'EN' is not in the corpus \(did you mean 'en'\?\)"),
    ("duplicate-requested", lambda t: write_textdir(t / "d"), {"languages": ["en", "fr", "en"]},
     r"languages: duplicate language code 'en'"),
    ("languages-as-string", lambda t: write_textdir(t / "d"), {"languages": "en"},
     r"languages must be a list of codes"),
    ("duplicate-files", lambda t: _bad_textdir(t, {"en.txt": "a\n", "EN.txt": "a\n"}), {},
     r"en\.txt: language 'en' is also given by EN\.txt"),
    ("code-with-space", lambda t: _bad_textdir(t, {"en.txt": "a\n", "f r.txt": "a\n"}), {},
     r"f r\.txt: invalid language code 'f r'"),
    ("no-txt-files", lambda t: _bad_textdir(t, {"README.md": "x"}), {},
     r"bad: no <code>\.txt files \(found README\.md\)"),
    ("tsv-duplicate-header", lambda t: _write(t, "c.tsv", "en\tfr\ten\na\tb\tc\n"), {},
     r"c\.tsv:1 \(header\): duplicate language code 'en'"),
    ("tsv-bad-code", lambda t: _write(t, "c.tsv", "en\t\na\tb\n"), {},
     r"c\.tsv:1: invalid language code ''"),
    ("tsv-field-count", lambda t: _write(t, "c.tsv", "en\tfr\na\tb\nc\td\te\n"), {},
     r"c\.tsv:3: 3 tab-separated fields, expected 2"),
    ("tsv-empty-cell", lambda t: _write(t, "c.tsv", "en\tfr\na\tb\nc\t \n"), {},
     r"c\.tsv:3: empty cell for language 'fr'"),
    ("jsonl-missing-language", lambda t: _write(t, "c.jsonl", '{"en": "a", "fr": "b"}\n{"en": "c"}\n'), {},
     r"c\.jsonl:2: missing language\(s\) 'fr'"),
    ("jsonl-extra-key", lambda t: _write(t, "c.jsonl", '{"en": "a"}\n{"en": "c", "xx": "d"}\n'), {},
     r"c\.jsonl:2: extra key\(s\) 'xx'"),
    ("jsonl-not-object", lambda t: _write(t, "c.jsonl", '{"en": "a"}\n["en", "c"]\n'), {},
     r"c\.jsonl:2: a JSON list, not an object"),
    ("jsonl-not-json", lambda t: _write(t, "c.jsonl", '{"en": "a"}\n{"en": "c"\n'), {},
     r"c\.jsonl:2:\d+: not valid JSON"),
    ("jsonl-non-string", lambda t: _write(t, "c.jsonl", '{"en": "a", "fr": "b"}\n{"en": "c", "fr": 3}\n'), {},
     r"c\.jsonl:2: the value of 'fr' is a JSON int, not a string"),
    ("jsonl-duplicate-key", lambda t: _write(t, "c.jsonl", '{"en": "a", "en": "b"}\n'), {},
     r"c\.jsonl:1: duplicate language code 'en'"),
    ("jsonl-empty-text", lambda t: _write(t, "c.jsonl", '{"en": "a"}\n{"en": "  "}\n'), {},
     r"c\.jsonl:2: empty text for language 'en'"),
    ("tmx-empty-seg", lambda t: _one_tmx(t, '<tu tuid="k7"><tuv xml:lang="en"><seg>hi</seg></tuv>'
                                            '<tuv xml:lang="fr"><seg> </seg></tuv></tu>'), {},
     r"bad\.tmx: tuid 'k7': empty <seg> for language 'fr'"),
    ("tmx-duplicate-lang", lambda t: _one_tmx(t, '<tu tuid="k7"><tuv xml:lang="en"><seg>hi</seg></tuv>'
                                                 '<tuv xml:lang="en"><seg>ho</seg></tuv></tu>'), {},
     r"bad\.tmx: tuid 'k7': language 'en' appears twice in one <tu>"),
    ("tmx-duplicate-tuid", lambda t: _one_tmx(t, '<tu tuid="k7"><tuv xml:lang="en"><seg>hi</seg></tuv></tu>'
                                                 '<tu tuid="k7"><tuv xml:lang="en"><seg>ho</seg></tuv></tu>'), {},
     r"bad\.tmx: tuid 'k7' appears twice \(<tu> number 1 and 2\)"),
    ("tmx-no-tuid", lambda t: _one_tmx(t, '<tu><tuv xml:lang="en"><seg>hi</seg></tuv></tu>'), {},
     r"bad\.tmx: <tu> number 1 has no tuid"),
    ("tmx-malformed", lambda t: _one_tmx(t, '<tu tuid="k7"><tuv xml:lang="en"><seg>hi</tuv></tu>'), {},
     r"bad\.tmx:3:\d+: XML error: mismatched tag"),
    ("tmx-invalid-utf8", lambda t: _write(t, "bad.tmx", b'<?xml version="1.0" encoding="UTF-8"?>\n<tmx><body>\n'
                                       b'<tu tuid="k7"><tuv xml:lang="en"><seg>d\xe9j\xe0</seg></tuv></tu></body></tmx>'),
     {}, r"bad\.tmx:3:\d+: XML error: not well-formed"),
    ("tmx-join-empty", lambda t: [write_tmx(t / "a.tmx", [("x1", {"en": "a", "fr": "b"})]),
                                  write_tmx(t / "b.tmx", [("x2", {"en": "a", "de": "c"})])], {},
     r"a\.tmx, .*b\.tmx: empty corpus: none of the 2 translation units has all of en, fr, de"),
    ("tmx-missing-language", lambda t: write_tmx(t / "c.tmx", rows_as_tmx()), {"languages": ["de"]},
     r"c\.tmx: language 'de' is not in the corpus; available: en, fr, ru"),
    ("zip-without-tmx", lambda t: write_zip(t / "c.zip", {"notes.txt": "x"}), {},
     r"c\.zip: no \.tmx file inside this zip"),
    ("no-such-path", lambda t: t / "nowhere", {}, r"nowhere: no such file or directory"),
    ("empty-corpus", lambda t: _bad_textdir(t, {"en.txt": "", "fr.txt": ""}), {},
     r"bad: empty corpus \(0 rows\)"),
    ("max-sentences-zero", lambda t: write_textdir(t / "d"), {"max_sentences": 0},
     r"max_sentences must be an integer >= 1"),
    ("start-beyond-end", lambda t: write_textdir(t / "d"), {"start": 4},
     r"d: start=4 is beyond the end of the corpus \(4 rows\)"),
    ("start-negative", lambda t: write_textdir(t / "d"), {"start": -1},
     r"start must be an integer >= 0"),
]


@pytest.mark.parametrize("make, kwargs, pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises_corpus_error_naming_where(tmp_path, make, kwargs, pattern):
    path = make(tmp_path)
    with pytest.raises(CorpusError, match=pattern) as e:
        load_corpus(path, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg, "the CLI prints errors on one line"
    assert isinstance(e.value, ValueError)


def test_tmx_empty_seg_of_an_unselected_language_is_not_an_error(tmp_path):
    p = _one_tmx(tmp_path, '<tu tuid="k7"><tuv xml:lang="en"><seg>hi</seg></tuv>'
                           '<tuv xml:lang="fr"><seg></seg></tuv></tu>')
    assert load_corpus(p, languages=["en"]).sentences == {"en": ("hi",)}


def test_tmx_error_in_second_file_names_the_zip_member_and_tuid(tmp_path):
    good = write_tmx(tmp_path / "a.tmx", rows_as_tmx())
    bad = write_zip(tmp_path / "b.zip", {"inner.tmx": tmx_text([("u1", {"en": "a fox", "fr": ""})])})
    with pytest.raises(CorpusError, match=r"b\.zip/inner\.tmx: tuid 'u1': empty <seg> for language 'fr'"):
        load_corpus([good, bad])


# --- selecting, fingerprints, shards -------------------------------------------------------------


def test_select_languages_rows_and_order(tmp_path):
    d = write_textdir(tmp_path / "d")
    c = load_corpus(d, languages=["ru", "en"], start=1, max_sentences=2)
    assert c.languages == ("ru", "en")
    assert c.sentences == {"ru": ("лиса прыгает", "привет"), "en": ("a fox\u2028jumps", "hello")}
    assert c.ids == ("2", "3")

    full = load_corpus(d)
    assert full.select(languages=["ru", "en"], start=1, max_sentences=2) == c
    assert len(full.select(max_sentences=100)) == 4          # "at most": fewer rows is fine
    assert full.select(start=3).ids == ("4",)
    assert full.select() == full
    with pytest.raises(CorpusError, match=r"language 'de' is not in the corpus; available: en, fr, ru"):
        full.select(languages=["de"])
    with pytest.raises(CorpusError, match="start=4 is beyond the end"):
        full.select(start=4)
    with pytest.raises(CorpusError, match="max_sentences must be an integer >= 1"):
        full.select(max_sentences=0)


def test_corpus_is_picklable_and_repr_is_short(tmp_path):
    c = load_corpus(write_textdir(tmp_path / "d"))
    assert pickle.loads(pickle.dumps(c)) == c                 # Ray ships it to workers
    assert "собака" not in repr(c) and "rows=4" in repr(c)
    with pytest.raises(CorpusError, match="'fr' has 1 sentences but there are 2 row ids"):
        ParallelCorpus(languages=("en", "fr"), sentences={"en": ("a", "b"), "fr": ("a",)},
                       ids=("1", "2"), source="test")


def test_fingerprint_is_stable_and_sensitive(tmp_path):
    c = load_corpus(write_textdir(tmp_path / "a"))
    # Pinned: stores record it and refuse to resume on a change, so the scheme must not drift.
    assert c.fingerprint() == "sha256:" + FINGERPRINT
    assert load_corpus(write_textdir(tmp_path / "b")).fingerprint() == c.fingerprint()
    assert c.select().fingerprint() == c.fingerprint()

    edited = [dict(r) for r in ROWS]
    edited[3]["ru"] = edited[3]["ru"].replace("бегут", "бегит")  # one character
    assert load_corpus(write_textdir(tmp_path / "e", rows=edited)).fingerprint() != c.fingerprint()
    assert c.select(languages=["fr", "en", "ru"]).fingerprint() != c.fingerprint()
    assert c.select(max_sentences=3).fingerprint() != c.fingerprint()
    moved = ParallelCorpus(languages=("en",), sentences={"en": ("ab", "c")}, ids=("1", "2"), source="x")
    assert moved.fingerprint() != ParallelCorpus(
        languages=("en",), sentences={"en": ("a", "bc")}, ids=("1", "2"), source="x").fingerprint()



@pytest.mark.parametrize("shard_size", [1, 3, 4, 7, 10, 11])
def test_plan_shards_covers_every_row_of_every_language_once(shard_size):
    n = 10
    c = ParallelCorpus(languages=("en", "fr", "hi"), ids=tuple(str(i) for i in range(n)),
                       sentences={k: tuple(f"{k}{i}" for i in range(n)) for k in ("en", "fr", "hi")},
                       source="test")
    shards = plan_shards(c, shard_size)
    assert shards == plan_shards(c, shard_size)               # deterministic
    assert [s.index for s in shards] == list(range(len(shards)))
    langs = [s.language for s in shards]
    assert langs == sorted(langs, key=c.languages.index)     # grouped by language, in corpus order
    for lang in c.languages:
        mine = [s for s in shards if s.language == lang]
        rows = [r for s in mine for r in range(s.start, s.stop)]
        assert rows == list(range(n))                         # every row once, in order
        assert all(s.stop - s.start == shard_size for s in mine[:-1])
        assert 0 < mine[-1].stop - mine[-1].start <= shard_size
    assert len({s.id for s in shards}) == len(shards)
    assert shards[0].id == f"en:0-{min(shard_size, n)}"


def test_plan_shards_refuses_bad_sizes():
    c = ParallelCorpus(languages=("en",), sentences={"en": ("a",)}, ids=("1",), source="t")
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match=r"shard_size must be an integer >= 1"):
            plan_shards(c, bad)
    assert plan_shards(c, 5) == [Shard(index=0, language="en", start=0, stop=1)]


# --- the real data -------------------------------------------------------------------------------


def _scripts(texts) -> set[str]:
    """Unicode script of each letter, by its name's first word (LATIN, CYRILLIC, CJK, ...)."""
    return {unicodedata.name(ch, "?").split()[0] for t in texts for ch in t if ch.isalpha()}


def test_bundled_demo_corpus_loads():
    d = demo_corpus_path()
    c = load_corpus(d)
    assert c.languages == ("en", "es", "fr", "hi", "ru", "zh")
    assert len(c) == 600 and len(set(c.ids)) == 600
    assert all(re.fullmatch(r"[A-Za-z_]+_\d+:\d+", i) for i in c.ids)  # TICO-19 tuids from ids.txt
    assert {"LATIN", "CYRILLIC", "DEVANAGARI", "CJK"} <= _scripts(
        s for lang in c.languages for s in c.sentences[lang][:50])
    assert all(5 <= len(s.split()) <= 14 for s in c.sentences["en"])
    # The README pins the data: a regenerated corpus must reproduce it.
    assert c.fingerprint() in (d / "README.md").read_text(encoding="utf-8")
    assert (d / "LICENSE.md").read_text(encoding="utf-8").count("CC0 1.0 Universal") == 1
    held_out = load_corpus(d, start=500)
    assert len(held_out) == 100 and held_out.ids[0] == c.ids[500]


@pytest.mark.skipif(not (TICO19 / "all.en-fr.tmx.zip").is_file(),
                    reason=f"the shared TICO-19 files are not at {TICO19} (only on the project's machines)")
def test_real_tico19_zip_loads_and_joins(caplog):
    fr = load_corpus(TICO19 / "all.en-fr.tmx.zip")
    assert fr.languages == ("en", "fr") and len(fr) == 3071
    assert fr.ids[0] == "CMU_1:1"
    assert fr.sentences["en"][0] == "about how long have these symptoms been going on?"
    with caplog.at_level(logging.WARNING, logger="langneurons.corpus"):
        joined = load_corpus([TICO19 / "all.en-fr.tmx.zip", TICO19 / "all.en-es-LA.tmx.zip"])
    assert joined.languages == ("en", "fr", "es-LA") and len(joined) == 3071
    assert joined.sentences["en"] == fr.sentences["en"]      # English from the first file
    assert "7 segments differ" in caplog.text
