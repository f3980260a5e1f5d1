"""Create, resume and fill a results store, exactly once per shard (see schema.py for the layout).

Exactly-once protocol:
1. the driver creates the store with the shard plan and the run's identity attributes;
2. whoever profiles shard i writes its partial chunks (each variable's chunk i), then its
   `committed` chunk i: data first, marker last. A re-run of shard i overwrites only chunks i;
3. the driver writes the totals once every marker is set, summing partials in shard order, and
   only then sets `complete`. Totals never depend on who ran what, in which order, how often.

Concurrent writers are safe because they never share a chunk. On a local or POSIX shared file
system each chunk is written to a temporary file and renamed (zarr's LocalStore); object stores
(s3://, gs://) put whole objects, which is atomic per object. The store must be reachable at the
same URL from every worker.
"""

from __future__ import annotations

import datetime as _dt
import logging
import warnings
from typing import Any, Sequence

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from langneurons.corpus import Shard
from langneurons.store import schema
from langneurons.store.schema import ALL_VARS, DTYPES, NEURON_VARS, TRAILING_DIMS, Stats

log = logging.getLogger(__name__)

COMPRESSORS = (ZstdCodec(level=3), Crc32cCodec())  # checksum last: it covers the stored bytes


class StoreError(RuntimeError):
    """A store that cannot be used as asked (exists, mismatched, incomplete, corrupt)."""


def _open(url: str, mode: str) -> zarr.Group:
    return zarr.open_group(store=url, mode=mode, zarr_format=3)


def _exists(url: str) -> bool:
    try:
        _open(url, "r")
        return True
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        return False


def _array(g: zarr.Group, name: str, data: np.ndarray | None, shape, dtype, chunks, dims,
           attributes: dict | None = None) -> zarr.Array:
    a = g.create_array(name, shape=shape, dtype=dtype, chunks=chunks, dimension_names=list(dims),
                       compressors=COMPRESSORS, fill_value=0 if dtype != str else "",
                       attributes=attributes or {})
    if data is not None:
        a[...] = data
    return a


def _chunks(lead: int, dims: tuple[str, ...], n_layers: int, d_ff: int, n_bins: int) -> tuple:
    """One leading index per chunk; histograms also split per layer to keep chunks ~MBs."""
    size = {"layer": n_layers, "neuron": d_ff, "bin": n_bins}
    c = [lead] + [size[d] for d in dims]
    if "bin" in dims:
        c[1] = 1
    return tuple(c)


class ResultsStore:
    """A results store opened for writing. Use `create` or `resume`."""

    def __init__(self, url: str, group: zarr.Group):
        self.url = url
        self.group = group
        self.partials = group["partials"]
        self.n_shards = int(self.partials["committed"].shape[0])

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def create(cls, url: str, *, identity: dict[str, Any], attrs: dict[str, Any], languages: Sequence[str],
               n_layers: int, d_ff: int, edges: Sequence[float], shards: Sequence[Shard],
               overwrite: bool = False) -> "ResultsStore":
        if _exists(url) and not overwrite:
            raise StoreError(f"{url} already exists: pass --resume to continue that run, "
                             "--overwrite to replace it, or choose another --out")
        g = _open(url, "w")
        n_bins = len(edges) + 1
        lower, upper = schema.bin_bounds(tuple(edges))
        coords = {"layer": np.arange(n_layers), "neuron": np.arange(d_ff), "bin": np.arange(n_bins)}
        for grp in (g, g.require_group("partials")):
            for name, values in coords.items():
                _array(grp, name, values, values.shape, "int64", values.shape, (name,))
            _array(grp, "bin_lower", lower, lower.shape, "float64", lower.shape, ("bin",))
            _array(grp, "bin_upper", upper, upper.shape, "float64", upper.shape, ("bin",))
        L = len(languages)
        _array(g, "language", np.asarray(languages, dtype=str), (L,), str, (L,), ("language",))
        p = g["partials"]
        S = len(shards)
        _array(p, "shard", np.arange(S), (S,), "int64", (S,), ("shard",))
        _array(p, "shard_language", np.asarray([s.language for s in shards], dtype=str), (S,), str, (S,), ("shard",))
        _array(p, "shard_start", np.asarray([s.start for s in shards]), (S,), "int64", (S,), ("shard",))
        _array(p, "shard_stop", np.asarray([s.stop for s in shards]), (S,), "int64", (S,), ("shard",))
        _array(p, "committed", None, (S,), "uint8", (1,), ("shard",))
        for grp, lead, n in ((g, "language", L), (p, "shard", S)):
            for v in ALL_VARS:
                dims = TRAILING_DIMS[v]
                shape = (n,) + tuple({"layer": n_layers, "neuron": d_ff, "bin": n_bins}[d] for d in dims)
                extra = {"coordinates": "bin_lower bin_upper"} if v == "act_hist" else None
                if grp is p and v == "n_tokens":
                    extra = {"coordinates": "shard_language shard_start shard_stop"}
                _array(grp, v, None, shape, DTYPES[v], _chunks(1, dims, n_layers, d_ff, n_bins),
                       (lead,) + dims, extra)
        g.attrs.update({
            **attrs,
            "identity": identity,
            "bin_edges": list(map(float, edges)),
            "n_shards": S,
            "complete": False,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "schema_version": schema.SCHEMA_VERSION,
        })
        return cls(url, g)

    @classmethod
    def resume(cls, url: str, *, identity: dict[str, Any]) -> "ResultsStore":
        """Reopen an interrupted run; refuse a store made by another model or config."""
        if not _exists(url):
            raise StoreError(f"--resume: no results store at {url}; run without --resume to start one")
        g = _open(url, "r+")
        if "partials" not in g or "identity" not in g.attrs:
            raise StoreError(f"{url} is not a langneurons results store (no partials/ or identity)")
        stored = dict(g.attrs["identity"])
        diff = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
        if diff:
            lines = "; ".join(f"{k}: store has {stored.get(k)!r}, this run has {identity.get(k)!r}" for k in diff)
            raise StoreError(f"cannot resume {url}: it was made with a different model/config ({lines}). "
                             "Use the same settings, or --overwrite / another --out to start afresh")
        return cls(url, g)

    @classmethod
    def open_for_shards(cls, url: str) -> "ResultsStore":
        """Open an existing store to write shard partials (workers; the driver checked identity)."""
        if not _exists(url):
            raise StoreError(f"no results store at {url}: the driver creates it before workers start")
        return cls(url, _open(url, "r+"))

    # --- per shard (any worker) ------------------------------------------------------------
    def committed(self) -> np.ndarray:
        """Boolean per shard: is its partial fully written?"""
        return self.partials["committed"][:].astype(bool)

    def write_shard(self, index: int, stats: Stats) -> None:
        """Write shard `index`'s partial, then its commit marker (the last write)."""
        if not 0 <= index < self.n_shards:
            raise IndexError(f"shard {index} is outside the plan of {self.n_shards} shards")
        for v, arr in stats.arrays().items():
            self.partials[v][index] = arr
        self.partials["committed"][index] = 1

    def read_shard(self, index: int) -> Stats:
        return Stats(n_tokens=int(self.partials["n_tokens"][index]),
                     **{v: self.partials[v][index] for v in NEURON_VARS})

    # --- totals (driver) -------------------------------------------------------------------
    def finalize(self) -> None:
        """Sum committed partials per language in shard order into the totals; mark complete."""
        done = self.committed()
        if not done.all():
            missing = np.flatnonzero(~done)
            raise StoreError(f"{len(missing)} of {self.n_shards} shards are not committed "
                             f"(first: {missing[:5].tolist()}); resume the run with --resume")
        languages = [str(x) for x in self.group["language"][:]]
        shard_lang = [str(x) for x in self.partials["shard_language"][:]]
        for li, lang in enumerate(languages):
            total: Stats | None = None
            for i in (i for i, s in enumerate(shard_lang) if s == lang):
                part = self.read_shard(i)
                total = part if total is None else total.__iadd__(part)
            if total is None:
                raise StoreError(f"language {lang} has no shards in the plan")
            for v, arr in total.arrays().items():
                self.group[v][li] = arr
        self.group.attrs["complete"] = True
        self.group.attrs["completed"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        # Consolidated metadata lets `xr.open_zarr(path)` open the finished store in one read.
        with warnings.catch_warnings():  # "not yet part of the v3 spec": zarr-python and xarray read it
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(self.url, zarr_format=3)
