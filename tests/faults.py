"""Fault injection for the cluster tests, through the worker's documented testing hook
(`LANGNEURONS_BEFORE_COMMIT=faults:hook`; `tests/` must be on the workers' PYTHONPATH).

`LANGNEURONS_TEST_FAULTS` holds JSON, e.g. `{"sleep": 0.2, "kill": [3], "fail": [5], "state": "/tmp/f"}`:
- `sleep`: seconds to wait before each shard's commit (slows a run down so a test can interrupt it);
- `kill`: shard indices whose first attempt writes a wrong chunk of that shard's partial and then
  SIGKILLs its own process (a death mid-commit); a marker file in the `state` directory makes it
  happen once per shard across processes;
- `fail`: shard indices that always raise `RuntimeError` (a shard that cannot succeed).
With `state` set, every attempt appends its shard index to `state`/attempts.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

FAULTS_ENV = "LANGNEURONS_TEST_FAULTS"
HOOK = "faults:hook"
TESTS_DIR = str(Path(__file__).resolve().parent)


def environment(spec: dict) -> dict[str, str]:
    """The variables that switch the faults on in this process and in workers started after it."""
    path = os.environ.get("PYTHONPATH", "")
    return {FAULTS_ENV: json.dumps(spec), "LANGNEURONS_BEFORE_COMMIT": HOOK,
            "PYTHONPATH": TESTS_DIR + (os.pathsep + path if path else "")}


def hook():
    spec = os.environ.get(FAULTS_ENV)
    return Faults.from_spec(json.loads(spec)) if spec else None


@dataclass(frozen=True, slots=True)
class Faults:
    sleep: float = 0.0
    kill: tuple[int, ...] = ()
    fail: tuple[int, ...] = ()
    state: str | None = None

    @classmethod
    def from_spec(cls, d: dict) -> "Faults":
        if d.get("kill") and not d.get("state"):
            raise ValueError(f"{FAULTS_ENV}: 'kill' needs a 'state' directory to kill only once")
        return cls(sleep=float(d.get("sleep", 0.0)), kill=tuple(d.get("kill", ())),
                   fail=tuple(d.get("fail", ())), state=d.get("state"))

    def __call__(self, shard, store, stats) -> None:
        if self.state:
            with open(Path(self.state) / "attempts", "a") as f:
                f.write(f"{shard.index}\n")
        time.sleep(self.sleep)
        if shard.index in self.fail:
            raise RuntimeError(f"injected failure in shard {shard.id} ({FAULTS_ENV})")
        if shard.index in self.kill:
            marker = Path(self.state) / f"killed-{shard.index}"
            try:
                marker.touch(exist_ok=False)
            except FileExistsError:
                return  # killed once already: this attempt succeeds
            store.partials["act_sum"][shard.index] = stats.act_sum + 1.0  # half a commit, wrong
            os.kill(os.getpid(), signal.SIGKILL)
