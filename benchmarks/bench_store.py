"""The store at scale: narrow partials planned by tokens, what --keep-partials keeps, and whether
the store can ever be the bottleneck.

1. Real statistics. The demo (SmolLM2-135M on the bundled TICO-19 corpus) is profiled in fine
   shards (--demo-rows rows per language, --demo-shard-size rows per shard), or --demo STORE is
   reused. Its totals give every (language, layer, neuron) a real profile: its histogram shares,
   the mean and the mean square of its activation.
2. Scale simulation. An 8B shape (32 x 14336) is filled with neurons drawn from those profiles (a
   layer at the same relative depth), and --shards shards of --shard-tokens tokens are synthesised
   from them (histogram counts around T x share, summing to T exactly; n_fired = the bins above 0;
   sums around T x mean), each one different. They go through the real writer (lock, create,
   write_shard, finalize with --keep-partials counts): bytes on disk per shard and variable, write
   and finalize throughput, files per shard. Every shard is its own set of chunks, so the figures
   extrapolate linearly to 7 languages x 100M tokens, 100 languages, and a 70B shape (80 x 28672),
   and are compared with what 8 GPUs at 35k tokens/s produce.
3. Bootstrap units. Per-layer 95% intervals of the LAPE counts from the fine demo shards, and from
   the same shards merged into 2x and 4x larger units (what a run of fewer, token-planned shards
   keeps), against the bootstrap's own noise (the fine units under other seeds).

    python benchmarks/bench_store.py [--shards 24] [--shard-tokens 1000000] [--demo STORE]

Writes benchmarks/results/store.json and prints a summary. About 6 minutes on 2 cores (4 of them
profiling the demo).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info  # noqa: E402

from langneurons.config import ProfileConfig  # noqa: E402
from langneurons.scoring.bootstrap import bootstrap  # noqa: E402
from langneurons.shards import Shard  # noqa: E402
from langneurons.store.location import resolve  # noqa: E402
from langneurons.store.lock import StoreLock  # noqa: E402
from langneurons.store.reader import open_partials, open_results  # noqa: E402
from langneurons.store.schema import ALL_VARS, DEFAULT_EDGES, KEEP_PARTIALS, bin_bounds  # noqa: E402
from langneurons.store.stats import Stats  # noqa: E402
from langneurons.store.writer import ResultsStore  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "store.json"
#: Llama-3-8B / Llama-3-70B: FFN layers x d_ff, and parameters (a GPU profiles tokens at a rate
#: inversely proportional to them: FLOPs per token are ~2 x parameters)
SHAPES = {"8B": (32, 14336, 8e9), "70B": (80, 28672, 70e9)}
LANGS = ("l0", "l1")   # the simulation's languages: finalize sums them on one thread each
TARGETS = {"counts_GB": 10.0, "all_GB": 50.0, "write_vs_production": 10.0}


# --- 1. real statistics ------------------------------------------------------------------------


def profile_demo(out: Path, rows: int, shard_size: int) -> float:
    from langneurons.run import profile

    cfg = ProfileConfig.from_flags(out=str(out), max_sentences=rows, shard_size=shard_size, batch_tokens=2048,
                                   keep_partials="counts")
    t0 = time.perf_counter()
    profile(cfg, progress=False)
    return time.perf_counter() - t0


class Profiles:
    """Per-(language, layer, neuron) activation profiles of a real store's totals."""

    def __init__(self, ds: xr.Dataset):
        n = ds["n_tokens"].values.astype(np.float64)[:, None, None]
        self.share = ds["act_hist"].values / n[..., None]                 # [N, L, F, B]
        self.mean = ds["act_sum"].values / n                              # [N, L, F]
        self.msq = ds["act_sumsq"].values / n
        self.n_layers = self.share.shape[1]

    def draw(self, rng, n_layers: int, d_ff: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(share [L, F, B], mean [L, F], msq [L, F]) for a model of n_layers x d_ff: each neuron a
        real one from the demo layer at the same relative depth, in a random language."""
        N, Ld, Fd, _ = self.share.shape
        layer = np.minimum((np.arange(n_layers) * Ld) // n_layers, Ld - 1)[:, None]
        lang = rng.integers(0, N, size=(n_layers, d_ff))
        neuron = rng.integers(0, Fd, size=(n_layers, d_ff))
        return self.share[lang, layer, neuron], self.mean[lang, layer, neuron], self.msq[lang, layer, neuron]


def synth_shard(rng, share, mean, msq, tokens: int, fired_bins: np.ndarray) -> Stats:
    """One shard of `tokens` tokens from the profiles (normal approximations of the sampling noise)."""
    t = float(tokens)
    sd = np.sqrt(t * share * (1 - share))
    hist = np.maximum(np.rint(t * share + sd * rng.standard_normal(share.shape)), 0).astype(np.int64)
    top = share.argmax(-1)[..., None]                                   # the remainder goes to the largest bin
    np.put_along_axis(hist, top, np.take_along_axis(hist, top, -1) + (tokens - hist.sum(-1, keepdims=True)), -1)
    hist = np.maximum(hist, 0)
    sd_x = np.sqrt(np.maximum(msq - mean ** 2, 0))
    act_sum = t * mean + math.sqrt(t) * sd_x * rng.standard_normal(mean.shape)
    act_sumsq = np.maximum(t * msq + math.sqrt(t) * msq * rng.standard_normal(msq.shape), 0)
    return Stats(n_tokens=tokens, n_fired=hist[..., fired_bins].sum(-1), act_sum=act_sum, act_sumsq=act_sumsq,
                 act_hist=hist, n_nonfinite=np.zeros(mean.shape, np.int64))


# --- 2. the scale simulation -------------------------------------------------------------------


def du(path: Path) -> tuple[int, int]:
    files = [f for f in path.rglob("*") if f.is_file()]
    return sum(f.stat().st_size for f in files), len(files)


def simulate(profiles: Profiles, tmp: Path, *, shards: int, shard_tokens: int, seed: int = 0) -> dict:
    L, F, _ = SHAPES["8B"]
    B = len(DEFAULT_EDGES) + 1
    rng = np.random.default_rng(seed)
    share, mean, msq = profiles.draw(rng, L, F)
    fired_bins = np.flatnonzero(bin_bounds(DEFAULT_EDGES)[0] >= 0.0)     # threshold 0: bins above it
    plan = [Shard(i, lang, i, i + 1) for lang in LANGS for i in range(shards // len(LANGS))]
    plan = [Shard(k, s.language, s.start, s.stop) for k, s in enumerate(plan)]
    shards = len(plan)
    loc = resolve(str(tmp / "sim.zarr"))
    t_write = t_synth = 0.0
    with StoreLock(loc) as lock:  # the real writer path: lock, create, commit, finalize
        store = ResultsStore.open_for_run(loc, lock, resume=False, overwrite=False, identity={}, attrs={},
                                          languages=list(LANGS), n_layers=L, d_ff=F, edges=DEFAULT_EDGES,
                                          shards=plan)
        for s in plan:
            t0 = time.perf_counter()
            stats = synth_shard(rng, share, mean, msq, shard_tokens, fired_bins)
            t1 = time.perf_counter()
            store.write_shard(s.index, stats)
            t_write += time.perf_counter() - t1
            t_synth += t1 - t0
        raw = sum(a.nbytes for a in stats.partial_arrays().values())
        per_var = {v: du(tmp / "sim.zarr" / "partials" / v) for v in ALL_VARS}
        t0 = time.perf_counter()        # what finalize does per shard: read (checked) and add
        total = Stats.zeros(L, F, B)
        for s in plan:
            total += store.read_shard(s.index)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.finalize(keep="counts")
        t_final = time.perf_counter() - t0
    totals = {v: du(tmp / "sim.zarr" / v)[0] for v in ALL_VARS}
    ds = open_results(str(tmp / "sim.zarr"))
    assert int(ds["n_tokens"].values.sum()) == shards * shard_tokens        # every shard summed
    bytes_per_shard = {v: b / shards for v, (b, _) in per_var.items()}
    files_per_shard = {v: n / shards for v, (_, n) in per_var.items()}
    return {"layers": L, "d_ff": F, "bins": B, "shards_written": shards, "shard_tokens": shard_tokens,
            "raw_MB_per_shard": raw / 1e6, "synth_s": t_synth, "write_s": t_write, "finalize_s": t_final, "read_add_s": t_read,
            "write_MBps_raw": raw * shards / t_write / 1e6, "write_shards_per_s": shards / t_write,
            "finalize_s_per_shard": t_read / shards,            # one thread: read, check, add
            # the rest of finalize, per language: its totals written, the deletion, the metadata
            "finalize_s_per_language": max(t_final - t_read / min(len(LANGS), os.cpu_count() or 1), 0) / len(LANGS),
            "disk_MB_per_shard": {v: b / 1e6 for v, b in bytes_per_shard.items()},
            "files_per_shard": files_per_shard,
            "totals_MB_per_language": sum(totals.values()) / len(LANGS) / 1e6}


def extrapolate(sim: dict, *, languages: int, tokens_per_language: float, shape: str, gpus: int,
                gpu_tokens_per_s: float) -> dict:
    """Linear in shards and in neurons (each shard, and each neuron's bytes, are independent)."""
    L, F, params = SHAPES[shape]
    scale = L * F / (sim["layers"] * sim["d_ff"])
    gpu_tokens_per_s = gpu_tokens_per_s * SHAPES["8B"][2] / params
    n_shards = languages * math.ceil(tokens_per_language / sim["shard_tokens"])
    per = sim["disk_MB_per_shard"]
    size = {keep: (n_shards * sum(per[v] for v in KEEP_PARTIALS[keep] if v in per) * scale
                   + languages * sim["totals_MB_per_language"] * scale) / 1e3 for keep in KEEP_PARTIALS}
    files = {keep: n_shards * sum(sim["files_per_shard"][v] for v in KEEP_PARTIALS[keep] if v in per) * (L / sim["layers"])
             for keep in KEEP_PARTIALS}
    produced_shards_per_s = gpus * gpu_tokens_per_s / sim["shard_tokens"]
    produced_MBps = produced_shards_per_s * sim["raw_MB_per_shard"] * scale
    write_MBps = sim["write_MBps_raw"]
    return {"shape": shape, "layers": L, "d_ff": F, "languages": languages, "tokens_per_language": tokens_per_language,
            "shards": n_shards, "shards_per_language": n_shards // languages,
            "store_GB": size, "files": files,
            "partials_GB_produced": n_shards * sim["raw_MB_per_shard"] * scale / 1e3,
            "production": {"gpus": gpus, "tokens_per_s_per_gpu": gpu_tokens_per_s,
                           "shards_per_s": produced_shards_per_s, "commit_every_s_per_gpu":
                           sim["shard_tokens"] / gpu_tokens_per_s, "partial_MBps": produced_MBps},
            "write_vs_production": write_MBps / produced_MBps,
            "commit_share_of_gpu_time": (sim["write_s"] / sim["shards_written"] * scale)
            / (sim["shard_tokens"] / gpu_tokens_per_s),
            "write_s_one_writer": n_shards * sim["write_s"] / sim["shards_written"] * scale,
            "finalize_s_one_thread": (n_shards * sim["finalize_s_per_shard"]
                                      + languages * sim["finalize_s_per_language"]) * scale}


# --- 3. bootstrap units ------------------------------------------------------------------------


def merged(parts: xr.Dataset, k: int) -> xr.Dataset:
    """The partials with every k consecutive shards of a language summed into one unit."""
    lang = np.array([str(x) for x in parts["shard_language"].values])
    fired, tok, labels = [], [], []
    for code in dict.fromkeys(lang):
        idx = np.flatnonzero(lang == code)
        for g in range(0, len(idx), k):
            sel = idx[g:g + k]
            fired.append(parts["n_fired"].values[sel].astype(np.int64).sum(0))
            tok.append(int(parts["n_tokens"].values[sel].sum()))
            labels.append(code)
    return xr.Dataset({"n_fired": (("shard", "layer", "neuron"), np.stack(fired)),
                       "n_tokens": (("shard",), np.asarray(tok))},
                      coords={"shard_language": ("shard", labels), "layer": parts["layer"].values,
                              "neuron": parts["neuron"].values})


def bootstrap_units(demo: str, *, factors=(1, 2, 4, 8), resamples: int = 200, noise_seeds: int = 3) -> dict:
    """Intervals from units k times larger vs the fine units, over the (layer, language) cells
    where LAPE selects anything (most layers select nothing, and would flatter the comparison)."""
    parts = open_partials(demo)
    langs = [str(x) for x in open_results(demo)["language"].values]
    runs = {k: bootstrap(merged(parts, k), langs, n_resamples=resamples, seed=0) for k in factors}
    base = runs[1]
    lo0, hi0 = base.per_layer_low.values, base.per_layer_high.values
    cells = (base.per_layer_median.values > 0) | (hi0 > lo0)

    def shift(r) -> float:  # mean |change| of the interval bounds over those cells
        d = np.abs(r.per_layer_low.values - lo0) + np.abs(r.per_layer_high.values - hi0)
        return float(d[cells].mean() / 2)

    def summary(r) -> dict:
        return {"mean_interval_width": float((r.per_layer_high.values - r.per_layer_low.values)[cells].mean()),
                "per_language_low": dict(zip(langs, r.per_layer_low.values.sum(0).round(1).tolist())),
                "per_language_high": dict(zip(langs, r.per_layer_high.values.sum(0).round(1).tolist()))}

    noise = [shift(bootstrap(merged(parts, 1), langs, n_resamples=resamples, seed=s))
             for s in range(1, noise_seeds + 1)]
    out = {"demo": demo, "languages": langs, "resamples": resamples, "cells": int(cells.sum()),
           "units_per_language": {k: int(merged(parts, k).sizes["shard"] // len(langs)) for k in factors},
           "fine": summary(base),
           "bootstrap_noise_mean_bound_shift": float(np.mean(noise)),
           "bootstrap_noise_max_bound_shift": float(np.max(noise)),
           "by_factor": {k: {"mean_bound_shift": shift(runs[k]), **summary(runs[k])} for k in factors[1:]}}
    worst = max(v["mean_bound_shift"] for v in out["by_factor"].values())
    # "within resampling noise": larger units move the bounds no more than twice as much as
    # re-running the bootstrap on the fine units with another seed does.
    out["within_noise"] = worst <= 2 * out["bootstrap_noise_max_bound_shift"]
    return out


def table() -> list[str]:
    """This benchmark's section of the results table in benchmarks/README.md (`run_all.py`)."""
    from common import load

    out: list[str] = []
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
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=24, help="8B-shape shards written through the real writer")
    ap.add_argument("--shard-tokens", type=int, default=1_000_000)
    ap.add_argument("--demo", help="a finished fine-shard demo store to reuse (default: profile one)")
    ap.add_argument("--demo-rows", type=int, default=256)
    ap.add_argument("--demo-shard-size", type=int, default=4)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--gpu-tokens-per-s", type=float, default=35_000, help="one GPU profiling the 8B model "
                    "(the 70B shape is given 8/70 of it)")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    try:
        demo, demo_s = args.demo, None
        if demo is None:
            demo = str(tmp / "demo.zarr")
            demo_s = profile_demo(Path(demo), args.demo_rows, args.demo_shard_size)
        profiles = Profiles(open_results(demo))
        sim = simulate(profiles, tmp, shards=args.shards, shard_tokens=args.shard_tokens)
        boot = bootstrap_units(demo)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prod = dict(gpus=args.gpus, gpu_tokens_per_s=args.gpu_tokens_per_s)
    scen = {"8B x 7 x 100M": extrapolate(sim, languages=7, tokens_per_language=1e8, shape="8B", **prod),
            "8B x 100 x 100M": extrapolate(sim, languages=100, tokens_per_language=1e8, shape="8B", **prod),
            "70B x 7 x 100M": extrapolate(sim, languages=7, tokens_per_language=1e8, shape="70B", **prod),
            "70B x 100 x 100M": extrapolate(sim, languages=100, tokens_per_language=1e8, shape="70B", **prod)}
    main_s = scen["8B x 7 x 100M"]
    targets = {
        "store_counts_GB": {"target": f"<= {TARGETS['counts_GB']:g}", "measured": main_s["store_GB"]["counts"],
                            "met": main_s["store_GB"]["counts"] <= TARGETS["counts_GB"]},
        "store_all_GB": {"target": f"<= {TARGETS['all_GB']:g}", "measured": main_s["store_GB"]["all"],
                         "met": main_s["store_GB"]["all"] <= TARGETS["all_GB"]},
        "write_vs_8_gpus": {"target": f">= {TARGETS['write_vs_production']:g}x",
                            "measured": main_s["write_vs_production"],
                            "met": main_s["write_vs_production"] >= TARGETS["write_vs_production"]},
        "bootstrap_units_within_noise": {"target": "coarse units shift the bounds <= 2x the bootstrap's own noise",
                                         "measured": max(v["mean_bound_shift"] for v in boot["by_factor"].values()),
                                         "met": boot["within_noise"]},
    }
    result = {"benchmark": "bench_store", "machine": machine_info(),
              "setup": {"demo_rows": args.demo_rows, "demo_shard_size": args.demo_shard_size,
                        "demo_profile_s": demo_s, **prod},
              "simulation": sim, "scenarios": scen, "bootstrap_units": boot, "targets": targets}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"8B shape, {sim['shards_written']} shards of {sim['shard_tokens']:,} tokens: {sim['raw_MB_per_shard']:.1f} MB "
          f"raw per shard, {sum(sim['disk_MB_per_shard'].values()):.1f} MB on disk; write {sim['write_MBps_raw']:.0f} "
          f"MB/s ({sim['write_shards_per_s']:.1f} shards/s); finalize {sim['finalize_s_per_shard']:.3f} s per shard + "
          f"{sim['finalize_s_per_language']:.2f} s per language")
    for name, s in scen.items():
        print(f"{name}: {s['shards']:,} shards; store {s['store_GB']['counts']:.1f} GB (counts) / "
              f"{s['store_GB']['all']:.1f} GB (all); write {s['write_vs_production']:.0f}x what {args.gpus} GPUs "
              f"produce; finalize {s['finalize_s_one_thread']:.0f} s on one thread")
    print(f"bootstrap: units per language {boot['units_per_language']}, mean bound shift "
          f"{ {k: round(v['mean_bound_shift'], 2) for k, v in boot['by_factor'].items()} } vs the bootstrap's own "
          f"{boot['bootstrap_noise_max_bound_shift']:.2f} (mean width {boot['fine']['mean_interval_width']:.1f}, "
          f"{boot['cells']} cells)")
    for k, t in targets.items():
        print(f"  {k}: {t['measured']:.2f} ({t['target']}) {'met' if t['met'] else 'MISSED'}")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
