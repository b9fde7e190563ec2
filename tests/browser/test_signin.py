"""Signing in to the console in a real browser (issue 16): a one-time link, a pasted token, signing out, a session
that ends under the page."""

from __future__ import annotations

from urllib.parse import urldefrag

from tests.browser.conftest import Console, Page


def _signed_in(page: Page) -> bool:
    return page.js("return !document.getElementById('nav').hidden && !document.querySelector('.signin')")


def _sign_in_page(page: Page) -> bool:
    return page.js("return !!document.querySelector('.signin form') && document.getElementById('nav').hidden")


def _history_urls(page: Page) -> list[str]:
    history = page.driver.execute_cdp_cmd("Page.getNavigationHistory", {})
    return [entry["url"] for entry in history["entries"]]


def test_a_one_time_link_signs_in_once_and_leaves_no_code_in_any_url(page: Page, server: Console) -> None:
    url = server.code_url()
    code = url.split("#code=", 1)[1]
    page.driver.get(url)
    page.wait(lambda: _signed_in(page), "the overview after the code's exchange")
    page.wait(lambda: page.find("#pools-card table"), "the overview's pools")
    assert code not in page.driver.current_url
    assert page.driver.current_url.endswith("/ui/#/overview")
    assert not [u for u in _history_urls(page) if code in u], "the code stayed in the browser's history"
    assert page.text("#who") == "admin"
    page.screenshot("overview")

    # The same link again, in a browser with no session: the code was used, the page says so and offers sign-in.
    page.driver.delete_all_cookies()
    page.driver.get(url)
    page.wait(lambda: _sign_in_page(page), "the sign-in page")
    assert "expired or was used already" in page.text("#signin-message")
    assert code not in page.driver.current_url
    assert not page.finds("#pools-card"), "a view was drawn without a session"
    # Every request this document made, as the browser records them: what went to the server (the URL without its
    # fragment, which browsers never send) holds the code in none; the page posts the code in a body.
    requests = page.js("return performance.getEntriesByType('navigation').concat("
                       "performance.getEntriesByType('resource')).map(e => e.name)")
    assert len(requests) > 3 and not [r for r in requests if code in urldefrag(r).url]


def test_a_pasted_token_signs_in_and_sign_out_ends_the_session(page: Page, server: Console) -> None:
    token = server.member("blue")
    page.open()
    page.wait(lambda: _sign_in_page(page), "the sign-in page")
    page.screenshot("sign-in")
    page.find("#token").send_keys(token)
    page.find(".signin button[type=submit]").click()
    page.wait(lambda: _signed_in(page), "the console after a pasted token")
    assert page.text("#who") == "member · blue"
    assert token not in page.driver.current_url
    assert page.js("return document.getElementById('token')") is None
    assert page.js("return JSON.stringify(localStorage) + JSON.stringify(sessionStorage) + document.cookie") \
        .find(token) < 0, "the token was kept in the browser"

    page.find("#signout").click()
    page.wait(lambda: _sign_in_page(page), "the sign-in page after signing out")
    page.driver.refresh()
    page.wait(lambda: _sign_in_page(page), "the sign-in page after a reload")


def test_a_wrong_token_is_refused_with_a_message(page: Page) -> None:
    page.open()
    page.wait(lambda: _sign_in_page(page), "the sign-in page")
    page.find("#token").send_keys("not-a-token")
    page.find(".signin button[type=submit]").click()
    page.wait(lambda: "not valid" in page.text("#signin-message") or "sign in" in page.text("#signin-message"),
              "the refusal")
    assert _sign_in_page(page)


def test_a_revoked_token_ends_the_open_console_with_no_half_drawn_view(page: Page, server: Console) -> None:
    made = server.api("POST", "/v1/tokens", json={"role": "member", "project": "green"})
    page.sign_in(made["token"])
    page.go("#/events")
    page.wait(lambda: page.find("#events"), "the events view")
    server.api("DELETE", f"/v1/tokens/{made['id']}")
    # The watch's stream is cut when its token is revoked; the page reconnects, is refused (401) and says why.
    page.wait(lambda: _sign_in_page(page), "the sign-in page after the token was revoked", timeout=15)
    assert "session has ended" in page.text("#signin-message")
    assert not page.finds("#events"), "the events view stayed half drawn"


def test_a_link_opened_while_signed_in_asks_before_it_replaces_the_session(page: Page, server: Console) -> None:
    page.sign_in()  # admin
    page.ready("overview")
    member = server.member("teal")
    page.driver.get(server.code_url(member))  # e.g. a link someone else sent
    page.wait(lambda: page.finds("#replace-no"), "the question")
    assert page.attr("#status", "data-state") == "idle", "the old session's view is still live"
    assert page.find("#nav").get_attribute("hidden") is not None
    assert "signed in as an admin" in page.text("#replace-message")
    page.find("#replace-no").click()
    page.ready("overview")
    assert page.text("#who") == "admin"
    page.driver.get(server.code_url(member))
    page.wait(lambda: page.finds("#replace-yes"), "the question again")
    page.find("#replace-yes").click()
    page.wait(lambda: page.text("#who") == "member · teal", "the new session")
    page.ready("overview")
