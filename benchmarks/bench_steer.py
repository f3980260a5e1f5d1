"""What does steering cost over plain generation, on each backend?

Same model (the multilingual demo, Gemma 3 270M, float32, CPU), same prompts (bundled corpus,
English, rows 500-), every output forced to the full --max-new-tokens (so a steered output that
would stop early does not do less work), greedy; variants interleaved round by round:

    plain      generation, no hooks
    steered    the interventions `langneurons steer` installs, at the gate site of every layer:
               --neurons neurons per layer, half deactivated (x := 0), half activated
               (x := x + alpha*v), at every prompt position and every decoded token

--backend hf: transformers' `generate` on the same left-padded batches of --batch-size, the
interventions as hooks (`steering.hooks.steered`). --backend vllm (run with .venv-vllm's Python):
all prompts at once; `plain` is vLLM's default engine (torch.compile; prefix caching off so that
every round computes its prompts), what users run without langneurons; `steered` the engine
`langneurons steer` starts (`VLLMGenerator`: the same compilation, the interventions compiled into
its graph through the ops of `steering/ops.py`), with one condition's operations set;
`steered_eager` the --vllm-eager engine, steered likewise.

Overhead = the median over rounds of (variant time / plain time in the same round) - 1 (a ratio
within one round cancels the VM's drift). Target: steering costs at most 10% over plain.

    python benchmarks/bench_steer.py --backend hf [--prompts 32] [--max-new-tokens 32] [--neurons 64]
    .venv-vllm/bin/python benchmarks/bench_steer.py --backend vllm

Writes its backend's section of benchmarks/results/steer.json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS_DIR, machine_info  # noqa: E402

from langneurons.corpus import demo_corpus_path, load_corpus  # noqa: E402
from langneurons.demo import demo_model_path  # noqa: E402
from langneurons.scoring.profiled import load_at  # noqa: E402
from langneurons.steering import hooks, neurons  # noqa: E402
from langneurons.steering.generate import encode_prompts, left_padded  # noqa: E402

RESULTS = RESULTS_DIR / "steer.json"


def run(model, prepared, n_new: int) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        for ids, attn in prepared:
            model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=n_new, min_new_tokens=n_new,
                           do_sample=False, pad_token_id=0)
    return time.perf_counter() - t0


def table() -> list[str]:
    """This benchmark's section of the results table in benchmarks/README.md (`run_all.py`)."""
    from common import load

    res = load("steer.json") or {}
    out = []
    for backend, r in res.items():
        batches = f"in batches of {r['batch_size']}" if backend == "hf" else "all submitted at once"
        out += [f"### Steering cost over plain generation ({backend} backend; {r['model']}, {r['dtype']}, CPU)", "",
                f"{r['prompts']} prompts {batches}, {r['max_new_tokens']} new tokens each (forced), greedy; "
                f"{r['neurons_per_layer']} neurons steered per layer in {r['layers']} layers; {r['repeats']} interleaved "
                "rounds.", "", "| variant | median s | generated tokens/s | vs plain (median, range) |",
                "|---|---|---|---|"]
        for k, sec in r["seconds"].items():
            s = statistics.median(sec)
            ov = r["vs_plain"].get(k)
            cell = "" if ov is None else f"{100 * ov['median']:+.1f}% ({100 * ov['min']:+.1f}% to {100 * ov['max']:+.1f}%)"
            out.append(f"| {k} | {s:.2f} | {r['tokens'] / s:.0f} | {cell} |")
        steer = r["vs_plain"]["steered"]["median"]
        out += ["", f"Target: steering costs at most 10% over plain: {'met' if steer <= 0.10 else 'NOT met'} "
                f"({100 * steer:+.1f}%)."]
        if backend == "vllm":
            out.append("`plain` is vLLM's default engine (torch.compile) without langneurons; `steered` runs the "
                       "same compilation with the interventions in its graph, `steered_eager` the --vllm-eager "
                       "engine.")
        out.append("")
    return out


def ratios(seconds: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for k, sec in seconds.items():
        if k != "plain":
            r = [x / p - 1 for p, x in zip(seconds["plain"], sec)]
            out[k] = {"median": statistics.median(r), "min": min(r), "max": max(r)}
    return out


def intervention(L: int, F: int, k: int):
    """k random neurons per layer, half deactivated, half added (alpha 1, v uniform in [0, 1))."""
    rng = np.random.default_rng(0)
    deact, act = np.zeros((L, F), bool), np.zeros((L, F), bool)
    for i in range(L):
        pick = rng.choice(F, size=k, replace=False)
        deact[i, pick[:k // 2]], act[i, pick[k // 2:]] = True, True
    return neurons.operations("steered", "fr", 1.0, "add", "gate", np.arange(L), deact, act, rng.random((L, F)), 0.0)


def bench_hf(loaded, prompts, args) -> dict[str, list[float]]:
    model, plan = loaded.model, loaded.plan
    prepared = left_padded(prompts, args.batch_size, 0)
    ops = hooks.layer_ops(intervention(plan.n_layers, plan.d_ff, args.neurons))
    run(model, prepared[:1], 2)  # warm-up
    seconds = {"plain": [], "steered": []}
    for _ in range(args.repeats):
        seconds["plain"].append(run(model, prepared, args.max_new_tokens))
        with hooks.steered(model, plan.spec, "gate", ops):
            seconds["steered"].append(run(model, prepared, args.max_new_tokens))
    return seconds


def bench_vllm(loaded, prompts, args) -> dict[str, list[float]]:
    import dataclasses

    import vllm
    from vllm.inputs import TokensPrompt

    from langneurons.steering.vllm import VLLMGenerator

    # three engines alive at once: each may take a third of the device's memory
    plan = dataclasses.replace(loaded.plan, gpu_memory_utilization=min(loaded.plan.gpu_memory_utilization, 0.3))
    loaded = dataclasses.replace(loaded, plan=plan)
    if not plan.compiled:
        raise SystemExit(f"{plan.model} runs eager on vLLM (a MoE model): there is no compiled engine to compare")
    table = intervention(plan.n_layers, plan.d_ff, args.neurons)
    params = vllm.SamplingParams(max_tokens=args.max_new_tokens, min_tokens=args.max_new_tokens, temperature=0.0,
                                 detokenize=False)
    inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    plain = vllm.LLM(model=plan.model, tokenizer=plan.model, dtype=plan.dtype, enable_prefix_caching=False,
                     max_model_len=plan.max_length + 1, gpu_memory_utilization=plan.gpu_memory_utilization, seed=0)
    compiled = VLLMGenerator(loaded, "gate")
    eager = VLLMGenerator(dataclasses.replace(loaded, plan=dataclasses.replace(plan, compiled=False)), "gate")

    def timed(llm) -> float:
        t0 = time.perf_counter()
        llm.generate(inputs, params, use_tqdm=False)
        return time.perf_counter() - t0

    def steered(gen) -> float:
        gen.set_operations(table)
        try:
            return timed(gen.llm)
        finally:
            gen.clear()

    timed(plain)   # warm-up
    for gen in (compiled, eager):
        steered(gen)
    seconds = {"plain": [], "steered": [], "steered_eager": []}
    for _ in range(args.repeats):
        seconds["plain"].append(timed(plain))
        seconds["steered"].append(steered(compiled))
        seconds["steered_eager"].append(steered(eager))
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--neurons", type=int, default=64, help="neurons steered per layer (half deactivated, half added)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--demo", default="gemma3")
    ap.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    args = ap.parse_args()
    loaded = load_at(str(demo_model_path(args.demo)), device="cpu", dtype="float32", backend=args.backend)
    sents = load_corpus(demo_corpus_path(), languages=["en"], start=500, max_sentences=args.prompts).sentences["en"]
    prompts = encode_prompts(loaded.tokenizer, [str(s) for s in sents], loaded.plan.bos.prepend)
    seconds = (bench_vllm if args.backend == "vllm" else bench_hf)(loaded, prompts, args)
    res = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    res[args.backend] = {
        "model": f"{args.demo} demo", "dtype": loaded.plan.dtype, "prompts": len(prompts), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "neurons_per_layer": args.neurons, "layers": loaded.plan.n_layers,
        "repeats": args.repeats, "tokens": len(prompts) * args.max_new_tokens, "seconds": seconds,
        "vs_plain": ratios(seconds), "machine": machine_info()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(dict(sorted(res.items())), indent=1) + "\n")
    print("\n".join(table()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
