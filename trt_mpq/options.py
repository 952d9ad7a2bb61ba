"""Settings declared once: a frozen dataclass whose fields carry their command-line flag.

A backend's or a strategy's config class is the single place its settings are declared; the
CLI builds one argparse group per config class from the fields that carry a `flag(...)`, and
builds the config object back from the parsed arguments. No import here is heavier than
argparse.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from trt_mpq.errors import ConfigError

_KEY = "trt_mpq.flag"


def flag(name: str, help: str, *, parse: Callable[[str], Any] | None = None,
         choices: Iterable[str] | None = None, metavar: str | None = None) -> dict:
    """Field metadata that makes a config field a command-line flag. A bool field becomes a
    switch (`--flag` sets True). `parse` turns the flag's text into the field's value (default:
    the type of the field's default, `int`/`float`/`str`)."""
    return {_KEY: {"name": name, "help": help, "parse": parse,
                   "choices": tuple(choices) if choices is not None else None,
                   "metavar": metavar}}


def flag_fields(config_cls: type) -> list[tuple[dataclasses.Field, dict]]:
    """(field, flag metadata) for every field of `config_cls` that is a command-line flag."""
    return [(f, f.metadata[_KEY]) for f in dataclasses.fields(config_cls) if _KEY in f.metadata]


def _dest(name: str) -> str:
    return "opt_" + name.lstrip("-").replace("-", "_")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config_cls: type,
              seen: dict[str, tuple] | None = None) -> None:
    """Add `config_cls`'s flags to `parser`. Flags already in `seen` (shared by several config
    classes, e.g. `--sweep`) are added once; they must agree on default and meaning."""
    seen = {} if seen is None else seen
    for f, meta in flag_fields(config_cls):
        name = meta["name"]
        default = _default(f)
        signature = (default, meta["parse"], meta["choices"])
        if name in seen:
            if seen[name] != signature:
                raise AssertionError(f"flag {name} is declared twice with different defaults "
                                     f"or parsers ({config_cls.__name__})")
            continue
        seen[name] = signature
        shown = ",".join(default) if isinstance(default, tuple) else default
        text = meta["help"] + ("" if isinstance(default, bool) or default in (None, "", ())
                               else f" (default: {shown})")
        if isinstance(default, bool):  # default off: --flag; default on: --flag / --no-flag
            action = "store_const" if not default else argparse.BooleanOptionalAction
            extra = {"const": True} if not default else {}
            parser.add_argument(name, dest=_dest(name), action=action, default=None,
                                help=text + ("" if not default else " (default: on)"), **extra)
            continue
        parse = meta["parse"] or (type(default) if default is not None else str)
        metavar = meta["metavar"] or (None if meta["choices"] else f.name.upper())
        parser.add_argument(name, dest=_dest(name), type=parse, default=None,
                            choices=meta["choices"], metavar=metavar, help=text)


def given(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """Field name -> value for the flags of `config_cls` that were given on the command line."""
    out = {}
    for f, meta in flag_fields(config_cls):
        value = getattr(args, _dest(meta["name"]), None)
        if value is not None:
            out[f.name] = value
    return out


def flags_given(args: argparse.Namespace, config_classes: Iterable[type]) -> set[str]:
    """The flag names, among those of `config_classes`, given on the command line."""
    return {meta["name"] for cls in config_classes for _, meta in flag_fields(cls)
            if getattr(args, _dest(meta["name"]), None) is not None}


def flag_names(config_cls: type) -> set[str]:
    return {meta["name"] for _, meta in flag_fields(config_cls)}


def build(config_cls: type, args: argparse.Namespace, owner: str,
          others: Mapping[str, type] = {}) -> Any:  # noqa: B006 - read only
    """`config_cls` from the flags given (defaults for the rest). A flag that belongs only to
    other owners' config classes (`others`: owner -> class) is refused with a message naming
    who it is for."""
    mine = flag_names(config_cls)
    for cls in others.values():
        for name in sorted(flags_given(args, [cls]) - mine):
            users = sorted(o for o, c in others.items() if name in flag_names(c))
            raise ConfigError(f"{name} applies to {', '.join(users)}, not {owner}")
    try:
        return config_cls(**given(args, config_cls))
    except TypeError as e:
        raise ConfigError(f"{owner}: {e}") from None


def to_json_dict(config: Any) -> dict:
    """A config dataclass as JSON-friendly data (tuples as lists)."""
    return {f.name: (list(v) if isinstance(v := getattr(config, f.name), tuple) else v)
            for f in dataclasses.fields(config)}


__all__ = ["flag", "flag_fields", "flag_names", "add_flags", "given", "flags_given", "build",
           "to_json_dict"]
