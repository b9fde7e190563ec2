"""The OCF 1.1 contract as data: exit codes, the environment, exit reasons, meta-data.

Everything here is pure (no processes, no files), so the rules an agent is held
to can be tested on their own and shared by every driver class: exec drivers are
given the same environment as OCF agents, and python handlers describe
themselves with the same meta-data XML.

- Exit codes: 0-9, 190 and 191 are the codes of OCF 1.1; anything else is a
  generic error (1), as Pacemaker treats it. LSB init scripts use other numbers
  for ``status``; :func:`lsb_rc` maps them the way Pacemaker does.
- The environment is built from nothing (never the manager's own environment, so
  no token or credential of ours reaches an agent) and parameter names are
  checked, because they become environment variable names.
- Meta-data is parsed into frozen dataclasses, so the LRM can check a resource's
  parameters against what the agent declares before running anything.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenure.domain.driverspec import DriverSpec
from tenure.domain.errors import InvalidInput

# --- exit codes --------------------------------------------------------------------------------

RC_NAMES: dict[int, str] = {
    0: "success",
    1: "generic_error",
    2: "invalid_args",
    3: "unimplemented",
    4: "insufficient_privileges",
    5: "not_installed",
    6: "not_configured",
    7: "not_running",
    8: "running_promoted",
    9: "failed_promoted",
    190: "degraded",
    191: "degraded_promoted",
}


def rc_name(rc: int) -> str:
    """The OCF name of ``rc`` (``"unknown"`` for a code outside OCF 1.1)."""
    return RC_NAMES.get(rc, "unknown")


def normalize_rc(rc: int) -> int:
    """``rc`` if it is an OCF 1.1 code, else 1 (generic error)."""
    return rc if rc in RC_NAMES else 1


def lsb_rc(action: str, rc: int) -> int:
    """Map an LSB init script's exit status to an OCF code, as Pacemaker does.

    ``status`` (which the LRM calls ``monitor``) has its own LSB numbering:
    0 running; 1, 2, 3 not running (dead with pid file, dead with lock, stopped);
    4 unknown, reported as insufficient privileges; 150 not installed; 151 no
    permission. Other actions share 0-7 with OCF.
    """
    if action in ("status", "monitor"):
        if rc == 0:
            return 0
        if rc in (1, 2, 3):
            return 7
        if rc == 4:
            return 4
        if rc == 150:
            return 5
        if rc == 151:
            return 4
        return 1
    return rc if 0 <= rc <= 7 else 1


# --- exit reasons ------------------------------------------------------------------------------

EXIT_REASON_PREFIX = "ocf-exit-reason:"
EXIT_REASON_MAX = 512


def exit_reason(stderr: str) -> str | None:
    """The agent's own explanation: the last stderr line starting with ``ocf-exit-reason:``.

    Stripped and capped at 512 characters; None when no line carries the prefix
    (or the last one that does is empty).
    """
    found: str | None = None
    for line in stderr.splitlines():
        if line.startswith(EXIT_REASON_PREFIX):
            found = line[len(EXIT_REASON_PREFIX):]
    if found is None:
        return None
    found = found.strip()[:EXIT_REASON_MAX]
    return found or None


# --- environment -------------------------------------------------------------------------------

PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
CHECK_LEVEL = "OCF_CHECK_LEVEL"  # passed unprefixed, as OCF prescribes
BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def check_params(params: Mapping[str, str]) -> None:
    """Refuse a parameter that cannot be an environment variable (``code="invalid_parameter"``).

    Names are ``[A-Za-z_][A-Za-z0-9_]{0,127}``; values are strings without NUL.
    """
    for name, value in params.items():
        if not isinstance(name, str) or PARAM_NAME.fullmatch(name) is None:
            raise InvalidInput(
                f"invalid parameter name {name!r}: expected 1-128 of A-Z a-z 0-9 _, not starting with a digit",
                code="invalid_parameter", parameter=str(name))
        if not isinstance(value, str) or "\0" in value:
            raise InvalidInput(f"parameter {name!r} must be a string without NUL characters",
                               code="invalid_parameter", parameter=name)


def _ms(seconds: float) -> str:
    return str(int(round(seconds * 1000)))


def ocf_env(*, root: Path, spec: DriverSpec, instance: str, params: Mapping[str, str], timeout: float,
            interval: float, rsctmp: Path) -> dict[str, str]:
    """The complete environment of one agent run, built from nothing.

    The operation's own ``CRM_meta_timeout`` and ``CRM_meta_interval`` are set
    after the parameters, so a parameter of the same name cannot misreport them.
    """
    check_params(params)
    env = dict(BASE_ENV)
    env.update({
        "OCF_ROOT": str(root),
        "OCF_RA_VERSION_MAJOR": "1",
        "OCF_RA_VERSION_MINOR": "1",
        "OCF_RESOURCE_INSTANCE": instance,
        "OCF_RESOURCE_TYPE": spec.name,
        "OCF_EXIT_REASON_PREFIX": EXIT_REASON_PREFIX,
        "HA_RSCTMP": str(rsctmp),
    })
    if spec.provider is not None:
        env["OCF_RESOURCE_PROVIDER"] = spec.provider
    for name, value in params.items():
        env[name if name == CHECK_LEVEL else f"OCF_RESKEY_{name}"] = value
    env["OCF_RESKEY_CRM_meta_timeout"] = _ms(timeout)
    env["OCF_RESKEY_CRM_meta_interval"] = _ms(interval)
    return env


# --- meta-data ---------------------------------------------------------------------------------


class InvalidMetaData(ValueError):
    """An agent's meta-data is not well-formed OCF meta-data XML."""


@dataclass(frozen=True)
class ParamSpec:
    name: str
    required: bool
    unique: bool
    type: str
    default: str | None
    shortdesc: str
    reloadable: bool | None = None  # OCF 1.1: a change reload can apply; None when the agent does not say


@dataclass(frozen=True)
class ActionSpec:
    name: str
    timeout: float | None  # seconds
    interval: float | None  # seconds
    depth: int | None


@dataclass(frozen=True)
class MetaData:
    name: str
    version: str | None
    shortdesc: str
    longdesc: str
    parameters: tuple[ParamSpec, ...]
    actions: tuple[ActionSpec, ...]

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.parameters if p.name == name), None)

    def reloadable(self, changed: set[str]) -> bool:
        """Whether a reload may apply a change of ``changed`` parameters: when the agent marks parameters
        ``reloadable`` (OCF 1.1), only changes of those; when it marks none, any (its reload says)."""
        if all(p.reloadable is None for p in self.parameters):
            return True
        return all((spec := self.param(name)) is not None and bool(spec.reloadable) for name in changed)

    def action(self, name: str, interval: float | None = None) -> ActionSpec | None:
        """The first declared action ``name`` (with that interval, if given; undeclared counts as 0)."""
        for a in self.actions:
            if a.name != name:
                continue
            if interval is None or abs((a.interval or 0.0) - interval) < 1e-6:
                return a
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "shortdesc": self.shortdesc,
            "longdesc": self.longdesc,
            "parameters": [
                {"name": p.name, "required": p.required, "unique": p.unique, "type": p.type,
                 "default": p.default, "shortdesc": p.shortdesc}
                for p in self.parameters
            ],
            "actions": [
                {"name": a.name, "timeout": a.timeout, "interval": a.interval, "depth": a.depth}
                for a in self.actions
            ],
        }


_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*")
_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 1e-3, "msec": 1e-3, "us": 1e-6, "usec": 1e-6,
          "m": 60.0, "min": 60.0, "h": 3600.0, "hr": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Pacemaker-style duration: ``20``, ``20s``, ``100ms``, ``2m``, ``1h`` (also sec, min, hr, us).

    None for a missing or unreadable value: one odd attribute should not make a
    whole agent unusable, and the LRM has its own defaults.
    """
    if text is None:
        return None
    m = _DURATION.fullmatch(text.lower())
    if m is None or m.group(2) not in _UNITS:
        return None
    return float(m.group(1)) * _UNITS[m.group(2)]


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on", "y")


def _text(parent: ET.Element, tag: str) -> str:
    """Text of the ``tag`` child, preferring ``lang="en"``; "" if there is none."""
    found = parent.findall(tag)
    if not found:
        return ""
    best = next((e for e in found if e.get("lang", "en") == "en"), found[0])
    return (best.text or "").strip()


def parse_meta_data(xml: str) -> MetaData:
    """Parse ``<resource-agent>`` meta-data; ``InvalidMetaData`` for malformed XML or another root element.

    (Untrusted XML: the agent's output is already capped by the caller, and the
    standard library's expat refuses external entities and bounds entity expansion.)
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InvalidMetaData(f"meta-data is not well-formed XML: {exc}") from None
    if root.tag != "resource-agent":
        raise InvalidMetaData(f"meta-data root element is <{root.tag}>, expected <resource-agent>")
    name = root.get("name")
    if not name:
        raise InvalidMetaData("meta-data <resource-agent> has no name")
    version = root.get("version") or (root.findtext("version") or "").strip() or None

    params: list[ParamSpec] = []
    for p in root.iterfind("parameters/parameter"):
        pname = p.get("name")
        if not pname:
            raise InvalidMetaData("a meta-data <parameter> has no name")
        content = p.find("content")
        params.append(ParamSpec(
            name=pname,
            required=_flag(p.get("required")),
            unique=_flag(p.get("unique")),
            type=(content.get("type") if content is not None else None) or "string",
            default=content.get("default") if content is not None else None,
            shortdesc=_text(p, "shortdesc"),
            reloadable=_flag(p.get("reloadable")) if p.get("reloadable") is not None else None,
        ))

    actions: list[ActionSpec] = []
    for a in root.iterfind("actions/action"):
        aname = a.get("name")
        if not aname:
            raise InvalidMetaData("a meta-data <action> has no name")
        depth = a.get("depth")
        actions.append(ActionSpec(
            name=aname,
            timeout=parse_duration(a.get("timeout")),
            interval=parse_duration(a.get("interval")),
            depth=int(depth) if depth is not None and depth.strip().isdigit() else None,
        ))

    return MetaData(name=name, version=version, shortdesc=_text(root, "shortdesc"),
                    longdesc=_text(root, "longdesc"), parameters=tuple(params), actions=tuple(actions))


def check_against_meta(meta: MetaData, params: Mapping[str, str]) -> None:
    """Refuse parameters the agent does not declare, then missing required ones.

    Unknown names are reported first: a misspelt parameter usually also shows up
    as a missing one, and the unknown name is the more helpful of the two errors.
    An agent that declares no parameters at all accepts any (it may not document
    them). ``OCF_CHECK_LEVEL`` is always allowed.
    """
    known = [p.name for p in meta.parameters]
    if known:
        for name in sorted(params):
            if name != CHECK_LEVEL and name not in known:
                raise InvalidInput(f"{meta.name} has no parameter {name!r}; it takes {', '.join(known)}",
                                   code="unknown_parameter", parameter=name, known=known)
    for p in meta.parameters:
        if p.required and p.name not in params:
            raise InvalidInput(f"{meta.name} requires parameter {p.name!r}", code="missing_parameter",
                               parameter=p.name)
