"""Ansible drivers: real playbooks (tests/drivers/playbooks) through the real ansible-runner, on localhost."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from tenure.clock import FakeClock
from tenure.domain.driverspec import DriverSpec, parse_spec
from tenure.domain.errors import InvalidInput
from tenure.drivers.ansible import AnsibleDriver, extravars_yaml
from tenure.drivers.base import Driver, RunOutcome, RunRequest
from tenure.drivers.process import group_alive
from tenure.drivers.registry import make_driver
from tenure.drivers.spec import DriverRoots
from tests.drivers.support import BIN, Ready

PLAYBOOKS = Path(__file__).resolve().parent / "playbooks"
ROOTS = DriverRoots(playbook_dirs=(PLAYBOOKS,))


def driver(spec: str, roots: DriverRoots = ROOTS) -> Driver:
    return make_driver(spec, roots, rsctmp=Path("/nonexistent"))


def request(action: str, params: Mapping[str, str] | None = None, *, timeout: float = 120.0,
            grace: float = 5.0) -> RunRequest:
    return RunRequest(action=action, params=dict(params or {}), instance="vlan-1", instance_id="id-vlan-1",
                      timeout=timeout, grace=grace)


def run(d: Driver, action: str, params: Mapping[str, str] | None = None) -> RunOutcome:
    """One operation on a clock that never moves (so no timeout can fire)."""
    return asyncio.run(d.run(request(action, params), FakeClock()))


def run_all(*ops: tuple[Driver, str, Mapping[str, str]]) -> list[RunOutcome]:
    """Independent operations at once (each ansible run costs a second or two of start-up)."""
    async def main() -> list[RunOutcome]:
        clock = FakeClock()
        return list(await asyncio.gather(*(d.run(request(a, p), clock) for d, a, p in ops)))
    return asyncio.run(main())


# --- names and roots ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["ansible:vlan.yml", "ansible:vlan.yaml", "ansible:my-switch_v2.yml"])
def test_playbook_specs(text: str) -> None:
    spec = parse_spec(text)
    assert (spec.cls, spec.provider, spec.text) == ("ansible", None, text)
    assert isinstance(make_driver(spec, DriverRoots(), rsctmp=Path("/nonexistent")), AnsibleDriver)


@pytest.mark.parametrize("text", [
    "ansible:../vlan.yml", "ansible:a/vlan.yml", "ansible:/etc/vlan.yml", "ansible:..", "ansible:.yml",
    "ansible:vlan", "ansible:vlan.txt", "ansible:vlan.yml/", "ansible:p:vlan.yml", "ansible:",
])
def test_bad_playbook_names_are_refused(text: str) -> None:
    for attempt in (lambda: parse_spec(text), lambda: make_driver(text, ROOTS, rsctmp=Path("/nonexistent"))):
        with pytest.raises(InvalidInput) as err:
            attempt()
        assert err.value.code == "invalid_driver"
    with pytest.raises(InvalidInput):
        DriverSpec("ansible", "vlan")


def test_playbooks_come_only_from_the_roots(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "vlan.yml").write_text((PLAYBOOKS / "vlan.yml").read_text())
    for roots in (DriverRoots(), DriverRoots(playbook_dirs=(tmp_path,))):
        d = driver("ansible:vlan.yml", roots)
        assert not d.installed()
        out = run(d, "start", {"vlan": "1", "path": str(tmp_path / "x")})
        assert (out.rc, out.status) == (5, "not_installed")
        assert not (tmp_path / "x").exists()
    # The first directory holding the playbook wins.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "vlan.yml").write_text("- hosts: localhost\n  gather_facts: false\n  tasks: []\n")
    d = driver("ansible:vlan.yml", DriverRoots(playbook_dirs=(tmp_path / "none", mine, PLAYBOOKS)))
    assert isinstance(d, AnsibleDriver) and d.playbook() == mine / "vlan.yml"
    assert d.installed()


def test_without_ansible_runner_nothing_is_installed(tmp_path: Path) -> None:
    d = AnsibleDriver(parse_spec("ansible:vlan.yml"), roots=ROOTS, runner=tmp_path / "ansible-runner")
    assert not d.installed()
    out = run(d, "start", {"vlan": "1", "path": str(tmp_path / "x")})
    assert (out.rc, out.status) == (5, "not_installed")
    assert "ansible-runner" in (out.exit_reason or "")


def test_description() -> None:
    d = driver("ansible:vlan.yml")
    assert d.actions(None) is None  # any action: the playbook branches on tenure_action
    assert asyncio.run(d.meta_data(FakeClock())) is None


@pytest.mark.parametrize("name", ["ansible_python_interpreter", "ansible_connection", "ANSIBLE_BECOME",
                                  "tenure_action", "Tenure_rc", "hostvars", "omit"])
def test_parameters_that_would_reach_into_ansible_are_refused(name: str, tmp_path: Path) -> None:
    d = driver("ansible:vlan.yml")
    params = {"vlan": "1", "path": str(tmp_path / "x"), name: "/bin/true"}
    for attempt in (lambda: d.validate_params(None, params), lambda: run(d, "start", params)):
        with pytest.raises(InvalidInput) as err:
            attempt()
        assert err.value.code == "invalid_parameter"
    assert not (tmp_path / "x").exists()


def test_extravars_are_unsafe_strings() -> None:
    text = extravars_yaml({"a": 'x"\\\n\t\x7f\x85\u2028\ufeff\U0001f600é', "yes": "no", "n": 2.5})
    assert text == ('"a": !unsafe "x\\"\\\\\\x0a\\x09\\x7f\\x85\\u2028\\ufeff\U0001f600é"\n'
                    '"yes": !unsafe "no"\n"n": 2.5\n')


# --- runs --------------------------------------------------------------------------------------


def test_vlan_lifecycle(tmp_path: Path) -> None:
    d = driver("ansible:vlan.yml")
    assert d.installed()
    path = tmp_path / "vlan-100"
    params = {"vlan": "100", "path": str(path)}
    started = run(d, "start", params)
    assert (started.rc, started.status, started.exit_reason) == (0, "done", None), started
    assert path.read_text() == "100"
    assert started.outputs == {"vlan": "100", "path": str(path)}
    assert started.pid is not None and not group_alive(started.pid)
    assert "write the vlan file" in started.stdout  # the runner's display of the play

    running = run(d, "monitor", params)
    assert (running.rc, running.status, running.exit_reason, running.outputs) == (0, "done", None, {})
    stopped = run(d, "stop", params)
    assert (stopped.rc, stopped.status) == (0, "done")
    assert not path.exists()
    gone = run(d, "monitor", params)
    assert (gone.rc, gone.status, gone.exit_reason) == (7, "done", None)
    assert sorted(os.listdir(PLAYBOOKS)) == ["broken.yml", "facts.yml", "fail.yml", "sleep.yml", "vlan.yml"]


def test_parameters_are_not_interpreted(tmp_path: Path) -> None:
    """No shell, and no Jinja either: a value lands in the file exactly as sent."""
    path = tmp_path / "vlan"
    pwned = tmp_path / "pwned"
    value = f"$(touch {pwned}); x `touch {pwned}` {{{{ 6 * 7 }}}} {{% raw %}} \"q\" 'q' \\ \n é \u2028 \U0001f600"
    out = run(driver("ansible:vlan.yml"), "start", {"vlan": value, "path": str(path)})
    assert (out.rc, out.status) == (0, "done"), out
    assert path.read_text(encoding="utf-8") == value
    assert out.outputs["vlan"] == value
    assert not pwned.exists()


def test_failed_task(tmp_path: Path) -> None:
    d = driver("ansible:fail.yml")
    failed, invalid = run_all((d, "start", {"vlan": "100"}), (d, "validate", {"vlan": "7"}))
    assert (failed.rc, failed.status) == (1, "done")
    assert failed.exit_reason == "task 'talk to the switch' failed: the switch refused vlan 100"
    assert failed.outputs == {}  # the task after the failure never ran
    # tenure_rc, set before the failure, chooses the code; the reason is still the failure.
    assert (invalid.rc, invalid.exit_reason) == (6, "task 'talk to the switch' failed: the switch refused vlan 7")


def test_how_facts_and_failures_are_read() -> None:
    d = driver("ansible:facts.yml")
    actions = ["list", "badrc", "loop", "rescued", "ignored", "command"]
    outs = dict(zip(actions, run_all(*((d, a, {}) for a in actions)), strict=True))
    assert (outs["list"].rc, outs["list"].status) == (1, "error")
    assert outs["list"].exit_reason == "bad outputs: output 'list' is a list; outputs are strings"
    assert outs["list"].outputs == {}
    assert (outs["badrc"].rc, outs["badrc"].status) == (1, "error")
    assert outs["badrc"].exit_reason == "tenure_rc must be an integer, not 'seven'"
    assert (outs["loop"].rc, outs["loop"].outputs) == (0, {"n": "3", "count": "3"})
    assert (outs["rescued"].rc, outs["rescued"].exit_reason, outs["rescued"].outputs) == (0, None,
                                                                                          {"recovered": "yes"})
    assert (outs["ignored"].rc, outs["ignored"].exit_reason) == (0, None)
    assert (outs["command"].rc, outs["command"].status) == (1, "done")
    assert outs["command"].exit_reason == "task 'a command that fails' failed: non-zero return code: no such device"


def test_playbook_that_does_not_parse() -> None:
    out = run(driver("ansible:broken.yml"), "start")
    assert (out.rc, out.status) == (1, "done")
    assert out.exit_reason is not None and out.exit_reason.startswith("[ERROR]")


def test_timeout_leaves_nothing_running(ready: Ready) -> None:
    """Ansible runs tasks in sessions of their own: the timeout must reach them too, not only the runner's group."""
    async def main() -> None:
        clock = FakeClock()
        d = driver("ansible:sleep.yml")
        spawned: list[int] = []
        params = {"sleeper": str(BIN / "sleeper"), "ready": str(ready.path)}
        task = asyncio.create_task(d.run(request("start", params, timeout=10, grace=3), clock,
                                         on_spawn=spawned.append))
        pid = await ready.pid(unless=task)  # the task's own process, deep under the runner
        pgid = os.getpgid(pid)
        assert len(spawned) == 1 and pgid != spawned[0]
        clock.advance(10)  # SIGTERM to the runner's group
        clock.advance(3)  # SIGKILL, if it is still there
        out = await task
        assert (out.rc, out.status, out.pid) == (1, "timeout", spawned[0])
        assert out.exit_reason == "timed out after 10s in task 'wait forever'"
        assert not group_alive(spawned[0])
        assert not group_alive(pgid)  # the task's worker and its children are gone as well

    asyncio.run(main())


def test_cancel_leaves_nothing_running(ready: Ready) -> None:
    async def main() -> None:
        d = driver("ansible:sleep.yml")
        spawned: list[int] = []
        params = {"sleeper": str(BIN / "sleeper"), "ready": str(ready.path)}
        task = asyncio.create_task(d.run(request("start", params), FakeClock(), on_spawn=spawned.append))
        pid = await ready.pid(unless=task)
        pgid = os.getpgid(pid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not group_alive(spawned[0])
        assert not group_alive(pgid)

    asyncio.run(main())
