"""Causal check: zero each language's selected neurons and measure perplexity on held-out text.

Returns a [ablated, evaluated] matrix of perplexity change (ratio to the unablated model). If the
neurons are language-specific, the diagonal (ablating language X, evaluating on X) should hold each
column's largest increase. Zeroing happens at the profiled site: the activation's output (`gate`)
or the down projection's input (`down_in`), inside hooks removed in `finally`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
import xarray as xr

from langneurons.profiler import sites


@contextmanager
def zeroed(model, model_type: str, site: str, neurons: dict[int, torch.Tensor]) -> Iterator[None]:
    """Zero neurons[layer] (index tensors) of `site` in every listed layer while inside the block."""
    handles = []
    try:
        for s in sites.site_modules(model, model_type, site):
            idx = neurons.get(s.layer)
            if idx is None or idx.numel() == 0:
                continue
            idx = idx.to(next(model.parameters()).device)
            if s.kind == "output":
                def hook(_m, _a, out, idx=idx):
                    out = out.clone()
                    out[..., idx] = 0
                    return out
                handles.append(s.module.register_forward_hook(hook))
            else:
                def pre(_m, args, idx=idx):
                    x = args[0].clone()
                    x[..., idx] = 0
                    return (x, *args[1:])
                handles.append(s.module.register_forward_pre_hook(pre))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.inference_mode()
def perplexity(model, tokenizer, sentences: Sequence[str], device, batch_size: int = 16) -> float:
    """exp(mean negative log-likelihood) over every predicted token of the sentences."""
    nll, count = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    for i in range(0, len(sentences), batch_size):
        enc = [tokenizer(s).input_ids for s in sentences[i:i + batch_size]]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for r, e in enumerate(enc):
            ids[r, :len(e)] = torch.tensor(e)
            attn[r, :len(e)] = 1
        ids, attn = ids.to(device), attn.to(device)
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1)
        tgt = ids[:, 1:]
        keep = attn[:, 1:].bool()
        nll -= logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)[keep].sum().item()
        count += int(keep.sum())
    if count == 0:
        raise ValueError("held-out sentences have no predicted tokens (each needs at least 2 tokens)")
    return math.exp(nll / count)


def masks_to_indices(masks: xr.DataArray, language) -> dict[int, torch.Tensor]:
    m = masks.sel(language=language).transpose("layer", "neuron")
    return {int(layer): torch.as_tensor(np.flatnonzero(m.values[i]), dtype=torch.long)
            for i, layer in enumerate(m["layer"].values)}


def ablate(model_path: str, masks: xr.DataArray, heldout: dict[str, Sequence[str]], *, site: str = "gate",
           device: str = "auto", dtype=torch.float32) -> xr.Dataset:
    """Perplexity of every held-out language with each language's neurons zeroed.

    Returns `ppl[ablated, evaluated]`, `base[evaluated]` and `ratio = ppl / base`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(dev).eval()
    mt = model.config.model_type
    langs = [str(x) for x in masks["language"].values]
    evals = list(heldout)
    base = np.array([perplexity(model, tok, heldout[e], dev) for e in evals])
    ppl = np.zeros((len(langs), len(evals)))
    for a, lang in enumerate(langs):
        with zeroed(model, mt, site, masks_to_indices(masks, lang)):
            ppl[a] = [perplexity(model, tok, heldout[e], dev) for e in evals]
    return xr.Dataset({"ppl": (("ablated", "evaluated"), ppl), "base": (("evaluated",), base),
                       "ratio": (("ablated", "evaluated"), ppl / base)},
                      coords={"ablated": langs, "evaluated": evals})


def diagonal_report(res: xr.Dataset) -> str:
    """The ratio matrix, with each column's largest increase marked and the diagonal checked."""
    langs, evals = list(res["ablated"].values), list(res["evaluated"].values)
    r = res["ratio"].values
    w = max(8, *(len(str(x)) + 2 for x in evals))
    lines = ["perplexity ratio (ablated rows / evaluated columns; * = column maximum)",
             "ablated".ljust(9) + "".join(f"{e:>{w}}" for e in evals)]
    colmax = r.argmax(0)
    for a, lang in enumerate(langs):
        lines.append(f"{lang:9s}" + "".join(
            f"{r[a, j]:>{w - 1}.3f}{'*' if colmax[j] == a else ' '}" for j in range(len(evals))))
    lines.append("base ppl".ljust(9) + "".join(f"{b:>{w}.2f}" for b in res["base"].values))
    diag = [e for e in evals if e in langs]
    ok = [e for e in diag if langs[colmax[evals.index(e)]] == e]
    lines.append(f"diagonal is the column maximum for {len(ok)} of {len(diag)} languages"
                 + (f" ({', '.join(ok)})" if ok else ""))
    return "\n".join(lines)


def ablate_report(results: str, *, heldout: str | None = None, max_sentences: int = 100,
                  device: str = "auto", out: str | None = None, **lape_kwargs) -> str:
    """What `langneurons ablate` prints: LAPE masks from the store, perplexity matrix on held-out text."""
    from langneurons.corpus import demo_corpus_path, load_corpus
    from langneurons.scoring.lape import LapeConfig, firing_probability, lape
    from langneurons.store.reader import open_results

    ds = open_results(results)
    langs = [str(x) for x in ds["language"].values]
    if heldout is None:  # the bundled corpus holds rows 500-599 out of the demo profile
        corpus = load_corpus(demo_corpus_path(), languages=langs, start=500, max_sentences=max_sentences)
    else:
        corpus = load_corpus(heldout, languages=langs, max_sentences=max_sentences)
    masks = lape(firing_probability(ds), LapeConfig(**lape_kwargs)).masks
    res = ablate(ds.attrs["model"], masks, {lang: list(corpus.sentences[lang]) for lang in langs},
                 site=ds.attrs.get("site", "gate"), device=device)
    if out:
        res["ratio"].to_pandas().to_csv(out)
    return diagonal_report(res)
