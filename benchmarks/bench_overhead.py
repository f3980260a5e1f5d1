"""What does profiling cost over plain inference, and what do the usual ways cost?

Same model (the demo SmolLM2-135M, float32, CPU), same sentences, same batches, same forward call
(the base model, no LM head), timed in the same process, variants interleaved round by round:

    plain       forward passes, no hooks                                      the baseline
    langneurons HFBackend's hooks: gather counted rows, reduce on the device (reference kernel)
    lape_style  the MLP forward replaced by one that also counts with torch ops, as
                RUCAIBox/Language-Specific-Neurons' activation.py does for vLLM's MLP
                (act(gate) > 0 summed over all positions, padding included, plus sums)
    act_cache   hooks copy every layer's activation to host memory; reduced after the pass,
                as generic interpretability tools (activation caches) do

Overhead = median time / median plain time - 1. Each variant must also produce its statistics,
or it would not be a fair comparison: the caching variant reduces what it cached.

    python benchmarks/bench_overhead.py [--sentences 48] [--repeats 5]

Writes benchmarks/results/overhead.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info  # noqa: E402

from langneurons.config import ProfileConfig  # noqa: E402
from langneurons.corpus import demo_corpus_path, load_corpus  # noqa: E402
from langneurons.demo import demo_model_path  # noqa: E402
from langneurons.profiler import tokens  # noqa: E402
from langneurons.profiler.backends.hf import HFBackend  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "overhead.json"


def batches(backend: HFBackend, sentences):
    enc = tokens.encode(backend.tokenizer, sentences, include_special_tokens=False, max_length=512)
    out = []
    for b in tokens.batches_by_budget([len(s) for s in enc.input_ids], backend.cfg.batch_tokens):
        out.append(backend._pad([enc.input_ids[i] for i in b], [enc.counted[i] for i in b]))
    return out, enc.n_counted


def plain(backend, prepared):
    with torch.inference_mode():
        for ids, attn, _ in prepared:
            backend.model.base_model(input_ids=ids, attention_mask=attn, use_cache=False)


def lape_style(backend, prepared):
    """Counting inside a replaced MLP forward: torch ops on the full padded activation."""
    mlps = [layer.mlp for layer in backend.model.base_model.layers]
    L, F = len(mlps), backend.info.d_ff
    over_zero = torch.zeros(L, F, dtype=torch.int64)
    sums = torch.zeros(L, F)
    originals = [m.forward for m in mlps]

    def make(i, m):
        def forward(x):
            act = m.act_fn(m.gate_proj(x))
            over_zero[i] += (act > 0).sum(dim=(0, 1))
            sums[i] += act.float().sum(dim=(0, 1))
            return m.down_proj(act * m.up_proj(x))
        return forward

    for i, m in enumerate(mlps):
        m.forward = make(i, m)
    try:
        plain(backend, prepared)
    finally:
        for m, f in zip(mlps, originals):
            m.forward = f
    return over_zero


def act_cache(backend, prepared):
    """Cache every layer's activations on the host, reduce them afterwards."""
    cache: list[list[torch.Tensor]] = [[] for _ in backend.sites]
    handles = [s.module.register_forward_hook(
        lambda _m, _a, out, i=s.layer: cache[i].append(out.detach().to("cpu", copy=True)))
        for s in backend.sites]
    masks = []
    try:
        with torch.inference_mode():
            for ids, attn, lang in prepared:
                masks.append(lang.reshape(-1) >= 0)
                backend.model.base_model(input_ids=ids, attention_mask=attn, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out = []
    for per_batch in cache:
        x = torch.cat([b.reshape(-1, b.shape[-1])[m] for b, m in zip(per_batch, masks)])
        out.append(((x > 0).sum(0), x.sum(0), (x * x).sum(0)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=48, help="sentences per language")
    ap.add_argument("--languages", default="en,hi,zh")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    args = ap.parse_args(argv)

    corpus = load_corpus(demo_corpus_path(), languages=args.languages.split(","), max_sentences=args.sentences)
    backend = HFBackend(ProfileConfig(model=str(demo_model_path()), batch_tokens=args.batch_tokens))
    sentences = [s for lang in corpus.languages for s in corpus.sentences[lang]]
    prepared, n_tokens = batches(backend, sentences)
    variants = {
        "plain": lambda: plain(backend, prepared),
        "langneurons": lambda: backend.profile(sentences),
        "lape_style": lambda: lape_style(backend, prepared),
        "act_cache": lambda: act_cache(backend, prepared),
    }
    for f in variants.values():  # warm-up: allocator, thread pools, first-touch
        f()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"seconds_median": med, "seconds_min": min(ts), "seconds_max": max(ts), "runs": ts,
                      "tokens_per_s": n_tokens / med, "overhead_pct": 100 * (med / base - 1)}
    ln, lape, cache = (rows[k]["overhead_pct"] for k in ("langneurons", "lape_style", "act_cache"))
    targets = {
        "langneurons_overhead_pct<=3": {"value": ln, "met": ln <= 3},
        "langneurons<=lape_style/3": {"value": ln / lape if lape > 0 else None,
                                       "met": lape > 0 and ln <= lape / 3},
        "act_cache/langneurons>=20": {"value": cache / ln if ln > 0 else None,
                                       "met": ln <= 0 or cache / ln >= 20},
    }
    result = {"benchmark": "bench_overhead", "machine": machine_info(),
              "setup": {"model": "SmolLM2-135M-Instruct (demo), float32, CPU, HF backend",
                        "languages": corpus.languages, "sentences_per_language": args.sentences,
                        "counted_tokens": n_tokens, "batches": len(prepared), "batch_tokens": args.batch_tokens,
                        "repeats": args.repeats, "kernel": backend.kernel, "site": "gate"},
              "variants": rows, "targets": targets}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"{'variant':12s} {'median s':>9s} {'min-max s':>13s} {'tok/s':>8s} {'overhead':>9s}")
    for name, r in rows.items():
        print(f"{name:12s} {r['seconds_median']:9.2f} {r['seconds_min']:6.2f}-{r['seconds_max']:<6.2f} "
              f"{r['tokens_per_s']:8.0f} {r['overhead_pct']:8.1f}%")
    for k, v in targets.items():
        print(f"target {k}: {v['value']!s:.6} {'met' if v['met'] else 'MISSED'}")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
