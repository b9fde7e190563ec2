"""The Reservations view in a real browser (issue 16): a booking through the form and one through the CLI at the
same time both reach the timeline and recolour their links, without a reload; a refusal shows the
link and instant of the API's 409; modify and cancel; bad input is shown at its field and changes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from selenium.webdriver.support.ui import Select

from tests.browser.conftest import Console, Page


def _on_timeline(page: Page, rid: str) -> bool:
    return bool(page.finds(f"#res-timeline .res-label[data-reservation='{rid}']"))


def _cli_reserve(server: Console, *args: str) -> str:
    env = {**os.environ, "TENURE_URL": server.url, "TENURE_TOKEN": server.proc.admin_token}
    run = subprocess.run([sys.executable, "-m", "tenure", "reserve", *args], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return re.search(r"\br-[0-9a-f]+\b", run.stdout + run.stderr).group(0)


def _fill(page: Page, **fields: str) -> None:
    for name, value in fields.items():
        if name == "kind":
            Select(page.find("#nf-kind")).select_by_value(value)
            continue
        el = page.find(f"#nf-{name}")
        el.clear()
        el.send_keys(value)


def test_a_form_booking_and_a_cli_booking_reach_the_timeline_and_the_colours(
        page: Page, server: Console) -> None:
    page.sign_in()
    page.go("#/topology")
    page.wait(lambda: page.attr("#topo-graph", "data-ready") == "1", "the topology")
    topology_window = page.driver.current_window_handle
    page.driver.switch_to.new_window("window")
    page.open("#/reservations")
    page.wait(lambda: "reservation" in page.text("#res-info"), "the reservations")
    page.js("window.__tenure_page = 'not reloaded'")
    page.find("#res-new").click()
    _fill(page, kind="oneway", src="h1", dst="h4", rate="2G")
    page.find("#nf-preview-button").click()
    page.wait(lambda: "h1 → leaf1" in page.text("#nf-preview"), "the previewed path")
    assert page.attr("#nf-graph", "data-path")  # drawn on the form's graph
    with ThreadPoolExecutor(1) as pool:
        from_cli = pool.submit(_cli_reserve, server, "oneway", "h2", "h3", "--rate", "3G", "--end", "+1h")
        page.find("#nf-book").click()
        page.wait(lambda: page.find("#nf-booked"), "the booking's answer")
        from_form = page.attr("#nf-booked", "data-reservation")
        cli_id = from_cli.result()
    page.wait(lambda: _on_timeline(page, from_form) and _on_timeline(page, cli_id), "both on the timeline")
    page.screenshot("reservations")
    links = {rid: set(server.api("GET", f"/v1/reservations/{rid}")["paths"][0]["links"]) for rid in (from_form, cli_id)}
    page.driver.switch_to.window(topology_window)
    page.wait(lambda: all(page.link_shares().get(link, 0) > 0 for ls in links.values() for link in ls),
              "both reservations' links recoloured")
    for handle in page.driver.window_handles:
        page.driver.switch_to.window(handle)
        assert page.not_reloaded()  # neither window reloaded
    page.driver.switch_to.window(topology_window)
    for handle in page.driver.window_handles:
        if handle != topology_window:
            page.driver.switch_to.window(handle)
            page.driver.close()
    page.driver.switch_to.window(topology_window)


def test_a_refusal_shows_the_link_and_instant_of_the_409(page: Page, server: Console) -> None:
    server.api("POST", "/v1/reservations", json={"kind": "oneway", "src": "h3", "dst": "h1", "rate": "9G",
                                                 "start": "+2h", "end": "+4h"})
    request = {"kind": "oneway", "src": "h3", "dst": "h2", "rate": "2G", "start": "+1h", "end": "+3h"}
    refusal = server.admin.post("/v1/reservations", json=request)
    assert refusal.status_code == 409, refusal.text
    expected = refusal.json()["error"]
    page.sign_in()
    page.go("#/reservations")
    page.wait(lambda: "reservation" in page.text("#res-info"), "the reservations")
    page.find("#res-new").click()
    page.js("const at = (id, iso) => { const d = new Date(iso); const p = n => String(n).padStart(2, '0');"
            " document.getElementById(id).value = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T`"
            " + `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`; };"
            " at('nf-start', Date.now() + 3600e3); at('nf-end', Date.now() + 3 * 3600e3);")
    _fill(page, kind="oneway", src="h3", dst="h2", rate="2G")
    before = len(server.api("GET", "/v1/reservations")["reservations"])
    page.find("#nf-book").click()
    page.wait(lambda: page.find("#nf-refused"), "the refusal")
    shown = page.find("#nf-refused")
    assert shown.get_attribute("data-link") == expected["link"] == "h3-leaf2"
    assert shown.get_attribute("data-when") == expected["when"]
    assert page.attr("#nf-graph", "data-refused") == expected["link"]
    page.wait(lambda: page.attr("#nf-chart", "data-marker") == expected["when"], "the chart's marker")
    page.screenshot("reservations-refused")
    page.find("#nf-refused a").click()  # the same on the topology, at that instant
    page.wait(lambda: page.find("#link-refusal"), "the topology's refusal notice")
    assert page.attr("#topo-graph", "data-refused") == expected["link"]
    assert page.attr("#link-chart", "data-marker") == expected["when"]
    assert len(server.api("GET", "/v1/reservations")["reservations"]) == before  # the refusal booked nothing


def test_modify_and_cancel_from_the_details(page: Page, server: Console) -> None:
    made = server.api("POST", "/v1/reservations", json={"kind": "oneway", "src": "h2", "dst": "h1", "rate": "100M",
                                                        "start": "+1h", "end": "+2h"})
    page.sign_in()
    page.go(f"#/reservations?id={made['id']}")
    page.wait(lambda: page.attr("#res-detail", "data-reservation") == made["id"], "the details")
    page.find("#res-modify").click()
    rate = page.find("#mod-rate")
    rate.clear()
    rate.send_keys("250M")
    page.find("#res-modify-form button[type=submit]").click()
    page.wait(lambda: server.api("GET", f"/v1/reservations/{made['id']}")["rate_out"] == 250_000_000, "the change")
    page.wait(lambda: "250M" in page.text("#res-detail [data-field='rate']"), "the change shown")
    page.find("#res-cancel").click()
    page.wait(lambda: page.find("#res-confirm").is_displayed(), "the confirmation")
    page.find("#res-confirm-yes").click()
    page.wait(lambda: server.api("GET", f"/v1/reservations/{made['id']}")["state"] == "cancelled", "cancelled")
    page.wait(lambda: page.text("#res-detail [data-field='state']") == "cancelled", "cancelled shown")


def test_bad_input_is_shown_at_its_field_and_books_nothing(page: Page, server: Console) -> None:
    before = server.api("GET", "/v1/reservations")["reservations"]
    page.sign_in()
    page.go("#/reservations")
    page.wait(lambda: "reservation" in page.text("#res-info"), "the reservations")
    page.find("#res-new").click()
    _fill(page, kind="oneway", src="h1", dst="<b>nowhere</b>", rate="lots")
    page.find("#nf-book").click()
    page.wait(lambda: page.find("#nf-refused"), "the refusal")
    assert "'<b>nowhere</b>'" in page.text("#nf-refused") and "(invalid_name)" in page.text("#nf-refused")
    assert not page.finds("#nf-refused b")  # the name's markup is text
    assert page.find("#nf-dst").get_attribute("aria-invalid") == "true"
    assert server.api("GET", "/v1/reservations")["reservations"] == before
