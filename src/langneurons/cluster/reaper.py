"""Stop a local Ray instance's processes when the driver that started it dies without stopping them.

Ray ties most of a local instance's processes to the driver, but some outlive a driver killed with
SIGKILL (seen with Ray 2.60: the dashboard and runtime-env agents, re-parented to init). So when
langneurons starts a local instance it also starts this small watcher, in its own session (a ^C
in the terminal does not reach it), connected to the driver by a pipe. The driver sends it the
processes it started (pid and start time) as they appear; when the pipe closes (the driver ended,
however), the watcher waits GRACE_S for Ray's own shutdown, then terminates whichever of those
processes still run, and kills them if they ignore that. The start time guards against pid reuse:
a process is only signalled if it is the one that was reported.

    python -m langneurons.cluster.reaper     (started by `Reaper.start`; reads JSON lines on stdin)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

log = logging.getLogger(__name__)

GRACE_S = 3.0
TERM_WAIT_S = 3.0


class Reaper:
    """The driver's side: start the watcher, report processes, close at the end."""

    def __init__(self, proc: subprocess.Popen, since: float):
        self.proc = proc
        self.since = since                       # only processes started after this are Ray's
        self.sent: set[tuple[int, float]] = set()

    @classmethod
    def start(cls) -> "Reaper | None":
        try:
            import psutil  # noqa: F401  (Ray depends on it; without it there is nothing to watch with)
        except ImportError:
            log.warning("psutil is missing: local Ray processes cannot be cleaned up if this run is killed")
            return None
        since = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "langneurons.cluster.reaper"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                close_fds=True)
        return cls(proc, since)

    def report_children(self) -> None:
        """Send every Ray process started under this one since the watcher started, once each."""
        import psutil

        new = []
        for p in psutil.Process().children(recursive=True):
            if p.pid == self.proc.pid:
                continue
            try:
                key = (p.pid, p.create_time())
                is_ray = "ray" in " ".join([p.name(), *p.cmdline()[:2]])
            except psutil.Error:
                continue
            if not is_ray or key[1] < self.since - 1.0:  # another program this process started
                continue
            if key not in self.sent:
                self.sent.add(key)
                new.append(list(key))
        if new:
            try:
                self.proc.stdin.write((json.dumps(new) + "\n").encode())
                self.proc.stdin.flush()
            except OSError:
                pass

    def close(self) -> None:
        """Ray was shut down: the watcher cleans up whatever is left, then exits."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass


def _watch() -> None:
    import psutil

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the closing pipe ends the watch
    known: set[tuple[int, float]] = set()
    for line in sys.stdin.buffer:
        try:
            known.update((int(pid), float(t)) for pid, t in json.loads(line))
        except (ValueError, TypeError):
            continue
    time.sleep(GRACE_S)
    alive = []
    for pid, started in known:
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - started) < 1e-3:
                alive.append(p)
        except psutil.Error:
            pass
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=TERM_WAIT_S)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            pass


if __name__ == "__main__":
    os.environ.pop("LANGNEURONS_BEFORE_COMMIT", None)  # the workers' testing hook is not the reaper's
    _watch()
