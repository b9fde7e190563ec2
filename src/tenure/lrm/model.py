"""What the LRM knows about instances and operations, without I/O.

An *instance* is one resource (a Dummy, an init script, a handler object) with
a driver spec, parameters and labels. Its *state* is what the last result that
tells us something says (start ok: running; monitor 7: stopped; a failed stop:
failed). An *operation* is one action on it: one-shot (start, stop, a probe) or
recurring (a monitor every N seconds, the interval measured from completion).
Every run ends in a :class:`Result` with the OCF code and, separately, the
execution status (Pacemaker's split: the agent said 7, or we never heard).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tenure.domain.errors import InvalidInput
from tenure.drivers.ocf import rc_name

UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_./-]{0,62}[A-Za-z0-9])?")
MAX_LABELS = 64
MAX_LABEL_VALUE = 256
MAX_PARAMS = 256
MAX_PARAM_VALUE = 64 * 1024

MAX_TIMEOUT = 24 * 3600.0  # a day: anything longer is a typo, not an operation
MAX_INTERVAL = 7 * 86400.0
MIN_INTERVAL = 0.1
STATES = ("unknown", "running", "stopped", "promoted", "degraded", "failed")

#: Actions that change what runs: never recurring.
ONE_SHOT_ONLY = frozenset({"start", "stop", "promote", "demote", "migrate_to", "migrate_from", "meta-data"})

REPORT = ("change", "always")


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidInput(
            "a resource name is 1-128 characters: letters, digits and _ . : @ -, starting with a letter or digit",
            code="invalid_name")
    if UUID.fullmatch(name):  # ids and names share one namespace in the API's {ref}
        raise InvalidInput("a resource name may not look like a resource id (a UUID)", code="invalid_name")
    return name


def _unicode(text: str, what: str, code: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} must be valid Unicode (no lone surrogates)", code=code) from None


def check_params(params: dict[str, str]) -> dict[str, str]:
    if len(params) > MAX_PARAMS:
        raise InvalidInput(f"at most {MAX_PARAMS} parameters", code="invalid_parameter")
    for k, v in params.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidInput("parameters are strings", code="invalid_parameter")
        _unicode(k, "a parameter name", "invalid_parameter")
        _unicode(v, f"parameter {k!r}", "invalid_parameter")
        if len(v) > MAX_PARAM_VALUE:
            raise InvalidInput(f"parameter {k!r} is longer than {MAX_PARAM_VALUE} characters",
                               code="invalid_parameter")
    return dict(params)


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidInput(f"at most {MAX_LABELS} labels", code="invalid_labels")
    for k, v in labels.items():
        if not LABEL_KEY.fullmatch(k):
            raise InvalidInput(f"label key {k!r} must be 1-64 letters, digits and _ . / -", code="invalid_labels",
                               label=k)
        _unicode(v, f"label {k!r}", "invalid_labels")
        if len(v) > MAX_LABEL_VALUE or "\x00" in v:
            raise InvalidInput(f"label {k!r}: a value is at most {MAX_LABEL_VALUE} characters, without NUL",
                               code="invalid_labels", label=k)
    return dict(labels)


def check_seconds(value: float | None, what: str, *, lo: float, hi: float, zero_ok: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{what} must be a number of seconds", code=f"invalid_{what}")
    try:
        seconds = float(value)  # a 400-digit integer overflows here
    except OverflowError:
        seconds = math.inf
    if zero_ok and seconds == 0:
        return 0.0
    if not math.isfinite(seconds) or not lo <= seconds <= hi:  # NaN and infinities fail the comparison too
        shown = f"{seconds:g}" if math.isfinite(seconds) else "a value out of range"
        raise InvalidInput(f"{what} must be {'0 or ' if zero_ok else ''}between {lo:g} and {hi:g} seconds, "
                           f"got {shown}", code=f"invalid_{what}")
    return seconds


def op_key(action: str, interval: float) -> str:
    """The key of an operation's last result: ``start``, ``monitor`` (a probe), ``monitor:10000`` (ms)."""
    return action if not interval else f"{action}:{round(interval * 1000)}"


def iso(wall: float | None) -> str | None:
    return None if wall is None else datetime.fromtimestamp(wall, UTC).isoformat().replace("+00:00", "Z")


def from_iso(text: str | None) -> float | None:
    """The wall-clock seconds of an :func:`iso` timestamp (None for None or empty)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if text else None


def expected_codes(expect: int) -> frozenset[int]:
    """The codes that count as success for a monitor expecting ``expect``.

    Expecting 0 (running) also accepts 8 (running promoted) and the degraded codes 190/191: the
    instance runs; its state says how. Expecting 7 (a monitor that checks something stays down) is exact.
    """
    return frozenset({0, 8, 190, 191}) if expect == 0 else frozenset({expect})


@dataclass(frozen=True)
class Result:
    """One finished (or cancelled) run of an operation."""

    op_id: str
    run: int  # 1, 2, ... for a recurring operation; 1 for a one-shot
    action: str
    interval: float
    rc: int | None  # None: never ran (cancelled while queued, or interrupted by a restart)
    status: str  # done | cancelled | timeout | not_installed | not_supported | error
    exit_reason: str | None
    queued_at: float | None  # wall clock
    started_at: float | None
    finished_at: float
    queue_ms: int
    run_ms: int
    stdout: str = ""
    stderr: str = ""
    expect: int = 0
    trigger: str = "client"  # client | recurring | restore (the probe after an agent restart)
    pid: int | None = None  # the driver's process (its process group id too)
    outputs: dict[str, str] = field(default_factory=dict)  # values the driver returned (a VLAN, a class id)

    @property
    def failed(self) -> bool:
        """A failure: it ran (or should have) and did not succeed. A cancellation is not a failure."""
        if self.status == "cancelled":
            return False
        if self.status != "done" or self.rc is None:
            return True
        if self.action == "monitor":
            return self.rc not in expected_codes(self.expect) and not (self.interval == 0 and self.rc == 7)
        return self.rc != 0

    def same_outcome(self, other: Result | None) -> bool:
        """Whether a recurring run says nothing new compared with the previous one (report on change)."""
        return other is not None and (self.rc, self.status, self.exit_reason) == (other.rc, other.status,
                                                                                    other.exit_reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "op_id": self.op_id, "run": self.run, "action": self.action, "interval": self.interval,
            "rc": self.rc, "rc_name": rc_name(self.rc) if self.rc is not None else None,
            "status": self.status, "exit_reason": self.exit_reason, "failed": self.failed,
            "queued_at": iso(self.queued_at), "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at), "queue_ms": self.queue_ms, "run_ms": self.run_ms,
            "stdout": self.stdout, "stderr": self.stderr, "expect": self.expect, "trigger": self.trigger,
            "pid": self.pid, "outputs": dict(self.outputs),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        finished = from_iso(d["finished_at"])
        assert finished is not None
        return cls(op_id=d["op_id"], run=d["run"], action=d["action"], interval=d["interval"], rc=d["rc"],
                   status=d["status"], exit_reason=d["exit_reason"], queued_at=from_iso(d["queued_at"]),
                   started_at=from_iso(d["started_at"]), finished_at=finished, queue_ms=d["queue_ms"],
                   run_ms=d["run_ms"], stdout=d.get("stdout", ""), stderr=d.get("stderr", ""),
                   expect=d.get("expect", 0), trigger=d.get("trigger", "client"), pid=d.get("pid"),
                   outputs=dict(d.get("outputs") or {}))


def next_state(state: str, r: Result) -> str:
    """The instance's state after result ``r`` (Pacemaker's reading of OCF codes)."""
    if r.status == "cancelled":
        return state
    a, rc = r.action, r.rc
    if r.status != "done" or rc is None:
        # A start, stop or monitor that did not complete leaves the instance in doubt: failed.
        return "failed" if a in ("start", "stop", "monitor", "promote", "demote") else state
    if a == "monitor":
        return {0: "running", 7: "stopped", 8: "promoted", 190: "degraded", 191: "degraded"}.get(rc, "failed")
    if a == "start":
        return "running" if rc == 0 else "failed"
    if a == "stop":
        return "stopped" if rc == 0 else "failed"
    if a == "promote":
        return "promoted" if rc == 0 else "failed"
    if a == "demote":
        return "running" if rc == 0 else "failed"
    return state


@dataclass
class Recurring:
    """A recurring operation's schedule, as persisted."""

    op_id: str
    action: str
    interval: float
    timeout: float
    report: str = "change"
    expect: int = 0
    created_at: float = 0.0
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"op_id": self.op_id, "action": self.action, "interval": self.interval, "timeout": self.timeout,
                "report": self.report, "expect": self.expect, "created_at": iso(self.created_at)}
