"""`make bench`: run every benchmark, then rewrite the results table in benchmarks/README.md.

Each benchmark writes its JSON under benchmarks/results/; the table is generated from those files
(including kernel results measured earlier on a GPU), between the results markers of the README.
"""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
README = HERE / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
RUNS = [  # (script, args): together under 26 minutes on a 2-core CPU
    ("bench_overhead.py", ["--repeats", "9"]),
    ("bench_cpu_kernel.py", []),  # the CPU kernel candidates on one block
    ("bench_store.py", []),  # profiles the demo in fine shards first
    ("bench_corpus.py", []),  # streamed corpora: rows/s and memory
    ("bench_cluster.py", []),
    ("bench_kernels.py", []),  # exits 0 at once without CUDA
    ("bench_kernel_code.py", []),  # the kernels' sm_90 machine code, read without a GPU
    ("bench_backends.py", []),  # HF vs vLLM: runs with .venv-vllm's interpreter when it exists
]
VLLM_PY = HERE.parent / ".venv-vllm" / "bin" / "python"


def load(name: str) -> dict | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else None


def _gate_read(inside: dict) -> str:
    """How the vLLM run read the gate site, and what that cost (bench_backends' hook kinds)."""
    if "act_and_mul" in inside.get("hooked", ()):
        return "act(gate) read inside vLLM's activation op (not recomputed)"
    return f"act(gate) recomputed {inside['transform_pct']:.2f}%"


def table() -> str:
    out = []
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
    ck = load("cpu_kernel.json")
    if ck:
        b = ck["block"]
        out += [f"### CPU reduction kernel candidates (one block: {b['tokens']} tokens x {b['d_ff']} neurons, "
                f"{b['dtype']}, {b['languages']} languages, {b['edges']} edges; {ck['rounds']} interleaved rounds)", "",
                "| candidate | 1 thread ms | 2 threads ms | GB/s (2 threads) | first call s |", "|---|---|---|---|---|"]
        first = ck["first_call"]
        for k, r in ck["candidates"].items():
            fc = first.get("numba_cold_cache_s") if k == "numba" else first.get(f"{k}_first_call_s")
            if k == "cpp" and "cpp_build_s" in first:
                fc = first["cpp_build_s"] + first.get("cpp_first_call_s", 0)
            out.append(f"| {k} | {r['1t']['ms_median']:.2f} | {r['2t']['ms_median']:.2f} | "
                       f"{r['2t']['gb_per_s']:.1f} | {'' if fc is None else f'{fc:.1f}'} |")
        for k, why in ck.get("not_run", {}).items():
            out.append(f"| {k} | not run: {why} | | | |")
        out += ["", "First call: numba's compile with a cold on-disk cache "
                f"({first.get('numba_cold_cache_s', float('nan')):.1f} s; "
                f"{first.get('numba_warm_cache_s', float('nan')):.1f} s warm), Inductor's compile with an empty cache, "
                "g++ plus the first run. Inside a forward pass the kernels share the cores with torch's "
                "OpenMP threads, which keep spinning for a while after each matmul. Every candidate was checked against the reference on the block first (integers equal).", ""]
    c = load("cluster.json")
    if c:
        out += ["### Ray overhead and scaling (demo model, CPU)", "",
                "| config | workers x threads | median s | min-max s | tokens/s |", "|---|---|---|---|---|"]
        for k, r in c["configs"].items():
            sec = r["seconds"]
            tps = r["tokens"] / sec["median"]
            out.append(f"| {k} | {r['workers']} x {r['threads_per_worker']} | {sec['median']:.1f} | "
                       f"{sec['min']:.1f}-{sec['max']:.1f} | {tps:.0f} |")
        d = c.get("derived", {})
        if d:
            out += ["", f"Ray overhead (1 Ray worker vs in-process, same threads): {d['ray_overhead_pct']:+.1f}% "
                    f"end to end, {d['ray_overhead_without_worker_start_pct']:+.1f}% without the worker's start "
                    f"({d['worker_start_s']['ray_actor']['median']:.1f} s vs "
                    f"{d['worker_start_s']['inproc']['median']:.1f} s in-process, paid once per worker); "
                    f"Ray start {d['ray_init_s']:.1f} s once per run. 2 workers x 1 thread: "
                    f"x{d['speedup_2w_1t_vs_1w_1t']:.2f} vs 1 x 1, x{d['speedup_2w_1t_vs_1w_2t']:.2f} vs 1 x 2."]
        out.append("")
    cp = load("corpus.json")
    if cp:
        out += [f"### Streamed corpora ({cp['rows']:,} rows per layout, one language; {cp['machine']['cpu']})", "",
                "| layout | count with | open rows/s | count rows/s | read by shards rows/s | peak memory growth |",
                "|---|---|---|---|---|---|"]
        for k, r in cp["results"].items():
            kind, mode = k.split("/")
            out.append(f"| {kind} | {'SmolLM2 tokenizer' if mode == 'tokenizer' else 'characters'} | "
                       f"{r['open_rows_per_s']:,.0f} | {r['count_rows_per_s']:,.0f} | "
                       f"{r['read_shards_rows_per_s']:,.0f} | {r['peak_growth_mb']:.1f} MB |")
        out.append("")
    s = load("store.json")
    if s and "simulation" in s:
        sim, b = s["simulation"], s["bootstrap_units"]
        out += [f"### Store at scale ({sim['layers']} layers x {sim['d_ff']} neurons, shards of "
                f"{sim['shard_tokens']:,} tokens synthesised from the demo's real statistics, "
                f"{sim['shards_written']} written through the real writer)", "",
                f"Per shard: {sim['raw_MB_per_shard']:.1f} MB raw (int32/float32), "
                f"{sum(sim['disk_MB_per_shard'].values()):.1f} MB on disk "
                f"({sim['disk_MB_per_shard']['act_hist']:.1f} MB of it the histogram); written at "
                f"{sim['write_MBps_raw']:.0f} MB/s ({sim['write_shards_per_s']:.1f} shards/s) by one writer; "
                f"finalize {sim['finalize_s_per_shard']:.3f} s per shard + {sim['finalize_s_per_language']:.2f} s "
                "per language, on one thread.", "",
                "| run | shards | store, --keep-partials counts | all | commits (8 GPUs) | write vs 8 GPUs' output | "
                "commit share of GPU time | finalize (1 thread) |",
                "|---|---|---|---|---|---|---|---|"]
        for k, e in s["scenarios"].items():
            out.append(f"| {k} tokens | {e['shards']:,} | {e['store_GB']['counts']:.1f} GB | {e['store_GB']['all']:.1f} GB | "
                       f"one per {1 / e['production']['shards_per_s']:.1f} s | "
                       f"{e['write_vs_production']:.0f}x | {100 * e['commit_share_of_gpu_time']:.2f}% | "
                       f"{e['finalize_s_one_thread']:.0f} s |")
        out += ["", f"8 GPUs at {s['setup']['gpu_tokens_per_s']:,.0f} tokens/s each on the 8B model "
                "(the 70B shape at 8/70 of that). Bootstrap units on the demo "
                f"({', '.join(b['languages'])}; {b['resamples']} resamples): per-layer 95% intervals of the LAPE counts "
                f"from {b['units_per_language']['1']} units per language vs the same shards merged into "
                + ", ".join(f"{b['units_per_language'][k]} ({v['mean_bound_shift']:.2f})" for k, v in b["by_factor"].items())
                + f": mean shift of the bounds, against {b['bootstrap_noise_max_bound_shift']:.2f} from re-running "
                f"the bootstrap with another seed (mean width {b['fine']['mean_interval_width']:.1f} neurons, "
                f"{b['cells']} layer x language cells where LAPE selects anything).", ""]
        out += ["| target | measured | met |", "|---|---|---|"]
        out += [f"| {k}: {t['target']} | {t['measured']:.2f} | {'yes' if t['met'] else 'no'} |"
                for k, t in s["targets"].items()]
        out.append("")
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
    inf = load("inside_forward.json")
    if inf and inf.get("openmp_wait"):
        w = inf["openmp_wait"]
        out += ["### torch's OpenMP wait and the CPU kernel (`bench_inside_forward.py`, fresh processes)", "",
                "| setting | time in the hooks, % of the forward | thread sleeps per plain pass | parallel op after a "
                "5 ms pause, us | plain forward vs default: measured (median of groups) | estimated (sleeps x wake-up) |",
                "|---|---|---|---|---|---|"]
        for name, pct in w["hooks_pct_median"].items():
            slow, est = w["plain_slowdown_pct_vs_default"].get(name), w["plain_cost_pct_estimate"].get(name)
            env = ", ".join(f"{k}={v}" for k, v in w["settings"][name].items())
            out.append(f"| {name} ({env}) | {pct:.2f}% | {w['sleeps_per_plain_pass'][name]:.0f} | "
                       f"{w['op_after_pause_us'][name]:.0f} | {'' if slow is None else format(slow['median'], '+.1f') + '%'} | "
                       f"{'' if est is None else format(est, '+.1f') + '%'} |")
        th = inf["hooks_pct_by_numba_threads"]
        out += ["", "The estimate (extra sleeps x extra start-up delay, over the plain pass) is the drift-free "
                "figure; the measured ratio between processes moves by 10-20%. A shorter wait hands the kernel "
                "the core torch's worker spins on, but plain inference pays more than the hooks save, so "
                "langneurons leaves torch's wait alone.",
                "", "Numba threads inside the forward (default wait): " + ", ".join(
            f"{k.replace('_', ' ')} {v['median']:.2f}%" for k, v in th.items()) + ".", ""]
    gp = load("gpu_proof.json")
    if gp and not gp.get("smoke") and (RESULTS / "gpu_proof.md").is_file():
        out += [(RESULTS / "gpu_proof.md").read_text().rstrip(), ""]
    elif not gp:
        out += ["### GPU proof", "", "Not run yet: no GPU was lent to a session since `benchmarks/gpu_proof.py` "
                "was written (see above for the command).", ""]
    kernels = sorted(glob.glob(str(RESULTS / "kernels_*.json")))
    if kernels:
        for path in kernels:
            k = json.loads(Path(path).read_text())
            out += [f"### Kernels on {k['device']} (bf16; GB/s and share of the copy bandwidth)", "",
                    "| tokens | d_ff | copy GB/s | stats | stats, no histogram | fused SiLU-gate | "
                    "MLP act step: fused / unfused |", "|---|---|---|---|---|---|---|"]
            out += [f"| {r['tokens']} | {r['d_ff']} | {r['copy_GBps']:.0f} | {r['stats_GBps']:.0f} "
                    f"({100 * r['stats_vs_copy']:.0f}%) | {r['stats_no_hist_GBps']:.0f} "
                    f"({100 * r['stats_no_hist_vs_copy']:.0f}%) | {r['fused_GBps']:.0f} "
                    f"({100 * r['fused_vs_copy']:.0f}%) | {100 * r['fused_overhead_vs_mlp']:+.0f}% / "
                    f"{100 * r['unfused_overhead_vs_mlp']:+.0f}% |" for r in k["rows"]]
            out += ["", f"Targets (share of copy, every shape): {k['targets']}; met: "
                    f"{k['targets_met_on_every_shape']}."]
            out.append("")
    else:
        out += ["### Kernels", "", "Not measured: no GPU was available to the session that ran this "
                "(`python benchmarks/bench_kernels.py` on a CUDA machine writes `results/kernels_<gpu>.json`).", ""]
    code = load("kernel_code_sm90.json")
    if code:
        out += ["### Kernel machine code for sm_90 (static: read from the compiled SASS, no GPU)", "",
                "| kernel | dtype | instructions / value | registers | shared-memory ops in loop | "
                "barriers in loop | local-memory ops | issue-bound GB/s (H100 estimate) |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['kernel']} | {r['dtype']} | {r['instructions_per_value']:.1f} | {r['registers']} | "
                f"{r['shared_memory_ops']} | {r['barriers']} | {r['local_memory_ops']} | "
                f"{r['issue_bound_GBps']} |" for r in code["rows"]]
        out += ["", "An estimate of the compute ceiling (see `bench_kernel_code.py`), not a measurement: "
                "a kernel runs at the lower of this and the memory bandwidth.", ""]
    return "\n".join(out)


def main() -> int:
    t0 = time.perf_counter()
    failed = []
    for script, args in RUNS:
        print(f"== {script} {' '.join(args)}", flush=True)
        py = str(VLLM_PY) if script == "bench_backends.py" and VLLM_PY.exists() else sys.executable
        if subprocess.call([py, str(HERE / script), *args]) != 0:
            failed.append(script)
    text = README.read_text()
    a, b = text.index(START) + len(START), text.index(END)
    README.write_text(text[:a] + "\n" + table() + "\n" + text[b:])
    print(f"rewrote {README} in {time.perf_counter() - t0:.0f} s total")
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
