"""Create, resume and fill a results store, exactly once per shard (see schema.py for the layout).

Exactly-once protocol:
1. the driver, holding the store's lock (`store.lock.StoreLock`), creates the store: the root
   attributes first (identity, `state: creating`), then every array, its coordinates and the
   `committed` markers (all written, zeros included), then `state: profiling`;
2. whoever profiles shard i writes its partial chunks (each variable's chunk i), then its
   `committed` chunk i: data first, marker last. A re-run of shard i overwrites only chunks i;
3. the driver writes the totals once every marker is set, summing partials in shard order, and
   only then sets `complete`. Totals never depend on who ran what, in which order, how often;
4. with `complete` it records `partials_kept` (--keep-partials) and only then deletes the partial
   variables that are not kept (`remove_arrays`: only files this writer made). An interrupted
   deletion is finished by the next `--resume` of the complete store; readers never use a
   variable that is not kept, whether its files are gone yet or not.

Integrity. A committed shard's chunks are checked before they are summed (present, checksum
intact); a missing or corrupt one is an error naming the array and the chunk. `--resume` checks
the committed shards it relies on and re-runs the damaged ones (`damaged_shards`).

Concurrent writers are safe because they never share a chunk. On a local or POSIX shared file
system each chunk is written to a temporary file and renamed (zarr's LocalStore); object stores
(s3://, gs://) put whole objects, which is atomic per object. The store must be reachable at the
same URL from every worker.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import zarr

from langneurons.shards import Shard
from langneurons.store import schema
from langneurons.store.create import WRITE_ALL, create_nodes
from langneurons.store.chunks import ChunkDamaged, missing_chunks, read_checked, short
from langneurons.store.location import (
    MARKER, Kind, Location, StoreLocationError, foreign_message, inspect, remove_arrays, remove_store, removable,
    resolve,
)
from langneurons.store.lock import StoreLock
from langneurons.store.schema import KEEP_PARTIALS
from langneurons.store.stats import PartialOverflow, Stats

log = logging.getLogger(__name__)

FINALIZE_THREADS = 8  # languages summed at once: each holds one language's totals in float64
DEFAULT_KEEP = "counts"  # --keep-partials when none is given (see config.StoreConfig.keep_partials)


class StoreError(RuntimeError):
    """A store that cannot be used as asked (exists, mismatched, incomplete, corrupt)."""


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _open(loc: Location, mode: str) -> zarr.Group:
    """The root group as stored, never through consolidated metadata (which can be stale while a
    store is written); attributes written through it drop the consolidated copy."""
    return zarr.open_group(store=loc.zarr_url, mode=mode, zarr_format=3, use_consolidated=False)


# --- before anything is created --------------------------------------------------------------


def check_out(out: str, *, resume: bool, overwrite: bool) -> Location:
    """Refuse an unusable --out before any model or corpus is loaded (checked again under the lock)."""
    loc = resolve(out)
    ins = inspect(loc)
    if _decide(loc, ins, resume=resume, overwrite=overwrite) == "replace":
        removable(loc)
    return loc


def _decide(loc: Location, ins, *, resume: bool, overwrite: bool) -> str:
    """What to do at `loc`: "create", "replace" (our store, overwritten or never finished) or "resume"."""
    if ins.kind is Kind.FOREIGN:
        raise StoreLocationError(foreign_message(loc, ins))
    if ins.kind in (Kind.ABSENT, Kind.EMPTY):
        if resume:
            raise StoreError(f"--resume: there is no results store at {loc.url} to resume; "
                             "run without --resume to start one")
        return "create"
    if ins.creating:
        return "replace"  # holds no results: whatever the flags, start it again
    if resume:
        return "resume"
    if overwrite:
        return "replace"
    raise StoreError(f"{loc.url} already exists and holds a results store: pass --resume to continue that run, "
                     "--overwrite to replace it, or choose another --out")


# --- the store ---------------------------------------------------------------------------------


class ResultsStore:
    """A results store opened for writing. Use `open_for_run` (driver) or `open_for_shards` (workers)."""

    def __init__(self, loc: Location, group: zarr.Group):
        self.loc = loc
        self.url = loc.url
        self.group = group
        self.partials = group["partials"]
        self.n_shards = int(self.partials["committed"].shape[0])
        attrs = dict(group.attrs)
        self.variables = schema.store_vars(attrs)
        # The partial variables this store holds: all until the run completes (schema.KEEP_PARTIALS)
        self.kept = schema.kept_partials(attrs)
        self._digests: list[str] | None = None  # each shard's planned row digest (read once)

    def _arr(self, group: zarr.Group, name: str) -> zarr.Array:
        return group[name].with_config(WRITE_ALL)

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def open_for_run(cls, loc: Location, lock: StoreLock, *, resume: bool, overwrite: bool,
                     identity: dict[str, Any], attrs: dict[str, Any], languages: Sequence[str],
                     n_layers: int, d_ff: int, edges: Sequence[float], shards: Sequence[Shard]) -> "ResultsStore":
        """Create, replace or resume the store at `loc`; the caller holds `lock`."""
        if not lock.held:
            raise StoreError("internal: open_for_run needs the store's lock held")
        ins = inspect(loc)
        action = _decide(loc, ins, resume=resume, overwrite=overwrite)
        if action == "resume":
            return cls._resume(loc, identity, shards, attrs.get("moe"))
        if action == "replace":
            if ins.creating:
                log.info("%s: replacing a store whose creation never finished", loc.url)
            n = remove_store(loc)
            log.info("%s: removed the previous store (%d files)", loc.url, n)
        try:
            return cls._create(loc, identity=identity, attrs=attrs, languages=languages, n_layers=n_layers,
                               d_ff=d_ff, edges=edges, shards=shards)
        except OSError as e:
            raise StoreError(f"creating the store at {loc.url} failed ({short(e)}); nothing was profiled. "
                             "Fix the cause (disk space, permissions) and run the same command again: "
                             "the unfinished store is replaced") from e

    @classmethod
    def _create(cls, loc: Location, *, identity: dict[str, Any], attrs: dict[str, Any], languages: Sequence[str],
                n_layers: int, d_ff: int, edges: Sequence[float], shards: Sequence[Shard]) -> "ResultsStore":
        root = schema.sealed({
            **attrs,
            MARKER: {"schema_version": schema.SCHEMA_VERSION},
            "identity": identity,
            "n_layers": n_layers,
            "d_ff": d_ff,
            "bin_edges": list(map(float, edges)),
            "n_shards": len(shards),
            "complete": False,
            "state": "creating",
            "partials_kept": None,
            "created": _now(),
            "schema_version": schema.SCHEMA_VERSION,
        })
        g = create_nodes(loc, root, languages, shards)
        store = cls(loc, g)
        store._set_attrs(state="profiling")
        return store

    @classmethod
    def _resume(cls, loc: Location, identity: dict[str, Any], shards: Sequence[Shard],
                moe: dict | None = None) -> "ResultsStore":
        """Reopen an interrupted (or complete) run; refuse a store made by another model, config or
        shard plan, or edited. Damaged committed partials are profiled again while the store
        holds every partial; once some were deleted the totals stand, and damage is reported."""
        g = _open(loc, "r+")
        attrs = dict(g.attrs)
        problem = schema.attrs_problem(attrs)
        if problem:
            raise StoreError(f"cannot resume {loc.url}: {problem}")
        if "partials" not in g:
            raise StoreError(f"cannot resume {loc.url}: it has no partials/ group; the store is damaged, "
                             "profile into a new --out")
        stored = dict(attrs["identity"])
        diff = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
        if diff:
            lines = "; ".join(f"{k}: store has {stored.get(k)!r}, this run has {identity.get(k)!r}" for k in diff)
            raise StoreError(f"cannot resume {loc.url}: it was made with a different model/config ({lines}). "
                             "Use the same settings, or --overwrite / another --out to start afresh")
        if attrs.get("moe") != moe:  # the variables a run writes follow its backend (expert neurons: HF)
            raise StoreError(f"cannot resume {loc.url}: it records the MoE layout {attrs.get('moe')}, this run "
                             f"{moe}; resume with the backend that started it (--backend {attrs.get('backend')})")
        store = cls(loc, g)
        store._check_plan(shards)
        for i, why in store.damaged_shards():
            if store.kept != store.variables:  # its totals cannot be summed again: they stand as they are
                log.warning("%s: the kept partial of shard %d is damaged (%s); the totals are intact, but "
                            "bootstrap needs it: re-profile into a new --out, or restore the store from a copy",
                            loc.url, i, why)
                continue
            log.warning("%s: shard %d is committed but damaged (%s): it will be profiled again", loc.url, i, why)
            store._arr(store.partials, "committed")[i] = 0
        return store

    def _check_plan(self, shards: Sequence[Shard]) -> None:
        """A resumed run must plan the very shards the store recorded: token-planned shards move
        if the tokenizer changed (the model fingerprint covers config and weights only)."""
        p = self.partials
        stored = list(zip(p["shard_language"][:].tolist(), p["shard_start"][:].tolist(), p["shard_stop"][:].tolist()))
        planned = [(s.language, s.start, s.stop) for s in shards]
        digests = self.planned_digests()
        if stored == planned and digests is not None:
            changed = [i for i, (d, s) in enumerate(zip(digests, shards)) if d != (s.digest or "")]
            if changed:
                sh = shards[changed[0]]
                raise StoreError(f"cannot resume {self.url}: the rows of {len(changed)} shards differ from the rows "
                                 f"profiled (first: shard {sh.index}, {sh.language} rows {sh.start}-{sh.stop}); "
                                 "restore the corpus the run started with, or profile into a new --out")
        if stored != planned:
            first = next((i for i, (a, b) in enumerate(zip(stored, planned)) if a != b), min(len(stored), len(planned)))
            show = lambda x: "none" if first >= len(x) else "{}:{}-{}".format(*x[first])  # noqa: E731
            raise StoreError(f"cannot resume {self.url}: this run plans other shards than the store recorded "
                             f"({len(planned)} vs {len(stored)}; shard {first} is {show(planned)} here, "
                             f"{show(stored)} in the store). The tokenizer or the corpus rows differ; profile into "
                             "a new --out (or --overwrite)")

    @classmethod
    def open_for_shards(cls, url: str) -> "ResultsStore":
        """Open an existing store to write shard partials (workers; the driver checked identity)."""
        loc = resolve(url)
        if inspect(loc).kind is not Kind.STORE:
            raise StoreError(f"no results store at {url}: the driver creates it before workers start "
                             "(on a cluster, every worker must reach the same path or URL)")
        return cls(loc, _open(loc, "r+"))

    # --- attributes ------------------------------------------------------------------------
    def _set_attrs(self, **changes: Any) -> None:
        bad = set(changes) - set(schema.MUTABLE_ATTRS)
        if bad:
            raise StoreError(f"internal: attributes {sorted(bad)} are fixed once the store is created")
        attrs = dict(self.group.attrs)
        attrs.update(changes)
        # put, not update: zarr's update writes zarr.json once per key, and a kill between two of
        # those writes would leave attributes that fail their checksum (a store no tool opens)
        self.group.attrs.put(schema.sealed(attrs))

    # --- per shard (any worker) ------------------------------------------------------------
    def committed(self) -> np.ndarray:
        """Boolean per shard: is its partial fully written?"""
        try:
            return read_checked(self.partials["committed"], slice(None)).astype(bool)
        except ChunkDamaged as e:
            raise StoreError(f"{self.url}: the commit markers are damaged: {e}; profile into a new --out") from e

    def planned_digests(self) -> list[str] | None:
        """Each shard's row digest recorded at creation (`shards.rows_digest`); None in stores
        written before schema version 5, which recorded none."""
        if self._digests is None and "shard_digest" in self.partials:
            self._digests = [str(d) for d in self.partials["shard_digest"][:]]
        return self._digests

    def write_shard(self, index: int, stats: Stats, rows_digest: str | None = None) -> None:
        """Write shard `index`'s partial, then its commit marker (the last write). `rows_digest`,
        the digest of the rows profiled, must be the one the store planned the shard with."""
        if not 0 <= index < self.n_shards:
            raise IndexError(f"shard {index} is outside the plan of {self.n_shards} shards")
        planned = self.planned_digests()
        if planned is not None and planned[index] and rows_digest != planned[index]:
            raise StoreError(f"shard {index} was not committed: the rows profiled are not the rows {self.url} "
                             "planned for it (a corpus file changed during the run). Restore the corpus and run "
                             "the same command with --resume, or profile the new text into a new --out")
        try:
            arrays = stats.partial_arrays()
        except PartialOverflow as e:
            raise StoreError(f"shard {index} cannot be stored: {e}. Plan smaller shards (a lower --shard-tokens, "
                             "or fewer rows with --shard-size) and profile into a new --out") from e
        for v in self.kept:  # every variable until the run is complete
            self._arr(self.partials, v)[index] = arrays[v]
        self._arr(self.partials, "committed")[index] = 1

    def _read_partial(self, index: int) -> dict[str, np.ndarray]:
        """Shard `index`'s kept partial variables; a missing or corrupt chunk is a StoreError naming it."""
        out = {}
        for v in self.kept:
            arr = self.partials[v]
            try:
                missing = missing_chunks(self.loc, arr, [index])
                if missing:
                    raise ChunkDamaged(missing[0])
                out[v] = read_checked(arr, index)
            except ChunkDamaged as e:
                raise StoreError(f"{self.url}: shard {index}: {e}") from e
        return out

    def shard_problem(self, index: int) -> str | None:
        """Why committed shard `index`'s partial cannot be used (a chunk missing or corrupt), or None."""
        try:
            self._read_partial(index)
        except StoreError as e:
            return str(e).split(f"shard {index}: ", 1)[-1]
        return None

    def damaged_shards(self) -> list[tuple[int, str]]:
        """(shard, why) for every committed shard whose partial is missing a chunk or fails its checksum."""
        return [(int(i), why) for i in np.flatnonzero(self.committed()) if (why := self.shard_problem(int(i)))]

    def read_shard(self, index: int) -> Stats:
        """Shard `index`'s whole partial (a store whose run is not complete keeps all of it)."""
        if self.kept != self.variables:
            raise StoreError(f"internal: {self.url} kept only {', '.join(self.kept) or 'no'} partials")
        try:
            return Stats.from_arrays(self._read_partial(index))
        except StoreError as e:
            raise StoreError(f"{e}: the committed shard is damaged. Run the same command with --resume: "
                             "damaged shards are profiled again") from e

    # --- totals (driver) -------------------------------------------------------------------
    def finalize(self, keep: str | None = None) -> None:
        """Sum committed partials per language in shard order into the totals (int64/float64),
        mark the store complete with `partials_kept` (`keep`; None: DEFAULT_KEEP), then delete
        the partials not kept.

        A store that is already complete (a `--resume` of a finished run) keeps what it kept
        unless `keep` asks for less (deleted partials cannot come back); its totals are summed
        again only if it still holds every partial (a damaged one was just profiled again).

        A failed write (a full disk) is an error naming the file and the way on: every shard is
        committed, so `--resume` only sums and finishes."""
        try:
            self._finalize(keep)
        except OSError as e:
            where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
            raise StoreError(f"{self.url}: finishing the store failed{where} ({short(e)}). Every shard is committed "
                             "and kept: free the space (or fix the cause) and run the same command with --resume "
                             "to sum the totals and finish, without profiling again") from e

    def _finalize(self, keep: str | None) -> None:
        attrs = dict(self.group.attrs)
        before = (attrs.get("partials_kept") or "all") if attrs.get("complete") else None
        if before is not None and keep is not None and len(KEEP_PARTIALS[keep]) > len(KEEP_PARTIALS[before]):
            log.warning("%s: the run was completed with --keep-partials %s; the partials deleted then cannot be "
                        "restored, so it stays '%s'", self.url, before, before)
        keep = min(filter(None, (keep, before)), key=lambda k: len(KEEP_PARTIALS[k]), default=DEFAULT_KEEP)
        if before in (None, "all"):
            self._sum_totals()
        # Recorded before anything is deleted (this write also drops the consolidated metadata,
        # which would still list the arrays about to go): a crash from here on leaves arrays that
        # every reader ignores, and the next --resume deletes them.
        self._set_attrs(state="complete", complete=True, partials_kept=keep,
                        completed=attrs.get("completed") or _now())
        drop = [f"partials/{v}" for v in self.variables if v not in KEEP_PARTIALS[keep]]
        for name in remove_arrays(self.loc, drop):
            log.warning("%s: kept %s: it holds files langneurons did not write", self.url, name)
        # Consolidated metadata lets `xr.open_zarr(path)` open the finished store in one read
        # (written after the deletion: it lists exactly the arrays that remain).
        with warnings.catch_warnings():  # "not yet part of the v3 spec": zarr-python and xarray read it
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(self.loc.zarr_url, zarr_format=3)

    def _sum_totals(self) -> None:
        """Each language's totals: its committed partials added in shard order into int64/float64.
        Languages are independent (their own partials, their own totals chunks), so they are
        summed on up to FINALIZE_THREADS threads (decompression and numpy release the GIL)."""
        done = self.committed()
        if not done.all():
            missing = np.flatnonzero(~done)
            raise StoreError(f"{len(missing)} of {self.n_shards} shards are not committed "
                             f"(first: {missing[:5].tolist()}); resume the run with --resume")
        languages = [str(x) for x in self.group["language"][:]]
        shard_lang = [str(x) for x in self.partials["shard_language"][:]]
        a = dict(self.group.attrs)
        n_layers, d_ff, n_bins = int(a["n_layers"]), int(a["d_ff"]), len(a["bin_edges"]) + 1

        def one(li: int) -> None:
            idx = [i for i, s in enumerate(shard_lang) if s == languages[li]]
            if not idx:
                raise StoreError(f"language {languages[li]} has no shards in the plan")
            total = Stats.zeros(n_layers, d_ff, n_bins, a.get("moe"))  # wide: the narrow partials add into it
            for i in idx:
                total += self.read_shard(i)
            for v, arr in total.arrays().items():
                self._arr(self.group, v)[li] = arr

        threads = max(1, min(len(languages), os.cpu_count() or 1, FINALIZE_THREADS))
        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(one, li) for li in range(len(languages))]:
                f.result()


__all__ = ["ResultsStore", "StoreError", "StoreLocationError", "check_out"]
