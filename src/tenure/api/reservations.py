"""Routes of reservations, topology, link usage, path queries and limits. Thin: parse, authorize, call the service.

Rates are bit/s numbers or strings (``100M``); times are ISO 8601 with a zone,
Unix seconds, ``now`` or ``+30m`` (resolved by the server's clock). The topology
is sent as JSON, or as YAML with a ``yaml`` content type, and validated whole.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.concurrency import run_in_threadpool
from pydantic import ConfigDict, Field, StrictFloat, StrictStr, ValidationError

from tenure.api.errors import describe_validation
from tenure.api.fields import NAME_PATTERN, Labels, Name, absent, coded, int_in, merge, present, text
from tenure.api.routes import RT, Auth, StrictModel
from tenure.domain.names import MAX_NAME_LENGTH
from tenure.domain.access import require_admin
from tenure.domain.errors import Conflict, InvalidInput
from tenure.domain.reservation import KINDS, MAX_REQUEST_ID, MAX_VIA, STATES, ReservationRequest
from tenure.domain.topology import MAX_LABELS as TOPOLOGY_LABELS
from tenure.domain.topology import MAX_LINKS, MAX_NODES, NODE_KINDS
from tenure.domain.units import MAX_RATE
from tenure.domain.topology import Topology, parse_link, parse_node
from tenure.services.reservations import MAX_PAGE

router = APIRouter(prefix="/v1")
REFUSALS = ("insufficient_capacity", "limit_exceeded", "no_path")

# Rates (domain/units.py parse_rate): whole bit/s as a number, or a decimal with an SI suffix ("100M", "1.5G",
# "10Gbps"); at most 1P.
RATE_PATTERN = r"^ *[0-9]+(\.[0-9]+)? *[kKMGTP]?(bps|bit/s|b/s|b)? *$"
RATE_HINT = "whole bit/s up to 1P, or a decimal with a unit such as 100M, 1.5G or 10Gbps"
RateText = Annotated[StrictStr, Field(max_length=64, pattern=RATE_PATTERN)]
Rate = Annotated[int_in(0, MAX_RATE) | Annotated[StrictFloat, Field(ge=0, le=MAX_RATE, multiple_of=1)] | RateText,
                 coded("invalid_rate", RATE_HINT)]  # 0 allowed
PositiveRate = Annotated[int_in(1, MAX_RATE) | Annotated[StrictFloat, Field(ge=1, le=MAX_RATE, multiple_of=1)]
                         | RateText, coded("invalid_rate", RATE_HINT)]
# Instants (domain/timeparse.py): ISO 8601 with a zone, Unix seconds, "now", or "+" a duration ("+1h30m").
INSTANT_PATTERN = (r"^ *(now|\+([0-9]{1,12}[smhdw])+|[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}"
                   r"([.,][0-9]{1,6})?)?)?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)) *$")
Instant = Annotated[int_in(-10**12, 10**12) | Annotated[StrictFloat, Field(ge=-10**12, le=10**12)]
                    | Annotated[StrictStr, Field(max_length=64, pattern=INSTANT_PATTERN)],
                    coded("invalid_time", "an ISO 8601 time with a zone, Unix seconds, now, or +DURATION such as "
                                          "+1h30m")]
Port = int_in(1, 65535)
PathMode = Literal["shortest", "widest"]
Burst = Literal["cap", "borrow"]  # cap: held to its rate; borrow: may use idle capacity above it
ReservationState = Annotated[Literal[STATES], coded("invalid_state")]  # type: ignore[valid-type]
ReservationKind = Annotated[Literal[KINDS], coded("invalid_kind")]  # type: ignore[valid-type]


# What each kind takes (services/reservations.py create_op); a rate is given as rate or rate_out, not both.
_ONE_RATE = {"properties": {"rate_in": {"anyOf": [{"type": "null"}, {"const": 0}]}}}
_KINDS = {"allOf": [
    {"oneOf": [
        merge({"properties": {"kind": {"const": "bandwidth"}}}, present("dst"), absent("collector"), absent("via"),
              absent("port"), absent("direction")),
        merge({"properties": {"kind": {"const": "oneway"}}}, present("dst"), absent("collector"), absent("via"),
              absent("port"), absent("direction"), _ONE_RATE),
        merge({"properties": {"kind": {"const": "steering"}}}, present("dst"), present("via"), absent("collector"),
              absent("port"), absent("direction"), _ONE_RATE,
              {"properties": {"via": {"type": "array", "minItems": 1, "uniqueItems": True}}}),
        merge({"properties": {"kind": {"const": "mirror"}}}, present("collector"), absent("dst"), absent("via"),
              _ONE_RATE, {"properties": {"burst": {"anyOf": [{"type": "null"}, {"const": "cap"}]}}}),
    ]},
    {"oneOf": [present("rate"), present("rate_out")]},
]}


class ReservationCreate(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_KINDS)

    kind: Literal["bandwidth", "oneway", "steering", "mirror"]
    src: Name
    dst: Name | None = None
    collector: Name | None = None
    via: list[Name] | None = Field(default=None, max_length=MAX_VIA)
    port: Name | None = None
    rate: PositiveRate | None = None
    rate_out: PositiveRate | None = None
    rate_in: Rate | None = None
    start: Instant = "now"
    end: Instant
    project: Name | None = None
    request_id: text("invalid_request_id", MAX_REQUEST_ID, min_length=1) | None = None  # type: ignore[valid-type]
    protocol: Literal["tcp", "udp", "icmp", "sctp"] | None = None
    src_port: Port | None = None
    dst_port: Port | None = None
    dscp: int_in(0, 63) | None = None
    mark: int_in(0, 63) | None = None
    labels: Labels | None = None
    path_mode: PathMode | None = None
    burst: Burst | None = None
    direction: Literal["both", "in", "out"] | None = Field(
        default=None, description="mirror: what it copies of its source's traffic, received (in), sent (out) or both")


class ReservationPatch(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "anyOf": [present(f) for f in ("start", "end", "rate", "rate_out", "rate_in", "labels", "burst")],
        "not": merge(present("rate"), present("rate_out"))})

    start: Instant | None = None
    end: Instant | None = None
    rate: PositiveRate | None = None
    rate_out: PositiveRate | None = None
    rate_in: Rate | None = None
    labels: Labels | None = None
    burst: Burst | None = None


class PathQuery(StrictModel):
    src: Name
    dst: Name
    rate: PositiveRate
    start: Instant = "now"
    end: Instant
    k: int_in(1, 16) = 1
    path_mode: PathMode | None = None
    project: Name | None = None


# A share of each link's capacity (domain/units.py parse_share): a number in [0, 1) or a percentage under 100.
SHARE_PATTERN = r"^ *(0|[1-9][0-9]?)(\.[0-9]+)?% *$|^ *0?\.[0-9]+ *$"
SHARE_HINT = "a number in [0, 1) or a percentage under 100% such as '25%'"
Share = (int_in(0, lt=1) | Annotated[StrictFloat, Field(ge=0, lt=1)]
         | Annotated[StrictStr, Field(max_length=64, pattern=SHARE_PATTERN)])
# An alarm may also be 100% (domain/topology.py: alarm when a link is full).
Alarm = Share | int_in(1, 1) | Literal["100%"]
ALARM_HINT = SHARE_HINT + ", or 1 or '100%' (alarm when full)"
# A limit's share is more than 0 (services/topology.py: invalid_limit).
LimitShare = Annotated[Annotated[StrictFloat, Field(gt=0, lt=1)] | Annotated[StrictStr, Field(max_length=64,
                                                                                             pattern=SHARE_PATTERN)],
                       coded("invalid_share", SHARE_HINT, greater_than="invalid_limit")]


def topology(kind: Any, hint: str | None = None) -> Any:
    """A member of a node or a link: domain/topology.py refuses any bad one as invalid_topology."""
    return Annotated[kind, coded("invalid_topology", hint)]


TopologyId = topology(Name)


class LimitSet(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [merge(present("max"), absent("share")), merge(present("share"), absent("max"))]})

    max: PositiveRate | None = None
    share: LimitShare | None = None


class NodeBody(StrictModel):
    id: TopologyId | None = Field(default=None, description="if given, the id in the path")
    kind: topology(Literal[NODE_KINDS])  # type: ignore[valid-type]
    labels: topology(Annotated[dict[TopologyId, topology(Annotated[StrictStr, Field(
        max_length=MAX_NAME_LENGTH, pattern=NAME_PATTERN.replace("]+$", "]*$"))])], Field(
        max_length=TOPOLOGY_LABELS)]) | None = Field(default=None, description="values: names, or empty")


class LinkBody(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [merge(present("capacity"), absent("capacity_ab"), absent("capacity_ba")),
                  merge(present("capacity_ab"), present("capacity_ba"), absent("capacity"))]})

    id: TopologyId | None = Field(default=None, description="if given, the id in the path")
    a: TopologyId
    b: TopologyId
    capacity: topology(Rate) | None = None
    capacity_ab: topology(Rate) | None = None
    capacity_ba: topology(Rate) | None = None
    headroom: topology(Share, SHARE_HINT) | None = None
    alarm: topology(Alarm, ALARM_HINT) | None = None


class TopologyNode(NodeBody):
    id: TopologyId


class TopologyLink(LinkBody):
    id: TopologyId


class TopologyDoc(StrictModel):
    """The topology document (JSON, or YAML with a yaml content type); ids are checked against each other too."""

    nodes: list[TopologyNode] = Field(default_factory=list, max_length=MAX_NODES)
    links: list[TopologyLink] = Field(default_factory=list, max_length=MAX_LINKS)
    headroom: topology(Share, SHARE_HINT) | None = None
    alarm: topology(Alarm, ALARM_HINT) | None = None


_TOPOLOGY_SCHEMA = {"$ref": "#/components/schemas/TopologyDoc"}


def _with_alarms(body: dict[str, Any], alarms: list[dict[str, Any]]) -> dict[str, Any]:
    return {**body, "alarms": alarms} if alarms else body


# ------------------------------------------------------------------- reservations


@router.post("/reservations", status_code=201, tags=["reservations"])
async def create_reservation(body: ReservationCreate, request: Request, response: Response, rt: RT,
                             who: Auth) -> dict[str, Any]:
    counter = request.app.state.metrics.reservations
    rt.reservations.may_reserve(who, body.project)  # who may ask comes first: a 403 before any 400
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
    rt: RT, who: Auth, state: ReservationState | None = None, project: str | None = None, after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000, kind: ReservationKind | None = None,
    node: str | None = None, link: str | None = None,
) -> dict[str, Any]:
    """Filters: ``state``, ``project``, ``kind``; ``node`` (an end, a middlebox it is steered through, or a node of
    any of its paths) and ``link`` (on any of its paths)."""
    revision = rt.revision  # first: the page then holds at least everything up to it (see Writer._committed)
    page, cursor = rt.reservations.list(principal=who, state=state, project=project, after=after, limit=limit,
                                        kind=kind, node=node, link=link)
    return {"reservations": [r.body() for r in page], "next": cursor, "revision": revision}


@router.get("/reservations/{rid}", tags=["reservations"])
def get_reservation(rid: str, rt: RT, who: Auth) -> dict[str, Any]:
    return rt.reservations.get(rid, principal=who).body()


@router.get("/reservations/{rid}/wire", tags=["reservations"])
def reservation_wire(rid: str, rt: RT, who: Auth) -> dict[str, Any]:
    """Each leg's shaper: its host, state, outputs, and what its agent last saw on the wire (``observed``, at
    ``observed_at``: class, rates and counters; from heartbeats, so up to a monitor interval and a heartbeat old;
    followers ask the leader, which has them)."""
    res = rt.reservations.get(rid, principal=who)
    return {"reservation": res.id, "state": res.state,
            "legs": rt.instances.wire_of(f"reservation:{res.id}", principal=who)}


@router.patch("/reservations/{rid}", tags=["reservations"])
async def modify_reservation(rid: str, body: ReservationPatch, rt: RT, who: Auth) -> dict[str, Any]:
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise InvalidInput("nothing to change: give start, end, rate_out, rate_in, burst or labels",
                           code="invalid_request")
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
        TopologyDoc.model_validate(doc)
    except ValidationError as exc:
        _, message, _ = describe_validation(list(exc.errors()))
        raise InvalidInput(message, code="invalid_topology") from None
    except RecursionError:
        raise InvalidInput("the topology is nested too deeply", code="invalid_topology") from None
    try:
        return Topology.parse(doc)
    except RecursionError:
        raise InvalidInput("the topology is nested too deeply", code="invalid_topology") from None


@router.get("/topology", tags=["topology"])
def get_topology(rt: RT, who: Auth) -> dict[str, Any]:
    return rt.topology.body()


@router.put("/topology", tags=["topology"],
            openapi_extra={"requestBody": {"required": True,
                                           "content": {"application/json": {"schema": _TOPOLOGY_SCHEMA},
                                                       "application/yaml": {"schema": _TOPOLOGY_SCHEMA}}}})
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
async def put_node(node_id: Annotated[TopologyId, Path()], body: NodeBody,
                   rt: RT, who: Auth) -> dict[str, Any]:
    node = parse_node(_with_id("node", node_id, body.model_dump(exclude_none=True)), f"node {node_id}")
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
async def put_link(link_id: Annotated[TopologyId, Path()], body: LinkBody,
                   rt: RT, who: Auth) -> dict[str, Any]:
    link = parse_link(_with_id("link", link_id, body.model_dump(exclude_none=True)), f"link {link_id}")
    svc = rt.topology
    return await rt.arun(svc.edit_topology_op(svc.put_link(link), principal=who))


@router.delete("/topology/links/{link_id}", tags=["topology"])
async def delete_link(link_id: str, rt: RT, who: Auth) -> dict[str, Any]:
    svc = rt.topology
    return await rt.arun(svc.edit_topology_op(svc.delete_link(link_id), principal=who))


@router.get("/links/usage", tags=["topology"])
async def links_usage(
    rt: RT, who: Auth, at: str | None = None,
    start: Annotated[str | None, Query(alias="from")] = None, end: Annotated[str | None, Query(alias="to")] = None,
) -> dict[str, Any]:
    """Every link's reserved usage per direction (bit/s, every project's together): at an instant (``at``, default
    now), or the peak over ``[from, to)``. Capacities are the topology's."""
    body = await rt.arun(rt.reservations.usage_all_op(at=at, start=start, end=end))
    # Plain ints and strings, one row per link (3,072 on a k=16 fat tree): encoded as they are, without the
    # framework's walk of every row (a third of the answer's time on the console's time slider).
    return JSONResponse(body)  # type: ignore[return-value]


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
    revision = rt.revision  # first: the list then holds at least everything up to it (see Writer._committed)
    return {"limits": [lim.body() for lim in rt.topology.list_limits(principal=who)], "revision": revision}


@router.get("/limits/{project}", tags=["limits"])
def get_limit(project: str, rt: RT, who: Auth) -> dict[str, Any]:
    return rt.topology.get_limit(project, principal=who).body()


@router.put("/limits/{project}", tags=["limits"])
async def set_limit(project: Annotated[Name, Path()], body: LimitSet, rt: RT, who: Auth) -> dict[str, Any]:
    op = rt.topology.set_limit_op(project, max_bps=body.max, share=body.share, principal=who)
    return (await rt.arun(op)).body()


@router.delete("/limits/{project}", tags=["limits"])
async def delete_limit(project: str, rt: RT, who: Auth) -> dict[str, Any]:
    return (await rt.arun(rt.topology.delete_limit_op(project, principal=who))).body()
