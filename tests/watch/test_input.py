"""Odd revisions on GET /v1/watch are 400, never 500 (invariant 8): Unicode digits that int() refuses."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Api


# str.isdigit() is True for superscripts and circled digits, which int() refuses; Last-Event-ID is decoded
# as latin-1, so the single byte 0xB2 is "²" there.


@pytest.mark.parametrize("since", ["²", "①", "¹²"])
def test_since_made_of_unicode_digits_that_int_refuses_is_400(api: Api, since: str) -> None:
    with httpx.Client(base_url=api.client.base_url, timeout=10) as fresh:  # a 500 drops the connection
        r = fresh.get("/v1/watch", params={"since": since}, headers=api.headers())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_since"


@pytest.mark.parametrize("raw", [b"\xb2", b"\xb9\xb2"])
def test_last_event_id_with_latin1_superscript_digits_is_400(api: Api, raw: bytes) -> None:
    with httpx.Client(base_url=api.client.base_url, timeout=10) as fresh:
        try:
            r = fresh.get("/v1/watch", headers={**api.headers(), "Last-Event-ID": raw})
        except httpx.TransportError as exc:  # uvicorn answered 500, then reset the connection
            pytest.fail(f"no 4xx answer: {exc!r}")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_since"
