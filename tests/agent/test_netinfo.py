"""What an agent reports of its host's interfaces and addresses (tenure.agent.netinfo), read in a real network
namespace, and the agent registering again when they change."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agent_support import start_host_agent, start_server
from tests.netns_support import Lan, require_netns
from tests.system.dataplane_support import wait_until


@pytest.fixture
def lan() -> Iterator[Lan]:
    require_netns()
    with Lan(2) as lan:
        yield lan


def test_a_namespace_reports_its_interface_and_primary_global_addresses_only(lan: Lan) -> None:
    h1, _ = lan.hosts
    h1.run("ip", "-6", "addr", "add", "fd00:77::1/64", "dev", h1.ifname, "nodad")
    secondary = f"{h1.address.rsplit('.', 1)[0]}.201/{h1.prefix}"  # in the same network: a secondary address
    h1.run("ip", "addr", "add", secondary, "dev", h1.ifname)
    h1.run("ip", "route", "add", "default", "dev", h1.ifname)
    out = h1.run(sys.executable, "-c", "import json; from tenure.agent.netinfo import host_network; "
                 "print(json.dumps(host_network()))").stdout
    net = json.loads(out)
    net["interfaces"][0]["addresses"].sort()
    assert net == {"interfaces": [{"name": h1.ifname, "addresses": sorted([f"{h1.address}/{h1.prefix}",
                                                                           "fd00:77::1/64"])}],
                   "default": h1.ifname}  # no lo, no link-local fe80::, no secondary address


def test_an_agent_registers_again_when_its_addresses_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now: dict[str, Any] = {"interfaces": [{"name": "eth0", "addresses": ["10.9.0.1/24"]}], "default": "eth0"}
    monkeypatch.setattr("tenure.agent.daemon.host_network", lambda: json.loads(json.dumps(now)))
    for server in start_server(tmp_path):
        for _agent in start_host_agent(tmp_path, server, "h1", heartbeat=0.05):
            def reported() -> Any:
                r = server.get("/v1/agents/h1")
                return r.json()["capabilities"].get("network") if r.status_code == 200 else None

            wait_until(lambda: reported() == now, timeout=20, what="the first registration with the host's network")
            now["interfaces"][0]["addresses"] = ["10.9.0.2/24"]
            wait_until(lambda: reported() == now, timeout=20, what="a registration with the new address")


def test_an_agent_whose_report_the_server_refuses_registers_without_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More addresses than the server takes (a report from an agent of another version, say): the host is
    registered all the same, without its interfaces, rather than not at all."""
    many = {"interfaces": [{"name": "eth0", "addresses": [f"10.9.0.{i}/24" for i in range(1, 40)]}],
            "default": "eth0"}
    monkeypatch.setattr("tenure.agent.daemon.host_network", lambda: many)
    for server in start_server(tmp_path):
        for _agent in start_host_agent(tmp_path, server, "h1", heartbeat=0.05):
            def registered() -> Any:
                r = server.get("/v1/agents/h1")
                return r.json() if r.status_code == 200 else None

            body = wait_until(registered, timeout=20, what="the agent registered")
            assert "network" not in body["capabilities"] and body["capabilities"]["types"]
