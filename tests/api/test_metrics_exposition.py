"""/metrics is clean for ``promtool check metrics`` (the server's and the host agent's), and what only goes up
is a counter (``_total`` in the exposition), so that ``rate()`` and counter resets work in Prometheus."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tenure.api.app import _scheduled_backup
from tenure.services.backups import Schedule
from tests.conftest import Api, start_api
from tests.lrm_support import start_agent
from tests.watch.stream import open_stream

TOPOLOGY = {"nodes": [{"id": "h1", "kind": "host"}, {"id": "h3", "kind": "host"}, {"id": "s1", "kind": "switch"}],
            "links": [{"id": "h1-s1", "a": "h1", "b": "s1", "capacity": "1G"},
                      {"id": "h3-s1", "a": "h3", "b": "s1", "capacity": "1G"}]}

COUNTERS = ("tenure_watch_events", "tenure_watch_deliveries", "tenure_watch_cutoffs", "tenure_writer_batches",
            "tenure_writer_commands")


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is missing: scripts/system-deps installs it (Debian package prometheus)")
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def _families(text: str) -> dict[str, tuple[str, dict[str, float]]]:
    return {f.name: (f.type, {s.name: s.value for s in f.samples}) for f in text_string_to_metric_families(text)}


def _scrape(api: Api) -> str:
    r = api.get("/metrics")
    assert r.status_code == 200, r.text
    return r.text


def _check(text: str) -> dict[str, tuple[str, dict[str, float]]]:
    checked = promtool_check(text)
    assert checked.returncode == 0 and checked.stdout.strip() == "" and checked.stderr.strip() == "", (
        checked.returncode, checked.stdout, checked.stderr)
    families = _families(text)
    for name in COUNTERS:
        assert name in families, sorted(families)
        kind, samples = families[name]
        assert kind == "counter", (name, kind)
        assert list(samples) == [f"{name}_total"], (name, samples)
    return families


def test_server_metrics_pass_promtool_and_counters_are_counters(tmp_path: Path) -> None:
    schedule = Schedule(tmp_path / "backups", every=3600, keep=2)
    for api in start_api(f"sqlite:///{tmp_path / 'tenure.db'}", tmp_path / "data", backups=schedule):
        assert api.request("PUT", "/v1/topology", json=TOPOLOGY).status_code == 200
        r = api.post("/v1/reservations", json={"kind": "bandwidth", "src": "h1", "dst": "h3", "rate": "1M",
                                               "end": "+1h"})
        assert r.status_code == 201, r.text  # reservations and their shapers (instances) in the scrape too
        s = open_stream(api.client, api.admin_token, {"kind": "claim"})
        assert api.post("/v1/pools", json={"name": "p", "ranges": [[1, 10]]}).status_code == 201
        assert api.post("/v1/pools/p/claims", json={"key": "a"}).status_code == 201
        assert s.events(1)[0].data["id"] == "p/a"  # dispatched and delivered before the scrape
        _scheduled_backup(api.app.state.tenure)  # what the backup timer runs
        families = _check(_scrape(api))
        s.close()
        assert families["tenure_backup_last_revision"][1]["tenure_backup_last_revision"] == schedule.last.revision > 0
        assert families["tenure_backup_last_success_timestamp_seconds"][1][
            "tenure_backup_last_success_timestamp_seconds"] > 0
        assert families["tenure_backup_failures"][1]["tenure_backup_failures_total"] == 0
        assert families["tenure_watch_events"][1]["tenure_watch_events_total"] >= 1
        assert families["tenure_watch_deliveries"][1]["tenure_watch_deliveries_total"] >= 1
        assert families["tenure_writer_batches"][1]["tenure_writer_batches_total"] >= 2
        assert families["tenure_writer_commands"][1]["tenure_writer_commands_total"] >= 2
        assert families["tenure_watchers"][0] == "gauge"  # open streams go down too
        assert families["tenure_reservations"][1] and families["tenure_instances"][1]


def test_host_agent_metrics_pass_promtool(tmp_path: Path) -> None:
    for agent in start_agent(tmp_path):
        h = agent.headers()
        r = agent.client.post("/v1/resources", headers=h, json={
            "name": "d", "driver": "ocf:heartbeat:Dummy", "params": {"state": str(tmp_path / "d.state")}})
        assert r.status_code == 201, r.text
        op = agent.client.post("/v1/resources/d/operations", headers=h, json={"action": "start"}).json()
        done = agent.client.get(f"/v1/resources/d/operations/{op['id']}", params={"wait": 30}, headers=h)
        assert done.json()["result"]["rc"] == 0, done.text
        families = _check(_scrape(agent))
        assert families["tenure_lrm_operations"] == ("counter", {"tenure_lrm_operations_total": 1.0})
        assert families["tenure_lrm_resources"][1]
