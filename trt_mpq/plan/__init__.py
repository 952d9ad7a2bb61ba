"""Precisions and precision plans.

A `Plan` is a frozen, hashable mapping group name -> `Precision`, covering every group of a model.
It round-trips through JSON; its identity (`Plan.digest`) depends only on the mapping, never on the
order groups were listed in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from trt_mpq.errors import PlanError
from trt_mpq.plan.precision import SPECS, Precision, PrecisionSpec


@dataclass(frozen=True)
class Plan:
    """A complete assignment group -> precision, plus the backend's runtime options for the
    artifact (e.g. ONNX Runtime graph transformers to disable; none by default). Build one with
    `Plan.of`, `Plan.uniform` or `Plan.from_json`; never from list positions."""

    items: tuple[tuple[str, Precision], ...]
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        names = [n for n, _ in self.items]
        if len(set(names)) != len(names):
            raise PlanError("a plan names the same group twice")
        if list(names) != sorted(names):
            object.__setattr__(self, "items", tuple(sorted(self.items, key=lambda kv: kv[0])))
        object.__setattr__(self, "options", tuple(sorted(
            (str(k), str(v)) for k, v in dict(self.options).items() if str(v) != "")))

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def of(cls, mapping: Mapping[str, Precision],
           options: Mapping[str, str] | None = None) -> Plan:
        return cls(tuple(sorted(mapping.items(), key=lambda kv: kv[0])),
                   tuple((options or {}).items()))

    def with_options(self, options: Mapping[str, str]) -> Plan:
        """The same precisions with these runtime options (an empty value removes one)."""
        merged = dict(self.options)
        merged.update(options)
        return Plan(self.items, tuple(merged.items()))

    @classmethod
    def uniform(cls, groups: Iterable[str], precision: Precision) -> Plan:
        return cls.of({g: precision for g in groups})

    def with_(self, changes: Mapping[str, Precision]) -> Plan:
        unknown = set(changes) - set(self.groups)
        if unknown:
            raise PlanError(f"unknown group(s) {sorted(unknown)[:5]}")
        merged = dict(self.items)
        merged.update(changes)
        return Plan.of(merged, dict(self.options))

    # -- views ---------------------------------------------------------------------------------
    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.items)

    def __getitem__(self, group: str) -> Precision:
        for n, p in self.items:
            if n == group:
                return p
        raise KeyError(group)

    def as_dict(self) -> dict[str, Precision]:
        return dict(self.items)

    def groups_at(self, precision: Precision) -> tuple[str, ...]:
        return tuple(n for n, p in self.items if p is precision)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, p in self.items:
            out[p.value] = out.get(p.value, 0) + 1
        return out

    @property
    def digest(self) -> str:
        """Stable 16-hex-digit identity of the mapping and the options (a plan without options
        has the digest it had before options existed)."""
        canon = [[n, p.value] for n, p in self.items]
        if self.options:
            canon.append(["#options", [list(kv) for kv in self.options]])
        return hashlib.sha256(json.dumps(canon, separators=(",", ":")).encode()).hexdigest()[:16]

    def describe(self) -> str:
        text = ", ".join(f"{k}:{v}" for k, v in sorted(self.counts().items()))
        return text + "".join(f"; {k}={v}" for k, v in self.options)

    # -- JSON ----------------------------------------------------------------------------------
    def to_json_dict(self) -> dict:
        out: dict = {"format": "trt-mpq-plan/1", "groups": {n: p.value for n, p in self.items}}
        if self.options:
            out["options"] = dict(self.options)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), indent=2)

    @classmethod
    def from_json_dict(cls, data: object, groups: Iterable[str] | None = None) -> Plan:
        """Parse a plan. With `groups`, names are checked and a `"default"` precision fills the
        groups the file does not list."""
        if not isinstance(data, dict) or not isinstance(data.get("groups"), dict):
            raise PlanError(
                'a plan file must be a JSON object with a "groups" object mapping group name to '
                'precision, e.g. {"groups": {"/conv1/Conv": "int8"}, "default": "fp32"}; '
                "`trt-mpq inspect MODEL` lists the group names"
            )
        mapping: dict[str, Precision] = {}
        for name, value in data["groups"].items():
            if not isinstance(value, str):
                raise PlanError(f"group {name!r}: precision must be a string, got {value!r}")
            mapping[str(name)] = Precision.parse(value)
        if groups is not None:
            known = list(groups)
            unknown = sorted(set(mapping) - set(known))
            if unknown:
                raise PlanError(
                    f"the plan names {len(unknown)} group(s) the model does not have, e.g. "
                    f"{unknown[0]!r}; `trt-mpq inspect MODEL` lists the group names"
                )
            missing = [g for g in known if g not in mapping]
            if missing:
                default = data.get("default")
                if default is None:
                    raise PlanError(
                        f"the plan leaves {len(missing)} group(s) unassigned, e.g. {missing[0]!r}; "
                        'list them or add "default": "fp32"'
                    )
                if not isinstance(default, str):
                    raise PlanError(f'"default" must be a precision string, got {default!r}')
                d = Precision.parse(default)
                for g in missing:
                    mapping[g] = d
        if not mapping:
            raise PlanError("the plan assigns no group")
        options = data.get("options") or {}
        if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
            raise PlanError('"options" must be an object of strings, e.g. '
                            '{"disabled_optimizers": "SkipLayerNormFusion"}')
        return cls.of(mapping, options)

    @classmethod
    def from_json(cls, text: str, groups: Iterable[str] | None = None) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"the plan is not valid JSON ({e.msg} at line {e.lineno}); "
                            "fix the file or write a new one with `trt-mpq search`") from None
        return cls.from_json_dict(data, groups)


__all__ = ["Plan", "Precision", "PrecisionSpec", "SPECS"]
