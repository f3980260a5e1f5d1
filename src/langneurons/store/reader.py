"""Open a results store as a labelled xarray Dataset, with the checks a paper's numbers need.

`open_results` refuses what cannot be trusted: not a langneurons store, edited root attributes
(their checksum), an incomplete run, a missing or corrupt chunk in the totals (named), counts that
do not add up. `verify_store` (`langneurons info --verify`) reads every chunk the store should
hold, the kept partials included, and re-sums those partials against the totals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr
import zarr

from langneurons.store import schema
from langneurons.store.chunks import ChunkDamaged, chunk_coords, chunk_key, missing_chunks, read_checked, short
from langneurons.store.location import Kind, StoreLocationError, inspect, resolve


class ResultsError(ValueError):
    pass


def store_attrs(path: str) -> tuple:
    """(location, root attributes) of a langneurons store, or ResultsError."""
    try:
        loc = resolve(path)
    except StoreLocationError as e:
        raise ResultsError(str(e)) from None
    ins = inspect(loc)
    if ins.kind is not Kind.STORE:
        what = {Kind.ABSENT: "does not exist", Kind.EMPTY: "is an empty folder"}.get(ins.kind, ins.why)
        raise ResultsError(f"{path} {what}: it is not a langneurons results store; give the --out "
                           "path of a `langneurons profile` run")
    return loc, ins.attrs


def open_results(path: str, *, allow_incomplete: bool = False, check: bool = True) -> xr.Dataset:
    """The totals of a run as an xarray Dataset (dims language, layer, neuron, bin).

    Equivalent to `xarray.open_zarr(path)`, plus checks: the store's root attributes are intact
    (checksum) and in a schema version this langneurons reads; the run is complete (every shard
    committed and summed); with `check`, every chunk of the totals is present and decodes, and the
    counts are consistent (every counted token lands in exactly one histogram bin or in
    n_nonfinite, per neuron). The data is loaded into memory when checked.
    """
    loc, attrs = store_attrs(path)
    problem = schema.attrs_problem(attrs)
    if problem:
        raise ResultsError(f"{path}: {problem}")
    if not attrs.get("complete") and not allow_incomplete:
        raise ResultsError(f"{path} is an incomplete run (not every shard is committed): finish it with "
                           "`langneurons profile --resume --out ...` with the same settings")
    complete = bool(attrs.get("complete"))
    if check and complete:
        g = zarr.open_group(loc.zarr_url, mode="r", zarr_format=3)
        missing = [m for _, arr in g.arrays() for m in missing_chunks(loc, arr)]
        if missing:
            raise ResultsError(f"{path}: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                               + "; the store is damaged: `langneurons info --verify` lists everything, "
                               "re-profile (or restore the store from a copy)")
    ds = xr.open_zarr(loc.zarr_url, consolidated=False)
    if check and complete:
        try:
            ds = ds.load()
        except Exception:
            for _, arr in g.arrays():  # find the chunk that fails, and name it
                try:
                    read_checked(arr, slice(None))
                except ChunkDamaged as e:
                    raise ResultsError(f"{path}: {e}; the store is damaged: re-profile it, or restore it "
                                       "from a copy") from e
            raise
        _check_counts(ds, path)
    return ds


def _check_counts(ds: xr.Dataset, path: str) -> None:
    """Every counted token lands once per neuron (in a bin or n_nonfinite) in the layers whose
    dense FFN is counted (all, in a dense model); in a MoE model's routing layers every token is
    routed to exactly top_k experts, and an expert's neuron counts stay within its routed tokens."""
    n_tok = ds["n_tokens"].values                                     # [N]
    moe = ds.attrs.get("moe")
    dense = list(moe["dense_layers"]) if moe else slice(None)
    for li, lang in enumerate(ds["language"].values):
        h = ds["act_hist"].isel(language=li, layer=dense).sum("bin").values        # [L', F]
        nf = ds["n_nonfinite"].isel(language=li, layer=dense).values
        if not np.array_equal(h + nf, np.broadcast_to(n_tok[li], h.shape)):
            raise ResultsError(f"{path}: language {lang}: histogram + non-finite counts do not add up to "
                               f"n_tokens={n_tok[li]}; the store is corrupt, re-profile it")
        if (ds["n_fired"].isel(language=li).values > n_tok[li]).any():
            raise ResultsError(f"{path}: language {lang}: n_fired exceeds n_tokens; the store is corrupt")
        if not moe:
            continue
        routed = ds["n_routed"].isel(language=li).values              # [L, E]
        want = np.zeros(routed.shape[0], dtype=np.int64)
        want[list(moe["moe_layers"])] = moe["top_k"] * n_tok[li]
        if not np.array_equal(routed.sum(-1), want):
            raise ResultsError(f"{path}: language {lang}: n_routed does not add up to top_k x n_tokens in each "
                               "routing layer (and 0 elsewhere); the store is corrupt, re-profile it")
        if "expert_n_fired" in ds:
            if ((ds["expert_n_fired"] + ds["expert_n_nonfinite"]).isel(language=li).values
                    > routed[..., None]).any():
                raise ResultsError(f"{path}: language {lang}: an expert's neuron counts exceed the tokens routed "
                                   "to it; the store is corrupt, re-profile it")


def open_partials(path: str, *, committed_only: bool = True) -> xr.Dataset:
    """Per-shard partial statistics (dim `shard`, coord `shard_language`), e.g. for bootstrap:
    the variables the store kept (`partials_kept`; int32/float32 in version-3 stores).

    With `committed_only` (the default) only committed shards are kept, and their chunks are
    checked (present, checksums intact) and loaded into memory."""
    loc, attrs = store_attrs(path)
    problem = schema.attrs_problem(attrs)
    if problem:
        raise ResultsError(f"{path}: {problem}")
    kept = schema.kept_partials(attrs)
    if not kept:
        raise ResultsError(f"{path} kept no shard partials (--keep-partials none): bootstrap and other "
                           "per-shard analyses need them; re-profile with --keep-partials counts or all")
    ds = xr.open_zarr(loc.zarr_url, group="partials", consolidated=False)
    ds = ds.drop_vars([v for v in schema.store_vars(attrs) if v not in kept and v in ds])  # deleted, or being deleted
    if committed_only:
        done = ds["committed"].values.astype(bool)
        if attrs.get("complete") and not done.all():
            raise ResultsError(f"{path} is complete but shard {int(np.flatnonzero(~done)[0])} is not committed "
                               "(a repair was interrupted): run the same command with --resume to finish it")
        keep = np.flatnonzero(done)
        g = zarr.open_group(loc.zarr_url, mode="r", zarr_format=3)["partials"]
        missing = [m for v in kept for m in missing_chunks(loc, g[v], keep)]
        if missing:
            raise ResultsError(f"{path}: committed partials are damaged: {missing[0]}; resume the run "
                               "with --resume to profile damaged shards again")
        ds = ds.isel(shard=keep)
        try:
            ds = ds.load()
        except Exception:
            for i in keep:
                for v in kept:
                    try:
                        read_checked(g[v], int(i))
                    except ChunkDamaged as e:
                        raise ResultsError(f"{path}: shard {i}: {e}; resume the run with --resume to "
                                           "profile damaged shards again") from e
            raise
    return ds


# --- langneurons info --verify -----------------------------------------------------------------


@dataclass
class Verification:
    path: str
    problems: list[str] = field(default_factory=list)
    chunks_read: int = 0
    state: str = "?"

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: str) -> Verification:
    """Read every chunk that should exist; check attributes, shapes, and totals against partials."""
    loc, attrs = store_attrs(path)
    rep = Verification(path, state=str(attrs.get("state", "complete" if attrs.get("complete") else "?")))
    problem = schema.attrs_problem(attrs)
    if problem:
        rep.problems.append(problem)
        if attrs.get("schema_version") not in schema.READABLE_VERSIONS:
            return rep
    variables = schema.store_vars(attrs)
    kept = schema.kept_partials(attrs) if not problem else variables
    g = zarr.open_group(loc.zarr_url, mode="r", zarr_format=3)
    if "partials" not in g:
        rep.problems.append("the partials/ group is missing")
        return rep
    p = g["partials"]
    size = schema.dim_sizes(attrs)
    for grp, lead, names in ((g, "language", variables), (p, "shard", kept)):
        for v in names:
            name = f"{grp.path}/{v}".lstrip("/")
            if v not in grp:
                rep.problems.append(f"array {name!r} is missing")
                continue
            want = tuple(size[d] for d in (lead,) + schema.TRAILING_DIMS[v])
            if tuple(grp[v].shape) != want:
                rep.problems.append(f"array {name!r} has shape {tuple(grp[v].shape)}, expected {want}")
    if rep.problems:
        return rep
    try:
        committed = read_checked(p["committed"], slice(None)).astype(bool)
    except ChunkDamaged as e:
        rep.problems.append(str(e))
        return rep
    complete = bool(attrs.get("complete"))
    # (array, leading indices whose chunks must exist, None: all of them); totals once complete
    expected = [(arr, None) for n, arr in g.arrays() if complete or n not in variables]
    expected += [(arr, np.flatnonzero(committed) if n in variables else None) for n, arr in p.arrays()
                 if n in kept or n not in variables]
    for arr, leads in expected:
        missing = missing_chunks(loc, arr, leads)
        rep.problems += missing
        coords = chunk_coords(arr) if leads is None else (c for i in leads for c in chunk_coords(arr, int(i)))
        for c in coords:
            key = chunk_key(arr, c)
            if any(f"chunk {key!r}" in m for m in missing):
                continue
            try:
                arr.blocks[c]
                rep.chunks_read += 1
            except Exception as e:
                rep.problems.append(f"array {arr.path!r} chunk {key!r} is corrupt ({short(e)})")
    if complete and not rep.problems:
        rep.problems += _totals_match_partials(g, p, committed, kept)
        try:
            _check_counts(xr.open_zarr(loc.zarr_url, consolidated=False).load(), path)
        except ResultsError as e:
            rep.problems.append(str(e).split(": ", 1)[-1])
    return rep


def _totals_match_partials(g: zarr.Group, p: zarr.Group, committed: np.ndarray, kept) -> list[str]:
    """The totals must equal the kept committed partials summed in shard order (in the totals'
    int64/float64), bit for bit."""
    if not committed.all():
        return [f"the store is marked complete but {int((~committed).sum())} shards are not committed"]
    out = []
    langs = [str(x) for x in g["language"][:]]
    shard_lang = [str(x) for x in p["shard_language"][:]]
    for li, lang in enumerate(langs):
        idx = [i for i, s in enumerate(shard_lang) if s == lang]
        for v in kept:
            total = None
            for i in idx:
                part = np.asarray(p[v][i]).astype(schema.DTYPES[v])
                total = part if total is None else total + part
            if total is None or not np.array_equal(np.asarray(total), g[v][li]):
                out.append(f"array {v!r} of language {lang!r} differs from the sum of its committed partials")
    return out


__all__ = ["ResultsError", "Verification", "open_partials", "open_results", "store_attrs", "verify_store"]
