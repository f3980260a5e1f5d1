"""Options declared once: a typed section is a frozen dataclass whose fields carry their flag, help
text, lower bound and path kind (`opt`); the CLI's flags (`add_args`) and every check of a value
(`check_section`) are read from those declarations. `config.py` declares `profile`'s sections,
`scoring/options.py` those of `score` and `ablate`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


def opt(default: Any = dataclasses.MISSING, doc: str = "", *, flag: str | None = None, min: float | None = None,
        path: Literal["one", "list"] | None = None, factory: Any = dataclasses.MISSING):
    """A config field: its default, help text, flag name (default: the field name), lower bound,
    and whether it holds a path ("one") or comma-separated paths ("list"), which are expanded."""
    meta = {"doc": " ".join(doc.split()), "flag": flag, "min": min, "path": path}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class Spec:
    """One flag as the CLI and the checks see it: where it lives and what it accepts."""

    flag: str                  # flat name: "shard_size" (the CLI flag is --shard-size)
    section: str               # ProfileConfig attribute: "counting"
    name: str                  # field name inside the section: "shard_size"
    base: type                 # int, float, str, bool (list items for lists)
    is_list: bool
    optional: bool
    choices: tuple[str, ...] | None
    min: float | None
    path: str | None           # "one" or "list": `~` and $VARS are expanded (expand_path)
    doc: str
    default: Any

    @property
    def option(self) -> str:
        return "--" + self.flag.replace("_", "-")


def _spec(section: str, cls: type, f: dataclasses.Field) -> Spec:
    """One field's Spec, from its type hint and `opt` metadata."""
    tp = typing.get_type_hints(cls)[f.name]
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional:
        tp = next(a for a in args if a is not type(None))
    is_list = typing.get_origin(tp) is list
    if is_list:
        tp = typing.get_args(tp)[0]
    choices = None
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        tp = str
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return Spec(flag=f.metadata.get("flag") or f.name, section=section, name=f.name, base=tp, is_list=is_list,
                optional=optional, choices=choices, min=f.metadata.get("min"), path=f.metadata.get("path"),
                doc=f.metadata.get("doc", ""), default=default)


def expand_path(value: str) -> str:
    """`~` and $VARS expanded, as a shell does for an unquoted argument: config files, quoted or
    `--flag=~/x` arguments and the Python API get no shell to do it. URLs are left alone: a `~` or
    `$` in them belongs to the server."""
    if "://" in value:
        return value
    out = os.path.expanduser(os.path.expandvars(value))
    unset = re.search(r"\$(\w+|\{[^}]*\})", out)
    if unset:  # a shell would make it "" silently; a folder named "$NAME" is never what was meant
        raise ValueError(f"path {value}: the variable {unset.group(0)} is not set; set it, or write the path out")
    if out.startswith("~"):
        raise ValueError(f"path {value}: there is no user {out.split('/', 1)[0][1:]!r} for ~; write the path out")
    return out


def _normalized(s: Spec, v: Any) -> Any:
    """Paths expanded; numbers as floats in float fields. YAML 1.1 (PyYAML) reads 1e-3 as a string
    (its floats need a dot and a signed exponent), so numeric strings count as numbers there."""
    if s.path and isinstance(v, str):
        return ",".join(expand_path(p.strip()) for p in v.split(",")) if s.path == "list" and "," in v \
            else expand_path(v)
    if s.base is float:
        return [_float(x) for x in v] if s.is_list and isinstance(v, list) else _float(v)
    return v


def _float(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v  # refused by the type check, which names the flag
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _is(v: Any, tp: type) -> bool:
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, tp)


def check_section(section: Any) -> None:
    """Type, choice and lower bound of every field of one section, from its declaration. Values are
    stored normalized (`_normalized`): expanded paths, floats in float fields (config files hold
    whatever YAML makes of them)."""
    for s in specs_of(type(section)):
        v = getattr(section, s.name)
        if v is None and s.optional:
            continue
        try:
            norm = _normalized(s, v)
        except ValueError as e:
            raise ValueError(f"{s.option}: {e}") from None
        if norm is not v:
            object.__setattr__(section, s.name, v := norm)
        ok = (isinstance(v, list) and all(_is(x, s.base) for x in v)) if s.is_list else _is(v, s.base)
        if not ok:
            if s.base is float:
                want = "a list of numbers" if s.is_list else "a number (e.g. 0.5 or 1e-3)"
            else:
                want = f"a list of {s.base.__name__}" if s.is_list else s.base.__name__
            raise ValueError(f"{s.option} must be {want}, got {v!r}")
        if s.choices is not None and v not in s.choices:
            raise ValueError(f"{s.option} {v!r} is not one of: {', '.join(s.choices)}")
        if s.min is not None and v < s.min:
            raise ValueError(f"{s.option} must be >= {s.min:g}, got {v}")
        if s.base is str and not s.is_list and not v.strip():
            raise ValueError(f"{s.option} is empty: give a value or leave the flag out")



@functools.cache
def specs_of(cls: type, section: str = "") -> tuple[Spec, ...]:
    """The Specs of a declared section's fields, in declaration order."""
    return tuple(_spec(section, cls, f) for f in dataclasses.fields(cls))


def add_args(parser: argparse.ArgumentParser, specs) -> None:
    """One flag per declared field: booleans as --flag/--no-flag, lists as comma-separated values.
    Every default is None, so only the flags given reach the section (its own defaults stand, and
    a config file's values are not overridden by defaults)."""
    for s in specs:
        h = s.doc if "(default" in s.doc else f"{s.doc} (default: {s.default})"
        h = h.replace("%", "%%")  # argparse formats help with %
        if s.base is bool:
            parser.add_argument(s.option, dest=s.flag, action=argparse.BooleanOptionalAction, default=None, help=h)
        elif s.is_list:
            parser.add_argument(s.option, dest=s.flag, default=None, metavar="A,B,...",
                                type=lambda v, t=s.base: [t(x) for x in v.split(",") if x.strip()], help=h)
        else:  # choices are checked by the section, which names the flag and the choices
            metavar = "{" + ",".join(s.choices) + "}" if s.choices else None
            parser.add_argument(s.option, dest=s.flag, type=s.base, default=None, metavar=metavar, help=h)


def given(args: argparse.Namespace, specs) -> dict[str, Any]:
    """The flags of `specs` given on the command line, by field name."""
    return {s.name: getattr(args, s.flag) for s in specs if getattr(args, s.flag, None) is not None}
