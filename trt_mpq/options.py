"""Settings declared once: a frozen dataclass whose fields carry their flag, its type and its
range.

Every setting a user can give (on the command line, in a service request, in a request file
a Ray worker receives) is a field of one config class with `flag(...)` metadata. From that one
declaration come the CLI's argparse flags (`trt_mpq.cli.flags`), the one validation every entry
point goes through (`coerce`: the text of a command-line flag and the typed value of a JSON request
are checked alike, for type, finiteness, choices and range), the config objects themselves
(`build`), their JSON form (`to_json_dict` / `from_json_dict`) and the options reference
(docs/options.md, `trt_mpq.cli.reference`). Nothing here imports more than the standard
library.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_mpq.errors import ConfigError, TrtMpqError

_KEY = "trt_mpq.flag"
#: the longest text a setting takes (a module:function, a metric, an address): a request that
#: sends megabytes in one is refused, never stored
MAX_TEXT = 200


def flag(name: str, help: str, *, parse: Callable[[str], Any] | None = None,
         dump: Callable[[Any], Any] | None = None,
         choices: Iterable[str] | Callable[[], Iterable[str]] | None = None,
         metavar: str | None = None, lo: float | None = None, hi: float | None = None,
         above: bool = False, below: bool = False) -> dict:
    """Field metadata that makes a config field a setting with a flag.

    `parse` turns the flag's text (or a JSON string) into the field's value and `dump` turns
    the value back into JSON (default: the field's own type, `int`/`float`/`str`/an enum's
    value). `choices` are the allowed strings (or a function returning them, read when
    checked: a registry that grows after import); `lo`/`hi` the inclusive range of a number
    (`above`: `lo` itself excluded; `below`: `hi` excluded). A bool field is a switch
    (`--flag` / `--no-flag`)."""
    return {_KEY: {"name": name, "help": help, "parse": parse, "dump": dump,
                   "choices": choices if choices is None or callable(choices)
                   else tuple(choices),
                   "metavar": metavar, "lo": lo, "hi": hi, "above": above,
                   "below": below}}


@dataclass(frozen=True)
class Option:
    """One setting: its flag, the config class and field it fills, and what it accepts."""

    name: str  # "--repeats"
    help: str
    owner: type  # the config class
    field: str  # the field's name in it
    default: Any  # None where required
    required: bool  # the field has no default
    kind: type  # bool, int, float, str, an Enum, or the value type `parse` returns
    optional: bool  # None is a value (the field's default or annotation says so)
    parse: Callable[[str], Any] | None
    dump: Callable[[Any], Any] | None
    choices_of: tuple[str, ...] | Callable[[], Iterable[str]] | None
    metavar: str | None
    lo: float | None
    hi: float | None
    above: bool
    below: bool

    @property
    def choices(self) -> tuple[str, ...] | None:
        c = self.choices_of
        return tuple(c()) if callable(c) else c

    @property
    def key(self) -> str:
        """The name without dashes: the key of a service request's `options`."""
        return self.name.lstrip("-")

    def accepts(self) -> str:
        """What the setting takes, in words ("an integer >= 3")."""
        if self.kind is bool:
            return "true or false"
        choices = self.choices
        if choices:
            return "one of " + ", ".join(choices)
        what = {int: "an integer", float: "a number", str: "text", Path: "a path",
                tuple: "a comma-separated list"}.get(self.kind, "a value")
        lo, hi = _number(self.lo), _number(self.hi)
        if lo is not None and hi is not None and not (self.above or self.below):
            what += f" in {lo}..{hi}"
        elif lo is not None:
            what += f" {'>' if self.above else '>='} {lo}"
            if hi is not None:
                what += f" and {'<' if self.below else '<='} {hi}"
        elif hi is not None:
            what += f" {'<' if self.below else '<='} {hi}"
        return what


def _number(x: float | None) -> str | None:
    return None if x is None else str(int(x)) if float(x).is_integer() else f"{x:g}"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _kind(annotation: Any, default: Any, required: bool) -> tuple[type, bool]:
    """(the value type, whether None is allowed) of a field's annotation."""
    optional = default is None and not required
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = optional or len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else Any
    origin = typing.get_origin(annotation)
    if origin is not None:
        annotation = origin  # tuple[str, ...] -> tuple
    if not isinstance(annotation, type):
        annotation = type(default) if default is not None else str
    return annotation, optional


def options_of(config_cls: type) -> list[Option]:
    """The settings of `config_cls`: its fields that carry a `flag(...)`."""
    return list(_options_of(config_cls))


_CACHE: dict[type, tuple[Option, ...]] = {}


def _annotation(config_cls: type, f: dataclasses.Field) -> Any:
    """A field's annotation, resolved in its class's module (`from __future__ import
    annotations` keeps them as text); None when it cannot be (then the default's type)."""
    ann = f.type
    if isinstance(ann, str):
        try:
            ann = eval(ann, vars(sys.modules[config_cls.__module__]))
        except Exception:  # noqa: BLE001 - a name imported under TYPE_CHECKING only
            return None
    return ann


def _options_of(config_cls: type) -> tuple[Option, ...]:
    if config_cls not in _CACHE:
        out = []
        for f in dataclasses.fields(config_cls):
            if _KEY not in f.metadata:
                continue
            meta = f.metadata[_KEY]
            default = _default(f)
            required = (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)  # type: ignore[misc]
            kind, optional = _kind(_annotation(config_cls, f), default, required)
            out.append(Option(name=meta["name"], help=meta["help"], owner=config_cls,
                              field=f.name, default=default, required=required, kind=kind,
                              optional=optional, parse=meta["parse"], dump=meta["dump"],
                              choices_of=meta["choices"],
                              metavar=meta["metavar"], lo=meta["lo"], hi=meta["hi"],
                              above=meta["above"], below=meta["below"]))
        _CACHE[config_cls] = tuple(out)
    return _CACHE[config_cls]


# -- the one validation ----------------------------------------------------------------------
def coerce(opt: Option, value: Any) -> Any:
    """`value` (a command-line flag's text, a JSON value, or already the field's value) as the
    field's value, checked for type, finiteness, choices and range; ConfigError says which
    setting, what it takes and what it got."""
    given = value

    def bad(why: str | None = None) -> ConfigError:
        shown = repr(given) if len(repr(given)) <= 80 else repr(given)[:77] + "..."
        return ConfigError(f"{opt.name} takes {why or opt.accepts()}, got {shown}")

    if value is None:
        if opt.optional:
            return None
        raise bad()
    kind = opt.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if isinstance(value, bool):  # JSON true for a number or a string: never a 1
        raise bad()
    if isinstance(value, float) and not math.isfinite(value):
        raise bad("a finite value")
    if kind is tuple and isinstance(value, (list, tuple)) and opt.parse is not None:
        # a JSON list (or a tuple built in code) is checked as its text would be
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            raise bad()
        value = ",".join(map(str, value))
    elif kind is tuple and isinstance(value, list):  # the JSON form of a tuple
        if not all(isinstance(v, str) for v in value):
            raise bad()
        value = tuple(value)
    if opt.parse is not None and not isinstance(value, kind):
        if not isinstance(value, (str, int, float)) or len(str(value)) > MAX_TEXT:
            raise bad()
        try:
            value = opt.parse(value if isinstance(value, str) else repr(value))
        except TrtMpqError as e:
            raise ConfigError(f"{opt.name}: {e}") from None
        except (TypeError, ValueError):
            raise bad() from None
    elif isinstance(kind, type) and issubclass(kind, enum.Enum) and not isinstance(value, kind):
        if not isinstance(value, str):
            raise bad()
        parse = getattr(kind, "parse", None)
        try:
            value = parse(value) if parse else kind(value.strip().lower())
        except (ValueError, TrtMpqError):
            raise bad("one of " + ", ".join(str(m.value) for m in kind)) from None
    elif kind is int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise bad() from None
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        elif not isinstance(value, int):
            raise bad()
    elif kind is float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise bad() from None
        elif not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
    elif kind is str:
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise bad(f"text of at most {MAX_TEXT} characters" if isinstance(value, str)
                      else None)
    elif kind is Path:
        if not isinstance(value, (str, Path)) or len(str(value)) > 4096:
            raise bad("a path")
        value = Path(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise bad("a finite value")
    choices = opt.choices
    if choices is not None and (value.value if isinstance(value, enum.Enum) else value) \
            not in choices:
        raise bad()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if opt.lo is not None and (value < opt.lo or (opt.above and value == opt.lo)):
            raise bad()
        if opt.hi is not None and (value > opt.hi or (opt.below and value == opt.hi)):
            raise bad()
    return value


def check(config: Any) -> None:
    """Every setting of a config object is of its type and in its range (`coerce`); called by
    a config's `__post_init__`, so a config built in code is checked as a parsed one is."""
    for opt in _options_of(type(config)):
        value = getattr(config, opt.field)
        if coerce(opt, value) != value:
            raise ConfigError(f"{opt.name} takes {opt.accepts()}, got {value!r}")


def dump(opt: Option, value: Any) -> Any:
    """The JSON form of a setting's value (what `coerce` reads back to the same value)."""
    if value is None:
        return None
    if opt.dump is not None:
        return opt.dump(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# -- config objects from settings --------------------------------------------------------------
def build(config_cls: type, values: Mapping[str, Any], owner: str = "", **fixed: Any) -> Any:
    """`config_cls` from `values` (flag key -> text or JSON value; keys of other classes are
    ignored) and the fields that are not settings (`fixed`), defaults for the rest."""
    kwargs = dict(fixed)
    for opt in _options_of(config_cls):
        if opt.key in values:
            kwargs[opt.field] = coerce(opt, values[opt.key])
    try:
        return config_cls(**kwargs)
    except TypeError as e:  # a config whose __init__ is not the dataclass's
        raise ConfigError(f"{owner or config_cls.__name__}: {e}") from None


def to_json_dict(config: Any) -> dict:
    """A config dataclass as JSON-friendly data: every field (settings in their JSON form,
    tuples as lists, enums as their values, nested configs as dicts)."""
    opts = {o.field: o for o in _options_of(type(config))}
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if f.name in opts:
            out[f.name] = dump(opts[f.name], v)
        elif dataclasses.is_dataclass(v):
            out[f.name] = to_json_dict(v)
        elif isinstance(v, enum.Enum):
            out[f.name] = v.value
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        elif isinstance(v, Path):
            out[f.name] = str(v)
        else:
            out[f.name] = v
    return out


def from_json_dict(config_cls: type, data: Mapping[str, Any], where: str = "") -> Any:
    """`to_json_dict`'s inverse for flat configs: settings through `coerce`, other fields as
    given (numbers, strings, bools). Unknown keys are refused."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or config_cls.__name__} must be an object, got {data!r}")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where or config_cls.__name__}: unknown setting(s) "
                          f"{', '.join(map(repr, unknown))}")
    opts = {o.field: o for o in _options_of(config_cls)}
    kwargs = {k: (coerce(opts[k], v) if k in opts else v) for k, v in data.items()}
    for k, v in kwargs.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where or config_cls.__name__}: {k} must be finite")
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    try:
        return config_cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or config_cls.__name__}: {e}") from None


def keys(config_cls: type) -> set[str]:
    return {o.key for o in _options_of(config_cls)}


def refuse_foreign(values: Mapping[str, Any], mine: type, others: Mapping[str, type],
                   owner: str) -> None:
    """A setting that belongs only to other owners' config classes (`others`: owner -> class,
    e.g. the other backends) is refused with a message naming who it is for."""
    own = keys(mine)
    for cls in others.values():
        for key in sorted((keys(cls) & set(values)) - own):
            users = sorted(o for o, c in others.items() if key in keys(c))
            raise ConfigError(f"--{key} applies to {', '.join(users)}, not {owner}")


__all__ = ["Option", "build", "check", "coerce", "dump", "flag", "from_json_dict", "keys",
           "options_of", "refuse_foreign", "to_json_dict"]
