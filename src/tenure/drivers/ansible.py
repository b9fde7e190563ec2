"""Ansible drivers: ``ansible:PLAYBOOK``, one playbook run per operation, through ansible-runner.

For resources that are configured rather than run (a VLAN on a switch, a
traffic class), a playbook is often the natural driver. The rules:

- ``ansible:vlan.yml`` is the first ``<dir>/vlan.yml`` that is a file, for
  ``dir`` in ``DriverRoots.playbook_dirs`` (joined with
  :func:`tenure.drivers.spec.inside`; the name is one path component ending in
  ``.yml`` or ``.yaml``). That directory is the run's project directory, so a
  playbook may use files, templates and roles next to it.
- Each operation runs the ``ansible-runner`` console script that sits next to
  ``sys.executable`` (``not_installed``, rc 5, without it) as
  ``ansible-runner run PDD -p PLAYBOOK --project-dir DIR --ident ID``, through
  :func:`tenure.drivers.process.run_process` (no shell; own process group; capped
  output; timeout with SIGTERM then SIGKILL). ``PDD`` is a fresh private data
  directory in a temporary directory removed afterwards; it holds the inventory
  (``localhost`` only, ``ansible_connection=local``,
  ``ansible_python_interpreter=sys.executable``), the extra vars and an empty
  ``ansible.cfg`` that ``ANSIBLE_CONFIG`` points to. ``HOME``,
  ``ANSIBLE_HOME``, ``ANSIBLE_LOCAL_TEMP`` and ``ANSIBLE_REMOTE_TEMP`` are in the
  temporary directory too, so nothing reads or writes ``~/.ansible``. The
  environment is built from nothing (as for OCF agents), plus those variables.
- Extra vars: the operation's parameters, plus ``tenure_action`` (the LRM action:
  start, stop, monitor, reload, ...), ``tenure_instance``, ``tenure_instance_id``,
  ``tenure_interval`` and ``tenure_timeout`` (seconds, numbers). Every string is
  tagged ``!unsafe``: Ansible never templates a value a client sent, so
  ``{{ lookup('pipe', ...) }}`` in a parameter is just text. Parameter names
  starting with ``ansible_`` or ``tenure_`` (in any case), and Ansible's magic
  variable names (``hostvars``, ``omit``, ...), are refused: extra vars override
  the inventory, and ``ansible_python_interpreter`` would run any program.
- The result: rc 0 when the playbook succeeds; when it fails, rc 1 with the
  failed task and its message as exit reason. A playbook may set the fact
  ``tenure_rc`` (an int) to choose the OCF code instead (e.g. 7 from a monitor
  when the resource is absent; on failure only a non-zero ``tenure_rc`` is
  used). Facts named ``tenure_output_KEY`` become output ``KEY`` (strings or
  ints; see :mod:`tenure.drivers.base` for the limits). Facts are read from the
  runner's job events (``runner_on_ok`` for host ``localhost``), the last value
  of a fact winning.
- Timeouts and leftovers. Ansible does not keep to one process group: the
  runner starts ``ansible-playbook`` on a pty (a session of its own), and each
  task runs in a worker that calls ``setsid``. So every process of a run carries
  a marker in its environment (``TENURE_ANSIBLE_RUN=<random token>``), and when a
  run times out, is killed by a signal or is cancelled, whatever still carries
  the marker is SIGKILLed and waited for once the runner's group is gone. A
  playbook that completes may leave a daemon behind, as an OCF ``start`` may.
- No meta-data and no declared actions: any well-formed action may be tried, and
  the playbook branches on ``tenure_action``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import pwd
import re
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tenure.clock import LoopClock
from tenure.domain.driverspec import DriverSpec
from tenure.domain.errors import InvalidInput
from tenure.drivers.base import Driver, RunOutcome, RunRequest, check_action, fmt_seconds, with_outputs
from tenure.drivers.ocf import BASE_ENV, EXIT_REASON_MAX, MetaData, check_params, normalize_rc
from tenure.drivers.process import ProcessResult, run_process
from tenure.drivers.spec import DriverRoots, inside

log = logging.getLogger(__name__)

RUNNER = "ansible-runner"
MARKER_ENV = "TENURE_ANSIBLE_RUN"
OUTPUT_FACT_PREFIX = "tenure_output_"
RC_FACT = "tenure_rc"
HOST = "localhost"
OUTPUT_CAP = 64 * 1024
REAP_WAIT = 5.0  # clock seconds to wait for SIGKILLed leftovers to disappear
RESERVED_PREFIXES = ("ansible_", "tenure_")
RESERVED_NAMES = frozenset({
    "environment", "group_names", "groups", "hostvars", "inventory_dir", "inventory_file", "inventory_hostname",
    "inventory_hostname_short", "lookup", "omit", "play_hosts", "playbook_dir", "q", "query", "role_name",
    "role_names", "role_path", "vars",
})
# Characters written as they are inside a YAML double-quoted scalar; everything else is escaped. (NEL, LS, PS
# and BOM are left out: YAML would read the first three as line breaks and fold them.)
_YAML_LITERAL = re.compile(r"[\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]")


def runner_path() -> Path:
    """Where the ``ansible-runner`` console script of this Python's environment is."""
    return Path(sys.executable).parent / RUNNER


def check_names(params: Mapping[str, str]) -> None:
    """Refuse parameter names that would reach into Ansible (``code="invalid_parameter"``)."""
    for name in params:
        if name.lower().startswith(RESERVED_PREFIXES) or name in RESERVED_NAMES:
            raise InvalidInput(
                f"invalid parameter {name!r}: names starting with ansible_ or tenure_ and Ansible's magic "
                f"variables are reserved", code="invalid_parameter", parameter=name)


def yaml_str(value: str) -> str:
    """``value`` as a YAML double-quoted scalar that reads back exactly."""
    out = ['"']
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif _YAML_LITERAL.fullmatch(ch):
            out.append(ch)
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    out.append('"')
    return "".join(out)


def extravars_yaml(variables: Mapping[str, str | float]) -> str:
    """The extra vars file: one ``"name": !unsafe "value"`` line per string (numbers as plain floats)."""
    lines = []
    for name, value in variables.items():
        if isinstance(value, str):
            lines.append(f"{yaml_str(name)}: !unsafe {yaml_str(value)}\n")
        else:
            number = repr(float(value)) if math.isfinite(value) else ".inf"
            lines.append(f"{yaml_str(name)}: {number}\n")
    return "".join(lines)


# --- leftovers ---------------------------------------------------------------------------------


def _marked(needle: bytes, pid: int) -> bool:
    """Whether live process ``pid`` has ``needle`` (``NAME=token``) in its environment."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return False  # gone, or not ours to read
    fields = stat[stat.rfind(b")") + 2:].split()
    if not fields or fields[0] in (b"Z", b"X"):
        return False
    return needle in environ.split(b"\0")


def _marked_pids(needle: bytes) -> list[int]:
    me = os.getpid()
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and int(e.name) != me
            and _marked(needle, int(e.name))]


def _kill_marked_now(needle: bytes, rounds: int = 3) -> None:
    """SIGKILL the marked processes without waiting (a last resort; a few rounds to catch fresh forks)."""
    for _ in range(rounds):
        pids = _marked_pids(needle)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


async def kill_marked(token: str, *, clock: LoopClock, timeout: float = REAP_WAIT) -> bool:
    """SIGKILL every live process whose environment has ``MARKER_ENV=token``; wait until none is left.

    Waits on pidfds (at most ``timeout`` clock seconds); each process is checked
    again through its pidfd before the signal, so a recycled pid is never hit.
    Without pidfds it signals by pid and re-checks every 10 ms (at most 5 s).
    True once none is left.
    """
    needle = f"{MARKER_ENV}={token}".encode()
    loop = asyncio.get_running_loop()
    deadline = clock.now() + timeout
    fallback_rounds = 0
    while pids := _marked_pids(needle):
        if clock.now() >= deadline:
            log.warning("ansible processes survived SIGKILL", extra={"pids": pids})
            return False
        fds: list[int] = []
        no_pidfd = False
        try:
            for pid in pids:
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                except OSError:
                    no_pidfd = True
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                    continue
                fds.append(fd)
                if _marked(needle, pid):  # still the same process: the pidfd pins it
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
            if no_pidfd:
                if fallback_rounds >= 500:
                    return False
                fallback_rounds += 1
                await asyncio.sleep(0.01)  # nothing to wait on: re-check shortly (bounded above)
                continue
            waiting = set(fds)
            all_gone: asyncio.Future[None] = loop.create_future()

            def wake(fd: int | None = None) -> None:
                if fd is not None:
                    loop.remove_reader(fd)
                    waiting.discard(fd)
                if (fd is None or not waiting) and not all_gone.done():
                    all_gone.set_result(None)

            for fd in fds:
                loop.add_reader(fd, wake, fd)  # readable once that process has exited
            if waiting:
                timer = clock.call_at(deadline, wake)
                try:
                    await all_gone
                finally:
                    timer.cancel()
        finally:
            for fd in fds:
                loop.remove_reader(fd)
                os.close(fd)
    return True


# --- the runner's artifacts --------------------------------------------------------------------


def read_events(artifact_dir: Path) -> list[dict[str, Any]]:
    """The job events the runner wrote, in order; unreadable files are skipped."""
    events_dir = artifact_dir / "job_events"
    found: list[tuple[int, dict[str, Any]]] = []
    try:
        entries = list(os.scandir(events_dir))
    except OSError:
        return []
    for entry in entries:
        # <counter>-<uuid>.json, written by the runner; not the callback's <uuid>-partial.json or any *.tmp
        counter, _, _ = entry.name.partition("-")
        if not entry.name.endswith(".json") or entry.name.endswith("-partial.json") or not counter.isdigit():
            continue
        try:
            with open(entry.path, encoding="utf-8") as f:
                event = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(event, dict):
            found.append((int(counter), event))
    found.sort(key=lambda item: item[0])
    return [event for _, event in found]


def _data(event: Mapping[str, Any]) -> Mapping[str, Any]:
    data = event.get("event_data")
    return data if isinstance(data, dict) else {}


def facts_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The facts set on ``localhost``, in order (a later value wins), from ``runner_on_ok`` events."""
    facts: dict[str, Any] = {}
    for event in events:
        data = _data(event)
        if event.get("event") != "runner_on_ok" or data.get("host") != HOST:
            continue
        res = data.get("res")
        if not isinstance(res, dict):
            continue
        items = [r for r in res.get("results", ()) if isinstance(r, dict)] if isinstance(res.get("results"), list) \
            else []
        for part in [*items, res]:
            part_facts = part.get("ansible_facts")
            if isinstance(part_facts, dict):
                for key, value in part_facts.items():
                    facts.pop(key, None)
                    facts[key] = value
    return facts


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def failure_of(events: list[dict[str, Any]]) -> str | None:
    """Why the play failed: the last failed (not ignored) or unreachable task, with its message."""
    reason = None
    for event in events:
        kind = event.get("event")
        data = _data(event)
        if kind not in ("runner_on_failed", "runner_on_unreachable") or data.get("ignore_errors"):
            continue
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        msg = res.get("msg")
        msg = msg if isinstance(msg, str) else ("" if msg is None else json.dumps(msg, default=str))
        stderr = res.get("stderr")
        if isinstance(stderr, str) and _last_line(stderr):
            msg = f"{msg}: {_last_line(stderr)}" if msg else _last_line(stderr)
        task = data.get("task") or "?"
        what = "failed" if kind == "runner_on_failed" else "could not reach its host"
        reason = f"task {task!r} {what}" + (f": {msg}" if msg else "")
    return reason


def _current_task(events: list[dict[str, Any]]) -> str | None:
    for event in reversed(events):
        if event.get("event") == "playbook_on_task_start":
            return _data(event).get("task") or None
    return None


def _error_line(stdout: str, stderr: str) -> str | None:
    """Ansible's own error (e.g. a playbook that does not parse), when no task failed."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith(("[ERROR]", "ERROR!")):
            return line
    return _last_line(stderr) or None


def _rc_fact(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*-?[0-9]{1,6}\s*", value):
        return int(value)
    return None


# --- the driver --------------------------------------------------------------------------------


def _hand_over(tmp: Path, user: str | None) -> None:
    """Give the run's temporary directory to ``user`` (when that is not us), so the runner can use it."""
    if user is None:
        return
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise InvalidInput(f"cannot run as {user!r}: no such user", code="invalid_run_as", user=user) from None
    if pw.pw_uid == os.geteuid():
        return
    for dirpath, _dirnames, filenames in os.walk(tmp):
        os.chown(dirpath, pw.pw_uid, pw.pw_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), pw.pw_uid, pw.pw_gid)


class AnsibleDriver(Driver):
    """A playbook from ``DriverRoots.playbook_dirs``, run through ansible-runner (see the module docstring)."""

    def __init__(self, spec: DriverSpec, *, roots: DriverRoots, runner: Path | None = None) -> None:
        super().__init__(spec)
        self.roots = roots
        self.runner = runner if runner is not None else runner_path()

    def playbook(self) -> Path | None:
        """The first ``<dir>/<name>`` of ``playbook_dirs`` that is a file (absolute); None if there is none."""
        for d in self.roots.playbook_dirs:
            p = inside(Path(os.path.abspath(d)), self.spec.name)  # the runner does not run in our directory
            if p.is_file():
                return p
        return None

    def runner_installed(self) -> bool:
        return self.runner.is_file() and os.access(self.runner, os.X_OK)

    def installed(self) -> bool:
        return self.playbook() is not None and self.runner_installed()

    async def meta_data(self, clock: LoopClock) -> MetaData | None:
        return None

    def actions(self, meta: MetaData | None) -> frozenset[str] | None:
        return None

    def validate_params(self, meta: MetaData | None, params: Mapping[str, str]) -> None:
        check_params(params)
        check_names(params)

    def _not_installed(self, why: str) -> RunOutcome:
        return RunOutcome(rc=5, status="not_installed", exit_reason=why[:EXIT_REASON_MAX], stdout="", stderr="")

    def _prepare(self, tmp: Path, req: RunRequest, ident: str) -> tuple[Path, dict[str, str]]:
        """Write the private data directory; (its path, the runner's environment)."""
        pdd = tmp / "pdd"
        for d in (pdd / "inventory", pdd / "env", tmp / "home" / ".ansible", tmp / "local", tmp / "remote"):
            d.mkdir(parents=True)
        host_vars = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        (pdd / "inventory" / "hosts.yml").write_text(json.dumps({"all": {"hosts": {HOST: host_vars}}}) + "\n")
        variables: dict[str, str | float] = dict(req.params)
        variables.update({"tenure_action": req.action, "tenure_instance": req.instance,
                          "tenure_instance_id": req.instance_id, "tenure_interval": req.interval,
                          "tenure_timeout": req.timeout})
        (pdd / "env" / "extravars").write_text(extravars_yaml(variables), encoding="utf-8")
        # How often the runner looks for a cancel (its SIGTERM handler) while the playbook is quiet.
        (pdd / "env" / "settings").write_text(json.dumps({"pexpect_timeout": 1}) + "\n")
        (tmp / "ansible.cfg").write_text("[defaults]\n")
        env = dict(BASE_ENV)
        env.update({
            "PATH": f"{self.runner.parent}:{BASE_ENV['PATH']}",  # ansible-playbook is next to ansible-runner
            "HOME": str(tmp / "home"),
            "ANSIBLE_HOME": str(tmp / "home" / ".ansible"),
            "ANSIBLE_CONFIG": str(tmp / "ansible.cfg"),
            "ANSIBLE_LOCAL_TEMP": str(tmp / "local"),
            "ANSIBLE_REMOTE_TEMP": str(tmp / "remote"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            MARKER_ENV: ident,
        })
        return pdd, env

    async def run(self, req: RunRequest, clock: LoopClock,
                  on_spawn: Callable[[int], None] | None = None) -> RunOutcome:
        """Run the playbook for ``req``; ``on_spawn`` gets the runner's pid."""
        check_action(req.action)
        self.validate_params(None, req.params)
        playbook = self.playbook()
        if playbook is None:
            dirs = ", ".join(str(d) for d in self.roots.playbook_dirs) or "(no playbook_dirs configured)"
            return self._not_installed(f"{self.spec.name} is not installed in {dirs}")
        if not self.runner_installed():
            return self._not_installed(f"{RUNNER} is not installed (looked for {self.runner})")
        ident = uuid.uuid4().hex  # the artifacts' name, and the marker every process of the run carries
        tmp = Path(tempfile.mkdtemp(prefix="tenure-ansible-"))
        try:
            pdd, env = self._prepare(tmp, req, ident)
            argv = [str(self.runner), "run", str(pdd), "-p", playbook.name, "--project-dir", str(playbook.parent),
                    "--ident", ident]
            user = self.roots.user_for(self.spec)
            try:
                _hand_over(tmp, user)
                res = await run_process(argv, env=env, timeout=req.timeout, grace=req.grace, clock=clock,
                                        user=user, cwd=str(tmp), output_cap=OUTPUT_CAP, on_spawn=on_spawn)
            except asyncio.CancelledError:
                try:
                    await kill_marked(ident, clock=clock)
                except BaseException:
                    _kill_marked_now(f"{MARKER_ENV}={ident}".encode())
                    raise
                raise
            except InvalidInput as exc:
                if exc.code != "invalid_run_as":
                    raise
                return RunOutcome(rc=6, status="error", exit_reason=exc.message, stdout="", stderr="")
            except OSError as exc:
                return RunOutcome(rc=1, status="error", stdout="", stderr="",
                                  exit_reason=f"could not run {self.runner}: {exc}"[:EXIT_REASON_MAX])
            if res.timed_out or res.signal is not None:
                await kill_marked(ident, clock=clock)
            return self._outcome(res, req, pdd / "artifacts" / ident)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _outcome(self, res: ProcessResult, req: RunRequest, artifact_dir: Path) -> RunOutcome:
        stdout = res.stdout.decode("utf-8", errors="replace")
        stderr = res.stderr.decode("utf-8", errors="replace")
        if res.not_found:
            return self._not_installed(f"{RUNNER} is not installed (looked for {self.runner})")
        if res.not_executable:
            return RunOutcome(rc=4, status="error", exit_reason=f"{self.runner} is not executable", stdout="",
                              stderr="")
        events = read_events(artifact_dir)
        if res.timed_out:
            task = _current_task(events)
            why = f"timed out after {fmt_seconds(req.timeout)}" + (f" in task {task!r}" if task else "")
            return RunOutcome(rc=1, status="timeout", exit_reason=why[:EXIT_REASON_MAX], stdout=stdout,
                              stderr=stderr, pid=res.pid)
        if res.signal is not None:
            try:
                name = signal.Signals(res.signal).name
            except ValueError:
                name = f"signal {res.signal}"
            return RunOutcome(rc=1, status="error", exit_reason=f"{RUNNER} was killed by {name}", stdout=stdout,
                              stderr=stderr, pid=res.pid)
        facts = facts_of(events)
        rc_fact: int | None = None
        if RC_FACT in facts:
            rc_fact = _rc_fact(facts[RC_FACT])
            if rc_fact is None:
                return RunOutcome(rc=1, status="error", stdout=stdout, stderr=stderr, pid=res.pid,
                                  exit_reason=f"{RC_FACT} must be an integer, not {facts[RC_FACT]!r}"[
                                      :EXIT_REASON_MAX])
        reason: str | None = None
        if res.returncode == 0:
            rc = 0 if rc_fact is None else rc_fact
        else:
            reason = failure_of(events) or _error_line(stdout, stderr) or f"{RUNNER} exited with {res.returncode}"
            rc = rc_fact if rc_fact else 1
        outputs = {key[len(OUTPUT_FACT_PREFIX):]: value for key, value in facts.items()
                   if key.startswith(OUTPUT_FACT_PREFIX)}
        outcome = RunOutcome(rc=normalize_rc(rc), status="done", stdout=stdout, stderr=stderr, pid=res.pid,
                             exit_reason=reason[:EXIT_REASON_MAX] if reason else None)
        return with_outputs(outcome, outputs)
