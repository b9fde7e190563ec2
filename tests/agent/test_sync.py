"""The host agent following a real server: create, modify, delete, stitching through an Ansible playbook,
restart with nothing to do, waiting for an agent, timeouts, recovery, and a full resync after a 410.

A real server and real agents (in-process, uvicorn on loopback, SQLite stores), real drivers: the example
Memory handler, the project's test drivers, and Ansible on localhost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tenure.domain.errors import Unavailable
from tenure.instance_types import parse_instance_types
from tenure.services.examples import ensure_examples
from tests.agent.handlers import Gate
from tests.agent_support import gone, start_host_agent, start_server, state_is, wait_for
from tests.conftest import Api

PLAYBOOKS = Path(__file__).parent.parent / "drivers" / "playbooks"
ITYPES = parse_instance_types({"resources": {
    "vlan-file": {"driver": "ansible:vlan.yml", "timeout": "120s"},
    "slot": {"driver": "python:tests.agent.handlers:Thing", "timeout": "10s",
             "locals": {"slot": "10-20"}},
    "fixed": {"driver": "python:tests.agent.handlers:Thing", "properties": {"device": "eth9"}},
    "stuck": {"driver": "exec:sleeper", "timeout": 0.5},
    "gate": {"driver": "python:tests.agent.handlers:Gate", "timeout": "20s"},
    "knob": {"driver": "python:tests.agent.handlers:Knob", "timeout": "10s"},
}})
TYPES = {t.name: t.timeout for t in ITYPES.values()}


def settings() -> Any:
    from tenure.services.runtime import Settings
    return Settings(instance_types=TYPES)


def agent_of(tmp: Path, server: Api, host: str = "h1") -> Any:
    return start_host_agent(tmp, server, host, types=ITYPES, roots={
        "playbook_dirs": (PLAYBOOKS,), "python_packages": ("tenure.drivers.bundled", "tenure.drivers.tc",
                                                      "tests.agent.handlers")})


def sync_of(agent: Api) -> Any:
    return agent.app.state.tenure.config.extension.sync


def resources(agent: Api) -> list[dict[str, Any]]:
    return agent.get("/v1/resources").json()["items"]


def create(server: Api, **body: Any) -> dict[str, Any]:
    r = server.post("/v1/instances", json={"host": "h1", **body})
    assert r.status_code == 201, r.text
    return r.json()


def test_create_modify_delete_through_the_agent(tmp_path: Path) -> None:
    for server in start_server(tmp_path, settings=settings()):
        for agent in agent_of(tmp_path, server):
            a = create(server, name="a", type="slot", parameters={"value": "one"})
            a = wait_for(server, a["id"], state_is("active", "failed"))
            assert a["state"] == "active", a["reason"]
            slot = int(a["outputs"]["slot"])
            assert 10 <= slot <= 20
            [res] = resources(agent)
            assert res["params"] == {"value": "one", "slot": str(slot)} and res["state"] == "running"
            assert res["labels"] == {"instance": "a", "type": "slot"}

            r = server.request("PATCH", "/v1/instances/a", json={"parameters": {"value": "two"}})
            assert r.json()["generation"] == 2
            a = wait_for(server, a["id"], lambda b: b is not None and b["observed"] == 2)
            assert a["state"] == "active" and a["outputs"]["slot"] == str(slot)  # the same local ID
            assert resources(agent)[0]["params"]["value"] == "two"

            assert server.delete("/v1/instances/a").json()["state"] == "deleting"
            wait_for(server, a["id"], gone)
            assert resources(agent) == []

            # The operator's properties are fixed: an instance's own parameters do not override them.
            f = create(server, name="f", type="fixed", parameters={"device": "eth0", "value": "v"})
            wait_for(server, f["id"], state_is("active"))
            assert resources(agent)[0]["params"] == {"device": "eth9", "value": "v"}
            assert agent.get("/v1/pools/local.slot.slot/claims").json()["claims"] == []  # the ID is released


def test_an_ansible_playbook_writes_a_file_with_a_stitched_vlan_claim(tmp_path: Path) -> None:
    out = tmp_path / "vlan-of-net-blue"
    for server in start_server(tmp_path, settings=settings(), seed=ensure_examples):
        claim = server.post("/v1/pools/vlans/claims", json={"key": "net-blue"}).json()
        for _agent in agent_of(tmp_path, server):
            r = server.post("/v1/instances/batch", json={"instances": [
                {"name": "net-blue", "type": "vlan-file", "host": "h1",
                 "parameters": {"vlan": "${claim:vlans:net-blue}", "path": str(out)}},
                {"name": "vm", "type": "slot", "host": "h1",
                 "parameters": {"value": "vlan ${instance:net-blue.outputs.vlan}"}},
            ]})
            assert r.status_code == 201, r.text
            net, vm = r.json()["instances"]
            assert vm["reason"] == "waiting for dependency 'net-blue' (provisioning)"
            net = wait_for(server, net["id"], state_is("active", "failed"))
            assert net["state"] == "active", net
            assert out.read_text() == str(claim["value"])
            assert net["outputs"] == {"vlan": str(claim["value"]), "path": str(out)}
            vm = wait_for(server, vm["id"], state_is("active", "failed"))
            assert vm["resolved"]["value"] == f"vlan {claim['value']}"


def test_an_agent_restart_recreates_lost_resources_with_the_same_local_ids(tmp_path: Path) -> None:
    for server in start_server(tmp_path, settings=settings()):
        ids = []
        for agent in agent_of(tmp_path, server):
            for i in range(5):
                ids.append(create(server, name=f"s{i}", type="slot")["id"])
            before = {i: wait_for(server, i, state_is("active"))["outputs"]["slot"] for i in ids}
            assert len(set(before.values())) == 5
        # The test handler keeps its resources in the agent's memory: after a restart the probes find them
        # gone, and the agent reports that and creates them again, with the same local IDs.
        for agent in agent_of(tmp_path, server):
            sync, lrm = sync_of(agent), agent.app.state.tenure.lrm
            _wait_loop(agent, lambda: sync.synced.is_set() and sync.converged.is_set() and lrm.idle()
                       and all(r["state"] == "running" for r in resources_of(lrm)))
            calls = sorted(c for i in lrm._by_id.values() for c in i.driver._handler.calls)  # one handler each
            assert calls == sorted(("create", r["id"]) for r in resources_of(lrm))
            after = {i: server.get(f"/v1/instances/{i}").json() for i in ids}
            assert {i: b["outputs"]["slot"] for i, b in after.items()} == before
            assert all(b["state"] == "active" for b in after.values())
            assert sorted(r["params"]["slot"] for r in resources(agent)) == sorted(before.values())


def resources_of(lrm: Any) -> list[dict[str, Any]]:
    return lrm.list()


def test_a_restart_with_everything_in_place_runs_no_operation(tmp_path: Path) -> None:
    path = tmp_path / "f"
    for server in start_server(tmp_path, settings=settings()):
        for agent in agent_of(tmp_path, server):
            a = create(server, name="f", type="vlan-file", parameters={"vlan": "7", "path": str(path)})
            a = wait_for(server, a["id"], state_is("active"))
        for agent in agent_of(tmp_path, server):
            sync, lrm = sync_of(agent), agent.app.state.tenure.lrm
            _wait_loop(agent, lambda: sync.synced.is_set() and sync.converged.is_set() and lrm.idle())
            assert (sync.operations, sync.reports) == (0, 0)
            assert [r["state"] for r in resources(agent)] == ["running"]  # the probe found the file
            assert agent.get("/healthz").json()["sync"]["converged"] is True
        assert server.get(f"/v1/instances/{a['id']}").json() == a  # nothing changed on the server either
        assert path.read_text() == "7"


def test_an_instance_waits_for_its_hosts_agent(tmp_path: Path) -> None:
    for server in start_server(tmp_path, settings=settings()):
        a = create(server, name="a", type="slot", host="h2")
        assert (a["state"], a["reason"]) == ("pending", "no agent is registered on host 'h2'")
        for _agent in agent_of(tmp_path, server, "h2"):
            assert wait_for(server, a["id"], state_is("active", "failed"))["state"] == "active"


def test_a_stuck_operation_ends_as_timeout_and_the_instance_failed(tmp_path: Path) -> None:
    for server in start_server(tmp_path, settings=settings()):
        for agent in agent_of(tmp_path, server):
            a = create(server, name="a", type="stuck")
            a = wait_for(server, a["id"], state_is("failed", "active"))
            assert a["state"] == "failed"
            assert a["reason"].startswith("timeout: create did not finish within its timeout"), a["reason"]
            assert a["result"] is None or a["result"]["status"] == "timeout"
            sync, lrm = sync_of(agent), agent.app.state.tenure.lrm
            rt = server.app.state.tenure.runtime
            # The agent may try again (each try ends the same way): wait until it has seen every event the server
            # has (its own reports included) and nothing runs, so that no try is under way or about to start.
            _wait_loop(agent, lambda: sync.converged.is_set() and lrm.idle() and sync.since >= rt.revision)
            [res] = resources(agent)
            assert res["state"] == "failed" and res["running"] is None  # nothing left running
            assert server.delete("/v1/instances/a").status_code == 200
            a = wait_for(server, a["id"], lambda b: b is None or b["state"] == "failed")
            assert a is None or "delete failed" in a["reason"]


def test_a_failed_monitor_is_reported_then_recovered(tmp_path: Path) -> None:
    for server in start_server(tmp_path, settings=settings()):
        for agent in agent_of(tmp_path, server):
            a = wait_for(server, create(server, name="a", type="slot")["id"], state_is("active"))
            lrm = agent.app.state.tenure.lrm
            [res] = resources(agent)
            handler = lrm._by_id[res["id"]].driver._handler  # forget the resource behind the agent's back
            with handler.lock:
                handler.things.clear()
            since = server.get("/healthz").json()["revision"]
            r = agent.post(f"/v1/resources/{res['id']}/operations", json={"action": "monitor"})
            assert r.status_code == 202, r.text
            failed = wait_for(server, a["id"], state_is("failed"), since=since)
            assert failed["reason"] == "probe: the resource is not running", failed["reason"]
            again = wait_for(server, a["id"], state_is("active"), since=failed["revision"])
            assert again["observed"] == a["observed"]
            assert resources(agent)[0]["state"] == "running"


def test_only_outputs_the_server_takes_are_observations() -> None:
    from tenure.agent.sync import _observable

    outputs = {"VLAN": "100", "_x": "1", "ok": "x" * 300, "nul": "a\x00b", **{f"k{i:02d}": "v" for i in range(40)}}
    seen = _observable(outputs)
    assert "VLAN" not in seen and "_x" not in seen and "nul" not in seen and len(seen) == 32
    assert list(seen) == sorted(seen) and all(len(v) <= 256 for v in seen.values())


def test_what_a_monitor_found_reaches_the_server_with_the_next_heartbeat(tmp_path: Path) -> None:
    import asyncio

    for server in start_server(tmp_path, settings=settings()):
        for agent in agent_of(tmp_path, server):
            a = wait_for(server, create(server, name="a", type="slot", parameters={"value": "one"})["id"],
                         state_is("active"))
            sync, loop = sync_of(agent), agent.app.state.tenure.loop
            [res] = resources(agent)
            assert agent.post(f"/v1/resources/{res['id']}/operations", json={"action": "monitor"}).status_code == 202
            _wait_loop(agent, lambda: a["id"] in sync.observed)

            def heartbeat() -> None:
                asyncio.run_coroutine_threadsafe(sync._heartbeat(), loop).result(30)

            heartbeat()
            seen = server.get(f"/v1/instances/{a['id']}/observed").json()
            assert seen["observed"] == {"seen": "one"} and seen["observed_at"].endswith("Z"), seen
            assert not sync._unsent  # sent: the next heartbeat carries nothing until a monitor finds something

            # Observations the server refuses never cost the heartbeat: it goes again without them, and they go.
            sync.observed[a["id"]] = {"at": seen["observed_at"], "values": {"Not-A-Key": "x"}}
            sync._unsent.add(a["id"])
            before = server.get("/v1/agents/h1").json()["last_seen"]
            heartbeat()
            assert server.get("/v1/agents/h1").json()["last_seen"] > before
            assert not sync._unsent and not sync._observations_refused
            assert server.get(f"/v1/instances/{a['id']}/observed").json()["observed"] == {"seen": "one"}


def test_a_full_resync_after_410_tears_down_what_the_server_forgot(tmp_path: Path) -> None:
    from tenure.services.runtime import Settings

    for server in start_server(tmp_path, settings=Settings(instance_types=TYPES, history_events=1)):
        for agent in agent_of(tmp_path, server):
            old = wait_for(server, create(server, name="old", type="slot")["id"], state_is("active"))
        assert server.delete(f"/v1/instances/{old['id']}?force=true").status_code == 200
        new = create(server, name="new", type="slot")
        rt = server.app.state.tenure.runtime
        rt.history.compact()
        for agent in agent_of(tmp_path, server):
            wait_for(server, new["id"], state_is("active"))
            sync = sync_of(agent)
            _wait_loop(agent, lambda: set(sync.local) == {new["id"]} and sync.converged.is_set())
            assert [r["labels"]["instance"] for r in resources(agent)] == ["new"]


def _wait_loop(agent: Api, cond: Any, timeout: float = 60.0) -> None:
    """Wait for ``cond()`` (evaluated on the agent's event loop) without pausing the loop."""
    import asyncio

    loop = agent.app.state.tenure.loop

    async def until() -> None:
        while not cond():
            await asyncio.sleep(0.01)

    asyncio.run_coroutine_threadsafe(asyncio.wait_for(until(), timeout), loop).result(timeout + 5)


def test_after_a_restart_the_agent_resyncs_before_it_acts(tmp_path: Path) -> None:
    """Stopped in the middle of a create, then the instance deleted on the server: the restarted agent must not
    create it again from what it remembered (DESIGN.md invariant 3)."""
    Gate.reset()
    for server in start_server(tmp_path, settings=settings()):
        for _agent in agent_of(tmp_path, server):
            a = create(server, name="a", type="gate")
            assert Gate.entered.wait(30)
        assert server.delete("/v1/instances/a").json()["state"] == "deleting"
        Gate.gate.set()
        Gate.calls.clear()
        for agent in agent_of(tmp_path, server):
            wait_for(server, a["id"], gone)
            assert [c for c, _ in Gate.calls] in ([], ["delete"])  # never created again
            assert resources(agent) == []


def test_a_modify_without_reload_stops_with_the_old_parameters_and_a_failed_stop_fails_it(tmp_path: Path) -> None:
    Gate.reset()
    Gate.gate.set()
    for server in start_server(tmp_path, settings=settings()):
        for _agent in agent_of(tmp_path, server):
            a = wait_for(server, create(server, name="a", type="gate", parameters={"value": "one"})["id"],
                         state_is("active"))
            server.request("PATCH", "/v1/instances/a", json={"parameters": {"value": "two"}})
            a = wait_for(server, a["id"], lambda b: b is not None and b["observed"] == 2)
            assert a["state"] == "active"
            assert Gate.calls == [("create", "one"), ("delete", "one"), ("create", "two")]
            Gate.fail_delete = "two"
            server.request("PATCH", "/v1/instances/a", json={"parameters": {"value": "three"}})
            a = wait_for(server, a["id"], lambda b: b is not None and b["observed"] == 3)
            assert a["state"] == "failed" and a["reason"].startswith("modify (stop) failed"), a["reason"]
            assert Gate.calls[-1] == ("delete", "two")  # no create after the failed stop


def test_a_change_the_driver_cannot_reload_is_a_stop_with_the_old_parameters_then_a_start(tmp_path: Path) -> None:
    """OCF 1.1's ``reloadable``: a change of ``value`` (reloadable) is a reload; a change of ``where`` (not) stops
    what runs where it runs and starts it anew (a shaper moved to another device leaves nothing behind)."""
    from tests.agent.handlers import Knob

    Knob.calls = []
    for server in start_server(tmp_path, settings=settings()):
        for _agent in agent_of(tmp_path, server):
            k = wait_for(server, create(server, name="k", type="knob", parameters={"where": "a", "value": "1"})["id"],
                         state_is("active"))
            server.request("PATCH", "/v1/instances/k", json={"parameters": {"where": "a", "value": "2"}})
            wait_for(server, k["id"], lambda b: b is not None and b["observed"] == 2 and b["state"] == "active")
            server.request("PATCH", "/v1/instances/k", json={"parameters": {"where": "b", "value": "2"}})
            wait_for(server, k["id"], lambda b: b is not None and b["observed"] == 3 and b["state"] == "active")
            assert Knob.calls == [("start", "a", "1"), ("reload", "a", "2"), ("stop", "a", "2"), ("start", "b", "2")]


def test_a_failure_of_the_agents_own_store_does_not_stop_it_following(tmp_path: Path) -> None:
    for server in start_server(tmp_path, settings=settings()):
        for agent in agent_of(tmp_path, server):
            sync = sync_of(agent)
            _wait_loop(agent, lambda: sync.synced.is_set())
            real, failed = sync.state.save, []

            async def flaky(*args: Any, **kwargs: Any) -> Any:
                if not failed:
                    failed.append(1)
                    raise Unavailable("the store failed to commit", code="store_error")
                return await real(*args, **kwargs)

            sync.state.save = flaky
            a, b = create(server, name="a", type="slot"), create(server, name="b", type="slot")
            assert wait_for(server, a["id"], state_is("active"))["state"] == "active"  # its event was not lost
            assert wait_for(server, b["id"], state_is("active"))["state"] == "active"
            assert failed and not sync._tasks[0].done()


def test_a_report_the_server_refuses_fails_the_instance_with_why(tmp_path: Path) -> None:
    for server in start_server(tmp_path, settings=settings()):
        for agent in agent_of(tmp_path, server):
            sync = sync_of(agent)
            real = sync.client.report_instance

            async def too_many(iid: str, gen: int, state: str, **kw: Any) -> Any:
                if kw.get("outputs"):
                    kw["outputs"] = {f"o{i}": "x" for i in range(65)}
                return await real(iid, gen, state, **kw)

            sync.client.report_instance = too_many
            a = wait_for(server, create(server, name="a", type="slot")["id"], state_is("failed", "active"))
            assert a["state"] == "failed"
            assert a["reason"].startswith("the server refused the agent's report: outputs must be"), a["reason"]
