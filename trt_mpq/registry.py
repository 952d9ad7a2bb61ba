"""Name -> "module:attribute" tables, resolved on use: how strategies (`trt_mpq.search.registry`)
and backends (`trt_mpq.backends`) are registered without importing what they need."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from trt_mpq.errors import ConfigError


def resolve(table: Mapping[str, str], name: str, kind: str) -> Any:
    """The object `table[name]` names; `ConfigError` listing the choices for an unknown name.
    The object's own `.name` must be `name` (a table line pointing at the wrong spec fails)."""
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; use one of: {', '.join(table)}")
    module, attr = table[name].split(":")
    obj = getattr(importlib.import_module(module), attr)
    if getattr(obj, "name", name) != name:
        raise AssertionError(f"the {kind} table's {name!r} holds the spec of {obj.name!r}")
    return obj
