"""`StoreLock`: an exclusive lock object (`langneurons.lock`, JSON: host, pid, start time,
heartbeat) held by the one process that creates, resumes or finalizes a store, so that a second
writer gets an error naming the first instead of corrupting or deleting its run. A lock is stale
when its process is gone (same host), or its heartbeat is older than `STALE_AFTER_S` (any host).

Object stores have no atomic create-if-absent everywhere: the lock uses exclusive creation where
the file system offers it (`open(..., "xb")`) and otherwise writes, reads back and compares (a
narrow race remains there).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
import warnings

from langneurons.store.location import LOCK_NAME, Location, StoreLocationError, read_json_file

STALE_AFTER_S = 600.0                  # a lock whose heartbeat is this old is stale (any host)
HEARTBEAT_S = 60.0
# What zarr says when listing a store's folder finds the lock (or the temporary copy a heartbeat
# or a lock break was writing when its process was killed): it is no zarr node.
_LISTED_LOCK = (rf"Object at {re.escape(LOCK_NAME)}(\.[0-9a-f]{{32}}\.partial)? is not recognized "
                "as a component of a Zarr hierarchy")

log = logging.getLogger(__name__)


def _now() -> float:
    return time.time()


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds")


def _process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch), or None if it does not exist."""
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
            return None
        return proc.create_time()
    except ImportError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0  # alive; its start time unknown without psutil
    except Exception:  # psutil.NoSuchProcess, AccessDenied, ...
        return None


@contextlib.contextmanager
def lock_file_unlisted():
    """Read a store without zarr's warning about its lock file. Opening a group lists its folder,
    and a lock is there while a run writes the store, or after a killed run left it (stale): zarr
    warns that it is not part of the hierarchy. The lock is ours and expected; any other unknown
    object still warns. zarr warns from its event-loop thread, which a `catch_warnings` filter
    reaches because Python's warning filters are process-wide while the block lasts."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_LISTED_LOCK, category=UserWarning)
        yield


class StoreLocked(StoreLocationError):
    """Another live process holds the store's lock."""


class StoreLock:
    """The exclusive writer lock of one store (see the module docstring). A context manager."""

    def __init__(self, loc: Location, command: str = "profile"):
        self.loc = loc
        self.path = loc.join(LOCK_NAME)
        self.token = uuid.uuid4().hex
        self.command = command
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    # --- file access (local or fsspec) ---
    def _read(self) -> dict | None:
        try:
            if self.loc.local:
                raw = read_json_file(self.path)
            else:
                raw = json.loads(self.loc.fs.cat_file(self.path))
            return raw if isinstance(raw, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # unreadable: treated as stale only by age of the file, see _stale

    def _create_exclusive(self, doc: dict) -> bool:
        data = json.dumps(doc, indent=1).encode()
        if self.loc.local:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        fs = self.loc.fs
        try:
            with fs.open(self.path, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError, TypeError):  # no exclusive create: write, read back
            if fs.exists(self.path):
                return False
            fs.pipe_file(self.path, data)
            return (self._read() or {}).get("token") == self.token

    def _write(self, doc: dict) -> None:
        data = json.dumps(doc, indent=1).encode()
        if self.loc.local:
            tmp = f"{self.path}.{uuid.uuid4().hex}.partial"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        else:
            self.loc.fs.pipe_file(self.path, data)

    def _remove(self) -> None:
        try:
            if self.loc.local:
                os.unlink(self.path)
            else:
                self.loc.fs.rm_file(self.path)
        except FileNotFoundError:
            pass

    # --- protocol ---
    def _doc(self) -> dict:
        t = _now()
        return {"tool": "langneurons", "command": self.command, "host": socket.gethostname(),
                "pid": os.getpid(), "pid_started": _process_start(os.getpid()), "started": _iso(t),
                "started_ts": t, "heartbeat_ts": t, "token": self.token}

    @staticmethod
    def _stale(doc: dict) -> str | None:
        """Why `doc`'s holder is gone, or None if it may still be running."""
        if doc.get("host") == socket.gethostname() and isinstance(doc.get("pid"), int):
            started = _process_start(doc["pid"])
            if started is None:
                return f"its process {doc['pid']} is gone"
            if doc.get("pid_started") and started and abs(started - float(doc["pid_started"])) > 1.0:
                return f"process {doc['pid']} is now another program"
            return None
        beat = doc.get("heartbeat_ts")
        if not isinstance(beat, (int, float)):
            return "it is unreadable"
        age = _now() - beat
        return f"its last heartbeat was {age:.0f} s ago" if age > STALE_AFTER_S else None

    def describe(self, doc: dict) -> str:
        beat = doc.get("heartbeat_ts")
        age = f", last heartbeat {_now() - beat:.0f} s ago" if isinstance(beat, (int, float)) else ""
        return (f"`langneurons {doc.get('command', '?')}` on host {doc.get('host', '?')}, pid "
                f"{doc.get('pid', '?')}, started {doc.get('started', '?')}{age}")

    def acquire(self) -> "StoreLock":
        if self.loc.local:
            os.makedirs(self.loc.path, exist_ok=True)
        for _ in range(3):
            if self._create_exclusive(self._doc()):
                self.held = True
                self._start_heartbeat()
                return self
            doc = self._read()
            if doc is None:
                continue  # released meanwhile: try again
            why = self._stale(doc)
            if why is None:
                raise StoreLocked(
                    f"{self.loc.url} is being written by {self.describe(doc)}; two writers would corrupt "
                    f"it. Wait for that run to end, or stop it. If it is gone (its host died), the lock "
                    f"becomes stale {STALE_AFTER_S / 60:.0f} min after its last heartbeat, or delete "
                    f"{self.path} yourself")
            log.warning("breaking a stale lock on %s (%s): %s", self.loc.url, why, self.describe(doc))
            self._break(doc)
        raise StoreLocked(f"could not take the lock {self.path}: other processes keep taking it; "
                          "is another langneurons run starting on this store?")

    def _break(self, seen: dict) -> None:
        """Remove a stale lock, but only the one that was judged stale (its token)."""
        if self.loc.local:
            aside = f"{self.path}.{uuid.uuid4().hex}.partial"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return
            moved = read_json_file(aside) if os.path.isfile(aside) else {}
            if isinstance(moved, dict) and moved.get("token") != seen.get("token"):
                try:  # a live lock taken meanwhile: put it back (only if the place is still free)
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
            os.unlink(aside)
        else:
            current = self._read()
            if current is not None and current.get("token") == seen.get("token"):
                self._remove()

    def _start_heartbeat(self) -> None:
        def beat():
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    doc = self._read()
                    if not doc or doc.get("token") != self.token:
                        log.error("the lock %s was taken away from this run", self.path)
                        return
                    doc["heartbeat_ts"] = _now()
                    self._write(doc)
                except Exception as e:  # a full disk must not kill the run: retry next beat
                    log.debug("lock heartbeat failed: %s", e)

        self._thread = threading.Thread(target=beat, name="langneurons-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        doc = self._read()
        if doc is not None and doc.get("token") == self.token:
            self._remove()
        self.held = False

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
