"""Chunks as storage sees them: which should exist, which do, and reading that names the bad one.

zarr reads a missing chunk as the array's fill value and reports a failed checksum without saying
where. Every reader and writer of a results store goes through these helpers instead, so damage is
an error naming the array and the chunk key (e.g. `partials/act_sum/c/3/0/0`), never a zero.
"""

from __future__ import annotations

import itertools
import os
from typing import Iterator

import numpy as np
import zarr

from langneurons.store.location import Location


class ChunkDamaged(RuntimeError):
    """A chunk that should exist is missing, or fails to decode (checksum, truncation)."""


def chunk_coords(arr: zarr.Array, lead: int | None = None) -> Iterator[tuple[int, ...]]:
    """Every chunk's grid coordinates (with `lead`: only those whose first index is `lead`)."""
    ranges = [range(n) for n in arr.cdata_shape]
    if lead is not None:
        ranges[0] = range(lead, lead + 1)
    return itertools.product(*ranges)


def chunk_key(arr: zarr.Array, coords: tuple[int, ...]) -> str:
    return f"{arr.path}/{arr.metadata.encode_chunk_key(coords)}"


def present_keys(loc: Location, arr: zarr.Array) -> set[str]:
    """The chunk keys that exist in storage for `arr` (one listing, not one request per chunk)."""
    prefix = f"{arr.path}/c"
    if loc.local:
        out = set()
        for d, _, files in os.walk(os.path.join(loc.path, prefix)):
            rel = os.path.relpath(d, loc.path).replace(os.sep, "/")
            out.update(f"{rel}/{f}" for f in files if not f.endswith(".partial"))
        return out
    base = loc.path.rstrip("/") + "/"
    try:
        found = loc.fs.find(base + prefix)
    except FileNotFoundError:
        return set()
    return {f[len(base):] for f in found if f.startswith(base)}


def missing_chunks(loc: Location, arr: zarr.Array, leads=None) -> list[str]:
    """A message per chunk of `arr` that should exist and does not (with `leads`: only the chunks
    whose leading index is listed, each looked up on its own, so one shard costs a few lookups
    whatever the store's size)."""
    if leads is None:
        have = present_keys(loc, arr)
        exists = have.__contains__
        coords = chunk_coords(arr)
    else:
        exists = (lambda key: os.path.isfile(os.path.join(loc.path, key))) if loc.local else \
                 (lambda key: loc.fs.exists(loc.join(key)))
        coords = (c for i in leads for c in chunk_coords(arr, int(i)))
    return [f"array {arr.path!r} chunk {chunk_key(arr, c)!r} is missing" for c in coords
            if not exists(chunk_key(arr, c))]


def read_checked(arr: zarr.Array, sel) -> np.ndarray:
    """arr[sel] (an int selects one leading index); a chunk that fails to decode is a ChunkDamaged
    naming it."""
    try:
        return arr[sel]
    except Exception as first:
        for coords in chunk_coords(arr, sel if isinstance(sel, int) else None):
            try:
                arr.blocks[coords]
            except Exception as e:
                raise ChunkDamaged(f"array {arr.path!r} chunk {chunk_key(arr, coords)!r} is corrupt "
                                   f"({short(e)})") from e
        raise ChunkDamaged(f"array {arr.path!r} cannot be read ({short(first)})") from first


def short(e: BaseException) -> str:
    """An exception as one short line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__
