"""The CLI's one-shot submit: one request with ``?wait=``, and an agent older than ``wait`` still served."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tenure.cli.resources import POLL, submit_waiting
from tenure.client import TenureAPIError, TenureClient

OP = {"id": "op-1", "action": "start", "state": "queued", "result": None}


def agent(knows_wait: bool, seen: list[httpx.Request]) -> httpx.MockTransport:
    """An agent's submit route: one that takes ``wait`` (answering with the result) or one from before it."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if "wait" in request.url.params and not knows_wait:  # what known_query answered before ?wait= existed
            return httpx.Response(400, json={"error": {
                "code": "invalid_request",
                "message": "unknown query parameter 'wait'; this operation takes none"}})
        body: dict[str, Any] = json.loads(request.content)
        if body["action"] == "explode":
            return httpx.Response(400, json={"error": {"code": "unknown_action", "message": "no such action"}})
        if "wait" in request.url.params:
            return httpx.Response(202, json={**OP, "state": "done", "result": {"rc": 0}})
        return httpx.Response(202, json=OP)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("knows_wait", [True, False])
def test_one_request_or_the_old_two(knows_wait: bool) -> None:
    seen: list[httpx.Request] = []
    with TenureClient("http://agent", "t", transport=agent(knows_wait, seen)) as c:
        op = submit_waiting(c, "db", "start", timeout=None, expect=0)
    if knows_wait:
        assert op["result"] == {"rc": 0} and len(seen) == 1
        assert seen[0].url.params["wait"] == str(POLL)
    else:  # refused before anything was queued: sent again without it, answered at once (then long-polled)
        assert op == OP and len(seen) == 2 and "wait" not in seen[1].url.params


@pytest.mark.parametrize("knows_wait,requests", [(True, 1), (False, 2)])
def test_other_refusals_are_not_retried(knows_wait: bool, requests: int) -> None:
    seen: list[httpx.Request] = []
    with TenureClient("http://agent", "t", transport=agent(knows_wait, seen)) as c, \
            pytest.raises(TenureAPIError) as exc:
        submit_waiting(c, "db", "explode", timeout=None, expect=0)
    assert exc.value.code == "unknown_action" and len(seen) == requests
