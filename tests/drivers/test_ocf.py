"""The OCF contract as pure functions: exit codes, exit reasons, the environment, meta-data."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tenure.domain.driverspec import parse_spec
from tenure.domain.errors import InvalidInput
from tenure.drivers.ocf import (
    EXIT_REASON_PREFIX,
    RC_NAMES,
    InvalidMetaData,
    check_against_meta,
    check_params,
    exit_reason,
    lsb_rc,
    normalize_rc,
    ocf_env,
    parse_duration,
    parse_meta_data,
    rc_name,
)

DUMMY = Path("/usr/lib/ocf/resource.d/heartbeat/Dummy")
needs_dummy = pytest.mark.skipif(not DUMMY.exists(), reason="resource-agents (ocf:heartbeat:Dummy) not installed")


def test_rc_names() -> None:
    assert RC_NAMES == {0: "success", 1: "generic_error", 2: "invalid_args", 3: "unimplemented",
                        4: "insufficient_privileges", 5: "not_installed", 6: "not_configured", 7: "not_running",
                        8: "running_promoted", 9: "failed_promoted", 190: "degraded", 191: "degraded_promoted"}
    assert rc_name(7) == "not_running"
    assert rc_name(42) == "unknown"


@pytest.mark.parametrize("rc", [*range(10), 190, 191])
def test_ocf_codes_are_kept(rc: int) -> None:
    assert normalize_rc(rc) == rc


@pytest.mark.parametrize("rc", [10, 11, 126, 127, 189, 192, 255, -1, 1000])
def test_other_codes_are_generic_errors(rc: int) -> None:
    assert normalize_rc(rc) == 1


def test_exit_reason_is_the_last_prefixed_line() -> None:
    stderr = "noise\nocf-exit-reason:first\nmore noise\nocf-exit-reason:  second one  \ntrailing\n"
    assert exit_reason(stderr) == "second one"
    assert exit_reason("ocf-exit-reason:no newline at the end") == "no newline at the end"
    assert exit_reason("") is None
    assert exit_reason("nothing to see\n") is None
    assert exit_reason("  ocf-exit-reason:indented is not a reason") is None
    assert exit_reason("ERROR: ocf-exit-reason:mid-line is not a reason") is None
    assert exit_reason("ocf-exit-reason:   \n") is None


def test_exit_reason_is_capped() -> None:
    assert exit_reason(EXIT_REASON_PREFIX + "x" * 2000) == "x" * 512


def env_for(tmp_path: Path, **params: str) -> dict[str, str]:
    return ocf_env(root=Path("/usr/lib/ocf"), spec=parse_spec("ocf:heartbeat:Dummy"), instance="db-1",
                   params=params, timeout=20, interval=10.5, rsctmp=tmp_path)


def test_env_is_exactly_the_ocf_environment(tmp_path: Path) -> None:
    env = env_for(tmp_path, state="/tmp/x.state", fake="y", OCF_CHECK_LEVEL="10")
    assert env == {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "OCF_ROOT": "/usr/lib/ocf",
        "OCF_RA_VERSION_MAJOR": "1",
        "OCF_RA_VERSION_MINOR": "1",
        "OCF_RESOURCE_INSTANCE": "db-1",
        "OCF_RESOURCE_TYPE": "Dummy",
        "OCF_RESOURCE_PROVIDER": "heartbeat",
        "OCF_EXIT_REASON_PREFIX": "ocf-exit-reason:",
        "HA_RSCTMP": str(tmp_path),
        "OCF_RESKEY_state": "/tmp/x.state",
        "OCF_RESKEY_fake": "y",
        "OCF_CHECK_LEVEL": "10",
        "OCF_RESKEY_CRM_meta_timeout": "20000",
        "OCF_RESKEY_CRM_meta_interval": "10500",
    }


def test_env_has_no_provider_for_exec_drivers(tmp_path: Path) -> None:
    env = ocf_env(root=Path("/usr/lib/ocf"), spec=parse_spec("exec:mydrv"), instance="i", params={},
                  timeout=1, interval=0, rsctmp=tmp_path)
    assert "OCF_RESOURCE_PROVIDER" not in env
    assert env["OCF_RESOURCE_TYPE"] == "mydrv"
    assert env["OCF_RESKEY_CRM_meta_interval"] == "0"


def test_env_does_not_leak_the_parent_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENURE_TOKEN", "secret-token")
    monkeypatch.setenv("HOME", "/root/secret")
    env = env_for(tmp_path)
    assert "TENURE_TOKEN" not in env and "HOME" not in env
    assert "secret" not in json.dumps(env)


def test_meta_timeout_and_interval_cannot_be_overridden_by_parameters(tmp_path: Path) -> None:
    env = env_for(tmp_path, CRM_meta_timeout="1", CRM_meta_interval="2")
    assert env["OCF_RESKEY_CRM_meta_timeout"] == "20000"
    assert env["OCF_RESKEY_CRM_meta_interval"] == "10500"


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b", "a=b", "é", "x" * 129, "a.b"])
def test_bad_parameter_names_are_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as err:
        env_for(tmp_path, **{name: "v"})
    assert err.value.code == "invalid_parameter"
    assert err.value.details["parameter"] == name


def test_nul_in_a_value_is_refused() -> None:
    with pytest.raises(InvalidInput) as err:
        check_params({"ok": "fine", "bad": "a\0b"})
    assert (err.value.code, err.value.details["parameter"]) == ("invalid_parameter", "bad")
    check_params({"_x": "", "Name_2": "multi\nline ok", "x" * 128: "v"})


@pytest.mark.parametrize(("text", "seconds"), [
    ("20s", 20.0), ("20", 20.0), ("2m", 120.0), ("100ms", 0.1), ("1h", 3600.0), ("0", 0.0),
    ("1.5s", 1.5), (" 30sec ", 30.0), ("5min", 300.0), ("2hr", 7200.0), ("500us", 0.0005), ("10S", 10.0),
    (None, None), ("", None), ("soon", None), ("-5s", None), ("5 days", None), ("PT20S", None),
])
def test_parse_duration(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def dummy_meta_data_xml() -> str:
    env = {"OCF_ROOT": "/usr/lib/ocf", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    out = subprocess.run([str(DUMMY), "meta-data"], env=env, capture_output=True, check=True, timeout=30)
    return out.stdout.decode()


@needs_dummy
def test_parse_the_real_dummy_meta_data() -> None:
    meta = parse_meta_data(dummy_meta_data_xml())
    assert meta.name == "Dummy"
    assert meta.version == "1.0"
    assert meta.shortdesc == "Example stateless resource agent"
    assert meta.longdesc.startswith("This is a Dummy Resource Agent.")
    assert [p.name for p in meta.parameters] == ["state", "fake"]
    state = meta.param("state")
    assert state is not None
    assert (state.required, state.unique, state.type) == (False, True, "string")
    assert state.default == "/run/resource-agents/Dummy-RESOURCE_ID.state"
    assert state.shortdesc == "State file"
    assert meta.param("nope") is None
    names = [a.name for a in meta.actions]
    assert names[:3] == ["start", "stop", "monitor"]
    assert {"meta-data", "validate-all", "reload", "migrate_to", "migrate_from"} <= set(names)
    monitor = meta.action("monitor")
    assert monitor is not None and (monitor.timeout, monitor.interval, monitor.depth) == (20.0, 10.0, 0)
    assert meta.action("monitor", interval=10) == monitor
    assert meta.action("monitor", interval=30) is None
    start = meta.action("start", interval=0)  # an undeclared interval is 0
    assert start is not None and start.timeout == 20.0 and start.interval is None
    assert meta.action("meta-data").timeout == 5.0
    d = json.loads(json.dumps(meta.to_dict()))
    assert d["name"] == "Dummy" and d["parameters"][0]["name"] == "state"
    assert d["actions"][2] == {"name": "monitor", "timeout": 20.0, "interval": 10.0, "depth": 0}


def test_parse_meta_data_picks_multiple_monitors_and_english_text() -> None:
    meta = parse_meta_data("""<resource-agent name="x">
      <shortdesc lang="de">Kurz</shortdesc><shortdesc lang="en">Short</shortdesc>
      <parameters><parameter name="p" required="1"><shortdesc>P</shortdesc></parameter></parameters>
      <actions><action name="monitor" interval="10s" depth="0"/><action name="monitor" interval="60" depth="10"/>
      <action name="start" timeout="weird"/></actions></resource-agent>""")
    assert meta.shortdesc == "Short" and meta.version is None and meta.longdesc == ""
    p = meta.param("p")
    assert p is not None and p.required and p.type == "string" and p.default is None
    assert meta.action("monitor", interval=60).depth == 10
    assert meta.action("monitor").depth == 0
    assert meta.action("start").timeout is None  # unreadable durations are "not declared"


@pytest.mark.parametrize("xml", [
    "",
    "not xml",
    "<resource-agent name='x'>",
    "<other name='x'/>",
    "<resource-agent/>",
    "<resource-agent name='x'><parameters><parameter/></parameters></resource-agent>",
    "<resource-agent name='x'><actions><action/></actions></resource-agent>",
    '<!DOCTYPE r [<!ENTITY e SYSTEM "file:///etc/passwd">]><resource-agent name="&e;"/>',
])
def test_bad_meta_data_is_refused(xml: str) -> None:
    with pytest.raises(InvalidMetaData):
        parse_meta_data(xml)
    assert issubclass(InvalidMetaData, ValueError)


META = parse_meta_data("""<resource-agent name="agent"><parameters>
  <parameter name="name" required="1"/><parameter name="color"/></parameters></resource-agent>""")


def test_check_against_meta_accepts_declared_parameters() -> None:
    check_against_meta(META, {"name": "a"})
    check_against_meta(META, {"name": "a", "color": "red", "OCF_CHECK_LEVEL": "10"})


def test_check_against_meta_missing_required() -> None:
    with pytest.raises(InvalidInput) as err:
        check_against_meta(META, {"color": "red"})
    assert err.value.code == "missing_parameter"
    assert err.value.details["parameter"] == "name"
    assert "agent" in err.value.message and "'name'" in err.value.message


def test_check_against_meta_unknown_parameter() -> None:
    with pytest.raises(InvalidInput) as err:
        check_against_meta(META, {"nmae": "a"})  # a typo: reported as unknown, with the known names
    assert err.value.code == "unknown_parameter"
    assert err.value.details == {"parameter": "nmae", "known": ["name", "color"]}


def test_an_agent_declaring_no_parameters_accepts_any() -> None:
    check_against_meta(parse_meta_data("<resource-agent name='open'/>"), {"anything": "goes"})


def test_lsb_rc_for_status_and_monitor() -> None:
    for action in ("status", "monitor"):
        assert [lsb_rc(action, rc) for rc in (0, 1, 2, 3, 4, 5, 6, 7, 150, 151, 152, 255)] == \
            [0, 7, 7, 7, 4, 1, 1, 1, 5, 4, 1, 1]


def test_lsb_rc_for_other_actions() -> None:
    for action in ("start", "stop", "restart", "reload", "force-reload"):
        assert [lsb_rc(action, rc) for rc in (*range(8), 8, 9, 150, 255)] == [*range(8), 1, 1, 1, 1]

