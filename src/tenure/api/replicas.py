"""Requests on a set of replicas (docs/replication.md).

- :class:`ReplicaRequests`, a pure ASGI middleware: ``?min_revision=R`` on any request waits until this
  server has applied revision R (at most 5 s, then 504 ``not_yet_applied``), so a client that wrote through
  one replica reads its write on another; and a write (any method but GET, HEAD and OPTIONS) sent to a
  follower is **forwarded** to the leader and its answer relayed, so clients never see which replica leads.
  No leader known (an election is under way), or the leader unreachable before the request was sent: 503
  ``no_leader`` with ``Retry-After``. The connection to the leader failed after the request was sent: 503
  ``outcome_unknown`` (the write may have committed: retry only what is idempotent). A link's usage over
  time is read by the leader's writer (it owns the ledgers), so that read is forwarded too, and so are the reads
  of what agents observed on the wire (their heartbeats go to the leader, which keeps them). A forwarded request
  that reaches a replica which does not lead (the lead moved meanwhile) is not forwarded again: 503.
- ``GET /v1/replicas``: every replica's row (role, epoch, applied revision, last heartbeat), admin only.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

import httpx
from fastapi import APIRouter, Depends, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tenure.api.auth import authenticate
from tenure.api.errors import error_response
from tenure.client._errors import tls_refusal
from tenure.client._tls import verify_with
from tenure.domain.access import Principal, require_admin
from tenure.services.replica import LEADER, replicas

log = logging.getLogger("tenure.replicas")

MIN_REVISION_WAIT = 5.0
LEADER_CHECK = 0.1  # how often a forwarded request looks whether the lead moved
# Reads only the leader can answer: a link's usage (its writer owns the ledgers), what agents observed (their
# heartbeats go to the leader, which keeps them in memory).
LEADER_READS = re.compile(r"/v1/links/(?:[^/]+/)?usage|/v1/reservations/[^/]+/wire|/v1/instances/[^/]+/observed"
                          r"|/v1/tokens")  # tokens: their last use is written by the leader, with no event
FORWARD_TIMEOUT = httpx.Timeout(35.0, connect=2.0)  # the leader's own request timeout is 30 s
FORWARDED = b"x-tenure-forwarded"
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
HOP_BY_HOP = frozenset({b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade",
                        b"proxy-authorization", b"proxy-authenticate", b"content-length"})

router = APIRouter(tags=["system"])


class ReplicaRequests:
    def __init__(self, app: ASGIApp, *, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string", b"")
        if b"min_revision" in query:
            params = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
            wanted = [v for k, v in params if k == "min_revision"]
            if wanted:
                try:
                    revision = int(wanted[-1])
                    if revision < 0:
                        raise ValueError
                except ValueError:
                    await error_response(400, "invalid_request", "min_revision must be a revision (an integer "
                                         ">= 0)")(scope, receive, send)
                    return
                if not await self.state.hub.applied(revision, MIN_REVISION_WAIT):
                    await error_response(504, "not_yet_applied", f"this server has not applied revision {revision} "
                                         f"within {MIN_REVISION_WAIT:g} s (it is at {self.state.hub.revision}); "
                                         "retry, or ask the leader", revision=self.state.hub.revision
                                         )(scope, receive, send)
                    return
                rest = urlencode([(k, v) for k, v in params if k != "min_revision"]).encode("latin-1")
                scope = {**scope, "query_string": rest}
        replica = self.state.replica
        path = scope["path"]
        leader_read = LEADER_READS.fullmatch(path) is not None
        if replica is None or (scope["method"] in SAFE and not leader_read) or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        role = replica.role
        if role.role == LEADER:
            await self.app(scope, receive, send)
            return
        if any(name == FORWARDED for name, _ in scope.get("headers", ())) or role.leader_address is None:
            await error_response(503, "no_leader", "no replica leads right now (an election is under way); "
                                 "retry shortly")(scope, receive, send)
            return
        await self._forward(scope, receive, send, role.leader_address, replica.name)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, leader: str, me: str) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() not in HOP_BY_HOP]
        headers.append((FORWARDED, me.encode()))
        url = leader.rstrip("/") + scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        if self.state.forward_client is None:
            # An https:// leader's certificate: checked against TENURE_CA_FILE (`tenure serve --ca-file`), else the
            # system's trust store.
            self.state.forward_client = httpx.AsyncClient(timeout=FORWARD_TIMEOUT, follow_redirects=False,
                                                          verify=verify_with(None))
        epoch = self.state.replica.role.epoch
        request = asyncio.ensure_future(self.state.forward_client.request(scope["method"], url, content=bytes(body),
                                                                          headers=headers))
        try:
            # A leader that is paused or cut off would hold the request until the timeout; once another
            # replica leads, the old one can commit nothing more, so stop waiting for it.
            while not request.done():
                await asyncio.wait({request}, timeout=LEADER_CHECK)
                if not request.done() and self.state.replica.role.epoch != epoch:
                    request.cancel()
                    raise httpx.ReadError("the leader changed while it held the request")
            resp = request.result()
        except asyncio.CancelledError:
            request.cancel()  # the client went away: so does the forwarded request
            raise
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            refused = tls_refusal(exc)
            if refused is not None:  # not a leader down: a certificate this replica does not trust
                log.error("the leader's certificate was refused: %s", refused, extra={"leader": leader})
                await error_response(503, "no_leader", f"the leader at {leader} cannot be reached: {refused}"
                                     )(scope, receive, send)
                return
            log.warning("the leader did not answer a forwarded write: %s", exc, extra={"leader": leader})
            await error_response(503, "no_leader", f"the leader at {leader} cannot be reached; retry shortly"
                                 )(scope, receive, send)
            return
        except httpx.HTTPError as exc:
            log.warning("a forwarded write was cut: %s", exc, extra={"leader": leader})
            await error_response(503, "outcome_unknown", f"the connection to the leader at {leader} failed after "
                                 "the request was sent; the change may have been made")(scope, receive, send)
            return
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.multi_items()
               if k.lower().encode() not in HOP_BY_HOP and k.lower() != "content-encoding"]
        out.append((b"content-length", str(len(resp.content)).encode()))
        await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
        await send({"type": "http.response.body", "body": resp.content})


@router.get("/v1/replicas", summary="The replicas of this store: role, epoch, applied revision, last heartbeat")
async def list_replicas(request: Request, who: Annotated[Principal, Depends(authenticate)]) -> dict[str, Any]:
    require_admin(who, "listing replicas")
    replica = request.app.state.tenure.replica
    if replica is None:
        return {"replicas": [], "leader": None}
    rows, leader = await asyncio.to_thread(lambda: (replicas(replica.engine), replica.leader()))
    return {"replicas": rows,
            "leader": {"name": leader.holder, "address": leader.address, "epoch": leader.epoch}
            if leader is not None and leader.live else None}
