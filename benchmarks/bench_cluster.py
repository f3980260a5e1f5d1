"""What does Ray cost, and what do 2 workers buy on this machine?

The demo model (SmolLM2-135M, float32 on CPU) profiles the first --sentences rows of each of the
6 languages of the bundled corpus, in shards of --shard-size, with `langneurons.run.profile`:

    inproc-1t    workers=0 (this process), 1 thread      the baseline
    ray-1w-1t    1 Ray worker, 1 thread                  Ray's overhead = its time / baseline - 1
    ray-1w-2t    1 Ray worker, 2 threads                 every core in one worker (--workers 1 on 2 cores)
    ray-2w-1t    2 Ray workers, 1 thread each            every core in two workers (--workers 2)

Every run writes a fresh store and is timed end to end as `profile()` times it: the in-process run
loads the model, a Ray run starts its worker processes (importing torch there) and loads the model
in each, as every real run does. Ray itself is started once, outside the timings (its start is
recorded: the CLI pays it once per run). Worker start is measured apart (time to a loaded model,
in this process and in a fresh Ray actor) so the table also shows the overhead with start-up taken
out. Configurations are interleaved over --repeats rounds; medians and min-max are reported, and
every 1-thread run must give totals bit-identical to the baseline.

    python benchmarks/bench_cluster.py [--sentences 20] [--shard-size 5] [--repeats 3]

Writes benchmarks/results/cluster.json and prints a table. About 4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read at `import ray`: loopback only
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import zarr  # noqa: E402

from langneurons import demo  # noqa: E402
from langneurons.config import ProfileConfig  # noqa: E402
from langneurons.shards import plan_shards  # noqa: E402
from langneurons.profiler.plan import model_plan  # noqa: E402
from langneurons.run import corpus_facts, open_store, profile, read_corpus  # noqa: E402
from langneurons.store.location import resolve  # noqa: E402
from langneurons.store.lock import StoreLock  # noqa: E402
from langneurons.store.schema import ALL_VARS  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cluster.json"
CONFIGS = {  # name: (workers, threads per worker)
    "inproc-1t": (0, 1),
    "ray-1w-1t": (1, 1),
    "ray-1w-2t": (1, 2),
    "ray-2w-1t": (2, 1),
}


def machine() -> dict:
    import ray
    import torch
    import transformers

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or cpu
    mem = None
    try:
        kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines()
                  if x.startswith("MemTotal"))
        mem = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "memory_gib": mem, "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "ray": ray.__version__, "transformers": transformers.__version__,
            "zarr": zarr.__version__}


def base_cfg(out: str, args, workers: int, threads: int) -> ProfileConfig:
    return ProfileConfig.from_flags(model=str(demo.demo_model_path("smollm2")), corpus=str(demo.demo_corpus_path()),
                         max_sentences=args.sentences, shard_size=args.shard_size, out=out,
                         workers=workers, threads_per_worker=threads, device="cpu", overwrite=True)


def totals(path: str) -> dict[str, np.ndarray]:
    g = zarr.open_group(path, mode="r")
    return {v: g[v][:] for v in ALL_VARS}


def worker_start(args, tmp: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds to a loaded model: a Worker in this process, and a fresh Ray actor (process start,
    imports, model load)."""
    import ray

    from langneurons.cluster.actor import WorkerActor
    from langneurons.cluster.worker import Worker

    out = str(tmp / "start.zarr")
    cfg = base_cfg(out, args, 1, 1)
    corpus = read_corpus(cfg)
    plan = model_plan(cfg, in_process=True)
    cfg = cfg.replace(max_length=plan.max_length)
    loc = resolve(out)
    with StoreLock(loc) as lock:  # a store for the workers to open
        open_store(cfg, loc, lock, plan, corpus_facts(cfg, corpus), plan_shards(corpus, cfg.counting.shard_size))
    res: dict[str, list[float]] = {"inproc": [], "ray_actor": []}
    actor_cls = ray.remote(WorkerActor).options(num_cpus=1)
    for _ in range(repeats):
        t0 = time.perf_counter()
        w = Worker(cfg, out, plan)
        res["inproc"].append(time.perf_counter() - t0)
        w.close()
        t0 = time.perf_counter()
        a = actor_cls.remote(cfg, out, plan)
        ray.get(a.ready.remote())
        res["ray_actor"].append(time.perf_counter() - t0)
        ray.kill(a)
    return res


def summarize(xs: list[float]) -> dict:
    med = statistics.median(xs)
    return {"median": round(med, 3), "min": round(min(xs), 3), "max": round(max(xs), 3),
            "spread_pct": round(100 * (max(xs) - min(xs)) / med, 1) if med else None,
            "runs": [round(x, 3) for x in xs]}


def table() -> list[str]:
    """This benchmark's section of the results table in benchmarks/README.md (`run_all.py`)."""
    from common import load

    out: list[str] = []
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
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=20, help="rows per language (default 20: 120 sentences)")
    ap.add_argument("--shard-size", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    import ray

    info = machine()
    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=info["cores_usable"], include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t0
    try:
        start = worker_start(args, tmp, args.repeats)
        runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
        baseline = None
        for r in range(args.repeats):
            for name, (workers, threads) in CONFIGS.items():
                out = str(tmp / f"{name}.zarr")
                s = profile(base_cfg(out, args, workers, threads), progress=False)
                t = totals(out)
                if baseline is None:
                    baseline = t
                same = all(np.array_equal(baseline[v], t[v]) for v in ALL_VARS)
                runs[name].append({"seconds": s.seconds, "tokens": s.n_tokens, "identical_to_baseline": same})
                print(f"round {r + 1}/{args.repeats} {name:10s} {s.seconds:7.2f}s "
                      f"{s.tokens_per_s:8.1f} tok/s identical={same}", file=sys.stderr)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    n_shards = len(plan_shards(read_corpus(base_cfg(str(tmp / "unused.zarr"), args, 0, 1)), args.shard_size))  # no store: the corpus only
    configs = {}
    for name, rs in runs.items():
        secs = [x["seconds"] for x in rs]
        configs[name] = {"workers": CONFIGS[name][0], "threads_per_worker": CONFIGS[name][1],
                         "tokens": rs[0]["tokens"], "seconds": summarize(secs),
                         "tokens_per_s": summarize([x["tokens"] / x["seconds"] for x in rs]),
                         "identical_to_baseline": [x["identical_to_baseline"] for x in rs]}
    med = {n: c["seconds"]["median"] for n, c in configs.items()}
    st = {k: statistics.median(v) for k, v in start.items()}
    derived = {
        "ray_overhead_pct": round(100 * (med["ray-1w-1t"] / med["inproc-1t"] - 1), 1),
        "ray_overhead_without_worker_start_pct": round(
            100 * ((med["ray-1w-1t"] - st["ray_actor"]) / (med["inproc-1t"] - st["inproc"]) - 1), 1),
        "worker_start_s": {"inproc": summarize(start["inproc"]), "ray_actor": summarize(start["ray_actor"])},
        "ray_init_s": round(ray_init_s, 3),
        "speedup_2w_1t_vs_1w_1t": round(med["ray-1w-1t"] / med["ray-2w-1t"], 3),
        "speedup_2w_1t_vs_1w_2t": round(med["ray-1w-2t"] / med["ray-2w-1t"], 3),
    }
    result = {
        "benchmark": "bench_cluster",
        "question": "Ray's overhead against in-process profiling, and 1 vs 2 workers on one machine",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": info,
        "setup": {"model": "SmolLM2-135M-Instruct (demo), float32, CPU", "corpus": "bundled TICO-19",
                  "languages": 6, "sentences_per_language": args.sentences, "shard_size": args.shard_size,
                  "shards": n_shards, "repeats": args.repeats,
                  "timing": "profile() wall time per run: worker start and model load included, "
                            "Ray start (ray_init_s) excluded"},
        "configs": configs,
        "derived": derived,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{info['cpu']}, {info['cores_usable']} cores; torch {info['torch']}, ray {info['ray']}; "
          f"{args.sentences} sentences x 6 languages, {n_shards} shards, {args.repeats} repeats\n")
    print(f"{'config':12s} {'workers':>7s} {'threads':>7s} {'median s':>9s} {'min-max s':>13s} "
          f"{'tok/s':>8s} {'identical':>9s}")
    for name, c in configs.items():
        s = c["seconds"]
        print(f"{name:12s} {c['workers']:7d} {c['threads_per_worker']:7d} {s['median']:9.2f} "
              f"{s['min']:6.2f}-{s['max']:<6.2f} {c['tokens_per_s']['median']:8.1f} "
              f"{str(all(c['identical_to_baseline'])):>9s}")
    print(f"\nRay overhead (1 worker vs in-process, 1 thread): {derived['ray_overhead_pct']:+.1f}% "
          f"({derived['ray_overhead_without_worker_start_pct']:+.1f}% without worker start: "
          f"{st['ray_actor']:.2f}s for a Ray worker vs {st['inproc']:.2f}s in-process); "
          f"Ray start {ray_init_s:.2f}s, once per CLI run")
    print(f"2 workers x 1 thread vs 1 worker x 1 thread: x{derived['speedup_2w_1t_vs_1w_1t']:.2f}; "
          f"vs 1 worker x 2 threads: x{derived['speedup_2w_1t_vs_1w_2t']:.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
