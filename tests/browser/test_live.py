"""The console is live (issue 16): Overview and Events follow the watch without a reload, pause and resume by
revision without losing an event, reconnect when the server comes back, and show markup as text."""

from __future__ import annotations

from tests.browser.conftest import Console, Page


def _used(page: Page, pool: str) -> int:
    return int(page.attr(f"#pools-card .util[data-pool='{pool}']", "data-used"))


def _percent(share: float) -> str:
    """As the console writes a share (format.js): one decimal, two under 1 %, no trailing zero."""
    p = share * 100
    text = f"{p:.{2 if 0 < abs(p) < 1 else 1}f}".rstrip("0").rstrip(".")
    return f"{text} %"


def _event_ids(page: Page) -> list[tuple[int, str]]:
    rows = page.js("return [...document.querySelectorAll('#events tbody tr[data-revision]')]"
                   ".map(r => [Number(r.dataset.revision), r.dataset.id])")
    return [(rev, oid) for rev, oid in rows]


def test_the_overview_follows_claims_and_reservations_and_agrees_with_the_api(page: Page, server: Console) -> None:
    page.sign_in()
    page.wait(lambda: page.find("#pools-card .util[data-pool='vlans']"), "the pools")
    before = _used(page, "vlans")
    total = int(page.attr("#reservations-card .big", "data-total"))
    for key in ("ov-a", "ov-b", "ov-c"):
        server.api("POST", "/v1/pools/vlans/claims", json={"key": key})
    page.wait(lambda: _used(page, "vlans") == before + 3, "the claims counted without a reload")
    pool = server.api("GET", "/v1/pools/vlans")
    shown = page.find("#pools-card .util[data-pool='vlans']")
    shown_counts = (int(shown.get_attribute("data-used")), int(shown.get_attribute("data-size")))
    assert shown_counts == (pool["used"], pool["size"])
    assert shown.text.strip() == _percent(pool["used"] / pool["size"])
    server.api("POST", "/v1/reservations", json={"kind": "bandwidth", "src": "h1", "dst": "h3", "rate": "1G",
                                                 "start": "now", "end": "+1h"})
    page.wait(lambda: int(page.attr("#reservations-card .big", "data-total")) == total + 1,
              "the new reservation counted")
    assert page.not_reloaded()


def test_events_pause_and_resume_by_revision_without_losing_one(page: Page, server: Console) -> None:
    page.sign_in()
    page.go("#/events?kind=claim")
    page.wait(lambda: page.find("#ev-kind-claim").is_selected(), "the filter from the URL")
    page.wait(lambda: "revision" in page.text("#ev-info"), "the stream's first bookmark")
    server.api("POST", "/v1/pools/vlans/claims", json={"key": "ev-1"})
    page.wait(lambda: any(oid == "vlans/ev-1" for _, oid in _event_ids(page)), "the first claim's event")
    server.api("POST", "/v1/pools", json={"name": "ev-pool", "ranges": [[1, 9]]})  # another kind: filtered out
    page.find("#ev-pause").click()
    page.wait(lambda: "Paused" in page.text("#ev-info"), "paused")
    made = [server.api("POST", "/v1/pools/vlans/claims", json={"key": f"ev-{i}"})["revision"] for i in range(2, 7)]
    assert page.attr("#status", "data-state") == "idle"  # paused: no stream open at all
    assert len(_event_ids(page)) == 1, "events were shown while paused"
    page.find("#ev-pause").click()
    page.wait(lambda: len(_event_ids(page)) == 6, "the events made while paused")
    shown = _event_ids(page)
    assert [oid for _, oid in shown] == [f"vlans/ev-{i}" for i in range(6, 0, -1)]  # newest first, each once
    assert [rev for rev, _ in shown][:5] == sorted(made, reverse=True)
    assert all(kind == "claim" for kind in page.attrs("#events tbody tr[data-id]", "data-kind"))


def test_names_and_keys_with_markup_are_shown_as_text(page: Page, server: Console) -> None:
    key = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    page.sign_in()
    page.go("#/events")
    page.wait(lambda: "revision" in page.text("#ev-info"), "the stream")
    server.api("POST", "/v1/pools/vlans/claims", json={"key": key})
    page.wait(lambda: any(oid == f"vlans/{key}" for _, oid in _event_ids(page)), "the claim's event")
    assert page.find("#events tbody tr td.mono").text == f"vlans/{key}"
    page.find("#events tbody tr[data-id] button").click()  # the object, as text too
    page.wait(lambda: page.find("#ev-object").is_displayed(), "the event's object")
    assert "<img src=x onerror=" in page.text("#ev-object") and "<script>" in page.text("#ev-object")
    assert not page.finds("#ev-object *")
    assert page.js("return window.__pwned") is None
    assert not page.finds("#events img") and not page.finds("#events script")


def test_the_page_reconnects_and_resumes_when_the_server_comes_back(page: Page, server: Console) -> None:
    page.sign_in()
    page.go("#/events?kind=claim")
    page.wait(lambda: "revision" in page.text("#ev-info"), "the stream")
    server.api("POST", "/v1/pools/vlans/claims", json={"key": "rc-0"})
    page.wait(lambda: _event_ids(page), "the first event")
    server.proc.stop()
    page.wait(lambda: page.attr("#status", "data-state") == "reconnecting", "the reconnecting notice")
    assert "Reconnecting" in page.text("#status")
    server.proc.start()
    server.proc.wait_ready()
    for i in range(1, 4):  # made at once: the page is still reconnecting, and must not lose them
        server.api("POST", "/v1/pools/vlans/claims", json={"key": f"rc-{i}"})
    page.wait(lambda: len(_event_ids(page)) == 4, "the events made while the page reconnected", timeout=20)
    assert [oid for _, oid in _event_ids(page)] == [f"vlans/rc-{i}" for i in range(3, -1, -1)]
    page.wait(lambda: page.attr("#status", "data-state") == "live", "live again")
    assert page.not_reloaded()
