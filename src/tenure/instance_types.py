"""Instance types: which driver makes an instance of each type real (FABRIC's ``resources:``).

One YAML file, read by the server (which types exist, and how long their
operations may take) and by every host agent (which driver runs them)::

    resources:
      vlan-file:
        driver: ansible:vlan.yml          # any LRM driver: ocf:, lsb:, exec:, python:, ansible:
        timeout: 60s                      # each operation (create, modify, delete, probe)
        monitor: 30s                      # the recurring probe (0 or omitted: none)
        properties:                       # fixed parameters: an instance's own cannot override them
          dir: /var/lib/tenure/vlans
      bandwidth:
        driver: python:tenure.drivers.tc:Shaper
        locals:                           # values from the agent's local allocator, one per instance:
          classid: 2-65533                # the same value after any agent restart

The built-in types (``bandwidth`` and ``mirror`` for reservations, ``memory`` for examples) are
always there; a file adds types or replaces them by name. Operations map to
the LRM's actions as FABRIC's handlers do: create = start, modify = reload,
delete = stop, probe = monitor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tenure.domain.driverspec import parse_spec
from tenure.domain.errors import InvalidInput
from tenure.domain.idspace import normalize_ranges
from tenure.domain.instance import PARAM_NAME, validate_parameters
from tenure.domain.names import validate_name
from tenure.domain.units import parse_duration

MAX_TIMEOUT = 86400.0
INVALID = "invalid_instance_types"  # the code of every refusal of a types file
BUILTIN: dict[str, dict[str, Any]] = {
    "bandwidth": {"driver": "python:tenure.drivers.tc:Shaper", "timeout": "30s", "monitor": "60s",
                  "locals": {"classid": "2-65533"}},
    "mirror": {"driver": "python:tenure.drivers.tc:Mirror", "timeout": "30s", "monitor": "60s",
               "locals": {"slot": "1-4000"}},
    "memory": {"driver": "python:tenure.drivers.bundled.example:Memory", "timeout": "10s", "monitor": "30s"},
}


@dataclass(frozen=True)
class InstanceType:
    name: str
    driver: str
    timeout: float = 60.0  # seconds per operation
    monitor: float = 0.0  # seconds between probes; 0: none
    properties: Mapping[str, str] = field(default_factory=dict)
    locals: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)  # param -> ranges


def _seconds(value: object, what: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        s = float(value)
    elif isinstance(value, str):
        try:
            s = float(parse_duration(value))
        except InvalidInput:
            raise InvalidInput(f"{what}: {value!r} is not a duration (30s, 5m, 1h)", code=INVALID) from None
    else:
        raise InvalidInput(f"{what} must be a duration (30s, 5m, 1h)", code=INVALID)
    if not (0 < s <= MAX_TIMEOUT or (allow_zero and s == 0)):
        raise InvalidInput(f"{what} must be between 0 and {MAX_TIMEOUT:g} seconds", code=INVALID)
    return s


def parse_type(name: str, doc: object) -> InstanceType:
    where = f"resources.{name}"
    validate_name(name, what="resource type")
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"{where} must be a mapping with at least a driver", code=INVALID)
    unknown = set(doc) - {"driver", "timeout", "monitor", "properties", "locals"}
    if unknown:
        raise InvalidInput(f"{where}: unknown key {sorted(unknown)[0]!r}", code=INVALID)
    driver = doc.get("driver")
    if not isinstance(driver, str):
        raise InvalidInput(f"{where}.driver must be a driver such as python:module:Class", code=INVALID)
    parse_spec(driver)
    timeout = _seconds(doc.get("timeout", 60), f"{where}.timeout")
    monitor = _seconds(doc.get("monitor", 0), f"{where}.monitor", allow_zero=True)
    try:
        props = validate_parameters(doc.get("properties"))
    except InvalidInput as exc:
        raise InvalidInput(f"{where}.properties: {exc.message}", code=INVALID) from None
    locals_: dict[str, tuple[tuple[int, int], ...]] = {}
    raw_locals = doc.get("locals") or {}
    if not isinstance(raw_locals, Mapping):
        raise InvalidInput(f"{where}.locals must map parameter names to ranges", code=INVALID)
    for param, ranges in raw_locals.items():
        if not isinstance(param, str) or PARAM_NAME.fullmatch(param) is None:
            raise InvalidInput(f"{where}.locals: {param!r} is not a parameter name", code=INVALID)
        try:
            locals_[param] = _ranges(ranges)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}.locals.{param}: {exc.message}", code=INVALID) from None
    return InstanceType(name, driver, timeout, monitor, props, locals_)


def _ranges(raw: object) -> tuple[tuple[int, int], ...]:
    """``"2-65534"``, ``["2-99", "200-299"]`` or ``[[2, 99]]`` as normalized (lo, hi) ranges."""
    items = raw if isinstance(raw, list) else [raw]
    pairs: list[list[int]] = []
    for item in items:
        if isinstance(item, str):
            lo, sep, hi = item.partition("-")
            try:
                pairs.append([int(lo), int(hi if sep else lo)])
            except ValueError:
                raise InvalidInput(f"{item!r} is not a range such as 2-65534", code=INVALID) from None
        elif isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item):
            pairs.append(list(item))
        elif type(item) is int:
            pairs.append([item, item])
        else:
            raise InvalidInput(f"{item!r} is not a range such as 2-65534", code=INVALID)
    return tuple((r[0], r[1]) for r in normalize_ranges(pairs, what="locals"))


def parse_instance_types(doc: object) -> dict[str, InstanceType]:
    """The built-in types, with those of ``doc`` (a parsed YAML document) added or replacing them."""
    types = {name: parse_type(name, d) for name, d in BUILTIN.items()}
    if doc is None:
        return types
    if not isinstance(doc, Mapping) or set(doc) - {"resources"}:
        raise InvalidInput("an instance types file is a mapping with one key, resources", code=INVALID)
    resources = doc.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise InvalidInput("resources must map type names to their drivers", code=INVALID)
    for name, d in resources.items():
        types[str(name)] = parse_type(str(name), d)
    return types


def load_instance_types(path: Path | str | None) -> dict[str, InstanceType]:
    """Read an instance types file (``None``: the built-in types only); ``InvalidInput`` says what is wrong."""
    if path is None:
        return parse_instance_types(None)
    try:
        text = Path(path).read_text(encoding="utf-8")
        doc = yaml.safe_load(text)
    except OSError as exc:
        raise InvalidInput(f"cannot read instance types file {path}: {exc.strerror}", code=INVALID) from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"instance types file {path} is not valid YAML: {exc}", code=INVALID) from None
    return parse_instance_types(doc)
