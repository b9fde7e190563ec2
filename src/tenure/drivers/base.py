"""What the LRM sees of a driver: a request in, an outcome out, whatever the driver class.

The executor (``tenure.lrm.executor``) queues operations and decides when they
run; a :class:`Driver` only knows how to run one operation of one class of agent
(OCF, LSB, exec, python or ansible) and how to describe it. Every outcome carries two
things, as in Pacemaker: ``rc``, the normalized OCF exit code (what the agent
said about the resource), and ``status``, what happened to the execution itself
(done, timed out, not installed, ...). A monitor that reports "not running" is a
*done* execution with ``rc=7``; an agent that could not be run is not a
statement about the resource at all.

``run`` returns an outcome for everything that can happen at run time (missing
agent, timeout, crash, a misconfigured run-as user); it raises ``InvalidInput``
only for a malformed request (bad action name or parameter names), which the
LRM is expected to have refused earlier.

Outputs. An outcome may carry ``outputs``, values the operation produced for the
rest of the system (a VLAN id, a class id): at most :data:`OUTPUTS_MAX` of them,
named like identifiers (:data:`OUTPUT_NAME`), each a string of at most
:data:`OUTPUT_VALUE_MAX` characters. A driver whose agent produced outputs beyond
these limits returns an error outcome instead (``rc=1``, ``status="error"``, the
reason as exit reason; see :func:`with_outputs`), never an exception. How an agent
produces them depends on its class (see :mod:`.classes`, :mod:`.pydriver` and
:mod:`.ansible`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tenure.clock import LoopClock
from tenure.domain.driverspec import DriverSpec
from tenure.domain.errors import InvalidInput
from tenure.drivers.ocf import EXIT_REASON_MAX, MetaData

EXEC_STATUSES = ("done", "cancelled", "timeout", "not_installed", "not_supported", "error")

# Operation names: OCF's (start, meta-data, validate-all, migrate_to, ...) and anything similar.
ACTION_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")

# Outputs of an operation (see the module docstring).
OUTPUTS_MAX = 64
OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
OUTPUT_VALUE_MAX = 4096


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
    # Values the operation produced (see the module docstring); left out of the hash so outcomes stay hashable.
    outputs: Mapping[str, str] = field(default_factory=dict, hash=False)


def check_action(action: str) -> None:
    """Refuse a malformed operation name (``code="invalid_action"``)."""
    if not isinstance(action, str) or ACTION_NAME.fullmatch(action) is None:
        raise InvalidInput(f"invalid action {action!r}: expected 1-64 of a-z 0-9 _ -, starting with a letter",
                           code="invalid_action", action=str(action))


def check_outputs(outputs: Mapping[Any, Any]) -> tuple[dict[str, str], str | None]:
    """``(outputs as strings, None)``, or ``({}, why they cannot be outputs)``.

    Names must match :data:`OUTPUT_NAME`; values must be strings, or integers
    (not booleans), which are converted with ``str()``; at most
    :data:`OUTPUTS_MAX` values of at most :data:`OUTPUT_VALUE_MAX` characters.
    """
    if len(outputs) > OUTPUTS_MAX:
        return {}, f"{len(outputs)} outputs; at most {OUTPUTS_MAX} are allowed"
    out: dict[str, str] = {}
    for name, value in outputs.items():
        if not isinstance(name, str) or OUTPUT_NAME.fullmatch(name) is None:
            return {}, (f"invalid output name {repr(name)[:80]}: expected 1-64 of A-Z a-z 0-9 _, "
                        f"not starting with a digit")
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            return {}, f"output {name!r} is a {type(value).__name__}; outputs are strings"
        if len(value) > OUTPUT_VALUE_MAX:
            return {}, f"output {name!r} has {len(value)} characters; at most {OUTPUT_VALUE_MAX} are allowed"
        out[name] = value
    return out, None


def with_outputs(outcome: RunOutcome, outputs: Mapping[Any, Any]) -> RunOutcome:
    """``outcome`` carrying ``outputs``, or an error outcome (rc 1) saying why they break the limits."""
    if not outputs:
        return outcome
    checked, why = check_outputs(outputs)
    if why is not None:
        return replace(outcome, rc=1, status="error", exit_reason=f"bad outputs: {why}"[:EXIT_REASON_MAX],
                       outputs={})
    return replace(outcome, outputs=checked)


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
