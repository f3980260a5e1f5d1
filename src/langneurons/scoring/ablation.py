"""Causal check: zero each language's selected neurons and measure perplexity on held-out text.

Returns a [ablated, evaluated] matrix of perplexity change (ratio to the unablated model). If the
neurons are language-specific, the diagonal (ablating language X, evaluating on X) should hold each
column's largest increase. Zeroing happens at the profiled site: the activation's output (`gate`)
or the down projection's input (`down_in`), inside hooks removed in `finally`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import xarray as xr

from langneurons.profiler import loader, sites
from langneurons.profiler.architectures import ArchSpec
from langneurons.scoring.options import AblateConfig, LapeConfig, ProfiledModel
from langneurons.scoring.profiled import Profiled, load_profiled


@contextmanager
def zeroed(model, spec: ArchSpec, site: str, neurons: dict[int, torch.Tensor]) -> Iterator[None]:
    """Zero neurons[layer] (index tensors) of `site` in every listed layer while inside the block."""
    handles = []
    try:
        for s in sites.site_modules(model, spec, site):
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
def perplexity(model, tokenizer, sentences: Sequence[str], device, batch_tokens: int = 2048,
               bos: int | None = None) -> float:
    """exp(mean negative log-likelihood) over every predicted token of the sentences; `bos`: the
    BOS rule's prepended id (`tokens.BosRule.prepend`), so the model runs as it was profiled."""
    nll, count = 0.0, 0
    enc = [tokenizer(s).input_ids for s in sentences]
    if bos is not None:
        enc = [e if e[:1] == [bos] else [bos] + e for e in enc]
    for batch in loader.padded_batches(enc, batch_tokens, loader.pad_id(tokenizer), device):
        ids, attn = batch.ids, batch.attention
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


def ablate(loaded: Profiled, masks: xr.DataArray, heldout: dict[str, Sequence[str]], *, site: str = "gate") -> xr.Dataset:
    """Perplexity of every held-out language with each language's neurons zeroed, on the model as
    `profile` ran it (`scoring.profiled`: sequences open with the profile's BOS rule).

    Returns `ppl[ablated, evaluated]`, `base[evaluated]` and `ratio = ppl / base`.
    """
    model, tok, plan = loaded.model, loaded.tokenizer, loaded.plan
    dev, bos = plan.torch_device, plan.bos.prepend
    langs = [str(x) for x in masks["language"].values]
    evals = list(heldout)
    base = np.array([perplexity(model, tok, heldout[e], dev, bos=bos) for e in evals])
    ppl = np.zeros((len(langs), len(evals)))
    for a, lang in enumerate(langs):
        with zeroed(model, plan.spec, site, masks_to_indices(masks, lang)):
            ppl[a] = [perplexity(model, tok, heldout[e], dev, bos=bos) for e in evals]
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


def ablate_report(results: str, options: AblateConfig = AblateConfig(), cfg: LapeConfig = LapeConfig(),
                  choice: ProfiledModel = ProfiledModel()) -> str:
    """What `langneurons ablate` prints: LAPE masks from the store, perplexity matrix on held-out text."""
    from langneurons.corpus import demo_corpus_path, load_corpus
    from langneurons.scoring.lape import firing_probability, lape
    from langneurons.store.reader import open_results

    heldout, max_sentences, out = options.heldout, options.max_sentences, options.out

    if out and Path(out).is_symlink():
        raise ValueError(f"--out {out} is a symbolic link; the table would be written wherever it points: "
                         "give a plain file name")
    if out and Path(out).exists():
        head = Path(out).read_text(errors="replace").split("\n", 1)[0] if Path(out).is_file() else ""
        if not head.startswith("ablated,"):  # an earlier `ablate --out` table may be replaced, nothing else
            raise ValueError(f"--out {out} exists and is not an earlier ablation table; choose a new file name")
    ds = open_results(results)
    moe = ds.attrs.get("moe")
    if moe:  # the neurons LAPE selects are the dense FFN's (dense layers, shared experts)
        if not moe["dense_layers"] or ds.sizes["neuron"] == 0:
            raise ValueError(f"{results}: `ablate` zeroes dense-FFN neurons, and this {ds.attrs.get('architecture')} "
                             "model has none (every layer routes its tokens to experts); ablating experts is not "
                             "supported yet: see `langneurons score` for its language-specific experts")
        ds = ds.isel(layer=list(moe["dense_layers"]))
    langs = [str(x) for x in ds["language"].values]
    if heldout is None:  # the bundled corpus holds rows 500-599 out of the demo profile
        corpus = load_corpus(demo_corpus_path(), languages=langs, start=500, max_sentences=max_sentences)
    else:
        corpus = load_corpus(heldout, languages=langs, max_sentences=max_sentences)
    masks = lape(firing_probability(ds), cfg).masks
    loaded = load_profiled(ds.attrs, choice)
    res = ablate(loaded, masks, {lang: list(corpus.sentences[lang]) for lang in langs},
                 site=ds.attrs.get("site", "gate"))
    if out:
        res["ratio"].to_pandas().to_csv(out)
    return diagonal_report(res)
