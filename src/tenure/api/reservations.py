"""Routes of reservations, topology, link usage, path queries and limits. Thin: parse, authorize, call the service.

Rates are bit/s numbers or strings (``100M``); times are ISO 8601 with a zone,
Unix seconds, ``now`` or ``+30m`` (resolved by the server's clock). The topology
is sent as JSON, or as YAML with a ``yaml`` content type, and validated whole.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import Field, StrictFloat, StrictInt, StrictStr

from tenure.api.routes import RT, Auth, StrictModel
from tenure.domain.access import require_admin
from tenure.domain.errors import Conflict, InvalidInput
from tenure.domain.reservation import MAX_VIA, ReservationRequest
from tenure.domain.topology import Topology, parse_link, parse_node
from tenure.services.reservations import MAX_PAGE

router = APIRouter(prefix="/v1")
REFUSALS = ("insufficient_capacity", "limit_exceeded", "no_path")

Rate = StrictInt | StrictFloat | StrictStr
Instant = StrictInt | StrictFloat | StrictStr
Port = Annotated[StrictInt, Field(ge=1, le=65535)]


class ReservationCreate(StrictModel):
    kind: Literal["bandwidth", "oneway", "steering", "mirror"]
    src: StrictStr
    dst: StrictStr | None = None
    collector: StrictStr | None = None
    via: list[StrictStr] | None = Field(default=None, max_length=MAX_VIA)
    port: StrictStr | None = None
    rate: Rate | None = None
    rate_out: Rate | None = None
    rate_in: Rate | None = None
    start: Instant = "now"
    end: Instant
    project: StrictStr | None = None
    request_id: StrictStr | None = None
    protocol: Literal["tcp", "udp", "icmp", "sctp"] | None = None
    src_port: Port | None = None
    dst_port: Port | None = None
    dscp: Annotated[StrictInt, Field(ge=0, le=63)] | None = None
    labels: dict[StrictStr, StrictStr] | None = None
    path_mode: Literal["shortest", "widest"] | None = None


class ReservationPatch(StrictModel):
    start: Instant | None = None
    end: Instant | None = None
    rate: Rate | None = None
    rate_out: Rate | None = None
    rate_in: Rate | None = None
    labels: dict[StrictStr, StrictStr] | None = None


class PathQuery(StrictModel):
    src: StrictStr
    dst: StrictStr
    rate: Rate
    start: Instant = "now"
    end: Instant
    k: Annotated[StrictInt, Field(ge=1, le=16)] = 1
    path_mode: Literal["shortest", "widest"] | None = None
    project: StrictStr | None = None


class LimitSet(StrictModel):
    max: Rate | None = None
    share: StrictFloat | StrictInt | StrictStr | None = None


def _with_alarms(body: dict[str, Any], alarms: list[dict[str, Any]]) -> dict[str, Any]:
    return {**body, "alarms": alarms} if alarms else body


# ------------------------------------------------------------------- reservations


@router.post("/reservations", status_code=201, tags=["reservations"])
async def create_reservation(body: ReservationCreate, request: Request, response: Response, rt: RT,
                             who: Auth) -> dict[str, Any]:
    counter = request.app.state.metrics.reservations
    try:
        wanted = ReservationRequest.parse(body.model_dump(exclude_none=True))  # the rules beyond the body's shape
        res, created, alarms = await rt.arun(rt.reservations.create_op(wanted, principal=who))
    except Conflict as exc:
        counter.labels(exc.code if exc.code in REFUSALS else "conflict").inc()
        raise
    except InvalidInput:
        counter.labels("invalid").inc()
        raise
    counter.labels("created" if created else "existing").inc()
    if not created:
        response.status_code = 200
    return _with_alarms(res.body(), alarms)


@router.get("/reservations", tags=["reservations"])
def list_reservations(
    rt: RT, who: Auth, state: str | None = None, project: str | None = None, after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
) -> dict[str, Any]:
    page, cursor = rt.reservations.list(principal=who, state=state, project=project, after=after, limit=limit)
    return {"reservations": [r.body() for r in page], "next": cursor, "revision": rt.revision}


@router.get("/reservations/{rid}", tags=["reservations"])
def get_reservation(rid: str, rt: RT, who: Auth) -> dict[str, Any]:
    return rt.reservations.get(rid, principal=who).body()


@router.patch("/reservations/{rid}", tags=["reservations"])
async def modify_reservation(rid: str, body: ReservationPatch, rt: RT, who: Auth) -> dict[str, Any]:
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise InvalidInput("nothing to change: give start, end, rate_out, rate_in or labels", code="invalid_request")
    if "rate" in changes and "rate_out" in changes:
        raise InvalidInput("give rate or rate_out, not both", code="invalid_rate")
    res, alarms = await rt.arun(rt.reservations.modify_op(rid, changes, principal=who))
    return _with_alarms(res.body(), alarms)


@router.delete("/reservations/{rid}", tags=["reservations"])
async def cancel_reservation(rid: str, rt: RT, who: Auth) -> dict[str, Any]:
    return (await rt.arun(rt.reservations.cancel_op(rid, principal=who))).body()


@router.post("/paths", tags=["reservations"])
async def find_paths(body: PathQuery, rt: RT, who: Auth) -> dict[str, Any]:
    """Up to k feasible paths for a one-way demand over a window; nothing is booked."""
    return await rt.arun(rt.reservations.paths_op(body.model_dump(exclude_none=True), principal=who))


def _with_id(what: str, path_id: str, body: dict[str, Any]) -> dict[str, Any]:
    if "id" in body and body["id"] != path_id:
        raise InvalidInput(f"the body names {what} {body['id']!r} but the path {path_id!r}", code="id_mismatch")
    return {**body, "id": path_id}


# ------------------------------------------------------------------- topology


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: ~20x faster than the pure-Python loader


def _parse_topology(raw: bytes, ctype: str) -> Topology:
    """Decode and validate a topology document (in a worker thread: a large one takes a while)."""
    kind = "YAML" if "yaml" in ctype else "JSON"
    try:
        doc = yaml.load(raw.decode("utf-8"), Loader=_YAML_LOADER) if kind == "YAML" else json.loads(raw)
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidInput(f"the topology is not valid {kind}: {str(exc).splitlines()[0][:200]}",
                           code="malformed_topology") from None
    except RecursionError:
        raise InvalidInput(f"the topology {kind} is nested too deeply", code="malformed_topology") from None
    try:
        return Topology.parse(doc)
    except RecursionError:
        raise InvalidInput("the topology is nested too deeply", code="invalid_topology") from None


@router.get("/topology", tags=["topology"])
def get_topology(rt: RT, who: Auth) -> dict[str, Any]:
    return rt.topology.body()


@router.put("/topology", tags=["topology"],
            openapi_extra={"requestBody": {"content": {"application/json": {"schema": {"type": "object"}},
                                                       "application/yaml": {"schema": {"type": "object"}}}}})
async def put_topology(request: Request, rt: RT, who: Auth) -> dict[str, Any]:
    """Replace the topology (JSON, or YAML with a yaml content type); every live reservation is re-checked."""
    require_admin(who, "changing the topology")
    raw = await request.body()
    topo = await run_in_threadpool(_parse_topology, raw, request.headers.get("content-type", ""))
    return await rt.arun(rt.topology.set_topology_op(topo, principal=who))


@router.get("/topology/nodes/{node_id}", tags=["topology"])
def get_node(node_id: str, rt: RT, who: Auth) -> dict[str, Any]:
    return rt.topology.node(node_id).doc()


@router.put("/topology/nodes/{node_id}", tags=["topology"])
async def put_node(node_id: str, body: dict[str, Any], rt: RT, who: Auth) -> dict[str, Any]:
    node = parse_node(_with_id("node", node_id, body), f"node {node_id}")
    svc = rt.topology
    return await rt.arun(svc.edit_topology_op(svc.put_node(node), principal=who))


@router.delete("/topology/nodes/{node_id}", tags=["topology"])
async def delete_node(node_id: str, rt: RT, who: Auth) -> dict[str, Any]:
    svc = rt.topology
    return await rt.arun(svc.edit_topology_op(svc.delete_node(node_id), principal=who))


@router.get("/topology/links/{link_id}", tags=["topology"])
def get_link(link_id: str, rt: RT, who: Auth) -> dict[str, Any]:
    return rt.topology.link(link_id).doc()


@router.put("/topology/links/{link_id}", tags=["topology"])
async def put_link(link_id: str, body: dict[str, Any], rt: RT, who: Auth) -> dict[str, Any]:
    link = parse_link(_with_id("link", link_id, body), f"link {link_id}")
    svc = rt.topology
    return await rt.arun(svc.edit_topology_op(svc.put_link(link), principal=who))


@router.delete("/topology/links/{link_id}", tags=["topology"])
async def delete_link(link_id: str, rt: RT, who: Auth) -> dict[str, Any]:
    svc = rt.topology
    return await rt.arun(svc.edit_topology_op(svc.delete_link(link_id), principal=who))


@router.get("/links/{link_id}/usage", tags=["topology"])
async def link_usage(
    link_id: str, rt: RT, who: Auth,
    start: Annotated[str | None, Query(alias="from")] = None, end: Annotated[str | None, Query(alias="to")] = None,
) -> dict[str, Any]:
    """Usage of both directions of a link over time, as steps (every project's holdings together)."""
    return await rt.arun(rt.reservations.usage_op(link_id, start=start, end=end))


# ------------------------------------------------------------------- limits


@router.get("/limits", tags=["limits"])
def list_limits(rt: RT, who: Auth) -> dict[str, Any]:
    return {"limits": [lim.body() for lim in rt.topology.list_limits(principal=who)], "revision": rt.revision}


@router.get("/limits/{project}", tags=["limits"])
def get_limit(project: str, rt: RT, who: Auth) -> dict[str, Any]:
    return rt.topology.get_limit(project, principal=who).body()


@router.put("/limits/{project}", tags=["limits"])
async def set_limit(project: str, body: LimitSet, rt: RT, who: Auth) -> dict[str, Any]:
    op = rt.topology.set_limit_op(project, max_bps=body.max, share=body.share, principal=who)
    return (await rt.arun(op)).body()


@router.delete("/limits/{project}", tags=["limits"])
async def delete_limit(project: str, rt: RT, who: Auth) -> dict[str, Any]:
    return (await rt.arun(rt.topology.delete_limit_op(project, principal=who))).body()
