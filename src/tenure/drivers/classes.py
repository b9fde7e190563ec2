"""The process drivers: OCF resource agents, LSB init scripts and exec drivers.

All three run one executable as ``<path> <action>`` through
:func:`tenure.drivers.process.run_process` and turn its :class:`ProcessResult`
into a :class:`RunOutcome` the same way (see :func:`outcome_of`). They differ in
where the executable lives, what environment it gets and how its exit status
reads:

- ``ocf:PROVIDER:TYPE`` -> ``<ocf_root>/resource.d/PROVIDER/TYPE``, OCF 1.1
  environment, OCF exit codes. ``validate`` is accepted as an alias of OCF's
  ``validate-all`` (it is listed by :meth:`OcfDriver.actions` when the agent
  declares validate-all, and mapped when run unless the agent declares an action
  literally named ``validate``).
- ``lsb:NAME`` -> ``<lsb_root>/NAME``, no parameters, ``monitor`` runs
  ``status``, exit codes mapped by :func:`tenure.drivers.ocf.lsb_rc`.
- ``exec:NAME`` -> the first ``<dir>/NAME`` of ``exec_dirs``; the OCF
  environment plus ``TENURE_ACTION``, so an exec driver can be written like an OCF
  agent but need not provide meta-data.

Paths are joined under their root with :func:`tenure.drivers.spec.inside` (see
the containment note in :mod:`tenure.drivers.spec`).

Outputs. Any of the three may hand values back (``RunOutcome.outputs``) by
printing lines of the form ``tenure-output: KEY=VALUE`` on stdout, e.g.
``echo "tenure-output: vlan=100"``. The name is what lies between the prefix
(and any spaces or tabs after it) and the first ``=``, and must match
``[A-Za-z_][A-Za-z0-9_]{0,63}``; the value is the rest of the line, verbatim (a
trailing ``\r`` excepted). When a name appears more than once the last line
wins. Only operations that ran to their exit (``status="done"``) have outputs. A
malformed line, more than 64 names, or a value over 4096 characters turn the
outcome into an error (``rc=1``, ``status="error"``) explaining what was wrong.
Output lines stay in the outcome's stdout.
"""

from __future__ import annotations

import logging
import os
import signal
from abc import abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path

from tenure.clock import LoopClock
from tenure.domain.driverspec import DriverSpec
from tenure.domain.errors import InvalidInput
from tenure.drivers.base import Driver, RunOutcome, RunRequest, check_action, fmt_seconds, with_outputs
from tenure.drivers.ocf import (
    BASE_ENV,
    EXIT_REASON_MAX,
    InvalidMetaData,
    MetaData,
    check_against_meta,
    check_params,
    exit_reason,
    lsb_rc,
    normalize_rc,
    ocf_env,
    parse_meta_data,
)
from tenure.drivers.process import ProcessResult, run_process
from tenure.drivers.spec import DriverRoots, inside

log = logging.getLogger(__name__)

META_DATA_TIMEOUT = 5.0  # seconds
META_DATA_GRACE = 1.0
META_DATA_CAP = 1024 * 1024  # meta-data of large agents runs to tens of kB; allow plenty
OCF_BASE_ACTIONS = frozenset({"start", "stop", "monitor", "meta-data"})
LSB_ACTIONS = frozenset({"start", "stop", "monitor", "restart", "reload", "force-reload", "status"})
OUTPUT_PREFIX = "tenure-output:"


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _BadOutputLine(ValueError):
    pass


def parse_output_lines(stdout: str) -> dict[str, str]:
    """The ``tenure-output: KEY=VALUE`` lines of ``stdout`` (last one wins); ``_BadOutputLine`` for one without ``=``.

    Names and values are checked later, with the limits (:func:`tenure.drivers.base.check_outputs`).
    """
    outputs: dict[str, str] = {}
    for line in stdout.split("\n"):
        if not line.startswith(OUTPUT_PREFIX):
            continue
        if line.endswith("\r"):
            line = line[:-1]
        name, sep, value = line[len(OUTPUT_PREFIX):].lstrip(" \t").partition("=")
        if not sep:
            raise _BadOutputLine(f"malformed output line {line[:80]!r}: expected {OUTPUT_PREFIX} KEY=VALUE")
        outputs.pop(name, None)  # re-inserted: the order of the dict is the order of the last lines
        outputs[name] = value
    return outputs


def outcome_of(res: ProcessResult, *, path: Path, timeout: float, rc_of: Callable[[int], int],
               outputs: bool = True) -> RunOutcome:
    """The outcome of one finished process (``rc_of`` maps its exit status to an OCF code).

    With ``outputs``, the ``tenure-output:`` lines of a process that ran to its exit become the outcome's outputs.
    """
    stdout, stderr = _decode(res.stdout), _decode(res.stderr)
    reason = exit_reason(stderr)
    if res.not_found:
        return RunOutcome(rc=5, status="not_installed", exit_reason=f"{path} is not installed", stdout="", stderr="")
    if res.not_executable:
        return RunOutcome(rc=4, status="error", exit_reason=f"{path} is not executable", stdout="", stderr="")
    if res.timed_out:
        why = f"timed out after {fmt_seconds(timeout)}" + (f": {reason}" if reason else "")
        return RunOutcome(rc=1, status="timeout", exit_reason=why[:EXIT_REASON_MAX], stdout=stdout, stderr=stderr,
                          pid=res.pid)
    if res.signal is not None:
        why = f"killed by {_signal_name(res.signal)}" + (f": {reason}" if reason else "")
        return RunOutcome(rc=1, status="error", exit_reason=why[:EXIT_REASON_MAX], stdout=stdout, stderr=stderr,
                          pid=res.pid)
    assert res.returncode is not None
    outcome = RunOutcome(rc=rc_of(res.returncode), status="done", exit_reason=reason, stdout=stdout, stderr=stderr,
                         pid=res.pid)
    if not outputs or OUTPUT_PREFIX not in stdout:
        return outcome
    try:
        found = parse_output_lines(stdout)
    except _BadOutputLine as exc:
        return RunOutcome(rc=1, status="error", exit_reason=f"bad outputs: {exc}"[:EXIT_REASON_MAX], stdout=stdout,
                          stderr=stderr, pid=res.pid)
    return with_outputs(outcome, found)


def _is_executable_file(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


class ProcessDriver(Driver):
    """What the three process classes share: running ``<path> <action>`` and reading the result."""

    def __init__(self, spec: DriverSpec, *, roots: DriverRoots, rsctmp: Path) -> None:
        super().__init__(spec)
        self.roots = roots
        self.rsctmp = rsctmp
        self._rsctmp_made = False

    # --- what each class defines ---

    @abstractmethod
    def path(self) -> Path | None:
        """Where the executable is (or would be); None when it cannot be located at all."""

    @abstractmethod
    def env(self, req: RunRequest, action: str) -> dict[str, str]:
        """The complete environment of one run."""

    def command(self, action: str) -> str | None:
        """The argument the executable gets for ``action``; None if this class does not support it."""
        return action

    def rc(self, action: str, returncode: int) -> int:
        return normalize_rc(returncode)

    def not_installed_reason(self) -> str:
        return f"{self.path()} is not installed"

    # --- shared ---

    def installed(self) -> bool:
        path = self.path()
        return path is not None and _is_executable_file(path)

    def _ensure_rsctmp(self) -> None:
        if not self._rsctmp_made:  # once per driver: this runs before every operation
            self.rsctmp.mkdir(mode=0o755, parents=True, exist_ok=True)
            self._rsctmp_made = True

    async def _spawn(self, path: Path, command: str, env: Mapping[str, str], *, timeout: float, grace: float,
                     clock: LoopClock, output_cap: int = 64 * 1024,
                     on_spawn: Callable[[int], None] | None = None) -> ProcessResult:
        return await run_process([str(path), command], env=env, timeout=timeout, grace=grace, clock=clock,
                                 user=self.roots.user_for(self.spec), output_cap=output_cap, on_spawn=on_spawn)

    async def run(self, req: RunRequest, clock: LoopClock,
                  on_spawn: Callable[[int], None] | None = None) -> RunOutcome:
        check_action(req.action)
        self.check_run_params(req.params)
        command = self.command(req.action)
        if command is None:
            return RunOutcome(rc=3, status="not_supported", stdout="", stderr="",
                              exit_reason=f"{self.spec.text} does not support {req.action!r}")
        path = self.path()
        if path is None:
            return RunOutcome(rc=5, status="not_installed", exit_reason=self.not_installed_reason(), stdout="",
                              stderr="")
        try:
            env = self.env(req, req.action)
            res = await self._spawn(path, command, env, timeout=req.timeout, grace=req.grace, clock=clock,
                                    on_spawn=on_spawn)
        except InvalidInput as exc:
            if exc.code != "invalid_run_as":
                raise
            # The configuration names a user that does not exist: the resource cannot be run as configured.
            return RunOutcome(rc=6, status="error", exit_reason=exc.message, stdout="", stderr="")
        except OSError as exc:
            return RunOutcome(rc=1, status="error", exit_reason=f"could not run {path}: {exc}"[:EXIT_REASON_MAX],
                              stdout="", stderr="")
        return outcome_of(res, path=path, timeout=req.timeout, rc_of=lambda rc: self.rc(req.action, rc))

    def check_run_params(self, params: Mapping[str, str]) -> None:
        """The checks every run makes (format only; see ``validate_params`` for the meta-data checks)."""
        check_params(params)

    def validate_params(self, meta: MetaData | None, params: Mapping[str, str]) -> None:
        check_params(params)
        if meta is not None:
            check_against_meta(meta, params)

    async def _read_meta(self, clock: LoopClock) -> tuple[MetaData | None, str | None]:
        """Run ``meta-data``: (meta, None), or (None, why not) when the agent did not produce any."""
        path = self.path()
        if path is None or not path.exists():
            return None, "not installed"
        req = RunRequest(action="meta-data", params={}, instance=self.spec.name, instance_id="",
                         timeout=META_DATA_TIMEOUT)
        self_env = self.env(req, "meta-data")
        res = await self._spawn(path, "meta-data", self_env, timeout=META_DATA_TIMEOUT, grace=META_DATA_GRACE,
                                clock=clock, output_cap=META_DATA_CAP)
        out = outcome_of(res, path=path, timeout=META_DATA_TIMEOUT, rc_of=normalize_rc, outputs=False)
        if out.status == "not_installed":
            return None, "not installed"
        if out.status != "done" or out.rc != 0:
            return None, f"meta-data failed: rc={out.rc} status={out.status} ({out.exit_reason or 'no reason'})"
        if res.truncated and len(res.stdout) >= META_DATA_CAP:
            return None, f"meta-data is larger than {META_DATA_CAP} bytes"
        return parse_meta_data(out.stdout), None


class OcfDriver(ProcessDriver):
    """An OCF 1.1 resource agent under ``<ocf_root>/resource.d/<provider>/<type>``."""

    def path(self) -> Path:
        if self._path is None:  # a pure function of the spec and the root: computed once
            assert self.spec.provider is not None
            self._path = inside(self.roots.ocf_root, "resource.d", self.spec.provider, self.spec.name)
        return self._path

    _path: Path | None = None

    def env(self, req: RunRequest, action: str) -> dict[str, str]:
        self._ensure_rsctmp()
        return ocf_env(root=self.roots.ocf_root, spec=self.spec, instance=req.instance, params=req.params,
                       timeout=req.timeout, interval=req.interval, rsctmp=self.rsctmp)

    def command(self, action: str) -> str:
        if action == "validate" and (self._meta is None or self._meta.action("validate") is None):
            return "validate-all"
        return action

    def actions(self, meta: MetaData | None) -> frozenset[str]:
        names = set(OCF_BASE_ACTIONS)
        if meta is not None:
            names.update(a.name for a in meta.actions)
            if "validate-all" in names:
                names.add("validate")
        return frozenset(names)

    async def meta_data(self, clock: LoopClock) -> MetaData | None:
        """Parsed ``meta-data`` (cached); None if not installed, ``InvalidMetaData`` if it fails or is unreadable."""
        if self._meta is not None:
            return self._meta
        try:
            meta, why = await self._read_meta(clock)
        except (InvalidInput, OSError) as exc:  # e.g. an unknown run-as user, or HA_RSCTMP cannot be created
            raise InvalidMetaData(f"{self.spec.text}: meta-data could not be run: {exc}") from exc
        if meta is None:
            if why == "not installed":
                return None
            raise InvalidMetaData(f"{self.spec.text}: {why}")
        self._meta = meta
        return meta


class LsbDriver(ProcessDriver):
    """An LSB init script ``<lsb_root>/<name>``: no parameters, no meta-data, LSB exit codes."""

    def path(self) -> Path:
        return inside(self.roots.lsb_root, self.spec.name)

    def env(self, req: RunRequest, action: str) -> dict[str, str]:
        return dict(BASE_ENV)

    def command(self, action: str) -> str | None:
        if action not in LSB_ACTIONS:
            return None
        return "status" if action == "monitor" else action

    def rc(self, action: str, returncode: int) -> int:
        return lsb_rc(action, returncode)

    def actions(self, meta: MetaData | None) -> frozenset[str]:
        return LSB_ACTIONS

    def check_run_params(self, params: Mapping[str, str]) -> None:
        self.validate_params(None, params)

    def validate_params(self, meta: MetaData | None, params: Mapping[str, str]) -> None:
        if params:
            name = sorted(params)[0]
            raise InvalidInput(f"{self.spec.text} is an LSB init script and takes no parameters (got {name!r})",
                               code="invalid_parameter", parameter=name)

    async def meta_data(self, clock: LoopClock) -> MetaData | None:
        return None


class ExecDriver(ProcessDriver):
    """An executable ``<dir>/<name>`` from ``exec_dirs``, run like an OCF agent; meta-data optional."""

    def path(self) -> Path | None:
        """The first executable ``<dir>/<name>``; failing that the first regular file (so a run says
        "not executable" rather than "not installed"); None if there is neither."""
        candidates = [inside(d, self.spec.name) for d in self.roots.exec_dirs]
        for p in candidates:
            if _is_executable_file(p):
                return p
        return next((p for p in candidates if p.is_file()), None)

    def not_installed_reason(self) -> str:
        dirs = ", ".join(str(d) for d in self.roots.exec_dirs) or "(no exec_dirs configured)"
        return f"{self.spec.name} is not installed in {dirs}"

    def env(self, req: RunRequest, action: str) -> dict[str, str]:
        self._ensure_rsctmp()
        env = ocf_env(root=self.roots.ocf_root, spec=self.spec, instance=req.instance, params=req.params,
                      timeout=req.timeout, interval=req.interval, rsctmp=self.rsctmp)
        env["TENURE_ACTION"] = action
        return env

    def actions(self, meta: MetaData | None) -> frozenset[str] | None:
        """The actions the meta-data declares (plus meta-data); None without meta-data or declared actions."""
        if meta is None or not meta.actions:
            return None
        return frozenset({a.name for a in meta.actions} | {"meta-data"})

    async def meta_data(self, clock: LoopClock) -> MetaData | None:
        """Parsed ``meta-data`` (cached), or None when the driver does not produce valid meta-data."""
        if self._meta is not None:
            return self._meta
        try:
            meta, why = await self._read_meta(clock)
        except (InvalidMetaData, InvalidInput, OSError) as exc:
            meta, why = None, str(exc)
        if meta is None:
            log.debug("exec driver has no meta-data", extra={"driver": self.spec.text, "why": why})
            return None
        self._meta = meta
        return meta
