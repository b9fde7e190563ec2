"""A member's console shows exactly what its token sees through the API (issue 16): none of another project's
reservations, claims or instances, in any view or on the event stream."""

from __future__ import annotations

from tests.browser.conftest import Console, Page


def test_a_members_console_shows_nothing_of_another_project(page: Page, server: Console) -> None:
    blue = server.member("blue")
    red_secrets = []
    red = server.api("POST", "/v1/reservations", json={"kind": "bandwidth", "src": "h1", "dst": "h3", "rate": "3G",
                                                       "end": "+2h", "project": "red", "labels": {"who": "redteam"}})
    red_secrets.append(red["id"])
    mine = server.api("POST", "/v1/reservations", json={"kind": "oneway", "src": "h1", "dst": "h3", "rate": "1G",
                                                        "end": "+2h", "project": "blue"})
    server.api("POST", "/v1/pools/vlans/claims", json={"key": "red-secret-key", "project": "red"})
    server.api("POST", "/v1/pools/vlans/claims", json={"key": "blue-key", "project": "blue"})
    server.api("POST", "/v1/instances", json={"name": "red-secret-app", "type": "memory", "host": "h2",
                                              "project": "red"})
    server.api("POST", "/v1/instances", json={"name": "blue-app", "type": "memory", "host": "h2", "project": "blue"})
    red_secrets += ["red-secret-key", "red-secret-app", "redteam"]

    def nothing_of_red(where: str) -> None:
        source = page.driver.page_source
        leaked = [s for s in red_secrets if s in source]
        assert not leaked, f"{where} shows another project's {leaked}"

    page.sign_in(blue)
    assert page.text("#who") == "member · blue"
    page.ready("overview")
    assert page.attr("#reservations-card .big", "data-total") == "1"
    nothing_of_red("the overview")

    page.go("#/reservations")
    page.ready("reservations")
    assert page.attrs("#res-table button[data-reservation]", "data-reservation") \
        == [mine["id"]]
    nothing_of_red("the reservations")

    link = red["paths"][0]["links"][0]  # a link both cross: its chart counts everyone's, its list only blue's
    page.go(f"#/topology?link={link}")
    page.ready("topology")
    page.wait(lambda: page.finds("#link-panel tbody tr"), "the link's reservations")
    assert page.attrs("#link-panel tbody tr[data-reservation]", "data-reservation") \
        == [mine["id"]]
    nothing_of_red("the topology")

    page.go("#/pools?pool=vlans")
    page.ready("pools")
    assert page.js("return [...document.querySelectorAll('#claim-rows [data-key]')].map(e => e.dataset.key)") \
        == ["blue-key"]
    nothing_of_red("the pools")

    page.go("#/instances")
    page.ready("instances")
    shown = sorted(b.text for b in page.finds("#inst-table button[data-instance]"))
    assert "blue-app" in shown
    assert shown == sorted(i["name"] for i in server.api("GET", "/v1/instances", token=blue)["instances"])
    nothing_of_red("the instances")

    page.go("#/events")
    page.ready("events")
    server.api("POST", "/v1/pools/vlans/claims", json={"key": "red-secret-key-2", "project": "red"})
    red_secrets.append("red-secret-key-2")
    server.api("DELETE", f"/v1/reservations/{red['id']}")
    server.api("POST", "/v1/pools/vlans/claims", json={"key": "blue-key-2", "project": "blue"})
    page.wait(lambda: page.attrs("#events tbody tr[data-id]", "data-id")
              == ["vlans/blue-key-2"], "blue's own event")
    assert set(page.attrs("#events tbody tr[data-id]", "data-id")) == {"vlans/blue-key-2"}
    nothing_of_red("the event stream")
    page.screenshot("member-events")
