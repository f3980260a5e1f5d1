"""Where a results store lives, what is there already, and the rules for touching it.

The tool writes into, and deletes, only what it created as a langneurons store:

- `inspect(loc)` says what is at `--out`: nothing, an empty directory, a langneurons store
  (recognised by its root `zarr.json` attributes), or anything else ("foreign": a file, a folder of
  other files, a Zarr store made by something else, a broken symlink). Foreign paths are refused
  whatever the flags.
- `remove_store(loc)` (used by `--overwrite`) first lists every file under the store and checks
  that each one is a file langneurons writes (node metadata, chunk files of the arrays it
  declares, zarr's temporary `.partial` files, the lock); one other file, symlink or folder and
  nothing is deleted. Then it deletes those files and the folders they leave empty, never the
  store's own folder.
- `store.lock.StoreLock` is the exclusive writer lock (`langneurons.lock`, a file of the store).

Local paths and `file://` URLs use the operating system; other URLs (`s3://`, `gs://`,
`memory://`, ...) go through fsspec with the same rules.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from langneurons.store import schema

log = logging.getLogger(__name__)

LOCK_NAME = "langneurons.lock"
MARKER = "langneurons_store"           # root attribute that marks a langneurons store
_PARTIAL = re.compile(r"^(?P<base>.+)\.[0-9a-f]{32}\.partial$")  # zarr LocalStore's temp files
_INDEX = re.compile(r"^\d+$")


class StoreLocationError(RuntimeError):
    """`--out` cannot be used as asked; the message says why and what to do."""


class Kind(Enum):
    ABSENT = "absent"
    EMPTY = "empty"            # an empty folder (or one holding only a lock and temporary files of ours)
    STORE = "store"            # a langneurons results store
    FOREIGN = "foreign"        # anything else: never written into, never deleted


@dataclass(frozen=True, slots=True)
class Location:
    url: str          # as the user gave it
    path: str         # absolute local path, or the fsspec path
    fs: Any           # None for local paths

    @property
    def local(self) -> bool:
        return self.fs is None

    @property
    def zarr_url(self) -> str:
        """What to hand to zarr: the local path, or the URL."""
        return self.path if self.local else self.url

    def join(self, *parts: str) -> str:
        return "/".join([self.path.rstrip("/"), *parts]) if not self.local else os.path.join(self.path, *parts)


@dataclass(frozen=True, slots=True)
class Inspection:
    kind: Kind
    attrs: dict[str, Any] | None = None      # root attributes of a STORE
    sample: tuple[str, ...] = ()              # a few entries of a FOREIGN folder, for the message
    why: str = ""                             # what makes it FOREIGN

    @property
    def creating(self) -> bool:
        """A store whose creation never finished: it holds no results and may be replaced."""
        return self.kind is Kind.STORE and (self.attrs or {}).get("state") == "creating"


def resolve(out: str) -> Location:
    if not isinstance(out, str) or not out.strip():
        raise StoreLocationError("--out is empty: give a path for the results store, e.g. --out results/run.zarr")
    if out.startswith("file://"):
        return Location(out, os.path.abspath(out[len("file://"):]), None)
    if "://" in out:
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(out)
        except (ImportError, ValueError) as e:
            raise StoreLocationError(f"--out {out}: cannot open this URL ({e}); install the fsspec "
                                     "package for its scheme (e.g. s3fs, gcsfs) or give a local path") from None
        from fsspec.implementations.local import LocalFileSystem

        if isinstance(fs, LocalFileSystem):  # local://, file:: chains: the local path, with its link checks
            return Location(out, os.path.abspath(path), None)
        return Location(out, path.rstrip("/"), fs)
    return Location(out, os.path.abspath(out), None)


# --- what is there -------------------------------------------------------------------------


def is_store_attrs(attrs: dict[str, Any]) -> bool:
    """Root attributes of a langneurons store (this schema, or the first one, which had no marker)."""
    return MARKER in attrs or ("identity" in attrs and "langneurons_version" in attrs)


def inspect(loc: Location) -> Inspection:
    if loc.local:
        p = loc.path
        if not os.path.lexists(p):
            return Inspection(Kind.ABSENT)
        if not os.path.exists(p):
            return Inspection(Kind.FOREIGN, why="is a broken symbolic link")
        if not os.path.isdir(p):
            return Inspection(Kind.FOREIGN, why="is a file, not a folder")
        names = sorted(os.listdir(p))
        meta = os.path.join(p, "zarr.json")
        read = (lambda: read_json_file(meta)) if os.path.isfile(meta) else None
    else:
        fs = loc.fs
        if not fs.exists(loc.path):
            return Inspection(Kind.ABSENT)
        if not fs.isdir(loc.path):
            return Inspection(Kind.FOREIGN, why="is a file (an object), not a folder (a prefix)")
        names = sorted(n.rstrip("/").rsplit("/", 1)[-1] for n in fs.ls(loc.path, detail=False))
        names = [n for n in names if n]
        meta = loc.join("zarr.json")
        read = (lambda: json.loads(fs.cat_file(meta))) if "zarr.json" in names else None
    if all(_creation_leftover(n) for n in names):
        return Inspection(Kind.EMPTY)
    if read is not None:
        try:
            doc = read()
        except (OSError, ValueError):
            doc = None
        if isinstance(doc, dict) and doc.get("node_type") == "group":
            attrs = doc.get("attributes") or {}
            if isinstance(attrs, dict) and is_store_attrs(attrs):
                return Inspection(Kind.STORE, attrs=attrs)
            return Inspection(Kind.FOREIGN, sample=tuple(names[:5]),
                              why="is a Zarr store that langneurons did not make")
    return Inspection(Kind.FOREIGN, sample=tuple(names[:5]), why="is a folder of other files")


def _creation_leftover(name: str) -> bool:
    """What a creation killed before the root zarr.json existed leaves in the folder: the lock,
    and the temporary file of the lock or of the root zarr.json that was being written."""
    m = _PARTIAL.match(name)
    return name == LOCK_NAME or (m is not None and m.group("base") in ("zarr", LOCK_NAME))


def foreign_message(loc: Location, ins: Inspection) -> str:
    holds = f" (it holds {', '.join(ins.sample)}{', ...' if len(ins.sample) >= 5 else ''})" if ins.sample else ""
    return (f"--out {loc.url} {ins.why}{holds}; langneurons never writes into or deletes anything it did "
            "not create: choose a new path for --out (it may not exist yet, or be an empty folder)")


def read_json_file(path: str) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


# --- deleting our own store ----------------------------------------------------------------


def _list_files(loc: Location, under: str = "") -> tuple[list[str], list[str], list[str]]:
    """(files, folders, other) under the store (or its folder `under`), as paths relative to the
    store. `other`: symlinks and anything that is neither a plain file nor a folder."""
    files, dirs, other = [], [], []
    if loc.local:
        for root, dnames, fnames in os.walk(os.path.join(loc.path, under), followlinks=False):
            rel_root = os.path.relpath(root, loc.path)
            rel = (lambda n: n) if rel_root == "." else (lambda n, r=rel_root: f"{r}/{n}".replace(os.sep, "/"))
            for d in dnames:
                (other if os.path.islink(os.path.join(root, d)) else dirs).append(rel(d))
            for f in fnames:
                full = os.path.join(root, f)
                (files if os.path.isfile(full) and not os.path.islink(full) else other).append(rel(f))
        return files, dirs, other
    base = loc.path.rstrip("/") + "/"
    try:
        found = loc.fs.find(loc.join(under) if under else loc.path, withdirs=True, detail=True)
    except FileNotFoundError:
        found = {}
    for name, info in found.items():
        rel = name[len(base):] if name.startswith(base) else None
        if not rel:
            continue
        (dirs if info.get("type") == "directory" else files).append(rel)
    return files, dirs, other


Node = tuple  # (node type, number of dimensions, chunk grid: chunks per dimension, or None)


def _node_kinds(loc: Location, files: list[str]) -> dict[str, Node]:
    """{folder relative to the store ('' = root): Node} for every zarr.json found."""
    nodes = {}
    for f in files:
        if f == "zarr.json" or f.endswith("/zarr.json"):
            folder = f[: -len("zarr.json")].rstrip("/")
            try:
                doc = (read_json_file(os.path.join(loc.path, f)) if loc.local
                       else json.loads(loc.fs.cat_file(loc.join(f))))
                kind = doc.get("node_type")
                grid = None
                if kind == "array":
                    chunks = doc["chunk_grid"]["configuration"]["chunk_shape"]
                    grid = tuple(-(-int(n) // max(int(c), 1)) for n, c in zip(doc["shape"], chunks))
                nodes[folder] = (kind, len(grid or ()), grid)
            except (OSError, ValueError, AttributeError, KeyError, TypeError):
                nodes[folder] = ("unreadable", 0, None)
    return nodes


def _chunk_index(parts: list[str], grid: tuple[int, ...] | None) -> bool:
    """Are `parts` (the path below an array's c/) a chunk index, or a prefix of one, inside the
    array's chunk grid? A file zarr would never write there (`c/99/0` of a 3 x 1 grid) is not ours."""
    return (grid is not None and len(parts) <= len(grid)
            and all(_INDEX.match(i) and int(i) < n for i, n in zip(parts, grid)))


def _is_ours(rel: str, nodes: dict[str, Node]) -> bool:
    """Is `rel` a file langneurons writes into a store whose nodes are `nodes`?"""
    m = _PARTIAL.match(rel.rsplit("/", 1)[-1])
    if m:  # zarr's temporary file for zarr.json ("zarr.<hex>.partial") or a chunk ("3.<hex>.partial")
        head = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        base = m.group("base")
        rel = head + ("zarr.json" if base == "zarr" else base)
    if rel == LOCK_NAME:
        return True
    folder, _, name = rel.rpartition("/")
    if name == "zarr.json":
        return folder in nodes
    # a chunk: <array>/c/<i>/<j>/... with one index per dimension
    parts = rel.split("/")
    for k in range(len(parts)):
        if parts[k] == "c":
            kind, ndim, grid = nodes.get("/".join(parts[:k]), ("", 0, None))
            idx = parts[k + 1:]
            return kind == "array" and len(idx) == ndim and _chunk_index(idx, grid)
    return False


def _is_our_dir(rel: str, nodes: dict[str, Node]) -> bool:
    if rel in nodes:
        return True
    parts = rel.split("/")
    for k in range(len(parts)):
        if parts[k] == "c" and nodes.get("/".join(parts[:k]), ("", 0, None))[0] == "array":
            _, ndim, grid = nodes["/".join(parts[:k])]
            idx = parts[k + 1:]
            if grid is None:  # its zarr.json is gone (an interrupted deletion, which removes the
                # chunks first): the index folders are left, empty; any file in them is judged alone
                return len(idx) < max(ndim, 1) and all(_INDEX.match(i) for i in idx)
            return not idx or _chunk_index(idx, grid)
    return False


def removable(loc: Location) -> tuple[list[str], list[str]]:
    """(files, folders) of the langneurons store at `loc`, all of them langneurons's own; refuses
    when anything under it is not. Its own are the nodes its schema version names
    (`schema.store_nodes`, from the root attributes), not whatever holds a zarr.json: a group
    someone nested in the store (`to_zarr(store, group=...)`), a second store inside it, a node
    of another kind where the schema has one, is not ours. A node folder whose zarr.json was never
    written (a creation cut short) is ours: the schema names it."""
    ins = inspect(loc)
    if ins.kind is not Kind.STORE:
        raise StoreLocationError(foreign_message(loc, ins) if ins.kind is Kind.FOREIGN
                                 else f"--out {loc.url} is not a langneurons store: nothing to overwrite")
    version = ins.attrs.get("schema_version")
    if version not in schema.READABLE_VERSIONS:
        raise StoreLocationError(
            f"--overwrite: {loc.url} is a langneurons store of schema version {version!r}; this langneurons "
            f"knows the layout of versions {', '.join(map(str, schema.READABLE_VERSIONS))} only, so it cannot "
            "tell its own files from others'. Delete it with the langneurons that wrote it, or choose another --out")
    problem = schema.attrs_problem(ins.attrs)
    if problem:  # the node list comes from these attributes: edited ones cannot say what is ours
        raise StoreLocationError(f"--overwrite: {loc.url}: {problem}. Its files cannot be told from others' by "
                                 "attributes that were changed, so nothing was deleted: delete the store yourself, "
                                 "or choose another --out")
    files, dirs, other = _list_files(loc)
    schema_nodes = schema.store_nodes(ins.attrs)
    found = _node_kinds(loc, files)
    wrong = sorted(f"{k}/zarr.json".lstrip("/") for k, (kind, ndim, _) in found.items()
                   if k in schema_nodes and (kind, ndim) != schema_nodes[k])
    # the schema's nodes, each with the chunk grid its zarr.json declares (none: no chunk is ours)
    nodes = {k: (*v, found.get(k, (None, None, None))[2]) for k, v in schema_nodes.items()}
    strangers = sorted(set(other + wrong + [f for f in files if not _is_ours(f, nodes)]
                           + [d + "/" for d in dirs if not _is_our_dir(d, nodes)]))
    if strangers:
        shown = ", ".join(strangers[:5]) + (f" and {len(strangers) - 5} more" if len(strangers) > 5 else "")
        raise StoreLocationError(
            f"--overwrite: {loc.url} is a langneurons store but also holds {shown}, which langneurons "
            "did not write; nothing was deleted. Move those out (or delete the store yourself), "
            "or choose another --out")
    return files, dirs


def remove_store(loc: Location) -> int:
    """Delete a langneurons store's files (see the module docstring); returns how many.

    Refuses, deleting nothing, when anything under it is not a file langneurons writes."""
    files, dirs = removable(loc)
    # Node metadata last, the root's zarr.json very last: until it goes, whatever a kill left is
    # still a store of ours (its schema names every file), so --overwrite can finish the deletion.
    _delete(loc, sorted(files, key=lambda f: (f == "zarr.json", f.endswith("zarr.json"), -f.count("/"))), dirs)
    return len(files)


def remove_arrays(loc: Location, arrays: list[str]) -> list[str]:
    """Delete whole arrays of our store (paths such as "partials/act_hist"), each only if every
    file under it is one of that array's own (its zarr.json and chunks: no links, no other files,
    no nested zarr nodes); returns the arrays kept because something else was there. An array
    whose zarr.json is already gone (an interrupted deletion) leaves only empty folders, which
    are removed; anything else there keeps it."""
    kept = []
    for name in arrays:
        if loc.local and os.path.realpath(os.path.join(loc.path, name)) != os.path.join(
                os.path.realpath(loc.path), *name.split("/")):
            kept.append(name)  # a link somewhere on the way: what it points to is not ours
            continue
        files, dirs, other = _list_files(loc, name)
        nodes = _node_kinds(loc, files)
        if other or set(nodes) - {name}:
            kept.append(name)
            continue
        if name not in nodes:   # never created, or its zarr.json already deleted
            if files:
                kept.append(name)
            else:
                _delete(loc, [], dirs + [name])
            continue
        if nodes[name][0] != "array" or not all(_is_ours(f, nodes) for f in files) \
                or not all(_is_our_dir(d, nodes) for d in dirs):
            kept.append(name)
            continue
        # zarr.json last: until it goes, the folder is still recognisably an array of ours
        _delete(loc, sorted(files, key=lambda f: f.endswith("/zarr.json")), dirs + [name])
    return kept


def _delete(loc: Location, files: list[str], dirs: list[str]) -> None:
    """Unlink `files`, then remove `dirs` that are empty by then (deepest first)."""
    for f in files:
        if f == LOCK_NAME:
            continue  # the caller holds it
        if loc.local:
            os.unlink(os.path.join(loc.path, f))
        else:
            loc.fs.rm_file(loc.join(f))
    for d in sorted(dirs, key=lambda d: -d.count("/")):  # deepest first; only now-empty folders
        if loc.local:
            try:
                os.rmdir(os.path.join(loc.path, d))
            except OSError:
                pass
        else:
            try:
                loc.fs.rmdir(loc.join(d))
            except (OSError, NotImplementedError):
                pass
