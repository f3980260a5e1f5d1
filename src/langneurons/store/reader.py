"""Open a results store as a labelled xarray Dataset, with the checks a paper's numbers need.

`open_results` refuses what cannot be trusted: not a langneurons store, edited root attributes
(their checksum), an incomplete run, a missing or corrupt chunk in the totals (named), counts that
do not add up. `verify_store` (`langneurons info --verify`) reads every chunk the store should
hold, the kept partials included, and re-sums those partials against the totals.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
import zarr

from langneurons.store import schema
from langneurons.store.chunks import ChunkDamaged, chunk_coords, chunk_key, missing_chunks, read_checked, short
from langneurons.store.location import Kind, StoreLocationError, inspect, resolve
from langneurons.store.lock import lock_file_unlisted


class ResultsError(ValueError):
    pass


class IncompleteRun(UserWarning):
    """A reader was given a store whose run has not finished: what it returns is partial."""


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


@lock_file_unlisted()  # a live run's lock, or one a killed run left, is no Zarr node
def open_results(path: str, *, allow_incomplete: bool = False, check: bool = True) -> xr.Dataset:
    """The totals of a run as an xarray Dataset (dims language, layer, neuron, bin).

    Equivalent to `xarray.open_zarr(path)`, plus checks: the store's root attributes are intact
    (checksum) and in a schema version this langneurons reads; the run is complete (every shard
    committed and summed); with `check`, every chunk of the totals is present and decodes, and the
    counts are consistent (every counted token lands in exactly one histogram bin or in
    n_nonfinite, per neuron). The data is loaded into memory when checked.

    An incomplete run is refused unless `allow_incomplete`: then it is the sum of the shards
    committed so far, with an IncompleteRun warning (its totals arrays, which plain
    `xarray.open_zarr` shows, hold zeros until the run completes).
    """
    loc, attrs = store_attrs(path)
    problem = schema.attrs_problem(attrs)
    if problem:
        raise ResultsError(f"{path}: {problem}")
    if not attrs.get("complete") and not allow_incomplete:
        raise ResultsError(f"{path} is an incomplete run (not every shard is committed): finish it with "
                           "`langneurons profile --resume --out ...` with the same settings")
    complete = bool(attrs.get("complete"))
    if not complete:
        return _committed_sums(path, attrs)
    if check:
        g = zarr.open_group(loc.zarr_url, mode="r", zarr_format=3)
        missing = [m for _, arr in g.arrays() for m in missing_chunks(loc, arr)]
        if missing:
            raise ResultsError(f"{path}: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                               + "; the store is damaged: `langneurons info --verify` lists everything, "
                               "re-profile (or restore the store from a copy)")
    ds = xr.open_zarr(loc.zarr_url, consolidated=False)
    if check:
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


def _committed_sums(path: str, attrs: dict) -> xr.Dataset:
    """An incomplete run's totals so far: each language's committed partials summed in shard
    order into the totals' dtypes (its totals arrays hold zeros until the run completes). Warns,
    naming how much is missing: these are not the run's results."""
    parts = open_partials(path, quiet=True)
    ds = xr.open_zarr(resolve(path).zarr_url, consolidated=False)
    langs = [str(x) for x in ds["language"].values]
    shard_lang = [str(x) for x in parts["shard_language"].values]
    for v in schema.store_vars(attrs):
        arr = np.zeros(ds[v].shape, dtype=schema.DTYPES[v])
        for i, lang in enumerate(shard_lang):
            arr[langs.index(lang)] += parts[v].values[i].astype(schema.DTYPES[v])
        ds[v] = (ds[v].dims, arr)
    ds.attrs.update(attrs)
    _warn_incomplete(path, attrs, parts.sizes["shard"])
    return ds


def _warn_incomplete(path: str, attrs: dict, n_committed: int) -> None:
    warnings.warn(f"{path} is an incomplete run: {n_committed} of {attrs.get('n_shards')} shards committed; "
                  "these are the committed shards' statistics, not the run's. Finish it with "
                  "`langneurons profile --resume` (same settings)", IncompleteRun, stacklevel=3)


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


@lock_file_unlisted()  # a live run's lock, or one a killed run left, is no Zarr node
def open_partials(path: str, *, committed_only: bool = True, quiet: bool = False) -> xr.Dataset:
    """Per-shard partial statistics (dim `shard`, coord `shard_language`), e.g. for bootstrap:
    the variables the store kept (`partials_kept`; int32/float32 in version-3 stores).

    With `committed_only` (the default) only committed shards are kept, and their chunks are
    checked (present, checksums intact) and loaded into memory. Without it, a shard not yet
    committed reads as zeros: select on the `committed` variable. An incomplete run warns
    (IncompleteRun) unless `quiet`."""
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
        if not attrs.get("complete") and not quiet:
            _warn_incomplete(path, attrs, len(keep))
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


@lock_file_unlisted()  # a live run's lock, or one a killed run left, is no Zarr node
def verify_store(path: str) -> Verification:
    """Read every chunk that should exist; check attributes, shapes, and totals against partials."""
    loc, attrs = store_attrs(path)
    rep = Verification(path, state=str(attrs.get("state", "complete" if attrs.get("complete") else "?")))
    problem = schema.attrs_problem(attrs)
    if problem:  # every other check reads its layout from these attributes
        rep.problems.append(problem)
        return rep
    variables = schema.store_vars(attrs)
    kept = schema.kept_partials(attrs)
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
    rep.problems += _plan_problems(attrs, p)
    if complete and not rep.problems:
        rep.problems += _totals_match_partials(g, p, committed, kept)
        counted = attrs.get("tokens_per_language")
        if counted:  # the driver counted them before profiling, with the backends' own rule
            got = dict(zip(map(str, g["language"][:]), map(int, g["n_tokens"][:])))
            rep.problems += [f"language {c!r}: n_tokens is {got.get(c)} but {n} tokens were counted when the run "
                             "was planned (tokens_per_language): the tokenizer or the corpus changed during the run"
                             for c, n in counted.items() if got.get(c) != n]
        try:
            _check_counts(xr.open_zarr(loc.zarr_url, consolidated=False).load(), path)
        except ResultsError as e:
            rep.problems.append(str(e).split(": ", 1)[-1])
    return rep


def _plan_problems(attrs: dict, p: zarr.Group) -> list[str]:
    """The recorded shard plan covers every language's rows once, in order, as the attributes say."""
    rows = attrs.get("rows_per_language") or {}
    langs = [str(x) for x in p["shard_language"][:]]
    bounds = list(zip(langs, p["shard_start"][:].tolist(), p["shard_stop"][:].tolist()))
    out = []
    if len(bounds) != attrs.get("n_shards"):
        out.append(f"the plan holds {len(bounds)} shards, the attributes say {attrs.get('n_shards')}")
    for lang in attrs.get("languages") or []:
        mine = [(a, b) for c, a, b in bounds if c == lang]
        edges = [0] + [b for _, b in mine]
        if not mine or [a for a, _ in mine] != edges[:-1] or edges[-1] != rows.get(lang):
            out.append(f"the shard plan of language {lang!r} does not cover its {rows.get(lang)} rows once, in order")
    if set(langs) - set(attrs.get("languages") or []):
        out.append(f"the shard plan names languages the store does not have: {sorted(set(langs) - set(attrs['languages']))}")
    return out


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


__all__ = ["IncompleteRun", "ResultsError", "Verification", "open_partials", "open_results", "store_attrs", "verify_store"]
