"""The console is usable and accessible (issue 16): axe-core finds no serious or critical violation of WCAG 2.1 A/AA
in any view, light or dark; every view fits a phone's width; the keyboard reaches every view; themes stay chosen;
times are in the browser's zone with UTC on hover; numbers carry units."""

from __future__ import annotations

import json

import pytest
from selenium.webdriver.common.keys import Keys

from tests.browser.conftest import Console, Page

VIEWS = ["overview", "topology", "reservations", "pools", "instances", "events"]


@pytest.fixture(scope="module", autouse=True)
def data(server: Console) -> None:
    """Something in every view: reservations, claims, instances with a dependency, an agent."""
    server.api("POST", "/v1/reservations", json={"kind": "bandwidth", "src": "h1", "dst": "h3", "rate": "2G",
                                                 "end": "+3h", "labels": {"app": "web"}})
    server.api("POST", "/v1/reservations", json={"kind": "steering", "src": "h2", "dst": "h4", "via": ["fw1"],
                                                 "rate": "1G", "start": "+1h", "end": "+5h"})
    for key in ("a", "b"):
        server.api("POST", "/v1/pools/vlans/claims", json={"key": key})
    server.api("POST", "/v1/instances/batch", json={"instances": [
        {"name": "base", "type": "memory", "host": "h2"},
        {"name": "app", "type": "memory", "host": "h2", "depends_on": ["base"]}]})
    server.api("POST", "/v1/agents", json={"host": "h4", "kinds": ["instance"], "version": "1"})


def _show(page: Page, view: str) -> None:
    fragment = {"pools": "#/pools?pool=vlans", "topology": "#/topology?link=h1-leaf1"}.get(view, f"#/{view}")
    page.go(fragment)
    page.ready(view)
    if view == "reservations":
        assert page.finds("#res-timeline .vis-item .res-label")
        page.find("#res-table button[data-reservation]").click()  # details open too
        page.wait(lambda: not page.find("#res-detail").get_attribute("hidden"), "the details")
    if view == "instances":
        page.find("#inst-table button[data-instance]").click()
        page.wait(lambda: not page.find("#inst-detail").get_attribute("hidden"), "the details")
    if view == "topology":
        page.wait(lambda: page.find("#link-chart .uplot"), "the link's chart")


@pytest.mark.parametrize("theme", ["auto", "light", "dark"])
def test_axe_finds_no_serious_violation_in_any_view(page: Page, theme: str) -> None:
    page.sign_in()
    page.js("localStorage.setItem('tenure-theme', arguments[0])", theme)
    page.driver.refresh()
    page.wait(lambda: page.js("return document.documentElement.dataset.theme || 'auto'") == theme, "the theme")
    found = {}
    for view in VIEWS:
        _show(page, view)
        page.screenshot(f"{view}-{theme}")
        violations = page.axe()
        if violations:
            found[view] = [{"id": v["id"], "impact": v["impact"], "help": v["help"],
                            "nodes": [n["target"] for n in v["nodes"][:5]]} for v in violations]
    assert not found, json.dumps(found, indent=1)


def test_every_view_fits_a_phones_width(page: Page) -> None:
    page.sign_in()
    page.driver.set_window_size(390, 844)
    try:
        for view in VIEWS:
            _show(page, view)
            overflow = page.js("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{view} is {overflow} px wider than a phone"
            page.screenshot(f"{view}-phone")
    finally:
        page.driver.set_window_size(1280, 800)


def test_the_keyboard_reaches_every_view_and_shows_where_it_is(page: Page) -> None:
    page.sign_in()
    page.ready("overview")
    body = page.find("body")
    body.send_keys(Keys.TAB)
    assert page.js("return document.activeElement.id") == "skip"
    reached = []
    for _ in range(len(VIEWS)):
        page.driver.switch_to.active_element.send_keys(Keys.TAB)
        reached.append(page.js("return document.activeElement.dataset.view"))
        outline = page.js("return getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("none", ""), "no visible focus"
    assert reached == VIEWS
    page.driver.switch_to.active_element.send_keys(Keys.ENTER)  # the last: Events
    page.ready("events")
    assert page.js("return document.querySelector('#nav a[aria-current=page]').dataset.view") == "events"


def test_the_theme_stays_chosen(page: Page) -> None:
    page.sign_in()
    button = page.find("#theme")
    assert page.js("return document.documentElement.dataset.theme") is None  # automatic: the system's
    button.click()
    assert page.js("return document.documentElement.dataset.theme") == "light"
    button.click()
    assert page.js("return document.documentElement.dataset.theme") == "dark"
    page.driver.refresh()
    page.wait(lambda: page.js("return document.documentElement.dataset.theme") == "dark", "the theme after a reload")
    background = page.js("return getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(13, 17, 23)"


def test_times_are_local_with_utc_on_hover_and_numbers_have_units(page: Page, server: Console) -> None:
    page.driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Tokyo"})
    try:
        page.sign_in()
        page.go("#/instances")
        page.ready("instances")
        stamp = page.find("#inst-table time")
        iso = stamp.get_attribute("data-iso")
        assert stamp.get_attribute("title").endswith("Z (UTC)")
        shown = page.js("return arguments[0].textContent", stamp)
        expected = page.js("return new Intl.DateTimeFormat(undefined, {year: 'numeric', month: 'short', day: '2-digit',"
                           " hour: '2-digit', minute: '2-digit', second: '2-digit', timeZone: 'Asia/Tokyo'})"
                           ".format(new Date(arguments[0]))", iso)
        assert shown == expected
        units = page.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "import('/ui/js/format.js').then(f => done([f.rate(40e9), f.rate(2.5e9), f.rate(100e6), f.rate(1234),"
            " f.percent(0.125), f.percent(0.0007), f.percent(1)]));")
        assert units == ["40G", "2.5G", "100M", "1.234K", "12.5 %", "0.07 %", "100 %"]
    finally:
        page.driver.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": ""})
