"""Token budgets and per-row token counts: a view over any corpus.

`Budgeted(corpus, count, max_tokens)` reads each language once, in order, counting every row's
tokens with `count(texts, wheres)` (the caller passes the tokenizer's counting function, the same
one the backends count with, so the corpus never imports model code). With `max_tokens`, each
language keeps the longest prefix of rows whose counts sum to at most it: a pure function of
the rows and the tokenizer, so every worker count, retry and resume profiles the same rows.
The per-row counts go to a temporary file (uint32, 4 bytes a row), so shards can be planned by
tokens (`shards.plan_shards`) without holding them. They are deleted by `close()`, or else when the
object is collected or the interpreter exits; a run killed outright (SIGKILL, out of memory) leaves
them behind, so each new Budgeted first deletes the files of runs that are gone
(`remove_leftovers`): their names carry the host and the pid of the run that made them.

A budget cuts languages at different rows (they tokenize differently), so a budgeted corpus is
profiled per language on its own rows, like a monolingual one.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import tempfile
import weakref
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from langneurons.corpus.checks import CorpusError, hash_row, monolingual_fingerprint, row_hasher

log = logging.getLogger(__name__)

CountFn = Callable[[list[str], list[str]], list[int]]
PREFIX, SUFFIX = "langneurons-tokens-", ".u32"
# A short digest of the host name: runs on other machines (or containers) sharing a temporary
# folder have pids of their own, which say nothing about whether those runs are alive.
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"
_OURS = re.compile(rf"^{re.escape(PREFIX)}{_HOST}-(\d+)-.*{re.escape(SUFFIX)}$")


def counts_prefix(pid: int) -> str:
    """The name every counts file of process `pid` on this host starts with."""
    return f"{PREFIX}{_HOST}-{pid}-"


def remove_leftovers(folder: str | None = None) -> list[str]:
    """Delete the counts files in `folder` (default: the temporary folder) whose process is gone;
    returns their paths. Files of live processes (this one included), of other hosts, and any
    file not named by `counts_prefix` are kept."""
    if os.name != "posix":  # os.kill(pid, 0) only probes a process on POSIX (Windows would kill it)
        return []
    removed = []
    with os.scandir(folder or tempfile.gettempdir()) as entries:
        for e in entries:
            m = _OURS.match(e.name)
            if m is None or _alive(int(m[1])) or not e.is_file(follow_symlinks=False):
                continue
            try:
                os.unlink(e.path)
            except OSError:  # deleted meanwhile by another new run, or not ours to delete
                continue
            removed.append(e.path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # EPERM: another user's live process; or no pid a run could have had
        return True
    return True


def _remove(files: list[str]) -> None:
    for path in files:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@dataclass
class _Cut:
    n_rows: int
    n_tokens: int
    digest: str
    counts_file: str


class Budgeted:
    def __init__(self, corpus, count: CountFn, max_tokens: int | None, *, batch: int = 512):
        self.base = corpus
        self.languages = corpus.languages
        self.source = corpus.source
        self.max_tokens = max_tokens
        self.aligned = corpus.aligned and max_tokens is None
        self.cuts: dict[str, _Cut] = {}
        self._files: list[str] = []
        self._cleanup = weakref.finalize(self, _remove, self._files)
        stale = remove_leftovers()
        if stale:
            log.info("deleted %d token-count files left by killed runs (e.g. %s)", len(stale), stale[0])
        try:
            for c in self.languages:
                self.cuts[c] = self._cut(c, count, batch)
        except BaseException:
            self.close()
            raise

    def _cut(self, language: str, count: CountFn, batch: int) -> _Cut:
        h = row_hasher(language)
        fd, path = tempfile.mkstemp(prefix=f"{counts_prefix(os.getpid())}{language}-", suffix=SUFFIX)
        self._files.append(path)  # before anything can fail: close() deletes a half-written file too
        total = n = 0
        rows = self.base.iter_rows(language)
        full = False
        with os.fdopen(fd, "wb") as out:
            while not full:
                texts = [t for _, t in zip(range(batch), rows)]
                if not texts:
                    break
                wheres = [f"{self.source}: {language} row {n + k + 1}" for k in range(len(texts))]
                kept = []
                for text, k in zip(texts, count(texts, wheres)):
                    if self.max_tokens is not None and total + k > self.max_tokens:
                        full = True
                        break
                    total += k
                    kept.append(k)
                    hash_row(h, text)
                n += len(kept)
                out.write(np.asarray(kept, dtype=np.uint32).tobytes())
        if n == 0:
            raise CorpusError(f"{self.source}: the first row of {language!r} alone has more counted tokens than "
                              f"--max-tokens-per-language {self.max_tokens}; raise the budget")
        return _Cut(n, total, h.hexdigest(), path)

    def n_rows(self, language: str) -> int:
        return self.cuts[language].n_rows

    def n_tokens(self, language: str) -> int:
        return self.cuts[language].n_tokens

    def token_counts(self, language: str) -> np.ndarray:
        """Per-row counted tokens of `language` (memory-mapped from the temporary file)."""
        cut = self.cuts[language]
        return np.memmap(cut.counts_file, dtype=np.uint32, mode="r", shape=(cut.n_rows,))

    def iter_rows(self, language: str, start: int = 0, stop: int | None = None) -> Iterator[str]:
        n = self.n_rows(language)
        return self.base.iter_rows(language, start, n if stop is None else min(stop, n))

    def rows(self, language: str, start: int, stop: int) -> list[str]:
        return self.base.rows(language, start, min(stop, self.n_rows(language)))

    def fingerprint(self) -> str:
        if self.aligned:  # no budget: the rows are the base corpus's
            return self.base.fingerprint()
        return monolingual_fingerprint([(c, self.cuts[c].n_rows, self.cuts[c].digest) for c in self.languages])

    def close(self) -> None:
        self._cleanup()

    def __repr__(self) -> str:
        return f"Budgeted({self.base!r}, max_tokens={self.max_tokens})"
