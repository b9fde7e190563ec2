"""Topology, reservations, paths, usage and limits through the CLI and the client, against the real server."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tenure.client import TenureAPIError, TenureClient
from tests.cli.conftest import Cli

TOPOLOGY_YAML = """\
nodes:
  - {id: h1, kind: host}
  - {id: h2, kind: host}
  - {id: c1, kind: host}
  - {id: s1, kind: switch}
  - {id: s2, kind: switch}
  - {id: s3, kind: switch}
  - {id: mb1, kind: middlebox}
links:
  - {id: h1-s1, a: h1, b: s1, capacity: 1G}
  - {id: s1-s2, a: s1, b: s2, capacity_ab: 10G, capacity_ba: 5G}
  - {id: s2-h2, a: s2, b: h2, capacity: 1G}
  - {id: s1-s3, a: s1, b: s3, capacity: 1G}
  - {id: s3-s2, a: s3, b: s2, capacity: 1G}
  - {id: mb1-s2, a: mb1, b: s2, capacity: 1G}
  - {id: c1-s1, a: c1, b: s1, capacity: 1G}
"""

SMALL_DOC = {
    "nodes": [{"id": "h1", "kind": "host"}, {"id": "s1", "kind": "switch"}, {"id": "h2", "kind": "host"}],
    "links": [{"id": "h1-s1", "a": "h1", "b": "s1", "capacity": "1G"},
              {"id": "s1-h2", "a": "s1", "b": "h2", "capacity": "1G"}],
}


@pytest.fixture
def topo(cli: Cli, tmp_path: Path) -> Path:
    path = tmp_path / "net.yaml"
    path.write_text(TOPOLOGY_YAML)
    cli.ok("topology", "load", str(path))
    return path


def reserve(cli: Cli, *args: str) -> dict:
    return cli.json("reserve", *args)


# ------------------------------------------------------------------ topology


def test_topology_load_yaml_reports_counts_and_recheck(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "net.yml"
    path.write_text(TOPOLOGY_YAML)
    out = cli.ok("topology", "load", str(path)).stdout
    assert "7 nodes, 7 links" in out
    assert "0 kept, 0 rerouted, 0 degraded" in out

    shown = cli.json("topology", "show")
    assert {n["id"] for n in shown["nodes"]} == {"h1", "h2", "c1", "s1", "s2", "s3", "mb1"}
    links = {lk["id"]: lk for lk in shown["links"]}
    assert links["h1-s1"]["capacity"] == 10**9
    assert (links["s1-s2"]["capacity_ab"], links["s1-s2"]["capacity_ba"]) == (10 * 10**9, 5 * 10**9)
    human = cli.ok("topology", "show").stdout
    assert "mb1" in human and "middlebox" in human and "5G" in human


def test_topology_load_json_and_recheck_of_live_reservations(cli: Cli, topo: Path, tmp_path: Path) -> None:
    reserve(cli, "bandwidth", "h1", "h2", "--rate", "100M", "--end", "+1h")
    path = tmp_path / "net.json"
    path.write_text(json.dumps(SMALL_DOC))
    loaded = cli.json("topology", "load", str(path))
    assert len(loaded["nodes"]) == 3 and len(loaded["links"]) == 2
    assert len(loaded["recheck"]["rerouted"]) == 1  # s1-s2 is gone: h1 → s1 → h2 now
    out = cli.ok("topology", "load", str(path)).stdout
    assert "3 nodes, 2 links" in out and "1 kept, 0 rerouted, 0 degraded" in out

    unnamed = tmp_path / "net.txt"  # neither .json nor .yaml: JSON if it is, else YAML
    unnamed.write_text(TOPOLOGY_YAML)
    assert "7 nodes, 7 links" in cli.ok("topology", "load", str(unnamed)).stdout
    assert cli("topology", "load", str(tmp_path / "missing.yaml")).exit_code == 2


def test_topology_load_reports_degraded_reservations(cli: Cli, topo: Path, tmp_path: Path) -> None:
    r = reserve(cli, "oneway", "h1", "c1", "--rate", "1M", "--end", "+1h")
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL_DOC))  # c1 is gone
    result = cli.ok("topology", "load", str(path))
    assert "0 kept, 0 rerouted, 1 degraded" in result.stdout and r["id"] in result.stderr
    assert cli.json("reservation", r["id"])["state"] == "degraded"
    assert r["id"] in cli.ok("reservations", "--state", "degraded").stdout
    assert "(no path)" in cli.ok("reservation", r["id"]).stdout


def test_shrinking_a_link_below_its_bookings_degrades_them(cli: Cli, topo: Path, tmp_path: Path) -> None:
    r = reserve(cli, "oneway", "h1", "h2", "--rate", "500M", "--end", "+1h")
    shrunk = TOPOLOGY_YAML.replace("h1, b: s1, capacity: 1G", "h1, b: s1, capacity: 100M")
    path = tmp_path / "shrunk.yaml"
    path.write_text(shrunk)
    assert "0 kept, 0 rerouted, 1 degraded" in cli.ok("topology", "load", str(path)).stdout
    assert cli.json("reservation", r["id"])["state"] == "degraded"


def test_rates_with_trailing_zeros_are_shown_whole(cli: Cli, topo: Path) -> None:
    assert "10G" in cli.ok("topology", "show").stdout
    assert "100M/20M" in cli.ok("reserve", "bandwidth", "h1", "h2", "--rate", "100M", "--rate-in", "20M",
                                "--end", "+1h").stdout


def test_topology_load_refuses_bad_files(cli: Cli, tmp_path: Path) -> None:
    broken = tmp_path / "net.json"
    broken.write_text("{nodes: [")
    cli.fails("topology", "load", str(broken), code="malformed_topology")
    dangling = tmp_path / "dangling.yaml"
    dangling.write_text("nodes: [{id: h1, kind: host}]\nlinks: [{id: l, a: h1, b: nowhere, capacity: 1G}]\n")
    cli.fails("topology", "load", str(dangling), code="dangling_link")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("nodes: [\n")
    cli.fails("topology", "load", str(bad_yaml), code="malformed_topology")
    assert "no topology" in cli.ok("topology", "show").stdout


# -------------------------------------------------------------- reservations


def test_reserve_bandwidth_human_and_json(cli: Cli, topo: Path) -> None:
    out = cli.ok("reserve", "bandwidth", "h1", "h2", "--rate", "125M", "--rate-in", "64M", "--end", "+1h").stdout
    assert out.startswith("reserved r-") and "125M/64M" in out and "active" in out
    assert "h1 → s1 → s2 → h2" in out and "h2 → s2 → s1 → h1" in out

    r = reserve(cli, "bandwidth", "h1", "h2", "--rate", "1.5M", "--start", "+1h", "--end", "+2h",
                "--project", "blue", "--protocol", "tcp", "--dst-port", "443", "--dscp", "46",
                "--label", "team=net", "--label", "ticket=T-1", "--path-mode", "widest", "--mark", "af41")
    assert r["id"].startswith("r-") and r["state"] == "pending" and r["created"] is True
    assert (r["rate_out"], r["rate_in"]) == (1_500_000, 1_500_000)
    assert [(p["leg"], p["nodes"][0], p["nodes"][-1]) for p in r["paths"]] == [("out", "h1", "h2"),
                                                                              ("in", "h2", "h1")]
    assert r["match"] == {"protocol": "tcp", "dst_port": 443, "dscp": 46}
    assert r["labels"] == {"team": "net", "ticket": "T-1"} and r["path_mode"] == "widest"
    assert r["project"] == "blue" and r["mark"] == 34
    assert "af41 (34)" in cli.ok("reservation", r["id"]).stdout
    named = reserve(cli, "oneway", "h1", "h2", "--rate", "1M", "--end", "+1h", "--mark", "10", "--dscp", "cs1")
    assert (named["mark"], named["match"]) == (10, {"dscp": 8})
    assert cli("reserve", "oneway", "h1", "h2", "--rate", "1M", "--end", "+1h", "--mark", "64").exit_code == 2
    assert cli("reserve", "oneway", "h1", "h2", "--rate", "1M", "--end", "+1h", "--mark", "best").exit_code == 2


def test_refused_reservation_prints_the_servers_code(cli: Cli, topo: Path) -> None:
    result = cli.fails("reserve", "bandwidth", "h1", "h2", "--rate", "2G", "--end", "+1h",
                       code="insufficient_capacity")
    assert "h1-s1" in result.stderr
    cli.fails("reserve", "oneway", "h1", "nowhere", "--rate", "1M", "--end", "+1h", code="unknown_node")
    cli.fails("reserve", "oneway", "h1", "h2", "--rate", "fast", "--end", "+1h", code="invalid_rate")
    assert cli.json("reservations")["reservations"] == []
    bad_label = cli("reserve", "oneway", "h1", "h2", "--rate", "1M", "--end", "+1h", "--label", "novalue")
    assert bad_label.exit_code == 2


def test_list_show_modify_cancel(cli: Cli, topo: Path) -> None:
    first = reserve(cli, "bandwidth", "h1", "h2", "--rate", "128M", "--end", "+1h", "--project", "blue")
    second = reserve(cli, "oneway", "h2", "h1", "--rate", "256M", "--start", "+2h", "--end", "+3h")

    listed = cli.json("reservations")["reservations"]
    assert [r["id"] for r in listed] == [first["id"], second["id"]]
    assert [r["id"] for r in cli.json("reservations", "--project", "blue")["reservations"]] == [first["id"]]
    assert [r["id"] for r in cli.json("reservations", "--state", "pending")["reservations"]] == [second["id"]]
    table = cli.ok("reservations").stdout  # ids never wrap; at 80 columns the other cells may fold
    assert first["id"] in table and second["id"] in table
    assert "no reservations" in cli.ok("reservations", "--state", "degraded").stdout

    detail = cli.ok("reservation", first["id"]).stdout
    assert first["id"] in detail and "128M out, 128M in" in detail
    assert "h1 → s1 → s2 → h2" in detail and "s1-s2" in detail
    assert cli.json("reservation", first["id"])["id"] == first["id"]
    cli.fails("reservation", "r-nope", code="reservation_not_found")

    modified = cli.json("modify", first["id"], "--rate", "384M", "--rate-in", "16M", "--end", "+90m")
    assert (modified["rate_out"], modified["rate_in"]) == (384 * 10**6, 16 * 10**6)
    assert modified["end"] > first["end"]
    assert "modified" in cli.ok("modify", second["id"], "--start", "+1h").stdout
    cli.fails("modify", first["id"], "--rate", "5G", code="insufficient_capacity")
    cli.fails("modify", first["id"], code="invalid_request")
    assert cli.json("reservation", first["id"])["rate_out"] == 384 * 10**6  # the refused change left it

    assert cli.json("cancel", first["id"])["state"] == "cancelled"
    assert "cancelled" in cli.ok("cancel", second["id"]).stdout
    assert {r["state"] for r in cli.json("reservations")["reservations"]} == {"cancelled"}
    cli.fails("modify", first["id"], "--rate", "1M", code="reservation_ended")


def test_request_id_retry_is_the_same_reservation(cli: Cli, topo: Path) -> None:
    args = ("oneway", "h1", "h2", "--rate", "10M", "--end", "+1h", "--request-id", "job-1")
    first = reserve(cli, *args)
    again = reserve(cli, *args)
    assert (again["id"], again["created"]) == (first["id"], False)
    assert "already reserved" in cli.ok("reserve", *args).stdout
    cli.fails("reserve", "oneway", "h1", "h2", "--rate", "20M", "--end", "+1h", "--request-id", "job-1",
              code="request_id_conflict")


def test_steering_and_mirror(cli: Cli, topo: Path) -> None:
    steer = reserve(cli, "steering", "h1", "h2", "--via", "mb1", "--rate", "50M", "--end", "+1h")
    assert steer["kind"] == "steering" and steer["via"] == ["mb1"]
    assert [p["nodes"] for p in steer["paths"]] == [["h1", "s1", "s2", "mb1"], ["mb1", "s2", "h2"]]
    human = cli.ok("reserve", "steering", "h2", "h1", "--via", "mb1", "--rate", "1M", "--end", "+1h").stdout
    assert "steering h2 → mb1 → h1" in human
    detail = cli.ok("reservation", steer["id"]).stdout
    assert "via" in detail and "seg0" in detail and "seg1" in detail and "mb1 → s2 → h2" in detail
    cli.fails("reserve", "steering", "h1", "h2", "--via", "s3", "--rate", "1M", "--end", "+1h",
              code="not_a_middlebox")

    mirror = reserve(cli, "mirror", "h1", "c1", "--rate", "20M", "--end", "+1h")
    assert mirror["kind"] == "mirror" and mirror["collector"] == "c1"
    assert "collector" in cli.ok("reservation", mirror["id"]).stdout
    assert [p["nodes"] for p in mirror["paths"]] == [["s1", "c1"]]
    human = cli.ok("reserve", "mirror", "h2", "c1", "--rate", "1M", "--end", "+1h", "--port", "s2-h2").stdout
    assert "reserved" in human and "s2 → s1 → c1" in human
    cli.fails("reserve", "mirror", "h1", "c1", "--rate", "1M", "--end", "+1h", "--port", "s2-h2",
              code="invalid_port")


# --------------------------------------------------------------- paths, usage


def test_paths_k2(cli: Cli, topo: Path) -> None:
    found = cli.json("paths", "h1", "h2", "--rate", "100M", "--end", "+1h", "--k", "2")
    assert [p["nodes"] for p in found["paths"]] == [["h1", "s1", "s2", "h2"], ["h1", "s1", "s3", "s2", "h2"]]
    assert [p["hops"] for p in found["paths"]] == [3, 4]
    out = cli.ok("paths", "h1", "h2", "--rate", "100M", "--end", "+1h", "--k", "2").stdout
    assert "h1 → s1 → s3 → s2 → h2" in out and "1G" in out
    assert len(cli.json("paths", "h1", "h2", "--rate", "100M", "--end", "+1h")["paths"]) == 1
    cli.fails("paths", "h1", "h2", "--rate", "2G", "--end", "+1h", code="insufficient_capacity")
    assert cli.json("reservations")["reservations"] == []  # nothing was booked


def test_usage_draws_bars(cli: Cli, topo: Path) -> None:
    reserve(cli, "bandwidth", "h1", "h2", "--rate", "512M", "--rate-in", "256M", "--end", "+1h")
    reserve(cli, "oneway", "h1", "h2", "--rate", "123M", "--start", "+30m", "--end", "+2h")
    answer = cli.json("usage", "h1-s1")
    ab, ba = answer["directions"]["ab"], answer["directions"]["ba"]
    assert [s["used"] for s in ab["steps"]] == [512 * 10**6, 635 * 10**6, 123 * 10**6, 0]
    assert [s["used"] for s in ba["steps"]] == [256 * 10**6, 0]

    out = cli.ok("usage", "h1-s1").stdout
    assert "h1 → s1" in out and "s1 → h1" in out and "capacity 1G" in out and "usable 1G" in out
    assert "█" in out
    assert "512M" in out and "635M" in out and "123M" in out and "256M" in out
    assert "51.2%" in out and "63.5%" in out and "12.3%" in out and "25.6%" in out
    assert "forever" in out
    rows = [line for line in out.splitlines() if "█" in line]
    assert len(rows) == 4  # every step with something booked draws a bar (3 a→b, 1 b→a)
    longest = max(rows, key=lambda line: line.count("█"))
    assert "635M" in longest and longest.count("█") > 2 * min(row.count("█") for row in rows)

    windowed = cli.json("usage", "h1-s1", "--from", "+10m", "--to", "+20m")
    assert [s["used"] for s in windowed["directions"]["ab"]["steps"]] == [512 * 10**6]
    idle = cli.ok("usage", "s1-s3").stdout
    assert "nothing booked" in idle
    cli.fails("usage", "nope", code="link_not_found")
    cli.fails("usage", "h1-s1", "--from", "+1h", "--to", "+10m", code="invalid_window")


# ------------------------------------------------------------------ limits


def test_limit_set_list_rm(cli: Cli, topo: Path) -> None:
    assert "no limits" in cli.ok("limit", "list").stdout
    assert cli.json("limit", "set", "blue", "--max", "1G")["max"] == 10**9
    assert "25%" in cli.ok("limit", "set", "green", "--share", "25%").stdout
    listed = cli.json("limit", "list")["limits"]
    assert [(lim["project"], lim["max"], lim["share"]) for lim in listed] == [("blue", 10**9, None),
                                                                               ("green", None, "25%")]
    table = cli.ok("limit", "list").stdout
    assert "blue" in table and "1G" in table and "green" in table and "25%" in table

    cli.fails("reserve", "oneway", "h1", "h2", "--rate", "300M", "--end", "+1h", "--project", "green",
              code="limit_exceeded")
    cli.fails("limit", "set", "blue", code="invalid_limit")
    cli.fails("limit", "set", "blue", "--max", "1G", "--share", "10%", code="invalid_limit")

    assert cli.json("limit", "rm", "green")["project"] == "green"
    assert "removed the limit of blue" in cli.ok("limit", "rm", "blue").stdout
    cli.fails("limit", "rm", "blue", code="limit_not_found")
    reserve(cli, "oneway", "h1", "h2", "--rate", "300M", "--end", "+1h", "--project", "green")


# ------------------------------------------------------------------ client


def test_client_reserve_created_then_not(client: TenureClient) -> None:
    client.put_topology_yaml(TOPOLOGY_YAML)
    first = client.reserve(kind="oneway", src="h1", dst="h2", rate="10M", end="+1h", request_id="x", project=None)
    again = client.reserve(kind="oneway", src="h1", dst="h2", rate="10M", end="+1h", request_id="x")
    assert first["created"] is True and again["created"] is False and again["id"] == first["id"]
    with pytest.raises(TenureAPIError) as err:
        client.reserve(kind="oneway", src="h1", dst="h2", rate="11M", end="+1h", request_id="x")
    assert (err.value.status, err.value.code) == (409, "request_id_conflict")


def test_client_pages_reservations_and_edits_topology(client: TenureClient) -> None:
    client.put_topology(SMALL_DOC)
    ids = [client.reserve(kind="oneway", src="h1", dst="h2", rate="1M", end="+1h")["id"] for _ in range(3)]
    page = client.reservations(limit=2)
    assert [r["id"] for r in page["reservations"]] == ids[:2] and page["next"] is not None
    assert [r["id"] for r in client.iter_reservations(limit=1)] == ids
    assert [r["id"] for r in client.iter_reservations(after=client.reservations(limit=1)["next"])] == ids[1:]
    assert client.reservation(ids[0])["state"] == "active"
    assert client.modify_reservation(ids[0], rate="2M")["rate_out"] == 2 * 10**6
    assert client.cancel_reservation(ids[0])["state"] == "cancelled"
    assert [r["id"] for r in client.iter_reservations(state="cancelled")] == [ids[0]]

    assert client.node("s1") == {"id": "s1", "kind": "switch"}
    client.put_node("s2", {"kind": "switch"})
    edited = client.put_link("s2-h2", {"a": "s2", "b": "h2", "capacity": "10G"})
    assert edited["recheck"]["kept"] == 2
    assert client.link("s2-h2")["capacity"] == 10 * 10**9
    with pytest.raises(TenureAPIError) as err:
        client.delete_node("s2")
    assert err.value.code == "node_in_use"
    client.delete_link("s2-h2")
    client.delete_node("s2")
    assert {n["id"] for n in client.topology()["nodes"]} == {"h1", "s1", "h2"}

    usage = client.usage("h1-s1", start="now", end="+2h")
    assert usage["directions"]["ab"]["steps"][0]["used"] == 2 * 10**6  # ids[1] and ids[2]; ids[0] is cancelled
    found = client.paths(src="h1", dst="h2", rate="1M", end="+1h", k=2)
    assert [p["nodes"] for p in found["paths"]] == [["h1", "s1", "h2"]]


def test_client_sends_yaml_as_yaml_and_leaves_json_alone() -> None:
    seen: list[tuple[str, str, bytes]] = []
    urls: list[httpx.URL] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.headers.get("content-type", ""), request.content))
        urls.append(request.url)
        return httpx.Response(200, json={"nodes": [], "links": []})

    with TenureClient("http://tenure.test", "t", transport=httpx.MockTransport(record)) as c:
        c.put_topology_yaml("nodes: []\n")
        c.put_topology({"nodes": []})
        c.usage("a/b", start="now", end="+1h")
    assert seen[0] == ("PUT", "application/yaml", b"nodes: []\n")
    assert seen[1][1] == "application/json" and json.loads(seen[1][2]) == {"nodes": []}
    assert urls[2].raw_path == b"/v1/links/a%2Fb/usage?from=now&to=%2B1h"


def test_client_limits(client: TenureClient) -> None:
    assert client.set_limit("blue", share="10%")["share"] == "10%"
    assert client.limit("blue")["max"] is None
    assert [lim["project"] for lim in client.limits()["limits"]] == ["blue"]
    assert client.delete_limit("blue")["project"] == "blue"
    with pytest.raises(TenureAPIError) as err:
        client.limit("blue")
    assert err.value.code == "limit_not_found"


def test_a_reservation_shows_what_its_agents_saw_on_the_wire(cli: Cli, topo: Path) -> None:
    api = cli.api
    assert api.post("/v1/agents", json={"host": "h1", "kinds": ["instance"], "version": "1"}).status_code == 201
    r = reserve(cli, "oneway", "h1", "h2", "--rate", "50M", "--end", "+1h")
    out = cli.ok("reservation", r["id"]).stdout
    assert "on the wire" in out and "h1" in out  # the leg, nothing observed yet
    [leg] = cli.json("reservation", r["id"])["wire"]
    seen = {"classid": "1:5", "rate": "50000000", "ceil": "50000000", "sent_bytes": "123456789",
            "sent_packets": "8000", "dropped": "3", "classified_packets": "7990", "remarked_packets": "12"}
    hb = api.post("/v1/agents/h1/heartbeat", token=api.token("agent", host="h1"), json={
        "observations": [{"instance": leg["instance"], "at": "2026-12-05T10:00:00Z", "values": seen}]})
    assert hb.status_code == 200, hb.text
    out = cli.ok("reservation", r["id"]).stdout
    for shown in ("1:5", "50.0M", "123.5MB", "8.0k", "10:00", "cannot be matched"):
        assert shown in out, out
