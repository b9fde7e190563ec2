"""Every 405 carries ``Allow`` (RFC 9110, 15.5.6) listing the methods its path supports, and the JSON error body.

The paths come from the server's own OpenAPI document (and the documentation routes); the methods a path
supports are checked against the server's behaviour: each method in ``Allow`` is served (whatever the
answer, it is not 405), and each method not in it is 405. Both the server and the host agent's app.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, start_api
from tests.lrm_support import start_agent

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DOC_ROUTES = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


@pytest.fixture(params=["server", "agent"])
def app_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    if request.param == "server":
        yield from start_api(f"sqlite:///{tmp_path / 'tenure.db'}", tmp_path / "data")
    else:
        yield from start_agent(tmp_path)


def _status(api: Api, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body; a 2xx body is not read (``GET /v1/watch`` streams forever)."""
    with api.client.stream(method, path, headers=api.headers()) as r:
        body = r.read() if r.status_code == 405 else b""
        return r.status_code, dict(r.headers), body


def _concrete(template: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", template)


def _documented(api: Api) -> dict[str, set[str]]:
    """Each concrete path to probe, with the methods the OpenAPI document says some route serves it with."""
    paths = api.get("/openapi.json").json()["paths"]
    out: dict[str, set[str]] = {p: {"GET", "HEAD"} for p in DOC_ROUTES}
    for template in paths:
        concrete = _concrete(template)
        out.setdefault(concrete, set())
        for other, ops in paths.items():  # several templates may match one path
            if re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(other)), concrete):
                out[concrete] |= {m.upper() for m in ops}
    return out


def test_every_405_says_which_methods_the_path_allows(app_api: Api) -> None:
    documented = _documented(app_api)
    assert "/v1/watch" in documented and len(documented) > 10
    wrong: list[Any] = []
    for path, doc_methods in sorted(documented.items()):
        answers = {m: _status(app_api, m, path) for m in METHODS}
        served = {m for m, (status, _, _) in answers.items() if status != 405}
        assert doc_methods <= served, (path, doc_methods, served)
        for method, (status, headers, body) in answers.items():
            if status != 405:
                continue
            allow = headers.get("allow")
            listed = {m.strip() for m in allow.split(",")} if allow is not None else None
            if listed != served:
                wrong.append((method, path, allow, sorted(served)))
            if method != "HEAD":  # a HEAD answer has no body
                err = json.loads(body)["error"]
                assert err["code"] == "method_not_allowed" and err["message"], (method, path, body)
    assert wrong == [], "405 answers without the right Allow header (method, path, Allow, served):\n" + "\n".join(
        map(str, wrong))


def test_a_405_on_a_path_served_by_several_routes_lists_them_all(app_api: Api) -> None:
    """GET and POST /v1/resources (agent) or /v1/pools (server) are two routes: a DELETE lists both."""
    path = "/v1/resources" if "/v1/resources" in _documented(app_api) else "/v1/pools"  # the agent serves both
    r = app_api.request("DELETE", path)
    assert r.status_code == 405
    assert r.headers.get("allow") is not None, r.headers
    assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "POST"}
    assert r.json()["error"]["code"] == "method_not_allowed"
