"""Naming a driver: ``ocf:heartbeat:Dummy``, ``lsb:ssh``, ``exec:mydrv``, ``python:pkg.mod:Class``, ``ansible:x.yml``.

A driver spec arrives from clients (a resource names the driver that manages it)
and from the operator's instance types, and each spec ends up as a path on disk
or a module to import (:mod:`tenure.drivers.spec` says where). So the grammar is
strict and checked in one place: names and providers are a short run of
``[A-Za-z0-9_.+-]`` that cannot start with a dot, which rules out ``..``, ``.``,
``/`` and anything else that could walk out of the configured directories; the
python form names dotted identifiers only; an ansible playbook is one such name
ending in ``.yml`` or ``.yaml``. :class:`DriverSpec` validates itself
on construction, so a spec that exists is a spec that is well formed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tenure.domain.errors import InvalidInput

CLASSES = ("ocf", "lsb", "exec", "python", "ansible")

# A name or provider: what may appear as one path component.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
# The python form: module.path and Class (ASCII identifiers only).
_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,127}"
PY_MODULE = re.compile(rf"{_IDENT}(?:\.{_IDENT}){{0,31}}")
PY_CLASS = re.compile(_IDENT)

FORMS = "ocf:PROVIDER:TYPE, lsb:NAME, exec:NAME, python:module.path:Class or ansible:PLAYBOOK.yml"
PLAYBOOK_SUFFIXES = (".yml", ".yaml")


def _bad(text: str, why: str) -> InvalidInput:
    return InvalidInput(f"invalid driver {text!r}: {why}; expected {FORMS}", code="invalid_driver", driver=text)


def _is_name(s: str) -> bool:
    return NAME.fullmatch(s) is not None and s not in (".", "..")


@dataclass(frozen=True)
class DriverSpec:
    """A well-formed driver name; see the module docstring for the grammar."""

    cls: str  # one of CLASSES
    name: str  # OCF type / LSB script / exec name / python Class / ansible playbook file
    provider: str | None = None  # OCF provider, or the python module

    def __post_init__(self) -> None:
        text = self.text
        if self.cls not in CLASSES:
            raise InvalidInput(
                f"invalid driver {text!r}: unknown class {self.cls!r}; the classes are {', '.join(CLASSES)}",
                code="invalid_driver", driver=text)
        if self.cls == "python":
            if self.provider is None or PY_MODULE.fullmatch(self.provider) is None:
                raise _bad(text, "the module must be a dotted python name")
            if PY_CLASS.fullmatch(self.name) is None:
                raise _bad(text, "the class must be a python identifier")
            return
        if not _is_name(self.name):
            raise _bad(text, "names are 1-128 of A-Z a-z 0-9 _ . + - and may not start with . or -")
        if self.cls == "ocf":
            if self.provider is None or not _is_name(self.provider):
                raise _bad(text, "an OCF agent needs a provider (1-128 of A-Z a-z 0-9 _ . + -)")
        elif self.provider is not None:
            raise _bad(text, f"{self.cls} drivers have no provider")
        if self.cls == "ansible" and not self.name.endswith(PLAYBOOK_SUFFIXES):
            raise _bad(text, "an ansible playbook's name ends in .yml or .yaml")

    @property
    def text(self) -> str:
        if self.provider is None:
            return f"{self.cls}:{self.name}"
        return f"{self.cls}:{self.provider}:{self.name}"

    def __str__(self) -> str:
        return self.text


def parse_spec(text: str) -> DriverSpec:
    """Parse ``cls:...``; raise ``InvalidInput(code="invalid_driver")`` for anything else."""
    if not isinstance(text, str) or not text:
        raise _bad(str(text), "empty")
    cls, sep, rest = text.partition(":")
    if not sep:
        raise _bad(text, "no class prefix")
    if cls not in CLASSES:
        raise InvalidInput(
            f"invalid driver {text!r}: unknown class {cls!r}; the classes are {', '.join(CLASSES)} ({FORMS})",
            code="invalid_driver", driver=text)
    parts = rest.split(":")
    if cls in ("ocf", "python"):
        if len(parts) != 2:
            raise _bad(text, f"{cls} drivers have two parts after {cls}:")
        spec = DriverSpec(cls, parts[1], parts[0])
    else:
        if len(parts) != 1:
            raise _bad(text, f"{cls} drivers have one part after {cls}:")
        spec = DriverSpec(cls, parts[0])
    return spec
