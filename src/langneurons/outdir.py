"""The output folders of `score` and `steer`: written only when new, empty, or one the same
command wrote before (it holds that command's marker file), and never inside a Zarr store.

`check` refuses without writing anything; `claim` then creates the folder and its marker. A
folder claimed again holds only the plain files its command wrote: a link or a subfolder there
(which the command never writes) is refused, since a rewrite would land wherever it points.
"""

from __future__ import annotations

import json
from pathlib import Path


def check(d: Path, marker: str, command: str) -> None:
    """Refuse `d` as `command`'s output folder unless it is new, empty or an earlier output of it."""
    if d.is_symlink():
        raise ValueError(f"--out {d} is a symbolic link; `{command}` would write wherever it points: give a plain folder")
    if d.exists() and not d.is_dir():
        raise ValueError(f"--out {d} is a file: give a folder for the {command} outputs")
    inside = next((p for p in [d, *d.absolute().parents] if (p / "zarr.json").is_file()), None)
    if inside is not None:
        raise ValueError(f"--out {d} is inside the Zarr store {inside}; `{command}` never writes into a store: "
                         "choose a folder outside it")
    mark = d / marker
    if d.is_dir() and any(d.iterdir()) and not (mark.is_file() and not mark.is_symlink()):
        raise ValueError(f"--out {d} is a folder of other files; `{command}` writes only into a new folder, an "
                         f"empty one, or an earlier {command} output: choose another --out")
    odd = sorted(p.name for p in d.iterdir() if p.is_symlink() or not p.is_file()) if d.is_dir() else []
    if odd:
        raise ValueError(f"--out {d} is an earlier {command} output but also holds {', '.join(odd[:5])} (a link or a "
                         f"folder, which `{command}` never writes); nothing was written: move those out, or choose "
                         "another --out")


def claim(d: Path, marker: str, command: str, **state) -> None:
    """Create `d` (after `check`) and write its marker, with `state` beside `written_by`."""
    d.mkdir(parents=True, exist_ok=True)
    (d / marker).write_text(json.dumps({"written_by": f"langneurons {command}", **state}) + "\n")
