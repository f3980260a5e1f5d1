"""Open a results store as a labelled xarray Dataset, with the checks a paper's numbers need."""

from __future__ import annotations

import numpy as np
import xarray as xr

from langneurons.store import schema


class ResultsError(ValueError):
    pass


def open_results(path: str, *, allow_incomplete: bool = False, check: bool = True) -> xr.Dataset:
    """The totals of a run as an xarray Dataset (dims language, layer, neuron, bin).

    Equivalent to `xarray.open_zarr(path)`, plus checks: the store is complete (every shard
    committed and summed), its schema version is understood, and its counts are consistent
    (every counted token lands in exactly one histogram bin or in n_nonfinite, per neuron).
    """
    try:
        ds = xr.open_zarr(path, consolidated=False)
    except (FileNotFoundError, KeyError) as e:
        raise ResultsError(f"{path} is not a results store ({e}); run `langneurons profile --out {path}`") from e
    version = ds.attrs.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        raise ResultsError(f"{path} has schema version {version!r}; this langneurons reads "
                           f"{schema.SCHEMA_VERSION}. Re-profile, or install the matching langneurons")
    if not ds.attrs.get("complete") and not allow_incomplete:
        raise ResultsError(f"{path} is an incomplete run (not every shard is committed): finish it with "
                           "`langneurons profile --resume --out ...` with the same settings")
    if check and ds.attrs.get("complete"):
        _check_counts(ds, path)
    return ds


def _check_counts(ds: xr.Dataset, path: str) -> None:
    n_tok = ds["n_tokens"].values                                     # [N]
    for li, lang in enumerate(ds["language"].values):
        h = ds["act_hist"].isel(language=li).sum("bin").values        # [L, F]
        nf = ds["n_nonfinite"].isel(language=li).values
        if not np.array_equal(h + nf, np.broadcast_to(n_tok[li], h.shape)):
            raise ResultsError(f"{path}: language {lang}: histogram + non-finite counts do not add up to "
                               f"n_tokens={n_tok[li]}; the store is corrupt, re-profile it")
        if (ds["n_fired"].isel(language=li).values > n_tok[li]).any():
            raise ResultsError(f"{path}: language {lang}: n_fired exceeds n_tokens; the store is corrupt")


def open_partials(path: str, *, committed_only: bool = True) -> xr.Dataset:
    """Per-shard partial statistics (dim `shard`, coord `shard_language`), e.g. for bootstrap."""
    ds = xr.open_zarr(path, group="partials", consolidated=False)
    if committed_only:
        keep = ds["committed"].values.astype(bool)
        ds = ds.isel(shard=np.flatnonzero(keep))
    return ds
