"""Zarr store throughput: writing shard partials, finalizing totals, reading them back, and size.

A realistic model size: 32 layers x 11008 neurons (Llama-2-7B) x 16 bins, one shard per language.
100 languages would take ~25 min on 2 cores, so --languages (default 8) are measured and the time
and size extrapolated linearly (each language is an independent set of chunks). Partials hold
random counts with the entropy of real ones (small integers), so compression is realistic.

    python benchmarks/bench_store.py [--languages 8] [--layers 32] [--d-ff 11008]

Writes benchmarks/results/store.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info  # noqa: E402

from langneurons.shards import Shard  # noqa: E402
from langneurons.store.reader import open_results  # noqa: E402
from langneurons.store.schema import DEFAULT_EDGES, Stats  # noqa: E402
from langneurons.store.location import resolve  # noqa: E402
from langneurons.store.lock import StoreLock  # noqa: E402
from langneurons.store.writer import ResultsStore  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "store.json"


def fake_stats(rng, L, F, B, n_tokens=50_000) -> Stats:
    p = rng.beta(0.5, 2.0, size=(L, F))
    hist = rng.multinomial(n_tokens, np.full(B, 1 / B), size=(L, F)).astype(np.int64)
    return Stats(n_tokens=n_tokens, n_fired=(p * n_tokens).astype(np.int64),
                 act_sum=rng.normal(size=(L, F)) * n_tokens, act_sumsq=rng.random((L, F)) * n_tokens,
                 act_hist=hist, n_nonfinite=np.zeros((L, F), np.int64))


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--languages", type=int, default=8)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--d-ff", type=int, default=11008)
    ap.add_argument("--target-languages", type=int, default=100)
    args = ap.parse_args(argv)
    L, F, B, N = args.layers, args.d_ff, len(DEFAULT_EDGES) + 1, args.languages
    rng = np.random.default_rng(0)
    stats = fake_stats(rng, L, F, B)
    raw = sum(a.nbytes for a in stats.arrays().values())
    langs = [f"l{i:03d}" for i in range(N)]
    shards = [Shard(i, lang, 0, 1) for i, lang in enumerate(langs)]
    tmp = Path(tempfile.mkdtemp())
    try:
        url = str(tmp / "bench.zarr")
        loc = resolve(url)
        with StoreLock(loc) as lock:  # the real writer path: lock, create, commit, finalize
            t0 = time.perf_counter()
            store = ResultsStore.open_for_run(loc, lock, resume=False, overwrite=False, identity={}, attrs={},
                                              languages=langs, n_layers=L, d_ff=F, edges=DEFAULT_EDGES,
                                              shards=shards)
            t_create = time.perf_counter() - t0
            t0 = time.perf_counter()
            for s in shards:
                store.write_shard(s.index, stats)
            t_write = time.perf_counter() - t0
            t0 = time.perf_counter()
            store.finalize()
            t_final = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = open_results(url)
        loaded = {v: ds[v].values for v in ("n_fired", "act_sum", "act_sumsq", "act_hist", "n_tokens")}
        t_read = time.perf_counter() - t0
        size = du(tmp / "bench.zarr")
        assert int(loaded["n_tokens"].sum()) == N * stats.n_tokens
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb = raw * N / 1e6
    scale = args.target_languages / N
    result = {
        "benchmark": "bench_store", "machine": machine_info(),
        "setup": {"layers": L, "d_ff": F, "bins": B, "languages_measured": N,
                  "raw_MB_per_language": raw / 1e6, "extrapolated_to_languages": args.target_languages},
        "write_partials_MBps": mb / t_write, "finalize_MBps": mb / t_final, "read_totals_MBps": mb / t_read,
        "seconds": {"create": t_create, "write_partials": t_write, "finalize": t_final, "read": t_read},
        "size_on_disk_MB": size / 1e6, "compression_ratio": 2 * raw * N / size,
        "extrapolated": {"languages": args.target_languages,
                         "write_plus_finalize_s": (t_write + t_final) * scale, "read_s": t_read * scale,
                         "size_on_disk_GB": size * scale / 1e9},
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"{N} languages x {L} layers x {F} neurons x {B} bins: {raw / 1e6:.0f} MB raw per language")
    print(f"write partials {result['write_partials_MBps']:.0f} MB/s, finalize {result['finalize_MBps']:.0f} MB/s, "
          f"read totals {result['read_totals_MBps']:.0f} MB/s; on disk {size / 1e6:.0f} MB "
          f"(partials + totals, compression x{result['compression_ratio']:.1f})")
    e = result["extrapolated"]
    print(f"at {e['languages']} languages: write+finalize {e['write_plus_finalize_s']:.0f} s, read "
          f"{e['read_s']:.0f} s, {e['size_on_disk_GB']:.1f} GB")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
