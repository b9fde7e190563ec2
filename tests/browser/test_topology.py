"""The Topology view in a real browser (issue 16): links coloured by their reserved share now or at the slider's
instant, recoloured after a booking without a reload (waited for; the time it takes is bench/console.py's), and a
link's chart equal to the API's usage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from selenium.webdriver.common.keys import Keys

from tests.browser.conftest import Console, Page


@pytest.fixture(scope="module", autouse=True)
def headroom(server: Console) -> None:
    """The example topology with 10 % of every link held back: a share is of the usable capacity, not the raw one."""
    doc = server.api("GET", "/v1/topology")
    server.api("PUT", "/v1/topology", json={"nodes": doc["nodes"], "links": doc["links"], "headroom": "10%"})


def _expected(server: Console, at: str | None = None) -> dict[str, float]:
    """Each link's share as the API gives it: the busier direction's usage over that direction's usable capacity."""
    usage = server.api("GET", "/v1/links/usage", params={"at": at} if at else {})
    usable = {}
    for link in server.api("GET", "/v1/topology")["links"]:
        dirs = server.api("GET", f"/v1/links/{link['id']}/usage")["directions"]
        usable[link["id"]] = (dirs["ab"]["usable"], dirs["ba"]["usable"])
    assert len(usable) <= 15, "the busiest-links table shows 15: the shares read from it are not all of them"
    return {row["link"]: max(row["ab"] / usable[row["link"]][0], row["ba"] / usable[row["link"]][1])
            for row in usage["links"]}


def _t(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _open(page: Page) -> None:
    page.sign_in()
    page.go("#/topology")
    page.wait(lambda: page.attr("#topo-graph", "data-ready") == "1", "the graph")


def test_a_booking_recolours_its_links_without_a_reload(page: Page, server: Console) -> None:
    _open(page)
    assert set(page.link_shares().values()) == {0.0}
    res = server.api("POST", "/v1/reservations", json={"kind": "bandwidth", "src": "h1", "dst": "h3", "rate": "4G",
                                                       "end": "+2h"})
    on_path = set(res["paths"][0]["links"])
    page.wait(lambda: all(page.link_shares().get(link, 0) > 0 for link in on_path), "the path's links recoloured")
    shares = page.link_shares()
    expected = _expected(server)
    assert {k: round(v, 6) for k, v in shares.items() if v} == {k: round(v, 6) for k, v in expected.items() if v}
    assert page.not_reloaded()
    page.screenshot("topology")


def test_the_slider_shows_the_shares_of_its_instant(page: Page, server: Console) -> None:
    server.api("POST", "/v1/reservations", json={"kind": "oneway", "src": "h2", "dst": "h4", "rate": "7G",
                                                 "start": "+3h", "end": "+5h"})
    _open(page)
    before = page.attr("#topo-graph", "data-at")
    slider = page.find("#topo-at")
    slider.send_keys(*[Keys.ARROW_RIGHT] * 15)  # 15 steps of 15 minutes: 3 h 45 min ahead
    page.wait(lambda: page.attr("#topo-graph", "data-at") != before, "the colours of the new instant")
    at = page.attr("#topo-graph", "data-at")
    assert datetime.fromisoformat(at) - datetime.now(UTC) > timedelta(hours=3, minutes=30)
    expected = _expected(server, at)
    page.wait(lambda: {k: round(v, 6) for k, v in page.link_shares().items()}
              == {k: round(v, 6) for k, v in expected.items()}, "the shares at the slider's instant")
    assert expected["h2-leaf1"] == pytest.approx(7 / 9)  # 7G of the 9G usable (10 % held back)
    assert "at=" in page.driver.current_url  # the instant is in the link to share
    page.find("#topo-links button[data-link='h2-leaf1']").click()
    page.wait(lambda: not page.find("#link-panel").get_attribute("hidden"), "the link's panel")


def test_a_links_chart_agrees_with_its_usage_from_the_api(page: Page, server: Console) -> None:
    made = {server.api("POST", "/v1/reservations", json={"kind": "oneway", "src": "h4", "dst": "h3", "rate": rate,
                                                         "start": start, "end": end})["id"]
            for start, end, rate in [("+1h", "+4h", "1G"), ("+2h", "+3h", "2500M"), ("+6h", "+8h", "500M")]}
    _open(page)
    page.go("#/topology?link=h4-leaf2")
    page.wait(lambda: page.find("#link-chart .uplot"), "the chart")
    page.find("#link-chart details summary").click()
    shown: list[Any] = page.js(
        "return [...document.querySelectorAll('#link-chart details tbody tr')].map(tr =>"
        " [tr.querySelector('time').dataset.iso,"
        "  ...[...tr.querySelectorAll('[data-used]')].map(s => Number(s.dataset.used))])")
    usage = server.api("GET", "/v1/links/h4-leaf2/usage")["directions"]

    def used_at(direction: str, instant: datetime) -> int:
        for step in usage[direction]["steps"]:
            if _t(step["from"]) <= instant and (step["to"] is None or instant < _t(step["to"])):
                return step["used"]
        return 0

    assert len(shown) >= 5
    for start, ab, ba in shown:  # each row of the chart's table is the API's usage at its instant
        assert (ab, ba) == (used_at("ab", _t(start)), used_at("ba", _t(start))), start
    starts = {_t(start) for start, _, _ in shown}
    assert {_t(s["from"]) for s in usage["ab"]["steps"]} <= starts  # and every step of the API is a row
    assert max(ab for _, ab, _ in shown) == 3_500_000_000
    listed = {row.get_attribute("data-reservation") for row in page.finds("#link-panel tbody tr[data-reservation]")}
    on_link = {r["id"] for r in server.api("GET", "/v1/reservations", params={"link": "h4-leaf2"})["reservations"]
               if r["state"] in ("pending", "active")}
    assert made <= listed and listed == on_link
