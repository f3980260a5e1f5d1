"""Create every node of a new store (`schema.store_nodes`): the root group with its attributes
first, then each array with its coordinates, the shard plan and the commit markers, all chunks
written (zeros included). The writer (`store.writer`) then marks the store `profiling`."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from langneurons.shards import Shard
from langneurons.store import schema
from langneurons.store.location import Location
from langneurons.store.schema import DTYPES, PARTIAL_DTYPES, TRAILING_DIMS

COMPRESSORS = (ZstdCodec(level=3), Crc32cCodec())  # checksum last: it covers the stored bytes
# Partials are written once per shard, on the workers' time: level 1 halves the time of level 3
# for 1-2% more bytes (benchmarks/bench_store.py measured both on realistic 8B-shape partials).
PARTIAL_COMPRESSORS = (ZstdCodec(level=1), Crc32cCodec())
WRITE_ALL = {"write_empty_chunks": True}           # a zero chunk is written, never left implicit


def _array(g: zarr.Group, name: str, data: np.ndarray | None, shape, dtype, chunks, dims,
           attributes: dict | None = None, compressors=COMPRESSORS) -> zarr.Array:
    a = g.create_array(name, shape=shape, dtype=dtype, chunks=chunks, dimension_names=list(dims),
                       compressors=compressors, fill_value=0 if dtype != str else "",
                       attributes=attributes or {}, config=WRITE_ALL)
    if data is not None:
        a[...] = data
    return a


def create_nodes(loc: Location, root: dict[str, Any], languages: Sequence[str], shards: Sequence[Shard]) -> zarr.Group:
    """The new store's root group, every node in it created; `root`: its sealed root attributes."""
    # The identity goes first: an interrupted creation is recognisable as ours (and replaced).
    g = zarr.create_group(store=loc.zarr_url, zarr_format=3, attributes=root, overwrite=False)
    size = schema.dim_sizes(root)
    lower, upper = schema.bin_bounds(tuple(root["bin_edges"]))
    coords = {d: np.arange(size[d]) for d in schema.COORDS if d in size}
    for grp in (g, g.require_group("partials")):
        for name, values in coords.items():
            _array(grp, name, values, values.shape, "int64", (max(values.size, 1),), (name,))
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
    _array(p, "shard_digest", np.asarray([s.digest or "" for s in shards], dtype=str), (S,), str, (S,),
           ("shard",))
    _array(p, "committed", np.zeros(S, np.uint8), (S,), "uint8", (1,), ("shard",))
    for grp, lead, n in ((g, "language", L), (p, "shard", S)):
        for v in schema.store_vars(root):
            dims = TRAILING_DIMS[v]
            shape = (n,) + tuple(size[d] for d in dims)
            extra = {"coordinates": "bin_lower bin_upper"} if v == "act_hist" else None
            if grp is p and v == "n_tokens":
                extra = {"coordinates": "shard_language shard_start shard_stop"}
            dtype, codecs = (DTYPES[v], COMPRESSORS) if grp is g else (PARTIAL_DTYPES[v], PARTIAL_COMPRESSORS)
            _array(grp, v, None, shape, dtype, schema.chunk_shape(dims, size), (lead,) + dims, extra, codecs)
    return g
