"""``tenure resource ...`` against a real host agent (uvicorn on loopback, SQLite) and the real OCF agent
``ocf:heartbeat:Dummy``: add, start, status, monitor (probe, recurring, merge, cancel), op, stop,
history, remove, drivers, meta-data, events, ``--json`` everywhere, and bad input.

Every wait is on an answer (the CLI's own long poll) or on the event stream; the one test that needs a
recurring monitor to run again (``events``) lets the agent's real clock pass 1 s, and waits on the stream.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tenure.cli.common import Session
from tenure.cli.resources import parse_duration, span
from tenure.client import TenureClient, Watch, WatchEvent
from tests.cli.conftest import Cli, base_url
from tests.client.test_watch_live import wait_for_watchers
from tests.lrm_support import start_agent

pytestmark = pytest.mark.timeout(120)

DUMMY = "ocf:heartbeat:Dummy"


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables fold their cells at 80 columns; the assertions read whole cells (Rich reads COLUMNS per print)."""
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Any]:
    yield from start_agent(tmp_path)


@pytest.fixture
def cli(agent: Any) -> Cli:
    return Cli(agent)


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    return tmp_path / "dummy.state"


@pytest.fixture
def db1(cli: Cli, state_file: Path) -> str:
    cli.ok("resource", "add", "db1", DUMMY, "-p", f"state={state_file}", "-l", "tier=db")
    return "db1"


def field(detail: str, name: str) -> str:
    """The value of one line of a fields view (``recurring  monitor/10s``)."""
    line = next(line for line in detail.splitlines() if line.startswith(name + " "))
    return line[len(name):].strip()


def test_the_life_of_a_dummy(cli: Cli, state_file: Path) -> None:
    added = cli.ok("resource", "add", "db1", DUMMY, "-p", f"state={state_file}", "-l", "tier=db")
    assert added.stdout.startswith(f"added db1 ({DUMMY}), id ") and "state unknown" in added.stdout

    started = cli.ok("resource", "start", "db1")
    assert started.stdout.startswith("started db1 (rc 0 success, ") and started.stdout.rstrip().endswith(" s)")
    assert state_file.exists()

    overview = cli.ok("resource", "status").stdout
    row = next(line for line in overview.splitlines() if "db1" in line)
    assert DUMMY in row and "running" in row

    probe = cli.ok("resource", "monitor", "db1")
    assert probe.stdout.startswith("probed db1 (rc 0 success, ")

    first = cli.ok("resource", "monitor", "db1", "--interval", "10s")
    assert first.stdout.startswith("monitor/10s of db1 registered: operation ")
    op_id = first.stdout.split()[-1]
    again = cli.ok("resource", "monitor", "db1", "--interval", "10")
    assert again.stdout.strip() == f"monitor/10s of db1 merged into existing operation {op_id}"

    detail = cli.ok("resource", "status", "db1").stdout
    assert (field(detail, "state"), field(detail, "params"), field(detail, "labels")) == (
        "running", f"state={state_file}", "tier=db")
    assert field(detail, "recurring") == "monitor/10s" and "last results" in detail
    assert [line.split()[1] for line in detail.splitlines() if line.startswith("│")] == ["monitor", "monitor/10s",
                                                                                        "start"]

    stopped = cli.ok("resource", "stop", "db1")
    assert stopped.stdout.startswith("stopped db1 (rc 0 success, ")
    assert not state_file.exists()
    assert "stopped" in next(line for line in cli.ok("resource", "status").stdout.splitlines() if "db1" in line)
    assert field(cli.ok("resource", "status", "db1").stdout, "recurring") == "-"  # stop cancelled the monitor

    history = cli.ok("resource", "history", "db1").stdout
    lines = [line for line in history.splitlines() if " done " in f" {line} "]
    operations = [word for line in lines for word in line.split() if word in ("start", "stop", "monitor")]
    assert operations.index("stop") < operations.index("start")  # newest first
    assert "success" in history

    removed = cli.ok("resource", "remove", "db1")
    assert removed.stdout.strip() == "removed db1"
    assert cli.ok("resource", "status").stdout.strip() == "no resources"
    cli.fails("resource", "status", "db1", code="resource_not_found")


def test_json_everywhere(cli: Cli, agent: Any, state_file: Path) -> None:
    added = cli.json("resource", "add", "db1", DUMMY, "-p", f"state={state_file}")
    assert (added["name"], added["driver"], added["params"]) == ("db1", DUMMY, {"state": str(state_file)})

    started = cli.json("resource", "start", "db1")
    assert started["state"] == "done" and started["result"]["rc"] == 0 and started["result"]["rc_name"] == "success"

    queued = cli.json("resource", "monitor", "db1", "--no-wait")
    assert queued["action"] == "monitor" and queued["interval"] == 0
    with TenureClient(base_url(agent), agent.admin_token) as c:
        assert c.operation("db1", queued["id"], wait=30)["result"]["rc"] == 0

    recurring = cli.json("resource", "monitor", "db1", "--interval", "1m", "--always")
    assert recurring["merged"] is False and recurring["interval"] == 60 and recurring["report"] == "always"
    assert cli.json("resource", "monitor", "db1", "--interval", "60s")["merged"] is True

    listed = cli.json("resource", "status")
    [item] = listed["items"]
    assert item["state"] == "running" and [r["interval"] for r in item["recurring"]] == [60]
    assert cli.json("resource", "status", "db1")["id"] == added["id"]

    cancelled = cli.json("resource", "monitor", "db1", "--cancel")
    assert [(o["id"], o["state"]) for o in cancelled["items"]] == [(recurring["id"], "cancelled")]
    assert cli.ok("resource", "monitor", "db1", "--cancel").stdout.strip() == "db1 has no recurring monitor"

    meta = cli.json("resource", "op", "db1", "meta-data")
    assert meta["result"]["rc"] == 0 and "<resource-agent" in meta["result"]["stdout"]

    stopped = cli.json("resource", "stop", "db1")
    assert stopped["result"]["rc"] == 0
    history = cli.json("resource", "history", "db1", "--limit", "2")
    assert [h["action"] for h in history["items"]] == ["stop", "meta-data"]

    drivers = cli.json("resource", "drivers")
    assert {"driver": DUMMY, "class": "ocf"} in drivers["items"]
    md = cli.json("resource", "meta-data", DUMMY)
    assert md["driver"] == DUMMY and "state" in {p["name"] for p in md["meta_data"]["parameters"]}

    assert cli.json("resource", "remove", "db1")["deleted"] is True


def test_monitor_cancel_by_interval_and_op(cli: Cli, db1: str) -> None:
    cli.ok("resource", "start", db1)
    cli.ok("resource", "monitor", db1, "--interval", "30s")
    cli.ok("resource", "monitor", db1, "--interval", "2m")
    cli.fails("resource", "monitor", db1, "--interval", "45s", "--cancel", code="operation_not_found")
    done = cli.ok("resource", "monitor", db1, "--interval", "30s", "--cancel").stdout
    assert done.startswith(f"cancelled monitor/30s of {db1} (operation ")
    assert field(cli.ok("resource", "status", db1).stdout, "recurring") == "monitor/2m"
    assert "monitor/30s" not in cli.ok("resource", "status").stdout

    meta = cli.ok("resource", "op", db1, "meta-data").stdout
    assert meta.startswith(f"ran meta-data on {db1} (rc 0 success, ") and "<resource-agent" in meta
    assert cli.ok("resource", "op", db1, "validate-all").stdout.startswith(f"validated {db1} (rc 0 success")
    queued = cli.ok("resource", "start", db1, "--no-wait").stdout
    assert queued.startswith(f"queued start {db1}: operation ")


def test_a_failed_operation_is_a_red_line_and_exit_1(cli: Cli, tmp_path: Path) -> None:
    # The state file's directory does not exist: Dummy's start cannot create it.
    cli.ok("resource", "add", "bad", DUMMY, "-p", f"state={tmp_path / 'no' / 'such' / 'dir' / 'x.state'}")
    result = cli("resource", "start", "bad")
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith("start bad failed: status ") and " rc " in result.stderr
    row = next(line for line in cli.ok("resource", "status").stdout.splitlines() if "bad" in line)
    assert "failed" in row and "start generic_error" in row  # the state, and the last failure
    as_json = cli("resource", "start", "bad", "--json")
    assert as_json.exit_code == 1 and json.loads(as_json.stdout)["result"]["failed"] is True


def test_bad_input(cli: Cli, db1: str, state_file: Path) -> None:
    cli.fails("resource", "add", "x", "ocf:heartbeat:NoSuch", code="driver_not_found")
    cli.fails("resource", "add", "x", "nonsense", code="invalid_driver")
    cli.fails("resource", "add", db1, DUMMY, "-p", f"state={state_file}", code="name_taken")
    cli.fails("resource", "op", db1, "frobnicate", code="unknown_action")
    cli.fails("resource", "start", "nobody", code="resource_not_found")
    cli.fails("resource", "monitor", db1, "--interval", "10ms", code="invalid_interval")  # under the minimum
    cli.fails("resource", "meta-data", "ocf:heartbeat:NoSuch", code="driver_not_found")
    for args in (("monitor", db1, "--interval", "-5"), ("monitor", db1, "--interval", "soon"),
                 ("start", db1, "--timeout", "1x"), ("add", "y", DUMMY, "-p", "novalue"),
                 ("monitor", db1, "--expect", "256"), ("events", "--since", "1", "--initial")):
        result = cli("resource", *args)
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
    cli.ok("resource", "start", db1)
    cli.fails("resource", "remove", db1, code="resource_running")
    assert cli.ok("resource", "remove", db1, "--force").stdout.strip() == f"removed {db1}"


def test_durations() -> None:
    assert [parse_duration(t, option="--x") for t in ("10s", "1.5", "2m", "500ms", " 1h ", ".5s", "0")] == [
        10, 1.5, 120, 0.5, 3600, 0.5, 0]
    assert parse_duration(None, option="--x") is None
    assert [span(s) for s in (0.5, 10, 1.5, 120, 3600, 90)] == ["500ms", "10s", "1.5s", "2m", "1h", "90s"]


def test_the_agent_dir_locates_url_and_token(cli: Cli, agent: Any, db1: str, tmp_path: Path) -> None:
    """With no --url/--token, the agent's data dir (server.json, admin.token) says where and with what."""
    d = tmp_path / "located"
    d.mkdir()
    (d / "server.json").write_text(json.dumps({"url": cli.url}))
    (d / "admin.token").write_text(agent.admin_token + "\n")
    listed = cli.raw(["resource", "--agent-dir", str(d), "status", "--json"], env={"TENURE_AGENT_DIR": None})
    assert listed.exit_code == 0, (listed.stdout, listed.stderr)
    assert [r["name"] for r in json.loads(listed.stdout)["items"]] == [db1]
    by_env = cli.raw(["resource", "status"], env={"TENURE_AGENT_DIR": str(d)})
    assert by_env.exit_code == 0 and db1 in by_env.stdout
    missing = cli.raw(["resource", "--agent-dir", str(tmp_path / "none"), "status"])
    assert missing.exit_code == 1 and missing.stderr.startswith("error: not_configured: no token")
    # the server's settings never send `tenure resource` elsewhere: TENURE_URL/TENURE_TOKEN name the server
    server_env = cli.raw(["resource", "--agent-dir", str(d), "status", "--json"],
                         env={"TENURE_URL": "http://127.0.0.1:9", "TENURE_TOKEN": "server-token"})
    assert server_env.exit_code == 0, server_env.stderr


def _interrupted_after(last: Callable[[WatchEvent], bool]) -> type[TenureClient]:
    """A client whose watch is interrupted (as by Ctrl-C) right after the first event for which ``last`` holds."""

    class Interrupted(TenureClient):
        def watch(self, *args: Any, **kwargs: Any) -> Watch:
            inner = super().watch(*args, **kwargs)

            def stream() -> Iterator[WatchEvent]:
                with inner:
                    for e in inner:
                        yield e
                        if last(e):
                            raise KeyboardInterrupt

            return Watch(inner.session, stream())

    return Interrupted


_UntilMonitorFailed = _interrupted_after(lambda e: e.type == "monitor_failed")


def test_events_show_a_failed_monitor(cli: Cli, agent: Any, db1: str, state_file: Path) -> None:
    cli.ok("resource", "start", db1)
    result_box: list[Any] = []
    args = ["--url", cli.url, "--token", agent.admin_token, "resource", "events", db1]
    runner = threading.Thread(
        target=lambda: result_box.append(cli.raw(args, session=Session(connect=_UntilMonitorFailed))), daemon=True)
    with TenureClient(base_url(agent), agent.admin_token) as c:
        c.add_resource("other", DUMMY, {"state": str(state_file) + ".other"})  # not db1: filtered out
        runner.start()
        wait_for_watchers(c, 1)
        c.operation("other", c.submit("other", "start")["id"], wait=30)  # events the NAME filter leaves out
        monitor = c.submit(db1, "monitor", interval=1)
        state_file.unlink()  # the monitor now finds db1 not running: a failure
        runner.join(60)
        assert result_box, "no monitor_failed event within 60 s"
        result = result_box[0]
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        lines = result.stdout.splitlines()
        assert all(" other" not in line for line in lines)
        assert lines[-1].split()[1:5] == ["monitor_failed", "resource", db1, "monitor/1s"]
        assert "rc 7 not_running: No process state file found" in lines[-1]
        assert any(line.split()[1:5] == ["created", "operation", db1, "monitor/1s"] or
                   line.split()[1:5] == ["updated", "operation", db1, "monitor/1s"] for line in lines)
        assert any(line.split()[1:4] == ["updated", "resource", db1] and "state=stopped" in line for line in lines)
        c.cancel_operation(db1, monitor["id"])

    # --initial: the current resources, then the end of the listing on stderr; --json: the frames as sent.
    _AfterListing = _interrupted_after(lambda e: e.initial_end)

    initial = cli.raw(["--url", cli.url, "--token", agent.admin_token, "resource", "events", "--initial"],
                      session=Session(connect=_AfterListing))
    assert initial.exit_code == 0, (initial.stdout, initial.stderr, initial.exception)
    assert sorted(line.split()[3] for line in initial.stdout.splitlines()) == [db1, "other"]
    assert all(line.startswith("- created resource ") for line in initial.stdout.splitlines())
    assert "initial state complete" in initial.stderr
    as_json = cli.raw(["--url", cli.url, "--token", agent.admin_token, "resource", "events", db1, "--initial",
                       "--json"], session=Session(connect=_AfterListing))
    frames = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [f["type"] for f in frames] == ["created", "bookmark"] and frames[0]["object"]["name"] == db1
    cli.fails("resource", "events", "nobody", code="resource_not_found")
