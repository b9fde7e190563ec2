"""What the LRM sees of a driver: a request in, an outcome out, whatever the driver class.

The executor (``tenure.lrm.executor``) queues operations and decides when they
run; a :class:`Driver` only knows how to run one operation of one class of agent
(OCF, LSB, exec or python) and how to describe it. Every outcome carries two
things, as in Pacemaker: ``rc``, the normalized OCF exit code (what the agent
said about the resource), and ``status``, what happened to the execution itself
(done, timed out, not installed, ...). A monitor that reports "not running" is a
*done* execution with ``rc=7``; an agent that could not be run is not a
statement about the resource at all.

``run`` returns an outcome for everything that can happen at run time (missing
agent, timeout, crash, a misconfigured run-as user); it raises ``InvalidInput``
only for a malformed request (bad action name or parameter names), which the
LRM is expected to have refused earlier.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tenure.domain.errors import InvalidInput
from tenure.drivers.ocf import MetaData
from tenure.drivers.spec import DriverRoots, DriverSpec, parse_spec
from tenure.lrm.clock import LoopClock

EXEC_STATUSES = ("done", "cancelled", "timeout", "not_installed", "not_supported", "error")

# Operation names: OCF's (start, meta-data, validate-all, migrate_to, ...) and anything similar.
ACTION_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


@dataclass(frozen=True)
class RunRequest:
    action: str
    params: Mapping[str, str]
    instance: str  # human name -> OCF_RESOURCE_INSTANCE
    instance_id: str
    interval: float = 0.0  # seconds; 0 = one-shot (a monitor with interval 0 is a probe)
    timeout: float = 20.0  # seconds
    grace: float = 5.0  # seconds between SIGTERM and SIGKILL


@dataclass(frozen=True)
class RunOutcome:
    rc: int  # normalized OCF code
    status: str  # one of EXEC_STATUSES ("cancelled" is set by the LRM, not by drivers)
    exit_reason: str | None
    stdout: str  # utf-8 decoded with errors="replace"
    stderr: str
    pid: int | None = None


def check_action(action: str) -> None:
    """Refuse a malformed operation name (``code="invalid_action"``)."""
    if not isinstance(action, str) or ACTION_NAME.fullmatch(action) is None:
        raise InvalidInput(f"invalid action {action!r}: expected 1-64 of a-z 0-9 _ -, starting with a letter",
                           code="invalid_action", action=str(action))


def fmt_seconds(seconds: float) -> str:
    """``20`` -> "20s", ``0.5`` -> "0.5s"."""
    return f"{seconds:g}s"


class Driver(ABC):
    """One driver (one agent); cheap to create, holds at most its cached meta-data."""

    spec: DriverSpec

    def __init__(self, spec: DriverSpec) -> None:
        self.spec = spec
        self._meta: MetaData | None = None  # the last meta-data read successfully

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.text}>"

    @abstractmethod
    def installed(self) -> bool:
        """Whether the agent is present and runnable now."""

    @abstractmethod
    async def meta_data(self, clock: LoopClock) -> MetaData | None:
        """The agent's meta-data; None when the driver has none."""

    @abstractmethod
    def actions(self, meta: MetaData | None) -> frozenset[str] | None:
        """The actions the agent supports; None means any well-formed action name may be tried."""

    @abstractmethod
    def validate_params(self, meta: MetaData | None, params: Mapping[str, str]) -> None:
        """Raise ``InvalidInput`` for parameters this agent cannot take (given its meta-data, if known)."""

    @abstractmethod
    async def run(self, req: RunRequest, clock: LoopClock,
                  on_spawn: Callable[[int], None] | None = None) -> RunOutcome:
        """Run one operation to its outcome (see the module docstring for what raises)."""


def make_driver(spec: str | DriverSpec, roots: DriverRoots, *, rsctmp: Path) -> Driver:
    """The driver for ``spec``; ``InvalidInput(code="invalid_driver")`` for a bad spec or a disallowed module.

    ``rsctmp`` is the agents' state directory (``HA_RSCTMP``); it is created with
    mode 0755 when first needed.
    """
    # Imported here: the driver classes build on this module.
    from tenure.drivers.classes import ExecDriver, LsbDriver, OcfDriver
    from tenure.drivers.pydriver import PythonDriver

    if isinstance(spec, str):
        spec = parse_spec(spec)
    elif not isinstance(spec, DriverSpec):
        raise InvalidInput(f"invalid driver {spec!r}", code="invalid_driver", driver=str(spec))
    if spec.cls == "ocf":
        return OcfDriver(spec, roots=roots, rsctmp=rsctmp)
    if spec.cls == "lsb":
        return LsbDriver(spec, roots=roots, rsctmp=rsctmp)
    if spec.cls == "exec":
        return ExecDriver(spec, roots=roots, rsctmp=rsctmp)
    assert spec.provider is not None
    if not roots.python_allowed(spec.provider):
        raise InvalidInput(
            f"invalid driver {spec.text!r}: python drivers must live in "
            f"{', '.join(roots.python_packages) or '(no package is configured)'}",
            code="invalid_driver", driver=spec.text)
    return PythonDriver(spec, roots=roots)
