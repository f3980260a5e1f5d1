"""Reading a `--config` file: a flat mapping of flag names to values, in YAML (files named .yaml or
.yml) or JSON (any other name). Every problem is one ValueError (FileNotFoundError when the file is
not there) that names the file, the line where the parser knows it, and what to do; the fields'
values are checked by `ProfileConfig.from_file`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

YAML_SUFFIXES = (".yaml", ".yml")
EXAMPLE = "one `field: value` per line, e.g. threshold: 0.5"


def read_config_file(path: Path) -> dict[Any, Any]:
    """The mapping a config file holds (keys not yet checked against the known fields)."""
    if path.is_dir():
        raise ValueError(f"config file {path} is a folder: give a YAML (.yaml) or JSON (.json) file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"config file {path} cannot be read ({e.strerror}): check its permissions") from None
    try:
        text = raw.decode("utf-8-sig")  # -sig: editors on Windows start UTF-8 files with a BOM
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"config file {path}, line {line}: byte 0x{raw[e.start]:02x} is not UTF-8; save the "
                         "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    data = _yaml(path, text) if path.suffix.lower() in YAML_SUFFIXES else _json(path, text)
    if data is None and path.suffix.lower() in YAML_SUFFIXES:  # an empty YAML file: every default
        return {}
    if not isinstance(data, dict):
        what = "nothing" if data is None else f"a {type(data).__name__}"
        raise ValueError(f"config file {path} holds {what}, not a mapping of field: value; write {EXAMPLE}")
    return data


def _yaml(path: Path, text: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_unique_keys_loader())
    except yaml.MarkedYAMLError as e:
        m, c = e.problem_mark, e.context_mark
        where = f", line {m.line + 1}, column {m.column + 1}" if m is not None else ""
        began = f" ({e.context} at line {c.line + 1}, column {c.column + 1})" if e.context and c is not None else ""
        if "'\\t'" in str(e.problem):  # PyYAML names the tab by its repr
            fix = "YAML takes no tabs there (nor in indentation): replace the tab with spaces"
        elif "given twice" in str(e.problem):
            fix = "keep one of them"
        else:
            fix = f"fix the YAML there ({EXAMPLE})"
        raise ValueError(f"config file {path}{where}: {e.problem}{began}; {fix}") from None
    except yaml.YAMLError as e:  # the reader's errors (control characters) carry an offset, not a mark
        pos = getattr(e, "position", None)
        where = f", line {text[:pos].count(chr(10)) + 1}" if isinstance(pos, int) else ""
        reason = " ".join(str(getattr(e, "reason", "") or e).split())
        raise ValueError(f"config file {path}{where}: not valid YAML ({reason}); remove the character") from None


def _unique_keys_loader():
    """yaml.SafeLoader, except that a key given twice is an error (PyYAML keeps the last one
    silently, so a forgotten line would override the one the user edited)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key if isinstance(key, str) else id(key_node))
            return super().construct_mapping(node, deep=deep)

    return Loader


def _json(path: Path, text: str) -> Any:
    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        twice = sorted({k for k in keys if keys.count(k) > 1})
        if twice:
            raise ValueError(f"config file {path}: {twice[0]!r} is given twice; keep one of them")
        return dict(pairs)

    try:
        return json.loads(text, object_pairs_hook=unique)
    except json.JSONDecodeError as e:
        if path.suffix.lower() != ".json" and _is_yaml_mapping(text):
            raise ValueError(f"config file {path} holds YAML, but only files named .yaml or .yml are read as YAML "
                             f"(any other name as JSON): rename it to {path.with_suffix('.yaml').name}") from None
        raise ValueError(f"config file {path}, line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}); fix "
                         f"it there, or write YAML ({EXAMPLE}) in a file named .yaml") from None


def _is_yaml_mapping(text: str) -> bool:
    import yaml

    try:
        return isinstance(yaml.safe_load(text), dict)
    except yaml.YAMLError:
        return False
