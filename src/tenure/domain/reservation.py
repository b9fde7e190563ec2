"""Reservations: promises of capacity for a window, their kinds, legs and states (pure rules).

A reservation is broken into *legs*, each a one-way demand of a rate from one
node to another; every leg is admitted on its own path (Tegu's pledges):

- ``bandwidth``: ``out`` src → dst at ``rate_out`` and ``in`` dst → src at
  ``rate_in`` (defaults to ``rate_out``; 0 means one way only). Each direction
  finds its own path;
- ``oneway``: ``out`` only;
- ``steering``: src → via[0] → … → dst, one leg per segment at ``rate_out``;
- ``mirror``: the copy of a host's (or a switch port's) traffic from the
  mirroring switch to the collector, at ``rate_out``.

States follow time: ``pending`` before the window, ``active`` inside it,
``expired`` after it; ``cancelled`` ends it early. ``degraded`` is a reservation
that a topology change left without a path that fits: it holds no capacity
(never silently over-committed) and is re-admitted at the next topology change
or modification, and expires at its end like the others.

Instants are µs since the epoch and rates whole bit/s (:mod:`tenure.domain.units`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tenure.domain.errors import InvalidInput
from tenure.domain.names import validate_name, validate_text
from tenure.domain.units import iso, parse_rate

KINDS = ("bandwidth", "oneway", "steering", "mirror")
PENDING, ACTIVE, EXPIRED, CANCELLED, DEGRADED = "pending", "active", "expired", "cancelled", "degraded"
STATES = (PENDING, ACTIVE, EXPIRED, CANCELLED, DEGRADED)
LIVE = frozenset({PENDING, ACTIVE, DEGRADED})  # may still change; hold capacity unless degraded
ENDED = frozenset({EXPIRED, CANCELLED})
PROTOCOLS = ("tcp", "udp", "icmp", "sctp")
MAX_VIA = 8
MAX_LABELS = 32
MAX_REQUEST_ID = 128
PATH_MODES = ("shortest", "widest")
# The DSCP a reservation's packets leave with, unless it says (RFC 4594): expedited forwarding for the flows that
# were promised a rate, lower effort (CS1) for a mirror's copies, which must never push the originals aside.
DEFAULT_MARKS = {"bandwidth": 46, "oneway": 46, "steering": 46, "mirror": 8}
DSCP_NAMES = {**{f"cs{i}": i * 8 for i in range(8)}, **{f"af{c}{d}": c * 8 + d * 2 for c in range(1, 5)
                                                       for d in range(1, 4)}, "ef": 46}


def parse_dscp(text: str) -> int:
    """A DSCP value from ``"46"`` or a name (``"ef"``, ``"af41"``, ``"cs1"``); ValueError otherwise."""
    value = DSCP_NAMES.get(text.strip().lower())
    if value is None:
        value = int(text)
        if not 0 <= value <= 63:
            raise ValueError(f"DSCP {text!r} is not 0-63")
    return value
MIRROR_DIRECTIONS = ("both", "in", "out")  # what a mirror copies: what its source receives, sends, or both
BURSTS = ("cap", "borrow")  # may a leg use idle capacity above its rate (borrow), or is it held to it (cap)


@dataclass(frozen=True, slots=True)
class Leg:
    """One one-way demand of a reservation and the path it was admitted on."""

    name: str  # out | in | seg0.. | mirror
    src: str
    dst: str
    rate: int
    hops: tuple[tuple[str, str], ...] = ()  # (link, direction) in order; () while unrouted or degraded
    nodes: tuple[str, ...] = ()

    def doc(self) -> dict[str, Any]:
        return {"leg": self.name, "from": self.src, "to": self.dst, "rate": self.rate,
                "nodes": list(self.nodes), "links": [h[0] for h in self.hops],
                "directions": [h[1] for h in self.hops]}


@dataclass(frozen=True, slots=True)
class Match:
    """What traffic the reservation is for (enforced by agents; not part of admission)."""

    protocol: str | None = None
    src_port: int | None = None
    dst_port: int | None = None
    dscp: int | None = None

    def doc(self) -> dict[str, Any]:
        return {k: v for k, v in (("protocol", self.protocol), ("src_port", self.src_port),
                                  ("dst_port", self.dst_port), ("dscp", self.dscp)) if v is not None}


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    kind: str
    project: str | None
    owner: str | None  # the token id that made it
    src: str
    dst: str  # the collector, for a mirror
    via: tuple[str, ...]
    port: str | None  # mirror: the link whose traffic is copied
    rate_out: int
    rate_in: int
    match: Match
    start: int
    end: int
    state: str
    legs: tuple[Leg, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    path_mode: str = "shortest"
    burst: str = "cap"
    mark: int = 46  # the DSCP its packets leave with (DEFAULT_MARKS by kind unless asked)
    direction: str = "both"  # mirror: what it copies (MIRROR_DIRECTIONS)
    request_id: str | None = None
    request_hash: str | None = None
    reason: str | None = None  # why degraded or re-routed
    created_at: int = 0
    updated_at: int = 0
    ended_at: int | None = None
    revision: int = 0
    seq: int = 0  # admission order (the store's, not part of the body)

    @property
    def holds_capacity(self) -> bool:
        return self.state in (PENDING, ACTIVE)

    def body(self) -> dict[str, Any]:
        """The reservation as the API returns it (and as its events carry it)."""
        d: dict[str, Any] = {
            "id": self.id, "kind": self.kind, "project": self.project, "owner": self.owner,
            "state": self.state, "src": self.src, "dst": self.dst,
            "rate_out": self.rate_out, "rate_in": self.rate_in,
            "start": iso(self.start), "end": iso(self.end),
            "paths": [leg.doc() for leg in self.legs], "labels": dict(self.labels), "path_mode": self.path_mode,
            "burst": self.burst, "mark": self.mark,
            "request_id": self.request_id, "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
            "revision": self.revision,
        }
        if self.kind == "steering":
            d["via"] = list(self.via)
        if self.kind == "mirror":
            d["collector"] = self.dst
            d["port"] = self.port
            d["direction"] = self.direction
        if self.match.doc():
            d["match"] = self.match.doc()
        if self.reason:
            d["reason"] = self.reason
        if self.ended_at is not None:
            d["ended_at"] = iso(self.ended_at)
        return d

    def event_labels(self) -> dict[str, str]:
        labels = {"type": self.kind, "state": self.state, "src": self.src, "dst": self.dst}
        if self.project is not None:
            labels["project"] = self.project
        return labels

    def next_due(self, retention: int) -> int:
        """The instant of this reservation's next scheduled change (activation, expiry, purge)."""
        if self.state == PENDING:
            return self.start
        if self.state in (ACTIVE, DEGRADED):
            return self.end
        return (self.ended_at if self.ended_at is not None else self.end) + retention


def time_state(start: int, end: int, now: int) -> str:
    """The state a reservation that holds its capacity is in at ``now``."""
    if now < start:
        return PENDING
    return ACTIVE if now < end else EXPIRED


# ------------------------------------------------------------------ validation


def validate_labels(labels: object) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping) or len(labels) > MAX_LABELS:
        raise InvalidInput(f"labels must be an object of at most {MAX_LABELS} string values", code="invalid_labels")
    out = {}
    for k, v in labels.items():
        validate_name(k, what="label name")
        if not isinstance(v, str):
            raise InvalidInput(f"label {k!r} must be a string", code="invalid_labels")
        out[k] = validate_text(v, what=f"label {k!r}", max_length=256, code="invalid_labels")
    return out


def validate_match(*, protocol: object = None, src_port: object = None, dst_port: object = None,
                   dscp: object = None) -> Match:
    if protocol is not None and protocol not in PROTOCOLS:
        raise InvalidInput(f"protocol must be one of {', '.join(PROTOCOLS)}", code="invalid_match")
    for name, port in (("src_port", src_port), ("dst_port", dst_port)):
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
            raise InvalidInput(f"{name} must be a port number 1-65535", code="invalid_match")
        if port is not None and protocol not in ("tcp", "udp", "sctp"):
            raise InvalidInput(f"{name} needs protocol tcp, udp or sctp", code="invalid_match")
    if dscp is not None and (isinstance(dscp, bool) or not isinstance(dscp, int) or not 0 <= dscp <= 63):
        raise InvalidInput("dscp must be 0-63", code="invalid_match")
    return Match(protocol, src_port, dst_port, dscp)  # type: ignore[arg-type]


def validate_mark(mark: object, kind: str) -> int:
    """A DSCP value (0-63) the reservation's packets leave with; None: the kind's default (DEFAULT_MARKS)."""
    if mark is None:
        return DEFAULT_MARKS[kind]
    if isinstance(mark, bool) or not isinstance(mark, int) or not 0 <= mark <= 63:
        raise InvalidInput("mark must be a DSCP value 0-63", code="invalid_mark")
    return mark


def validate_burst(burst: object) -> str:
    """``cap`` (the default) or ``borrow``."""
    if burst is None:
        return "cap"
    if burst not in BURSTS:
        raise InvalidInput(f"burst must be one of {', '.join(BURSTS)}", code="invalid_burst")
    return str(burst)


def validate_request_id(request_id: object) -> str | None:
    if request_id is None:
        return None
    if not isinstance(request_id, str) or not request_id:
        raise InvalidInput("request_id must be a non-empty string", code="invalid_request_id")
    return validate_text(request_id, what="request_id", max_length=MAX_REQUEST_ID, code="invalid_request_id")


def request_hash(raw: Mapping[str, Any]) -> str:
    """What a retry must repeat: the request as sent, without its request_id (``now`` stays ``now``)."""
    canon = json.dumps({k: v for k, v in raw.items() if k != "request_id" and v is not None},
                       sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(canon.encode("utf-8", "surrogatepass")).hexdigest()


Instant = str | int | float  # ISO 8601 with a zone, Unix seconds, "now" or "+30m": resolved against a clock


@dataclass(frozen=True)
class ReservationRequest:
    """A reservation as a client asks for it, checked once, when it is made (:meth:`parse`).

    Everything that depends neither on the state nor on the clock: the kind and its endpoints (a
    mirror's collector is its ``dst``), middleboxes, rates as whole bit/s, the match, labels, the
    request id and the path mode. The window stays as given (``now``, ``+30m``): it is resolved
    against the clock when the request is admitted. ``sent`` is the request as sent, which a retry
    with the same ``request_id`` must repeat (:func:`request_hash`).
    """

    kind: str
    src: str
    dst: str
    rate_out: int
    rate_in: int
    start: Instant
    end: Instant
    via: tuple[str, ...] = ()
    port: str | None = None
    match: Match = Match()
    labels: Mapping[str, str] = field(default_factory=dict)
    project: str | None = None  # as asked: a member's token decides its own
    request_id: str | None = None
    path_mode: str = "shortest"
    burst: str = "cap"
    mark: int = 46
    direction: str = "both"
    sent: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ReservationRequest:
        """The request of a JSON object (the API's body, or a library caller's dict); InvalidInput says what is
        wrong, before anything is looked up or booked."""
        kind = raw.get("kind")
        if kind not in KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(KINDS)}", code="invalid_kind")
        project = raw.get("project")
        if project is not None:
            validate_name(project, what="project")
        src = raw.get("src")
        dst = raw.get("collector") if kind == "mirror" else raw.get("dst")
        if kind == "mirror" and raw.get("dst") is not None:
            raise InvalidInput("a mirror has a collector, not a dst", code="invalid_request")
        for name, value in (("src", src), ("collector" if kind == "mirror" else "dst", dst)):
            if not isinstance(value, str) or not value:
                raise InvalidInput(f"{name} must name a node", code="invalid_endpoint")
            validate_name(value, what=name)
        assert isinstance(src, str) and isinstance(dst, str)
        if src == dst:
            raise InvalidInput(f"src and {'collector' if kind == 'mirror' else 'dst'} are the same node {src!r}",
                               code="same_endpoints")
        via_raw = raw.get("via") or ()
        if not isinstance(via_raw, list | tuple):
            raise InvalidInput("via must be a list of middleboxes", code="invalid_via")
        via = tuple(via_raw)
        for node in via:
            validate_name(node, what="via")
        if kind == "steering":
            if not via or len(via) > MAX_VIA or len(set(via)) != len(via):
                raise InvalidInput(f"steering needs via: 1 to {MAX_VIA} distinct middleboxes", code="invalid_via")
            if src in via or dst in via:
                raise InvalidInput("via must not repeat src or dst", code="invalid_via")
        elif via:
            raise InvalidInput("via is only for steering", code="invalid_via")
        port = raw.get("port")
        if port is not None:
            validate_name(port, what="port")
            if kind != "mirror":
                raise InvalidInput("port is only for mirror", code="invalid_port")
        if raw.get("rate") is not None and raw.get("rate_out") is not None:
            raise InvalidInput("give rate or rate_out, not both", code="invalid_rate")
        rate_out = parse_rate(raw.get("rate_out", raw.get("rate")), what="rate_out")
        if kind == "bandwidth":
            rate_in = rate_out if raw.get("rate_in") is None else parse_rate(raw["rate_in"], what="rate_in",
                                                                             allow_zero=True)
        elif raw.get("rate_in") not in (None, 0):
            raise InvalidInput(f"a {kind} reservation has one rate (rate_out); rate_in is for bandwidth",
                               code="invalid_rate")
        else:
            rate_in = 0
        match = validate_match(protocol=raw.get("protocol"), src_port=raw.get("src_port"),
                               dst_port=raw.get("dst_port"), dscp=raw.get("dscp"))
        mode = raw.get("path_mode") or "shortest"
        if mode not in PATH_MODES:
            raise InvalidInput(f"path_mode must be one of {', '.join(PATH_MODES)}", code="invalid_path_mode")
        burst = validate_burst(raw.get("burst"))
        if kind == "mirror" and burst != "cap":
            raise InvalidInput("a mirror is held to its rate: burst borrow is for the other kinds",
                               code="invalid_burst")
        direction = raw.get("direction")
        if direction is not None and kind != "mirror":
            raise InvalidInput("direction is only for mirror", code="invalid_direction")
        if direction is not None and direction not in MIRROR_DIRECTIONS:
            raise InvalidInput(f"direction must be one of {', '.join(MIRROR_DIRECTIONS)}", code="invalid_direction")
        start, end = raw.get("start"), raw.get("end")  # checked when resolved against the clock
        if start is None or end is None:
            raise InvalidInput("start and end are required", code="invalid_window")
        return cls(kind=kind, src=src, dst=dst, rate_out=rate_out, rate_in=rate_in, start=start, end=end, via=via,
                   port=port, match=match, labels=validate_labels(raw.get("labels")), project=project,
                   request_id=validate_request_id(raw.get("request_id")), path_mode=mode, burst=burst,
                   mark=validate_mark(raw.get("mark"), kind), direction=direction or "both", sent=dict(raw))


def plan_legs(*, kind: str, src: str, dst: str, via: tuple[str, ...], rate_out: int, rate_in: int,
              mirror_from: str | None = None) -> tuple[Leg, ...]:
    """The unrouted legs of a reservation (mirror: ``mirror_from`` is the mirroring switch)."""
    if kind == "bandwidth":
        legs = [Leg("out", src, dst, rate_out)]
        if rate_in:
            legs.append(Leg("in", dst, src, rate_in))
        return tuple(legs)
    if kind == "oneway":
        return (Leg("out", src, dst, rate_out),)
    if kind == "steering":
        stops = (src, *via, dst)
        return tuple(Leg(f"seg{i}", a, b, rate_out) for i, (a, b) in enumerate(zip(stops, stops[1:], strict=False)))
    if kind == "mirror":
        assert mirror_from is not None
        return (Leg("mirror", mirror_from, dst, rate_out),)
    raise InvalidInput(f"kind must be one of {', '.join(KINDS)}", code="invalid_kind")
