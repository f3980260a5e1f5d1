"""Why the CPU kernel costs more inside a forward pass than on its own: two measured questions.

1. Does the kernel get the second core inside the forward? The hooks' share of the forward
   (time in the hooks over the time outside them, `bench_overhead.instrumented`) with numba on
   torch's thread count, and forced to one thread, interleaved in one process.
2. Would torch's OpenMP workers, which spin after each matmul, give the core back if told to
   sleep (`OMP_WAIT_POLICY=PASSIVE`, read when torch starts: one fresh process per sample)?
   Each process reports its plain forward time and the hooks' share; default and PASSIVE
   processes alternate, and the plain-time ratio is taken per pair.

    python benchmarks/bench_inside_forward.py [--pairs 6] [--rounds 4]

Writes benchmarks/results/inside_forward.json (about 5 minutes on 2 cores). Not part of
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

sys.path.insert(0, str(Path(__file__).parent))
import bench_overhead  # noqa: E402
from common import machine_info  # noqa: E402

from langneurons.config import ProfileConfig  # noqa: E402
from langneurons.corpus import demo_corpus_path, load_corpus  # noqa: E402
from langneurons.demo import demo_model_path  # noqa: E402
from langneurons.kernels import cpu_stats  # noqa: E402
from langneurons.profiler.backends.hf import HFBackend  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "inside_forward.json"


def setup(sentences: int):
    corpus = load_corpus(demo_corpus_path(), languages=["en", "hi", "zh"], max_sentences=sentences)
    backend = HFBackend(ProfileConfig.from_flags(model=str(demo_model_path()), batch_tokens=2048))
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


def sample() -> dict:
    """One process's figures (run as `--sample` in a fresh interpreter)."""
    backend, sents = setup(8)
    prepared, _ = bench_overhead.batches(backend, sents)
    bench_overhead.plain(backend, prepared)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        bench_overhead.plain(backend, prepared)
        ts.append(time.perf_counter() - t0)
    return {"omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "plain_s": statistics.median(ts),
            "hooks_pct": bench_overhead.instrumented(backend, sents, 2)["overhead_pct"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=6)
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
    for _ in range(args.pairs):
        for policy in (None, "PASSIVE"):
            env = dict(os.environ)
            env.pop("OMP_WAIT_POLICY", None)
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            out = subprocess.run([sys.executable, __file__, "--sample"], env=env, capture_output=True, text=True,
                                 check=True).stdout
            samples.append(json.loads(out.strip().splitlines()[-1]))
    default = [s for s in samples if s["omp_wait_policy"] == "default"]
    passive = [s for s in samples if s["omp_wait_policy"] == "PASSIVE"]
    plain_ratio = [100 * (p["plain_s"] / d["plain_s"] - 1) for d, p in zip(default, passive)]
    result = {
        "benchmark": "bench_inside_forward", "machine": machine_info(),
        "hooks_pct_by_numba_threads": {k: {"median": statistics.median(v), "runs": v} for k, v in threads.items()},
        "omp_wait_policy": {
            "hooks_pct_median": {"default": statistics.median(s["hooks_pct"] for s in default),
                                 "PASSIVE": statistics.median(s["hooks_pct"] for s in passive)},
            "plain_slowdown_pct_with_PASSIVE": {"median": statistics.median(plain_ratio), "pairs": plain_ratio},
            "samples": samples},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    for k, v in result["hooks_pct_by_numba_threads"].items():
        print(f"time in hooks, {k}: {v['median']:.2f}% of the forward")
    w = result["omp_wait_policy"]
    print(f"OMP_WAIT_POLICY default / PASSIVE: hooks {w['hooks_pct_median']['default']:.2f}% / "
          f"{w['hooks_pct_median']['PASSIVE']:.2f}%; plain forward {w['plain_slowdown_pct_with_PASSIVE']['median']:+.1f}% "
          "with PASSIVE (median of pairs)")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
