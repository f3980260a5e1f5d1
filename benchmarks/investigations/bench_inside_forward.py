"""Why the CPU kernel costs more inside a forward pass than on its own: two measured questions.

1. Does the kernel get the second core inside the forward? The hooks' share of the forward
   (time in the hooks over the time outside them, `bench_overhead.instrumented`) with numba on
   torch's thread count, and forced to one thread, interleaved in one process.
2. What do torch's OpenMP workers, which spin-wait after each parallel op, do to it, and would a
   shorter wait pay? The runtime reads its setting when torch starts, so one fresh process per
   sample, the settings alternating: libgomp's default wait (300,000 polls, given explicitly: the
   same as unset), a short one (10,000 polls, a fraction of a millisecond) and none
   (`OMP_WAIT_POLICY=PASSIVE`). Each process reports the hooks' share of the forward and, for
   plain inference, its time, how often its threads went to sleep during a pass, and how long a
   small parallel op takes to start after a pause (workers spinning vs asleep): plain-time
   ratios between processes drift by 10-20%, while extra sleeps x that wake-up delay bound what a
   shorter wait costs plain inference without drift.

    python benchmarks/investigations/bench_inside_forward.py [--groups 6] [--rounds 4]

Writes benchmarks/results/inside_forward.json (about 8 minutes on 2 cores). Not part of
`make bench`: it explains a figure of bench_overhead.py rather than adding one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: bench_overhead, common
import bench_overhead  # noqa: E402
from common import machine_info  # noqa: E402

from langneurons.config import ProfileConfig  # noqa: E402
from langneurons.corpus import demo_corpus_path, load_corpus  # noqa: E402
from langneurons.demo import demo_model_path  # noqa: E402
from langneurons.kernels import cpu_stats  # noqa: E402
from langneurons.profiler.backends.hf import HFBackend  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results" / "inside_forward.json"


def setup(sentences: int):
    corpus = load_corpus(demo_corpus_path(), languages=["en", "hi", "zh"], max_sentences=sentences)
    backend = HFBackend(ProfileConfig.from_flags(model=str(demo_model_path("smollm2")), batch_tokens=2048))
    sents = [s for lang in corpus.languages for s in corpus.sentences[lang]]
    backend.profile(sents)  # compile and warm up
    return backend, sents


@contextlib.contextmanager
def numba_threads(n: int):
    """The kernel takes its thread count from torch at each call; make it see `n`."""
    real = cpu_stats.torch

    class Torch:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def get_num_threads():
            return n

    cpu_stats.torch = Torch()
    try:
        yield
    finally:
        cpu_stats.torch = real


def sleeps() -> int:
    """Times this process's threads went to sleep (voluntary context switches, all threads)."""
    n = 0
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/status") as f:
            n += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
    return n


def op_after_pause_us(pause_s: float = 0.005, n: int = 100) -> float:
    """A small parallel op started `pause_s` after the previous one: with the workers still
    spinning it starts at once; asleep, it waits for them to wake (the cost of a shorter wait)."""
    x = torch.ones(1 << 20)
    ts = []
    for _ in range(n):
        time.sleep(pause_s)
        t0 = time.perf_counter()
        x.add_(1.0)
        ts.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(ts)


def sample() -> dict:
    """One process's figures (run as `--sample` in a fresh interpreter): plain forward time, how
    often the threads slept during it, the start-up cost of a parallel op after a pause, and the
    hooks' share of the forward."""
    backend, sents = setup(8)
    prepared, _ = bench_overhead.batches(backend, sents)
    bench_overhead.plain(backend, prepared)
    ts = []
    s0 = sleeps()
    for _ in range(3):
        t0 = time.perf_counter()
        bench_overhead.plain(backend, prepared)
        ts.append(time.perf_counter() - t0)
    return {"setting": os.environ.get("LN_BENCH_SETTING", "?"), "plain_s": statistics.median(ts),
            "sleeps_per_plain_pass": (sleeps() - s0) / 3, "op_after_pause_us": op_after_pause_us(),
            "hooks_pct": bench_overhead.instrumented(backend, sents, 2)["overhead_pct"]}


def _median(by: dict, name: str, key: str, base: str) -> float:
    """Median of `key` under setting `name` minus under `base` (clamped at 0)."""
    return max(0.0, statistics.median(s[key] for s in by[name]) - statistics.median(s[key] for s in by[base]))


SETTINGS = {"default": {"GOMP_SPINCOUNT": "300000"},           # libgomp's documented default
            "short": {"GOMP_SPINCOUNT": "10000"},                 # a fraction of a millisecond
            "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}}


def table() -> list[str]:
    """This benchmark's section of the results table in benchmarks/README.md (`run_all.py`)."""
    from common import load

    out: list[str] = []
    inf = load("inside_forward.json")
    if inf and inf.get("openmp_wait"):
        w = inf["openmp_wait"]
        out += ["### torch's OpenMP wait and the CPU kernel (`investigations/bench_inside_forward.py`, fresh processes)", "",
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
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--sample", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sample:
        print(json.dumps(sample()))
        return 0

    backend, sents = setup(24)
    threads = {f"numba_{torch.get_num_threads()}_threads": [], "numba_1_thread": []}
    for _ in range(args.rounds):
        threads[f"numba_{torch.get_num_threads()}_threads"].append(
            bench_overhead.instrumented(backend, sents, 1)["overhead_pct"])
        with numba_threads(1):
            threads["numba_1_thread"].append(bench_overhead.instrumented(backend, sents, 1)["overhead_pct"])
    del backend

    samples = []
    for _ in range(args.groups):
        for name, extra in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
            env.update(extra, LN_BENCH_SETTING=name)
            out = subprocess.run([sys.executable, __file__, "--sample"], env=env, capture_output=True, text=True,
                                 check=True).stdout
            samples.append(json.loads(out.strip().splitlines()[-1]))
    by = {name: [s for s in samples if s["setting"] == name] for name in SETTINGS}
    slowdown = {name: [100 * (s["plain_s"] / d["plain_s"] - 1) for d, s in zip(by["default"], by[name])]
                for name in SETTINGS if name != "default"}
    result = {
        "benchmark": "bench_inside_forward", "machine": machine_info(),
        "hooks_pct_by_numba_threads": {k: {"median": statistics.median(v), "runs": v} for k, v in threads.items()},
        "openmp_wait": {
            "settings": SETTINGS,
            "hooks_pct_median": {name: statistics.median(s["hooks_pct"] for s in v) for name, v in by.items()},
            "plain_slowdown_pct_vs_default": {name: {"median": statistics.median(v), "groups": v}
                                              for name, v in slowdown.items()},
            # drift-free bound: the extra sleeps of a plain pass, each paying the wake-up delay
            "plain_cost_pct_estimate": {name: 100 * _median(by, name, "sleeps_per_plain_pass", "default")
                                        * _median(by, name, "op_after_pause_us", "default") * 1e-6
                                        / statistics.median(s["plain_s"] for s in by["default"])
                                        for name in SETTINGS if name != "default"},
            "sleeps_per_plain_pass": {name: statistics.median(s["sleeps_per_plain_pass"] for s in v)
                                      for name, v in by.items()},
            "op_after_pause_us": {name: statistics.median(s["op_after_pause_us"] for s in v) for name, v in by.items()},
            "samples": samples},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    for k, v in result["hooks_pct_by_numba_threads"].items():
        print(f"time in hooks, {k}: {v['median']:.2f}% of the forward")
    w = result["openmp_wait"]
    for name in SETTINGS:
        line = f"OpenMP wait {name}: hooks {w['hooks_pct_median'][name]:.2f}% of the forward"
        line += (f"; plain pass: {w['sleeps_per_plain_pass'][name]:.0f} thread sleeps, a parallel op after a "
                 f"pause {w['op_after_pause_us'][name]:.0f} us")
        if name in w["plain_slowdown_pct_vs_default"]:
            line += (f"; plain forward {w['plain_slowdown_pct_vs_default'][name]['median']:+.1f}% vs default "
                     f"(estimate from sleeps x wake-up {w['plain_cost_pct_estimate'][name]:+.2f}%)")
        print(line)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
