"""The command line's flags, built from the settings the config classes declare
(`trt_mpq.options`): one argparse flag per setting, its value kept as the raw text the user
typed (or the switch's bool), so that `options.coerce` checks it as it checks a service
request's JSON."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from trt_mpq.options import dump, options_of


def _dest(name: str) -> str:
    return "opt_" + name.lstrip("-").replace("-", "_")


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, config_cls: type,
              seen: dict[str, tuple] | None = None, only: Iterable[str] | None = None) -> None:
    """Add `config_cls`'s flags (those whose key is in `only`, if given) to `parser`, as raw
    text (`coerce` checks them when the config is built). Flags already in `seen` (shared by
    several config classes, e.g. `--sweep`) are added once; they must agree on default and
    meaning."""
    seen = {} if seen is None else seen
    only = None if only is None else set(only)
    for opt in options_of(config_cls):
        if only is not None and opt.key not in only:
            continue
        signature = (opt.default, opt.parse, opt.choices_of, opt.lo, opt.hi)
        if opt.name in seen:
            if seen[opt.name] != signature:
                raise AssertionError(f"flag {opt.name} is declared twice with different "
                                     f"defaults, parsers or ranges ({config_cls.__name__})")
            continue
        seen[opt.name] = signature
        shown = dump(opt, opt.default)
        shown = ",".join(shown) if isinstance(shown, list) else shown
        text = (opt.help + ("" if isinstance(opt.default, bool) or shown in (None, "")
                            else f" (default: {shown})")).replace("%", "%%")  # argparse's %
        if opt.kind is bool:  # default off: --flag; default on: --flag / --no-flag
            if opt.default:
                parser.add_argument(opt.name, dest=_dest(opt.name), default=None,
                                    action=argparse.BooleanOptionalAction,
                                    help=text + " (default: on)")
            else:
                parser.add_argument(opt.name, dest=_dest(opt.name), default=None,
                                    action="store_const", const=True, help=text)
            continue
        choices = opt.choices
        metavar = opt.metavar or ("{" + ",".join(choices) + "}" if choices
                                  else {int: "N", float: "X"}.get(opt.kind, opt.field.upper()))
        parser.add_argument(opt.name, dest=_dest(opt.name), default=None, metavar=metavar,
                            help=text)


def given(args: argparse.Namespace, config_classes: Iterable[type]) -> dict[str, Any]:
    """Flag key -> raw value, for the flags of `config_classes` given on the command line."""
    out = {}
    for cls in config_classes:
        for opt in options_of(cls):
            value = getattr(args, _dest(opt.name), None)
            if value is not None:
                out[opt.key] = value
    return out


__all__ = ["add_flags", "given"]
