"""The BOS rule: where a model expects a BOS and its tokenizer leaves it out, langneurons adds it,
everywhere it tokenizes (both backends' counts, the token counts taken before a run, ablate), and
the store records what was done; a tokenizer that adds BOS itself is left alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from fixtures import SENTENCES, make_tiny_model, make_tokenizer, write_corpus
from transformers import AutoConfig, AutoTokenizer

from langneurons.cli import main
from langneurons.config import ProfileConfig
from langneurons.profiler import tokens
from langneurons.profiler.backends.hf import HFBackend
from oracle import reference_stats_numpy, sequence_activations

SENTS = SENTENCES["en"] + SENTENCES["ru"]
BOS = 1  # the tiny tokenizers' <s>


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """Two folders holding the same tiny Gemma 3 weights: one tokenizer leaves BOS out (as Gemma
    3 270M's GGUF tokenizer does), the other adds it."""
    root = tmp_path_factory.mktemp("gemma")
    return {"no_bos": make_tiny_model("gemma3_text", root / "no_bos", add_bos=False),
            "bos": make_tiny_model("gemma3_text", root / "bos")}


def oracle(path, sentences, *, bos: bool, include_special: bool):
    """Counted tokens and activations, one sentence at a time, with BOS put in front by hand."""
    tok = AutoTokenizer.from_pretrained(path)
    seqs = []
    for s in sentences:
        ids = tok(s, add_special_tokens=False).input_ids
        seqs.append(([BOS] + ids, [include_special] + [True] * len(ids)) if bos else (ids, [True] * len(ids)))
    return sequence_activations(path, seqs, "gate")


def assert_stats_equal(stats, n_tok, acts, edges):
    want = reference_stats_numpy(acts, 0.0, edges)
    assert stats.n_tokens == n_tok
    np.testing.assert_array_equal(stats.n_fired, want["n_fired"])
    np.testing.assert_array_equal(stats.act_hist, want["act_hist"])
    np.testing.assert_allclose(stats.act_sum, want["act_sum"], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("include_special", [False, True])
def test_a_bos_the_tokenizer_leaves_out_is_added_and_counted_as_a_special_token(gemma, include_special):
    c = ProfileConfig.from_flags(model=str(gemma["no_bos"]), batch_tokens=64, include_special_tokens=include_special)
    backend = HFBackend(c)
    assert backend.bos.source == "langneurons" and backend.bos.token_id == BOS
    assert backend.info.bos.startswith("added by langneurons (token id 1)")
    stats = backend.profile(SENTS)
    assert_stats_equal(stats, *oracle(gemma["no_bos"], SENTS, bos=True, include_special=include_special),
                       c.counting.bin_edges)
    # the same model whose tokenizer adds BOS itself gives the same numbers
    same = HFBackend(ProfileConfig.from_flags(model=str(gemma["bos"]), batch_tokens=64,
                                              include_special_tokens=include_special))
    assert same.bos.source == "tokenizer"
    other = same.profile(SENTS)
    assert other.n_tokens == stats.n_tokens
    np.testing.assert_array_equal(other.n_fired, stats.n_fired)


def test_no_add_bos_feeds_the_tokenizers_output_as_is(gemma):
    c = ProfileConfig.from_flags(model=str(gemma["no_bos"]), batch_tokens=64, add_bos=False)
    backend = HFBackend(c)
    assert backend.bos.source == "off" and backend.info.bos.startswith("not added (--no-add-bos)")
    stats = backend.profile(SENTS)
    assert_stats_equal(stats, *oracle(gemma["no_bos"], SENTS, bos=False, include_special=False), c.counting.bin_edges)
    with_bos = HFBackend(ProfileConfig.from_flags(model=str(gemma["no_bos"]), batch_tokens=64)).profile(SENTS)
    assert with_bos.n_tokens == stats.n_tokens            # BOS is not a counted token by default...
    assert (with_bos.n_fired != stats.n_fired).any()       # ...but every later token sees it


def test_a_tokenizer_that_adds_bos_gets_no_second_one(gemma):
    tok = AutoTokenizer.from_pretrained(gemma["bos"])
    rule = tokens.bos_rule(tok, AutoConfig.from_pretrained(gemma["bos"]), add=True)
    assert rule.source == "tokenizer" and rule.prepend is None
    enc = tokens.encode(tok, SENTS, include_special_tokens=True, max_length=128, bos=BOS)  # even if asked
    assert all(ids[0] == BOS and ids[1] != BOS for ids in enc.input_ids)
    backend = HFBackend(ProfileConfig.from_flags(model=str(gemma["bos"]), batch_tokens=64, include_special_tokens=True))
    assert backend.profile(SENTS).n_tokens == sum(len(tok(s).input_ids) for s in SENTS)


def test_every_window_of_a_long_row_opens_with_the_added_bos(gemma):
    tok = AutoTokenizer.from_pretrained(gemma["no_bos"])
    text = " ".join(SENTENCES["en"])
    body = tok(text, add_special_tokens=False).input_ids
    enc = tokens.encode(tok, [text], include_special_tokens=False, max_length=6, bos=BOS)
    assert len(enc.input_ids) > 1 and all(ids[0] == BOS and len(ids) <= 6 for ids in enc.input_ids)
    assert [t for ids in enc.input_ids for t in ids[1:]] == body          # every text token once
    assert enc.n_counted == len(body) and all(c[0] is False for c in enc.counted)


@pytest.mark.parametrize("case, expected", [
    ("llama, tokenizer adds none and declares none", "none"),           # SmolLM2's converted tokenizer
    ("llama, add_bos_token declared but not done", "langneurons"),
    ("llama, chat template writes bos_token", "langneurons"),
    ("mistral, tokenizer adds none", "langneurons"),                    # the family convention
    ("qwen2, tokenizer adds none", "none"),
])
def test_when_a_model_expects_a_bos(tmp_path, case, expected):
    arch = case.split(",")[0]
    path = make_tiny_model(arch, tmp_path / "m", add_bos=False)
    if "declared" in case or "template" in case:
        f = path / "tokenizer_config.json"
        conf = json.loads(f.read_text())
        conf.update({"add_bos_token": True} if "declared" in case
                    else {"chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"})
        f.write_text(json.dumps(conf))
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("a").input_ids[:1] != [BOS]  # the case under test: the tokenizer really leaves it out
    rule = tokens.bos_rule(tok, AutoConfig.from_pretrained(path), add=True)
    assert rule.source == expected, rule
    assert rule.prepend == (BOS if expected == "langneurons" else None)


def test_a_model_expecting_a_bos_nobody_names_is_refused_with_the_way_out(gemma, tmp_path):
    tok = make_tokenizer(add_bos=False)
    tok.bos_token = None
    mcfg = AutoConfig.from_pretrained(gemma["no_bos"])
    mcfg.bos_token_id = None
    with pytest.raises(ValueError, match="neither its tokenizer nor its config names one.*--no-add-bos"):
        tokens.bos_rule(tok, mcfg, add=True)
    assert tokens.bos_rule(tok, mcfg, add=False).source == "off"


def test_profile_records_the_rule_counts_the_budget_with_it_and_refuses_a_resume_without_it(gemma, tmp_path, capsys):
    """The driver's token counts (the budget, tokens_per_language) follow the same rule as the
    workers: with BOS counted, --verify's check of n_tokens against tokens_per_language holds."""
    corpus = write_corpus(tmp_path / "corpus")
    out = tmp_path / "r.zarr"
    args = ["profile", "--model", str(gemma["no_bos"]), "--corpus", corpus, "--out", str(out),
            "--include-special-tokens", "--max-tokens-per-language", "40", "--no-progress"]
    assert main(args) == 0
    ds = xr.open_zarr(str(out))
    assert ds.attrs["bos"].startswith("added by langneurons") and ds.attrs["config"]["add_bos"] is True
    assert ds.attrs["identity"]["add_bos"] is True
    tok = AutoTokenizer.from_pretrained(gemma["no_bos"])
    rows = ds.attrs["rows_per_language"]
    for lang, n in ds.attrs["tokens_per_language"].items():
        lines = (tmp_path / "corpus" / f"{lang}.txt").read_text(encoding="utf-8").splitlines()[:rows[lang]]
        assert n == sum(len(tok(s).input_ids) + 1 for s in lines) == int(ds["n_tokens"].sel(language=lang))
    assert main(["info", str(out), "--verify"]) == 0
    assert main(["info", str(out)]) == 0
    assert "added by langneurons" in capsys.readouterr().out
    assert main(args[:-1] + ["--resume", "--no-add-bos", "--no-progress"]) == 2
    assert "add_bos" in capsys.readouterr().err


def test_ablate_feeds_the_bos_as_profiled(gemma):
    """Perplexity with the rule's BOS equals perplexity under a tokenizer that adds it itself."""
    import torch
    from transformers import AutoModelForCausalLM

    from langneurons.scoring.ablation import perplexity

    model = AutoModelForCausalLM.from_pretrained(gemma["no_bos"], dtype=torch.float32).eval()
    plain, with_tok = (AutoTokenizer.from_pretrained(gemma[k]) for k in ("no_bos", "bos"))
    dev = torch.device("cpu")
    added = perplexity(model, plain, SENTS, dev, bos=BOS)
    assert added == pytest.approx(perplexity(model, with_tok, SENTS, dev), rel=1e-6)
    assert added != pytest.approx(perplexity(model, plain, SENTS, dev), rel=1e-3)
