"""What does profiling cost over plain inference, and what do the usual ways cost?

Same model (the demo SmolLM2-135M, float32, CPU), same sentences, same batches, same forward call
(the base model, no LM head), timed in the same process, variants interleaved round by round:

    plain       forward passes, no hooks                                      the baseline
    langneurons HFBackend as it runs by default: hooks reduce each block with the CPU kernel
                (numba: one pass per block, padding skipped in the kernel, counts folded into
                the accumulators)
    langneurons_reference  the same hooks with the plain-torch reference (gather the counted rows,
                then 15 compares, bincount, sums: the spec, not meant to be fast)
    lape_style  the MLP forward replaced by one that also counts with torch ops, as
                RUCAIBox/Language-Specific-Neurons' activation.py does for vLLM's MLP
                (act(gate) > 0 summed over all positions, padding included, plus sums)
    act_cache   hooks copy every layer's activation to host memory; reduced after the pass,
                as generic interpretability tools (activation caches) do

Overhead = the median, over rounds, of (variant time / plain time in the same round) - 1: on a
shared VM the speed drifts by 10-20% within minutes, and a ratio taken within one round cancels
that drift where a ratio of medians would not. The spread is the range of those ratios. Each
variant must also produce its statistics, or it would not be a fair comparison: the caching
variant reduces what it cached.

Breakdown of langneurons' cost (same rounds): `hooks_only` runs the hooks with a reduction that
does nothing (hook dispatch and the language mask), `kernel_only` runs the kernel without adding
into the accumulators; so hook dispatch = hooks_only - plain, reduction = kernel_only - hooks_only,
accumulation = langneurons - kernel_only. The reference path also gathers rows first:
`reference_gather` runs only that gather (row gather = reference_gather - hooks_only).

Inside the forward (drift-free): the same passes are timed with a clock around each hook (split
into the kernel, the fold into the accumulators and the rest of the hook), and LAPE-style's two
counting reductions inside its forward are timed the same way; each is reported as a percentage
of the time outside it. On a VM whose speed moves 10-20% between rounds this is the figure that
resolves a few percent; the targets are checked on it and on the wall-clock ratios.

    python benchmarks/bench_overhead.py [--sentences 24] [--repeats 9]

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
from common import clocked_accumulate, machine_info  # noqa: E402

from langneurons.config import ProfileConfig  # noqa: E402
from langneurons.corpus import demo_corpus_path, load_corpus  # noqa: E402
from langneurons.demo import demo_model_path  # noqa: E402
from langneurons.kernels import cpu_stats  # noqa: E402
from langneurons.profiler import hooks, loader, tokens  # noqa: E402
from langneurons.profiler.backends.hf import HFBackend  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "overhead.json"


def batches(backend: HFBackend, sentences):
    enc = tokens.encode(backend.tokenizer, sentences, include_special_tokens=False, max_length=512,
                        bos=backend.bos.prepend)
    marks = [[0 if c else -1 for c in counted] for counted in enc.counted]  # what the backend counts
    out = [(b.ids, b.attention, b.marks) for b in loader.padded_batches(
        enc.input_ids, backend.counting.batch_tokens, backend.pad_id, backend.device, marks)]
    return out, enc.n_counted


def plain(backend, prepared):
    with torch.inference_mode():
        for ids, attn, _ in prepared:
            backend.model.base_model(input_ids=ids, attention_mask=attn, use_cache=False)


def lape_style(backend, prepared, timer: dict | None = None):
    """Counting inside a replaced MLP forward: torch ops on the full padded activation. With
    `timer`, the time spent counting is added to timer["hooks"] (the in-forward comparison)."""
    mlps = [layer.mlp for layer in backend.model.base_model.layers]
    L, F = len(mlps), backend.info.d_ff
    over_zero = torch.zeros(L, F, dtype=torch.int64)
    sums = torch.zeros(L, F)
    originals = [m.forward for m in mlps]

    def make(i, m):
        def forward(x):
            act = m.act_fn(m.gate_proj(x))
            t0 = time.perf_counter() if timer is not None else 0.0
            over_zero[i] += (act > 0).sum(dim=(0, 1))
            sums[i] += act.float().sum(dim=(0, 1))
            if timer is not None:
                timer["hooks"] += time.perf_counter() - t0
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


def with_state(backend: HFBackend, state: hooks.HookState, sentences):
    """backend.profile(sentences) with other hooks' work (the breakdown variants)."""
    saved = backend.state
    backend.state = state
    try:
        backend.profile(sentences)
    finally:
        backend.state = saved


def kernel_only(acc, layer, x, token_lang):
    cpu_stats.segment_stats(x, token_lang, acc.n_languages, acc.threshold, acc.edges)


def gather_only(acc, layer, x, token_lang):
    pass  # HookState(compact=True) gathered the counted rows before calling this


def instrumented(backend: HFBackend, sentences, repeats: int) -> dict:
    """Where profiling time goes, timed inside the same forward passes as their total, so the
    machine's drift cancels: time in the hooks (split into the kernel, the fold into the
    accumulators and the rest of the hook: reshapes, checks, gathers) over time outside them."""
    t = {"total": 0.0, "hooks": 0.0, "kernel": 0.0, "fold": 0.0}
    state = backend.state
    real_reduce, real_accumulate = state.reduce, state.accumulate

    def reduce(layer, x):
        t0 = time.perf_counter()
        real_reduce(layer, x)
        t["hooks"] += time.perf_counter() - t0

    state.reduce, state.accumulate = reduce, clocked_accumulate(real_accumulate, t)
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            backend.profile(sentences)
            t["total"] += time.perf_counter() - t0
    finally:
        del state.reduce
        state.accumulate = real_accumulate
    outside = t["total"] - t["hooks"]
    return {"overhead_pct": 100 * t["hooks"] / outside,
            "kernel_pct": 100 * t["kernel"] / outside, "fold_pct": 100 * t["fold"] / outside,
            "rest_of_hook_pct": 100 * (t["hooks"] - t["kernel"] - t["fold"]) / outside,
            "seconds": t}


def instrumented_lape(backend: HFBackend, prepared, repeats: int) -> dict:
    """LAPE-style counting timed the same way: its two reductions inside the replaced forward,
    over the time outside them."""
    t = {"total": 0.0, "hooks": 0.0}
    for _ in range(repeats):
        t0 = time.perf_counter()
        lape_style(backend, prepared, timer=t)
        t["total"] += time.perf_counter() - t0
    outside = t["total"] - t["hooks"]
    pct = 100 * t["hooks"] / outside
    return {"overhead_pct": pct, "kernel_pct": pct, "fold_pct": 0.0, "rest_of_hook_pct": 0.0, "seconds": t}


def table() -> list[str]:
    """This benchmark's section of the results table in benchmarks/README.md (`run_all.py`)."""
    from common import load

    out: list[str] = []
    o = load("overhead.json")
    if o:
        s = o["setup"]
        out += [f"### Profiling overhead ({s['model']}; {s['counted_tokens']:,} tokens, "
                f"{s['repeats']} interleaved rounds, kernel {s.get('kernel', '?')}, "
                f"{s.get('torch_threads', '?')} torch threads; {o['machine']['cpu']}, {o['machine']['cores']} cores)", "",
                "| variant | median s | min-max s | tokens/s | overhead vs plain (median of rounds) | range |",
                "|---|---|---|---|---|---|"]
        for k, r in o["variants"].items():
            rng = (f"{r['overhead_pct_min']:+.1f}..{r['overhead_pct_max']:+.1f}%" if "overhead_pct_min" in r else "")
            out.append(f"| {k} | {r['seconds_median']:.2f} | {r['seconds_min']:.2f}-{r['seconds_max']:.2f} | "
                       f"{r['tokens_per_s']:.0f} | {r['overhead_pct']:+.1f}% | {rng} |")
        if o.get("breakdown"):
            out += ["", "langneurons' cost by component (% of plain): " + ", ".join(
                f"{k.replace('_', ' ')} {v['pct_of_plain']:+.1f}%" for k, v in o["breakdown"].items())]
        for k, v in o.get("inside_the_forward", {}).items():
            out += ["", f"Inside the same forward passes, {k}: time in the hooks {v['overhead_pct']:.2f}% of the "
                    f"time outside them (kernel {v['kernel_pct']:.2f}%, fold into the accumulators "
                    f"{v['fold_pct']:.2f}%, rest of the hook {v['rest_of_hook_pct']:.2f}%)."]
        out += ["", "| target | measured | met |", "|---|---|---|"]
        for k, t in o["targets"].items():
            v = "n/a" if t["value"] is None else f"{t['value']:.2f}"
            out.append(f"| {k} | {v} | {'yes' if t['met'] else '**no**'} |")
        out.append("")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=24, help="sentences per language")
    ap.add_argument("--languages", default="en,hi,zh")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    args = ap.parse_args(argv)

    corpus = load_corpus(demo_corpus_path(), languages=args.languages.split(","), max_sentences=args.sentences)
    model = str(demo_model_path("smollm2"))
    backend = HFBackend(ProfileConfig.from_flags(model=model, batch_tokens=args.batch_tokens))
    assert backend.kernel == "numba", backend.kernel
    ref = HFBackend(ProfileConfig.from_flags(model=model, batch_tokens=args.batch_tokens, kernel="reference"))
    sentences = [s for lang in corpus.languages for s in corpus.sentences[lang]]
    prepared, n_tokens = batches(backend, sentences)
    noop = hooks.HookState(backend.acc, lambda *a: None, compact=False)
    variants = {
        "plain": lambda: plain(backend, prepared),
        "langneurons": lambda: backend.profile(sentences),
        "langneurons_reference": lambda: ref.profile(sentences),
        "lape_style": lambda: lape_style(backend, prepared),
        "act_cache": lambda: act_cache(backend, prepared),
        "hooks_only": lambda: with_state(backend, noop, sentences),
        "kernel_only": lambda: with_state(backend, hooks.HookState(backend.acc, kernel_only, compact=False),
                                          sentences),
        "reference_gather": lambda: with_state(backend, hooks.HookState(backend.acc, gather_only, compact=True),
                                               sentences),
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
        ratios = [t / p - 1 for t, p in zip(ts, times["plain"])]  # within each round
        rows[name] = {"seconds_median": med, "seconds_min": min(ts), "seconds_max": max(ts), "runs": ts,
                      "tokens_per_s": n_tokens / med, "overhead_pct": 100 * statistics.median(ratios),
                      "overhead_pct_min": 100 * min(ratios), "overhead_pct_max": 100 * max(ratios)}
    ln, lape = (rows[k]["overhead_pct"] for k in ("langneurons", "lape_style"))
    targets = {
        "langneurons_time_in_hooks_pct<=3": {"value": None, "met": False},  # filled below
        "langneurons_overhead_pct<=3": {"value": ln, "met": ln <= 3},
        "langneurons<=lape_style/2": {"value": ln / lape if lape > 0 else None,
                                       "met": ln <= 0 or (lape > 0 and ln <= lape / 2)},
    }
    inside = {"langneurons": instrumented(backend, sentences, args.repeats),
              "langneurons_reference": instrumented(ref, sentences, args.repeats),
              "lape_style": instrumented_lape(backend, prepared, args.repeats)}
    hooks_pct, lape_pct = (inside[k]["overhead_pct"] for k in ("langneurons", "lape_style"))
    targets["langneurons_time_in_hooks_pct<=3"] = {"value": hooks_pct, "met": hooks_pct <= 3}
    targets["langneurons_time_in_hooks<=lape_style/2"] = {"value": hooks_pct / lape_pct,
                                                          "met": hooks_pct <= lape_pct / 2}
    pct = {k: r["overhead_pct"] for k, r in rows.items()}
    breakdown = {  # % of plain, differences of the per-round overheads (noise can make one negative)
        "hook_dispatch": pct["hooks_only"],
        "row_gather_reference_only": pct["reference_gather"] - pct["hooks_only"],
        "reduction": pct["kernel_only"] - pct["hooks_only"],
        "accumulation": pct["langneurons"] - pct["kernel_only"],
    }
    breakdown = {k: {"pct_of_plain": v, "seconds": v * base / 100} for k, v in breakdown.items()}
    result = {"benchmark": "bench_overhead", "machine": machine_info(),
              "setup": {"model": "SmolLM2-135M-Instruct (demo), float32, CPU, HF backend",
                        "languages": corpus.languages, "sentences_per_language": args.sentences,
                        "counted_tokens": n_tokens, "batches": len(prepared), "batch_tokens": args.batch_tokens,
                        "repeats": args.repeats, "kernel": backend.kernel, "site": "gate",
                        "torch_threads": torch.get_num_threads()},
              "variants": rows, "breakdown": breakdown, "inside_the_forward": inside, "targets": targets}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"{'variant':22s} {'median s':>9s} {'min-max s':>13s} {'tok/s':>8s} {'overhead':>9s} {'range':>15s}")
    for name, r in rows.items():
        print(f"{name:22s} {r['seconds_median']:9.2f} {r['seconds_min']:6.2f}-{r['seconds_max']:<6.2f} "
              f"{r['tokens_per_s']:8.0f} {r['overhead_pct']:8.1f}% {r['overhead_pct_min']:6.1f}..{r['overhead_pct_max']:.1f}%")
    for k, v in breakdown.items():
        print(f"  {k:28s} {v['seconds']:+.3f} s ({v['pct_of_plain']:+.1f}% of plain)")
    for k, v in inside.items():
        print(f"  inside the forward, {k}: hooks {v['overhead_pct']:.2f}% of the rest (kernel "
              f"{v['kernel_pct']:.2f}%, fold {v['fold_pct']:.2f}%, rest of hook {v['rest_of_hook_pct']:.2f}%)")
    for k, v in targets.items():
        print(f"target {k}: {v['value']!s:.6} {'met' if v['met'] else 'MISSED'}")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
