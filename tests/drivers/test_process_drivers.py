"""The OCF, LSB and exec drivers, with real agents: the installed ocf:heartbeat:Dummy and tests/drivers/bin."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping
from pathlib import Path

import pytest

from tenure.clock import FakeClock, RealClock
from tenure.domain.driverspec import parse_spec
from tenure.domain.errors import InvalidInput
from tenure.drivers.base import Driver, RunOutcome, RunRequest
from tenure.drivers.ocf import InvalidMetaData, ocf_env
from tenure.drivers.process import group_alive, wait_group_gone
from tenure.drivers.registry import make_driver
from tenure.drivers.spec import DriverRoots
from tests.drivers.support import BIN, Ready

DUMMY = Path("/usr/lib/ocf/resource.d/heartbeat/Dummy")
needs_dummy = pytest.mark.skipif(not DUMMY.exists(), reason="resource-agents (ocf:heartbeat:Dummy) not installed")


def request(action: str, params: Mapping[str, str] | None = None, *, interval: float = 0.0, timeout: float = 20.0,
            grace: float = 5.0, instance: str = "res-1") -> RunRequest:
    return RunRequest(action=action, params=dict(params or {}), instance=instance, instance_id="id-" + instance,
                      interval=interval, timeout=timeout, grace=grace)


def run(driver: Driver, action: str, params: Mapping[str, str] | None = None, **kw: float | str) -> RunOutcome:
    """One operation, start to end, on a clock that never moves (so no timeout can fire)."""
    return asyncio.run(driver.run(request(action, params, **kw), FakeClock()))  # type: ignore[arg-type]


@pytest.fixture
def ocf_root(tmp_path: Path) -> Path:
    """An OCF root whose provider "test" links to the test drivers (agents that are symlinks are followed)."""
    root = tmp_path / "ocf"
    provider = root / "resource.d" / "test"
    provider.mkdir(parents=True)
    for p in BIN.iterdir():
        (provider / p.name).symlink_to(p)
    (provider / "noexec").write_text("#!/bin/sh\nexit 0\n")
    (provider / "noexec").chmod(0o644)
    return root


@pytest.fixture
def rsctmp(tmp_path: Path) -> Path:
    return tmp_path / "rsctmp"  # does not exist yet: drivers create it


def ocf(ocf_root: Path, rsctmp: Path, name: str) -> Driver:
    return make_driver(f"ocf:test:{name}", DriverRoots(ocf_root=ocf_root), rsctmp=rsctmp)


# --- the real Dummy agent ----------------------------------------------------------------------


@needs_dummy
def test_dummy_lifecycle(tmp_path: Path, rsctmp: Path) -> None:
    driver = make_driver("ocf:heartbeat:Dummy", DriverRoots(), rsctmp=rsctmp)
    assert driver.installed()
    state = tmp_path / "dummy.state"
    params = {"state": str(state)}

    probe = run(driver, "monitor", params)  # interval 0: a probe, which reports no reason
    assert (probe.rc, probe.status, probe.exit_reason) == (7, "done", None)
    assert rsctmp.is_dir() and (rsctmp.stat().st_mode & 0o777) == 0o755

    for _ in range(2):  # start is idempotent
        started = run(driver, "start", params)
        assert (started.rc, started.status) == (0, "done"), started
        assert state.exists()
    mon = run(driver, "monitor", params, interval=10)
    assert (mon.rc, mon.status, mon.exit_reason) == (0, "done", None)
    assert mon.pid is not None

    for _ in range(2):  # and so is stop
        stopped = run(driver, "stop", params)
        assert (stopped.rc, stopped.status) == (0, "done")
        assert not state.exists()
    mon = run(driver, "monitor", params, interval=10)
    assert (mon.rc, mon.status, mon.exit_reason) == (7, "done", "No process state file found")


@needs_dummy
def test_dummy_meta_data_and_actions(rsctmp: Path) -> None:
    driver = make_driver("ocf:heartbeat:Dummy", DriverRoots(), rsctmp=rsctmp)
    assert driver.actions(None) == {"start", "stop", "monitor", "meta-data"}
    meta = asyncio.run(driver.meta_data(FakeClock()))
    assert meta is not None and meta.name == "Dummy"
    assert [p.name for p in meta.parameters] == ["state", "fake"]
    actions = driver.actions(meta)
    assert actions is not None
    assert {"start", "stop", "monitor", "meta-data", "reload", "migrate_to", "migrate_from",
            "validate-all", "validate"} == actions
    driver.validate_params(meta, {"state": "/x", "fake": "y"})
    with pytest.raises(InvalidInput) as err:
        driver.validate_params(meta, {"sate": "/x"})
    assert err.value.code == "unknown_parameter"


@needs_dummy
def test_dummy_validate_is_validate_all(tmp_path: Path, rsctmp: Path) -> None:
    driver = make_driver("ocf:heartbeat:Dummy", DriverRoots(), rsctmp=rsctmp)
    ok = run(driver, "validate", {"state": str(tmp_path / "d.state")})
    assert (ok.rc, ok.status) == (0, "done")
    bad = run(driver, "validate", {"state": str(tmp_path / "missing-dir" / "d.state")})
    assert bad.rc == 2 and "is not writable" in (bad.exit_reason or "")


def test_uninstalled_ocf_agent(rsctmp: Path) -> None:
    for spec in ("ocf:heartbeat:NoSuchAgent", "ocf:nosuchprovider:Dummy"):
        driver = make_driver(spec, DriverRoots(), rsctmp=rsctmp)
        assert not driver.installed()
        out = run(driver, "start")
        path = f"/usr/lib/ocf/resource.d/{driver.spec.provider}/{driver.spec.name}"
        assert (out.rc, out.status, out.exit_reason) == (5, "not_installed", f"{path} is not installed")
        assert asyncio.run(driver.meta_data(FakeClock())) is None


# --- OCF agents from the test drivers ----------------------------------------------------------


def test_ocf_environment_is_exactly_the_ocf_one(ocf_root: Path, rsctmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENURE_TOKEN", "secret")
    driver = ocf(ocf_root, rsctmp, "showenv")
    out = run(driver, "start", {"a": "1", "OCF_CHECK_LEVEL": "10"}, interval=0, timeout=30)
    assert (out.rc, out.status) == (0, "done")
    expected = ocf_env(root=ocf_root, spec=parse_spec("ocf:test:showenv"), instance="res-1",
                       params={"a": "1", "OCF_CHECK_LEVEL": "10"}, timeout=30, interval=0, rsctmp=rsctmp)
    assert out.stdout.splitlines() == [f"{k}={v}" for k, v in sorted(expected.items())]


def test_monitor_failure_and_its_reason(ocf_root: Path, rsctmp: Path) -> None:
    driver = ocf(ocf_root, rsctmp, "failmon")
    assert run(driver, "start").rc == 0
    assert run(driver, "monitor", interval=10).rc == 0
    failed = run(driver, "monitor", {"fail": "1"}, interval=10)
    assert (failed.rc, failed.status, failed.exit_reason) == (7, "done", "monitor failed on purpose")
    assert "an earlier reason" in failed.stderr
    assert run(driver, "stop").rc == 0
    assert run(driver, "monitor", interval=10).rc == 7
    assert run(driver, "promote").rc == 3  # the agent's own "unimplemented"


def test_agent_saying_not_installed(ocf_root: Path, rsctmp: Path) -> None:
    out = run(ocf(ocf_root, rsctmp, "exit5"), "start")
    assert (out.rc, out.status) == (5, "done")  # ran fine; the agent reports its resource is not installed


def test_agent_not_executable(ocf_root: Path, rsctmp: Path) -> None:
    driver = ocf(ocf_root, rsctmp, "noexec")
    assert not driver.installed()
    out = run(driver, "start")
    assert (out.rc, out.status) == (4, "error")
    assert out.exit_reason == f"{ocf_root}/resource.d/test/noexec is not executable"


def test_start_that_leaves_a_daemon(ocf_root: Path, rsctmp: Path) -> None:
    driver = ocf(ocf_root, rsctmp, "daemonize")
    started = run(driver, "start")
    assert (started.rc, started.status) == (0, "done")
    assert started.pid is not None
    try:
        assert group_alive(started.pid)  # the daemon, in the start's process group, holding its stdout
        assert run(driver, "monitor", interval=10).rc == 0
        assert run(driver, "start").rc == 0
    finally:
        assert run(driver, "stop").rc == 0
    assert asyncio.run(wait_group_gone(started.pid, clock=RealClock(), timeout=30))
    assert run(driver, "monitor", interval=10).rc == 7


def test_start_timeout_with_sigterm(ocf_root: Path, rsctmp: Path, ready: Ready) -> None:
    async def main() -> None:
        clock = FakeClock()
        driver = ocf(ocf_root, rsctmp, "sleeper")
        spawned: list[int] = []
        task = asyncio.create_task(driver.run(request("start", {"ready": str(ready.path)}, timeout=20), clock,
                                              on_spawn=spawned.append))
        pid = await ready.pid(unless=task)
        assert spawned == [pid]
        clock.advance(20)
        out = await task
        assert (out.rc, out.status, out.exit_reason, out.pid) == (1, "timeout", "timed out after 20s", pid)
        assert f"started {pid}" in out.stderr
        assert not group_alive(pid)

    asyncio.run(main())


def test_start_timeout_with_sigkill(ocf_root: Path, rsctmp: Path, ready: Ready) -> None:
    async def main() -> None:
        clock = FakeClock()
        driver = ocf(ocf_root, rsctmp, "sleeper")
        params = {"ready": str(ready.path), "ignore_term": "1"}
        task = asyncio.create_task(driver.run(request("start", params, timeout=2.5, grace=5), clock))
        pid = await ready.pid(unless=task)
        clock.advance(2.5)
        assert group_alive(pid)  # SIGTERM ignored
        clock.advance(5)
        out = await task
        assert (out.rc, out.status, out.exit_reason) == (1, "timeout", "timed out after 2.5s")
        assert not group_alive(pid)

    asyncio.run(main())


def test_killed_by_a_foreign_signal(ocf_root: Path, rsctmp: Path, ready: Ready) -> None:
    async def main() -> None:
        driver = ocf(ocf_root, rsctmp, "sleeper")
        task = asyncio.create_task(driver.run(request("monitor", {"ready": str(ready.path)}), FakeClock()))
        pid = await ready.pid(unless=task)
        os.killpg(pid, signal.SIGUSR1)
        out = await task
        assert (out.rc, out.status, out.exit_reason) == (1, "error", "killed by SIGUSR1")
        assert await wait_group_gone(pid, clock=RealClock(), timeout=30)

    asyncio.run(main())


def test_unparsable_ocf_meta_data_is_an_error(ocf_root: Path, rsctmp: Path) -> None:
    with pytest.raises(InvalidMetaData):
        asyncio.run(ocf(ocf_root, rsctmp, "exit5").meta_data(FakeClock()))  # meta-data exits 5
    with pytest.raises(InvalidMetaData):
        asyncio.run(ocf(ocf_root, rsctmp, "showenv").meta_data(FakeClock()))  # not XML


def test_malformed_requests_are_refused(ocf_root: Path, rsctmp: Path) -> None:
    driver = ocf(ocf_root, rsctmp, "failmon")
    for action in ("Start", "", "../start", "start now", "-x", "a" * 65):
        with pytest.raises(InvalidInput) as err:
            run(driver, action)
        assert err.value.code == "invalid_action"
    with pytest.raises(InvalidInput) as err:
        run(driver, "start", {"bad-name": "x"})
    assert err.value.code == "invalid_parameter"


def test_unknown_run_as_user_is_a_configuration_error(ocf_root: Path, rsctmp: Path) -> None:
    roots = DriverRoots(ocf_root=ocf_root, run_as={"ocf": "no-such-user-here"})
    out = run(make_driver("ocf:test:failmon", roots, rsctmp=rsctmp), "start")
    assert (out.rc, out.status) == (6, "error")
    assert "no-such-user-here" in (out.exit_reason or "")


# --- exec drivers ------------------------------------------------------------------------------


def exec_driver(name: str, rsctmp: Path, *dirs: Path) -> Driver:
    return make_driver(f"exec:{name}", DriverRoots(exec_dirs=dirs or (BIN,)), rsctmp=rsctmp)


def test_exec_driver_with_meta_data(rsctmp: Path) -> None:
    driver = exec_driver("meta", rsctmp)
    assert driver.installed()
    assert driver.actions(None) is None
    meta = asyncio.run(driver.meta_data(FakeClock()))
    assert meta is not None and meta.name == "meta" and meta.version == "0.1"
    name = meta.param("name")
    assert name is not None and name.required and name.unique
    assert driver.actions(meta) == {"start", "stop", "monitor", "meta-data", "validate-all"}
    with pytest.raises(InvalidInput) as err:
        driver.validate_params(meta, {"color": "red"})
    assert (err.value.code, err.value.details["parameter"]) == ("missing_parameter", "name")
    with pytest.raises(InvalidInput) as err:
        driver.validate_params(meta, {"name": "a", "size": "9"})
    assert (err.value.code, err.value.details["parameter"]) == ("unknown_parameter", "size")
    driver.validate_params(meta, {"name": "a"})

    refused = run(driver, "start")
    assert (refused.rc, refused.exit_reason) == (6, "name is required")
    assert run(driver, "start", {"name": "a"}).rc == 0
    assert (rsctmp / "meta-res-1.state").read_text() == "a\n"
    assert run(driver, "monitor", {"name": "a"}, interval=10).rc == 0
    assert run(driver, "stop", {"name": "a"}).rc == 0
    assert run(driver, "monitor", {"name": "a"}, interval=10).rc == 7


def test_exec_driver_without_meta_data(rsctmp: Path) -> None:
    driver = exec_driver("exit5", rsctmp)
    assert asyncio.run(driver.meta_data(FakeClock())) is None  # meta-data exits 5: there is none
    assert driver.actions(None) is None
    driver.validate_params(None, {"anything": "goes"})
    out = run(driver, "anything-at-all")
    assert (out.rc, out.status) == (5, "done")
    assert asyncio.run(exec_driver("showenv", rsctmp).meta_data(FakeClock())) is None  # output is not XML


def test_exec_environment(rsctmp: Path) -> None:
    out = run(exec_driver("showenv", rsctmp), "custom-op", {"x": "1"})
    env = dict(line.split("=", 1) for line in out.stdout.splitlines())
    assert env["TENURE_ACTION"] == "custom-op"
    assert env["OCF_RESOURCE_TYPE"] == "showenv" and "OCF_RESOURCE_PROVIDER" not in env
    assert env["OCF_RESKEY_x"] == "1" and env["HA_RSCTMP"] == str(rsctmp)
    assert env["OCF_ROOT"] == "/usr/lib/ocf"


def test_exec_driver_search_order(tmp_path: Path, rsctmp: Path) -> None:
    first, second, third = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (first, second, third):
        d.mkdir()
    (first / "drv").mkdir()  # not a regular file: skipped
    (second / "drv").write_text("#!/bin/sh\necho second\n")
    (second / "drv").chmod(0o755)
    (third / "drv").write_text("#!/bin/sh\necho third\n")
    (third / "drv").chmod(0o755)
    assert run(exec_driver("drv", rsctmp, first, second, third), "start").stdout == "second\n"


def test_exec_driver_not_installed_or_not_executable(tmp_path: Path, rsctmp: Path) -> None:
    driver = exec_driver("nothing", rsctmp, tmp_path)
    assert not driver.installed()
    out = run(driver, "start")
    assert (out.rc, out.status, out.exit_reason) == (5, "not_installed", f"nothing is not installed in {tmp_path}")
    (tmp_path / "plain").write_text("#!/bin/sh\n")
    out = run(exec_driver("plain", rsctmp, tmp_path), "start")
    assert (out.rc, out.status) == (4, "error")


# --- LSB init scripts --------------------------------------------------------------------------


@pytest.fixture
def lsb_root(tmp_path: Path) -> Path:
    root = tmp_path / "init.d"
    root.mkdir()
    log, state = tmp_path / "calls.log", tmp_path / "svc.running"
    script = root / "svc"
    script.write_text(f"""#!/bin/sh
# An LSB-style init script: status is 0 when running, 3 when stopped.
echo "$1" >> {log}
case "$1" in
start) touch {state}; exit 0 ;;
stop) rm -f {state}; exit 0 ;;
status) if [ -f {state} ]; then exit 0; fi; exit 3 ;;
*) exit 3 ;;
esac
""")
    script.chmod(0o755)
    return root


def test_lsb_script(lsb_root: Path, rsctmp: Path) -> None:
    driver = make_driver("lsb:svc", DriverRoots(lsb_root=lsb_root), rsctmp=rsctmp)
    assert driver.installed()
    assert asyncio.run(driver.meta_data(FakeClock())) is None
    assert driver.actions(None) == {"start", "stop", "monitor", "restart", "reload", "force-reload", "status"}
    assert run(driver, "monitor").rc == 7  # status 3: stopped
    assert run(driver, "start").rc == 0
    assert run(driver, "monitor", interval=10).rc == 0
    assert run(driver, "stop").rc == 0
    assert run(driver, "status").rc == 7
    unsupported = run(driver, "promote")
    assert (unsupported.rc, unsupported.status) == (3, "not_supported")
    calls = (lsb_root.parent / "calls.log").read_text().split()
    assert calls == ["status", "start", "status", "stop", "status"]  # monitor ran status; promote never ran


def test_lsb_takes_no_parameters(lsb_root: Path, rsctmp: Path) -> None:
    driver = make_driver("lsb:svc", DriverRoots(lsb_root=lsb_root), rsctmp=rsctmp)
    driver.validate_params(None, {})
    for attempt in (lambda: driver.validate_params(None, {"x": "1"}), lambda: run(driver, "start", {"x": "1"})):
        with pytest.raises(InvalidInput) as err:
            attempt()
        assert (err.value.code, err.value.details["parameter"]) == ("invalid_parameter", "x")


def test_lsb_exit_codes_and_environment(rsctmp: Path) -> None:
    roots = DriverRoots(lsb_root=BIN)
    exit5 = make_driver("lsb:exit5", roots, rsctmp=rsctmp)
    assert run(exit5, "monitor").rc == 1  # status 5 is not an LSB "not running"
    assert run(exit5, "start").rc == 5
    env = run(make_driver("lsb:showenv", roots, rsctmp=rsctmp), "start").stdout.splitlines()
    assert env == ["LANG=C.UTF-8", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    missing = run(make_driver("lsb:nope", DriverRoots(lsb_root=rsctmp), rsctmp=rsctmp), "start")
    assert (missing.rc, missing.status) == (5, "not_installed")


# --- outputs -----------------------------------------------------------------------------------


def test_exec_driver_outputs(rsctmp: Path) -> None:
    driver = exec_driver("outputs", rsctmp)
    out = run(driver, "start", {"vlan": "300"})
    assert (out.rc, out.status, out.exit_reason) == (0, "done", None)
    assert out.outputs == {"vlan": "300", "note": "a=b c ", "action": "start"}  # the last vlan line wins
    assert "tenure-output: vlan=1" in out.stdout  # the lines stay in stdout
    assert asyncio.run(driver.meta_data(FakeClock())) is None  # meta-data's lines are not outputs
    failed = run(driver, "monitor", {"rc": "7"})
    assert (failed.rc, failed.status, failed.outputs["action"]) == (7, "done", "monitor")


def test_ocf_agent_outputs(ocf_root: Path, rsctmp: Path) -> None:
    out = run(ocf(ocf_root, rsctmp, "outputs"), "start")
    assert (out.rc, out.status, out.outputs["vlan"]) == (0, "done", "100")


@pytest.mark.parametrize(("bad", "why"), [
    ("noeq", "bad outputs: malformed output line 'tenure-output: nothing': expected tenure-output: KEY=VALUE"),
    ("name", "bad outputs: invalid output name '9lives'"),
    ("long", "bad outputs: output 'long' has 4097 characters; at most 4096 are allowed"),
])
def test_bad_output_lines_are_an_error_outcome(rsctmp: Path, bad: str, why: str) -> None:
    out = run(exec_driver("outputs", rsctmp), "start", {"bad": bad})
    assert (out.rc, out.status, out.outputs) == (1, "error", {})
    assert out.exit_reason is not None and out.exit_reason.startswith(why), out.exit_reason

