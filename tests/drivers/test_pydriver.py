"""Python drivers: handler classes from allowed packages, run in threads, with timeouts on the clock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from tenure.clock import FakeClock
from tenure.domain.errors import InvalidInput
from tenure.drivers.base import OUTPUT_VALUE_MAX, OUTPUTS_MAX, Driver, RunOutcome, RunRequest
from tenure.drivers.ocf import InvalidMetaData
from tenure.drivers.pydriver import HandlerContext
from tenure.drivers.registry import make_driver
from tenure.drivers.spec import DriverRoots
from tests.drivers import pyhandlers

ROOTS = DriverRoots(python_packages=("tenure.drivers.bundled", "tests.drivers.pyhandlers"))
MEMORY = "python:tenure.drivers.bundled.example:Memory"


def driver(spec: str) -> Driver:
    return make_driver(spec, ROOTS, rsctmp=Path("/nonexistent"))


def request(action: str, params: Mapping[str, str] | None = None, *, instance: str = "mem-1",
            interval: float = 0.0, timeout: float = 20.0) -> RunRequest:
    return RunRequest(action=action, params=dict(params or {}), instance=instance, instance_id="id-" + instance,
                      interval=interval, timeout=timeout)


def run(d: Driver, action: str, params: Mapping[str, str] | None = None, **kw: object) -> RunOutcome:
    return asyncio.run(d.run(request(action, params, **kw), FakeClock()))  # type: ignore[arg-type]


def test_memory_lifecycle() -> None:
    d = driver(MEMORY)
    assert d.installed()
    assert d.actions(None) == {"start", "stop", "monitor"}
    assert run(d, "monitor").rc == 7
    started = run(d, "start", {"value": "v"})
    assert (started.rc, started.status, started.exit_reason, started.pid) == (0, "done", None, None)
    assert started.stdout == "started mem-1\n"
    assert run(d, "start").rc == 0
    assert run(d, "monitor", interval=10).rc == 0
    assert run(d, "monitor", instance="mem-2").rc == 7  # state is per instance id
    assert run(d, "stop").rc == 0
    assert run(d, "stop").rc == 0
    assert run(d, "monitor").rc == 7


def test_memory_meta_data() -> None:
    d = driver(MEMORY)
    meta = asyncio.run(d.meta_data(FakeClock()))
    assert meta is not None and meta.name == "Memory"
    assert [p.name for p in meta.parameters] == ["value"]
    assert meta.action("monitor").interval == 10.0
    d.validate_params(meta, {"value": "x"})
    with pytest.raises(InvalidInput) as err:
        d.validate_params(meta, {"colour": "x"})
    assert err.value.code == "unknown_parameter"
    xml = run(d, "meta-data")
    assert (xml.rc, xml.status) == (0, "done") and "<resource-agent" in xml.stdout


def test_each_driver_object_has_its_own_handler() -> None:
    a, b = driver(MEMORY), driver(MEMORY)
    assert run(a, "start").rc == 0
    assert run(a, "monitor").rc == 0
    assert run(b, "monitor").rc == 7


def test_return_values() -> None:
    d = driver("python:tests.drivers.pyhandlers:Answers")
    assert d.actions(None) == {"plain", "code", "with-reason", "nonsense", "truthy", "context"}
    meta = asyncio.run(d.meta_data(FakeClock()))
    assert meta is not None and meta.name == "answers" and meta.parameters == ()
    assert (run(d, "plain").rc, run(d, "code", {"rc": "8"}).rc, run(d, "code", {"rc": "42"}).rc) == (0, 8, 1)
    reason = run(d, "with-reason")
    assert (reason.rc, reason.status, reason.exit_reason) == (7, "done", "not there")
    assert run(d, "with_reason").rc == 7  # "_" works as well as "-"
    for action in ("nonsense", "truthy"):
        bad = run(d, action)
        assert (bad.rc, bad.status) == (1, "error")
        assert "expected None, an int, a dict, (int, str) or (int, str, dict)" in (bad.exit_reason or "")
        assert bad.outputs == {}


def test_handler_context() -> None:
    d = driver("python:tests.drivers.pyhandlers:Answers")
    params = {"b": "2", "a": "1"}
    out = run(d, "context", params, interval=10, timeout=30)
    assert out.stdout == "mem-1 id-mem-1 10 30 [('a', '1'), ('b', '2')]\n"
    assert params == {"b": "2", "a": "1"}


def test_unsupported_actions() -> None:
    d = driver("python:tests.drivers.pyhandlers:Answers")
    for action in ("promote", "not-a-method"):
        out = run(d, action)
        assert (out.rc, out.status) == (3, "not_supported")
    with pytest.raises(InvalidInput) as err:
        run(d, "_private")
    assert err.value.code == "invalid_action"


def test_exception_is_an_error_outcome() -> None:
    d = driver("python:tests.drivers.pyhandlers:Boom")
    out = run(d, "start", {"why": "on purpose"})
    assert (out.rc, out.status, out.exit_reason) == (1, "error", "RuntimeError: boom: on purpose")
    assert out.stdout == "about to fail\n"
    assert out.stderr.startswith("Traceback") and "RuntimeError: boom: on purpose" in out.stderr
    with pytest.raises(InvalidMetaData):
        asyncio.run(d.meta_data(FakeClock()))


def test_long_exception_messages_are_capped() -> None:
    d = driver("python:tests.drivers.pyhandlers:Boom")
    out = run(d, "start", {"why": "x" * 5000})
    assert out.exit_reason is not None and len(out.exit_reason) == 512


def test_timeout_reports_at_once_and_cancels_the_handler() -> None:
    pyhandlers.HANG_ENTERED.clear()
    pyhandlers.HANG_LEFT.clear()

    async def main() -> None:
        clock = FakeClock()
        d = driver("python:tests.drivers.pyhandlers:Hang")
        task = asyncio.create_task(d.run(request("start", timeout=20), clock))
        # The handler runs in a thread; wait for it to be inside start (an event, in a helper thread).
        assert await asyncio.to_thread(pyhandlers.HANG_ENTERED.wait, 30)
        assert not task.done()
        clock.advance(20)
        out = await task
        assert (out.rc, out.status, out.exit_reason) == (1, "timeout", "timed out after 20s")
        assert await asyncio.to_thread(pyhandlers.HANG_LEFT.wait, 30)  # it saw ctx.cancelled and returned

    asyncio.run(main())


def test_cancelling_the_run_cancels_the_handler() -> None:
    pyhandlers.HANG_ENTERED.clear()
    pyhandlers.HANG_LEFT.clear()

    async def main() -> None:
        d = driver("python:tests.drivers.pyhandlers:Hang")
        task = asyncio.create_task(d.run(request("start"), FakeClock()))
        assert await asyncio.to_thread(pyhandlers.HANG_ENTERED.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await asyncio.to_thread(pyhandlers.HANG_LEFT.wait, 30)

    asyncio.run(main())


def test_not_installed_handlers() -> None:
    for spec in ("python:tenure.drivers.bundled.nosuchmodule:Memory",
                 "python:tenure.drivers.bundled.example:NoSuchClass",
                 "python:tenure.drivers.bundled.example:OCF_SUCCESS"):  # not a class
        d = driver(spec)
        assert not d.installed()
        assert d.actions(None) is None
        assert asyncio.run(d.meta_data(FakeClock())) is None
        out = run(d, "start")
        assert (out.rc, out.status) == (5, "not_installed")


def test_a_class_that_cannot_be_built_is_an_error() -> None:
    out = run(driver("python:tests.drivers.pyhandlers:Unconstructible"), "start")
    assert (out.rc, out.status) == (1, "error")
    assert "ValueError: needs arguments" in (out.exit_reason or "")


def test_modules_outside_the_allowed_packages_are_never_imported() -> None:
    with pytest.raises(InvalidInput) as err:
        make_driver("python:tests.drivers.pyhandlers:Answers", DriverRoots(), rsctmp=Path("/nonexistent"))
    assert err.value.code == "invalid_driver"


# --- handler-style names and outputs -----------------------------------------------------------


def test_handler_style_names_are_aliases_of_the_ocf_actions() -> None:
    d = driver("python:tests.drivers.pyhandlers:Switch")
    assert d.actions(None) == {"create", "modify", "delete", "probe", "start", "reload", "stop", "monitor"}
    absent = run(d, "monitor")
    assert (absent.rc, absent.status, absent.exit_reason, absent.outputs) == (7, "done", "no such vlan", {})
    started = run(d, "start", {"vlan": "100"})
    assert (started.rc, started.status, started.exit_reason) == (0, "done", None)
    assert started.outputs == {"vlan": "100", "port": "eth1"}
    assert run(d, "monitor", interval=10).outputs == {"vlan": "100"}
    reloaded = run(d, "reload", {"vlan": "200"})
    assert (reloaded.rc, reloaded.outputs) == (0, {"vlan": "200", "changed": "yes"})  # the returned dict wins
    assert (run(d, "probe").rc, run(d, "probe").outputs) == (0, {"vlan": "200"})  # the aliases are actions too
    assert (run(d, "stop").rc, run(d, "stop").outputs) == (0, {})
    assert run(d, "monitor").rc == 7
    assert run(d, "promote").status == "not_supported"  # only the four OCF actions have aliases


def test_the_method_named_after_the_action_wins() -> None:
    d = driver("python:tests.drivers.pyhandlers:Both")
    assert d.actions(None) == {"start", "create"}
    assert run(d, "start").outputs == {"called": "start"}
    assert run(d, "create").outputs == {"called": "create"}
    assert run(d, "stop").status == "not_supported"


def test_memory_has_no_outputs() -> None:
    d = driver(MEMORY)
    assert run(d, "start").outputs == {}
    assert run(d, "monitor").outputs == {}


def test_outputs_at_the_limits() -> None:
    out = run(driver("python:tests.drivers.pyhandlers:Outputs"), "at-limits")
    assert (out.rc, out.status, out.exit_reason) == (0, "done", None)
    assert len(out.outputs) == OUTPUTS_MAX
    assert out.outputs["k0"] == "v" * OUTPUT_VALUE_MAX and out.outputs["_" + "x" * 63] == "12"


@pytest.mark.parametrize(("action", "why"), [
    ("too-many", "65 outputs; at most 64 are allowed"),
    ("too-many-set", "65 outputs; at most 64 are allowed"),
    ("too-long", "output 'k' has 4097 characters; at most 4096 are allowed"),
    ("long-name", "invalid output name 'xxxx"),
    ("bad-name", "invalid output name '1st'"),
    ("bad-set-name", "invalid output name 'vlan id'"),
    ("not-a-string", "output 'k' is a list; outputs are strings"),
    ("a-bool", "output 'k' is a bool; outputs are strings"),
    ("not-a-name", "invalid output name 3"),
])
def test_bad_outputs_are_an_error_outcome(action: str, why: str) -> None:
    out = run(driver("python:tests.drivers.pyhandlers:Outputs"), action)
    assert (out.rc, out.status, out.outputs) == (1, "error", {})
    assert out.exit_reason is not None and out.exit_reason.startswith("bad outputs: " + why), out.exit_reason
    assert len(out.exit_reason) <= 512


def test_bad_return_shapes_stay_errors() -> None:
    d = driver("python:tests.drivers.pyhandlers:Outputs")
    for action in ("bad-third", "four"):
        out = run(d, action)
        assert (out.rc, out.status, out.outputs) == (1, "error", {})
        assert "returned tuple" in (out.exit_reason or "")
    raised = run(d, "then-raises")
    assert (raised.rc, raised.status, raised.outputs) == (1, "error", {})
    assert raised.exit_reason == "RuntimeError: after setting an output"


def test_set_output_converts_and_copies() -> None:
    ctx = HandlerContext(instance="i", instance_id="id", interval=0, timeout=1)
    ctx.set_output("a", 1)
    ctx.set_output("b", None)
    snapshot = ctx.outputs
    snapshot["c"] = "x"
    assert ctx.outputs == {"a": "1", "b": "None"}
