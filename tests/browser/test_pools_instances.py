"""The Pools and Instances views in a real browser (issue 16): utilisation equal to the API's, claims found by key
prefix or value and released after a confirmation, live; instances with their state and dependency graph, agents."""

from __future__ import annotations

from tests.browser.conftest import Console, Page


def _keys(page: Page) -> list[str]:
    return page.js("return [...document.querySelectorAll('#claim-rows [data-key]')].map(e => e.dataset.key)")


def test_a_pools_claims_are_found_released_and_followed(page: Page, server: Console) -> None:
    for key in ("edge-1", "edge-2", "core-1"):
        server.api("POST", "/v1/pools/vxlan-vnis/claims", json={"key": key})
    page.sign_in()
    page.go("#/pools?pool=vxlan-vnis")
    page.wait(lambda: _keys(page) == ["core-1", "edge-1", "edge-2"], "the pool's claims")
    pool = server.api("GET", "/v1/pools/vxlan-vnis")
    util = page.find("#pool-util")
    assert (int(util.get_attribute("data-used")), int(util.get_attribute("data-size"))) == (pool["used"], pool["size"])

    search = page.find("#claim-search")
    search.send_keys("edge")
    page.find("#pool-detail form[role=search] button").click()
    page.wait(lambda: _keys(page) == ["edge-1", "edge-2"], "the keys starting with edge")
    assert "q=edge" in page.driver.current_url
    value = server.api("GET", "/v1/pools/vxlan-vnis/claims/core-1")["value"]
    search.clear()
    search.send_keys(str(value))
    page.find("#pool-detail form[role=search] button").click()
    page.wait(lambda: _keys(page) == ["core-1"], "the claim holding the value")

    search.clear()
    page.find("#pool-detail form[role=search] button").click()
    page.wait(lambda: len(_keys(page)) == 3, "every claim again")
    server.api("POST", "/v1/pools/vxlan-vnis/claims", json={"key": "edge-3"})  # made elsewhere: shown live
    page.wait(lambda: "edge-3" in _keys(page), "a claim made through the API")
    page.find("#claim-rows button[data-release='edge-1']").click()
    page.wait(lambda: page.find("#pool-confirm").is_displayed(), "the confirmation")
    page.find("#pool-confirm-yes").click()
    page.wait(lambda: "edge-1" not in _keys(page), "the released claim gone")
    assert server.admin.get("/v1/pools/vxlan-vnis/claims/edge-1").status_code == 404
    page.wait(lambda: int(page.attr("#pool-util", "data-used"))
              == server.api("GET", "/v1/pools/vxlan-vnis")["used"], "the utilisation after the release")
    page.screenshot("pools")


def test_instances_show_their_state_and_dependencies_and_agents_their_heartbeat(page: Page, server: Console) -> None:
    server.api("POST", "/v1/instances/batch", json={"instances": [
        {"name": "base", "type": "memory", "host": "h2"},
        {"name": "app", "type": "memory", "host": "h2", "depends_on": ["base"]},
        {"name": "edge", "type": "memory", "host": "h2", "depends_on": ["app"]},
        {"name": "alone", "type": "memory", "host": "h4"},
    ]})
    page.sign_in()
    page.go("#/instances?host=h2")
    page.wait(lambda: len(page.finds("#inst-table button[data-instance]")) == 3, "h2's instances")
    app = next(b for b in page.finds("#inst-table button[data-instance]") if b.text == "app")
    app.click()
    page.wait(lambda: page.attr("#inst-graph", "data-nodes") == "app base edge", "the dependency graph")
    assert page.text("#inst-detail [data-field='state']") == "pending"
    app_id = app.get_attribute("data-instance")
    assert page.text("#inst-detail [data-field='reason']") == server.api("GET", f"/v1/instances/{app_id}")["reason"]

    def state_of(name: str) -> str:
        return page.js("for (const b of document.querySelectorAll('#inst-table button[data-instance]'))"
                       " if (b.textContent === arguments[0])"
                       "  return b.closest('tr').querySelector('.state').textContent;",
                       name)

    assert state_of("base") == "pending"
    server.api("POST", "/v1/agents", json={"host": "h2", "kinds": ["instance"], "version": "test"})
    page.wait(lambda: page.find("#agents-table [data-agent='h2']").text == "up", "the agent, live")
    page.wait(lambda: state_of("base") == "provisioning", "the first instance sent to the agent, live")
    page.screenshot("instances")
