"""``tenure reserve ...``, ``reservations``, ``reservation``, ``modify``, ``cancel``, ``paths``, ``usage``.

Bandwidth reserved over a time window on the topology. Rates (``100M``,
``1.5G``) and times (ISO 8601 with a zone, ``now``, ``+30m``) are passed to the
server exactly as typed: it resolves them, on its own clock, so the CLI never
guesses a time zone or rounds a rate. Human views print rates the short way
(``format_rate``) and paths as the nodes they visit.

``usage`` draws a link's booked bandwidth over time, one bar per step, so a
glance shows when a link is full.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from tenure.cli.common import JsonOption, fields, out, percent, run, say, table, warn
from tenure.client import TenureAPIError, TenureClient, TenureClientError
from tenure.domain.reservation import DSCP_NAMES, parse_dscp
from tenure.domain.units import format_rate

reserve_app = typer.Typer(help="Reserve bandwidth between nodes for a time window.", no_args_is_help=True)

State = Literal["pending", "active", "expired", "cancelled", "degraded"]
PathMode = Literal["shortest", "widest"]
Protocol = Literal["tcp", "udp", "icmp", "sctp"]

Src = Annotated[str, typer.Argument(help="Node the traffic starts from.")]
Dst = Annotated[str, typer.Argument(help="Node the traffic goes to.")]
RateOpt = Annotated[str, typer.Option("--rate", metavar="RATE", help="bit/s, or with a suffix: 100M, 1.5G.")]
StartOpt = Annotated[str, typer.Option(metavar="TIME", help="ISO 8601 with a zone, 'now' or '+30m'.")]
EndOpt = Annotated[str, typer.Option(metavar="TIME", help="ISO 8601 with a zone, or '+1h' (from now).")]
ProjectOpt = Annotated[str | None, typer.Option(help="Project the reservation counts against.")]
RequestIdOpt = Annotated[str | None, typer.Option(help="Idempotency key: a retry returns the same reservation.")]
ProtocolOpt = Annotated[Protocol | None, typer.Option(help="Match only this protocol.")]
PortOpt = Annotated[int | None, typer.Option(min=1, max=65535, help="Match this port (needs --protocol).")]
def _dscp(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_dscp(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a DSCP: 0-63, or a name as ef, af41, cs1") from None


DscpOpt = Annotated[str | None, typer.Option(metavar="DSCP", callback=_dscp, help="Match this DSCP: 0-63 or a name "
                                             "(ef, af41, cs1).")]
LabelOpt = Annotated[list[str] | None, typer.Option("--label", metavar="K=V", help="A label (repeatable).")]
PathModeOpt = Annotated[PathMode | None, typer.Option(help="shortest (fewest hops) or widest (most room left).")]
Burst = Literal["cap", "borrow"]
BurstOpt = Annotated[Burst | None, typer.Option(help="cap (the default: held to its rate) or borrow (may use idle "
                                                "capacity above it).")]
Id = Annotated[str, typer.Argument(metavar="ID", help="Reservation id (r-...).")]


MarkOpt = Annotated[str | None, typer.Option(metavar="DSCP", callback=_dscp, help="DSCP its packets leave with: "
                                             "0-63 or a name (ef, af41, cs1); default ef, for a mirror cs1.")]

BAR_WIDTH = 40
EIGHTHS = " ▏▎▍▌▋▊▉"


# ------------------------------------------------------------------ reserve


def _labels(items: list[str] | None) -> dict[str, str] | None:
    if not items:
        return None
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not K=V", param_hint="--label")
        labels[key] = value
    return labels


def _reserve(ctx: typer.Context, as_json: bool, *, labels: list[str] | None, **fields_: Any) -> None:
    body = {**fields_, "labels": _labels(labels)}
    run(ctx, lambda c: c.reserve(**body), _reserved, as_json=as_json)


@reserve_app.command("bandwidth")
def bandwidth(
    ctx: typer.Context, src: Src, dst: Dst, rate: RateOpt, end: EndOpt,
    rate_in: Annotated[str | None, typer.Option(metavar="RATE", help="dst → src rate; default: --rate; "
                                                "0: one way only.")] = None,
    start: StartOpt = "now", project: ProjectOpt = None, request_id: RequestIdOpt = None,
    protocol: ProtocolOpt = None, src_port: PortOpt = None, dst_port: PortOpt = None, dscp: DscpOpt = None,
    label: LabelOpt = None, path_mode: PathModeOpt = None, burst: BurstOpt = None, mark: MarkOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Reserve RATE both ways between SRC and DST (each direction on its own path)."""
    _reserve(ctx, as_json, kind="bandwidth", src=src, dst=dst, rate=rate, rate_in=rate_in, start=start, end=end,
             project=project, request_id=request_id, protocol=protocol, src_port=src_port, dst_port=dst_port,
             dscp=dscp, labels=label, path_mode=path_mode, burst=burst, mark=mark)


@reserve_app.command("oneway")
def oneway(
    ctx: typer.Context, src: Src, dst: Dst, rate: RateOpt, end: EndOpt,
    start: StartOpt = "now", project: ProjectOpt = None, request_id: RequestIdOpt = None,
    protocol: ProtocolOpt = None, src_port: PortOpt = None, dst_port: PortOpt = None, dscp: DscpOpt = None,
    label: LabelOpt = None, path_mode: PathModeOpt = None, burst: BurstOpt = None, mark: MarkOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Reserve RATE from SRC to DST only."""
    _reserve(ctx, as_json, kind="oneway", src=src, dst=dst, rate=rate, start=start, end=end, project=project,
             request_id=request_id, protocol=protocol, src_port=src_port, dst_port=dst_port, dscp=dscp,
             labels=label, path_mode=path_mode, burst=burst, mark=mark)


@reserve_app.command("steering")
def steering(
    ctx: typer.Context, src: Src, dst: Dst, rate: RateOpt, end: EndOpt,
    via: Annotated[list[str], typer.Option("--via", metavar="MIDDLEBOX",
                                           help="Middlebox to pass through, in order (repeatable).")],
    start: StartOpt = "now", project: ProjectOpt = None, request_id: RequestIdOpt = None,
    protocol: ProtocolOpt = None, src_port: PortOpt = None, dst_port: PortOpt = None, dscp: DscpOpt = None,
    label: LabelOpt = None, path_mode: PathModeOpt = None, burst: BurstOpt = None, mark: MarkOpt = None,
    as_json: JsonOption = False,
) -> None:
    """Reserve RATE from SRC through each --via middlebox in turn to DST."""
    _reserve(ctx, as_json, kind="steering", src=src, dst=dst, via=via, rate=rate, start=start, end=end,
             project=project, request_id=request_id, protocol=protocol, src_port=src_port, dst_port=dst_port,
             dscp=dscp, labels=label, path_mode=path_mode, burst=burst, mark=mark)


@reserve_app.command("mirror")
def mirror(
    ctx: typer.Context,
    src: Annotated[str, typer.Argument(help="Host (or switch) whose traffic is copied.")],
    collector: Annotated[str, typer.Argument(help="Node that receives the copy.")],
    rate: RateOpt, end: EndOpt,
    port: Annotated[str | None, typer.Option(metavar="LINK", help="The link of SRC to mirror (when it has "
                                             "several).")] = None,
    direction: Annotated[str | None, typer.Option(metavar="in|out|both", help="What to copy: the frames SRC "
                                                  "receives, sends, or both (the default).")] = None,
    start: StartOpt = "now", project: ProjectOpt = None, request_id: RequestIdOpt = None,
    label: LabelOpt = None, path_mode: PathModeOpt = None, mark: MarkOpt = None, as_json: JsonOption = False,
) -> None:
    """Reserve RATE for a copy of SRC's traffic, from its switch to COLLECTOR."""
    _reserve(ctx, as_json, kind="mirror", src=src, collector=collector, port=port, rate=rate, start=start,
             end=end, project=project, request_id=request_id, labels=label, path_mode=path_mode, mark=mark,
             direction=direction)


# ------------------------------------------------------------ the others


def reservations(
    ctx: typer.Context,
    state: Annotated[State | None, typer.Option(help="Only reservations in this state.")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project's reservations.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List reservations in the order they were admitted (every page)."""

    def call(c: TenureClient) -> dict[str, Any]:
        return {"reservations": list(c.iter_reservations(state=state, project=project)), "next": None}

    run(ctx, call, _list, as_json=as_json)


def reservation(ctx: typer.Context, rid: Id, as_json: JsonOption = False) -> None:
    """Show one reservation in detail, with the path of each leg and what its hosts' agents see on the wire."""

    def call(c: TenureClient) -> dict[str, Any]:
        r = c.reservation(rid)
        try:
            r["wire"] = c.reservation_wire(rid)["legs"]
        except (TenureAPIError, TenureClientError) as exc:  # an older server; a follower without a leader now
            warn(f"what is on the wire is not known now: {exc}")
        return r

    run(ctx, call, _detail, as_json=as_json)


def modify(
    ctx: typer.Context, rid: Id,
    start: Annotated[str | None, typer.Option(metavar="TIME", help="New start (not once active).")] = None,
    end: Annotated[str | None, typer.Option(metavar="TIME", help="New end.")] = None,
    rate: Annotated[str | None, typer.Option(metavar="RATE", help="New rate (src → dst).")] = None,
    rate_in: Annotated[str | None, typer.Option(metavar="RATE", help="New dst → src rate (bandwidth).")] = None,
    burst: BurstOpt = None, as_json: JsonOption = False,
) -> None:
    """Change a reservation's window, rates or burst; re-admitted as a whole, or left as it was."""
    run(ctx, lambda c: c.modify_reservation(rid, start=start, end=end, rate=rate, rate_in=rate_in, burst=burst),
        lambda r: _changed("modified", r), as_json=as_json)


def cancel(ctx: typer.Context, rid: Id, as_json: JsonOption = False) -> None:
    """Cancel a reservation; its bandwidth is free at once."""
    run(ctx, lambda c: c.cancel_reservation(rid), lambda r: say(f"cancelled {r['id']} ({_route(r)})"),
        as_json=as_json)


def paths(
    ctx: typer.Context, src: Src, dst: Dst, rate: RateOpt, end: EndOpt, start: StartOpt = "now",
    k: Annotated[int, typer.Option("--k", min=1, max=16, help="How many paths to find at most.")] = 1,
    path_mode: PathModeOpt = None, project: ProjectOpt = None, as_json: JsonOption = False,
) -> None:
    """Find up to K paths from SRC to DST with RATE free over the window (nothing is booked)."""
    run(ctx, lambda c: c.paths(src=src, dst=dst, rate=rate, start=start, end=end, k=k, path_mode=path_mode,
                               project=project), _paths, as_json=as_json)


def usage(
    ctx: typer.Context,
    link: Annotated[str, typer.Argument(help="Link id.")],
    start: Annotated[str | None, typer.Option("--from", metavar="TIME", help="From (default: the first "
                                              "booking).")] = None,
    end: Annotated[str | None, typer.Option("--to", metavar="TIME", help="To (default: forever).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Draw LINK's booked bandwidth over time, each way: one bar per step, as a share of what is usable."""
    run(ctx, lambda c: c.usage(link, start=start, end=end), _usage, as_json=as_json)


# ---------------------------------------------------------------- rendering


def moment(iso: str | None) -> str | None:
    """A UTC instant to the second (reservations are often minutes long)."""
    if not iso:
        return None
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def rates(r: dict[str, Any]) -> str:
    """``100M`` one way; ``100M/50M`` (out/in) for bandwidth."""
    text = format_rate(r["rate_out"])
    return f"{text}/{format_rate(r['rate_in'])}" if r["kind"] == "bandwidth" else text


def _route(r: dict[str, Any]) -> str:
    via = "".join(f" → {v}" for v in r.get("via", []))
    return f"{r['kind']} {r['src']}{via} → {r['dst']}"


def _path(leg: dict[str, Any]) -> str:
    return " → ".join(leg["nodes"]) if leg["nodes"] else "(no path)"


def _alarms(r: dict[str, Any]) -> None:
    for a in r.get("alarms", []):
        warn(f"warning: link {a['link']} ({a['direction']}) peaks at {format_rate(a['peak'])} at "
             f"{moment(a['when'])}, above its alarm threshold of {format_rate(a['threshold'])}")


def _legs(r: dict[str, Any]) -> None:
    table(("leg", "from", "to", "rate", "path", "links"),
          ((leg["leg"], leg["from"], leg["to"], format_rate(leg["rate"]), _path(leg), ", ".join(leg["links"]))
           for leg in r["paths"]))


def _reserved(r: dict[str, Any]) -> None:
    what = "reserved" if r.get("created", True) else "already reserved (same request_id)"
    _changed(what, r)


def _changed(what: str, r: dict[str, Any]) -> None:
    say(f"{what} {r['id']}: {_route(r)} at {rates(r)}, {r['state']}, {moment(r['start'])} → {moment(r['end'])}")
    _legs(r)
    _alarms(r)


def _list(page: dict[str, Any]) -> None:
    found = page["reservations"]
    if not found:
        say("no reservations")
        return
    # Narrow enough for 80 columns: the window in short UTC times, the paths in `tenure reservation ID`.
    table(("id", "kind", "project", "state", "src→dst", "rate", "window (UTC)"),
          ((r["id"], r["kind"], r["project"], r["state"], f"{r['src']}→{r['dst']}", rates(r),
            f"{_short(r['start'])[:-3]} → {_short(r['end'])[:-3]}") for r in found))


def _detail(r: dict[str, Any]) -> None:
    match = r.get("match", {})
    rows: list[tuple[str, Any]] = [
        ("reservation", r["id"]), ("kind", r["kind"]), ("state", r["state"]), ("project", r["project"]),
        ("src", r["src"]), ("collector" if r["kind"] == "mirror" else "dst", r["dst"]),
    ]
    if r["kind"] == "steering":
        rows.append(("via", " → ".join(r["via"])))
    if r["kind"] == "mirror":
        rows += [("port", r.get("port")), ("direction", r.get("direction", "both"))]
    rows += [
        ("rate", format_rate(r["rate_out"]) + (f" out, {format_rate(r['rate_in'])} in"
                                              if r["kind"] == "bandwidth" else "")),
        ("start", moment(r["start"])), ("end", moment(r["end"])), ("path mode", r["path_mode"]),
        ("burst", r.get("burst", "cap")), ("mark", _mark_name(r.get("mark"))),
        ("match", " ".join(f"{k}={v}" for k, v in match.items()) or None),
        ("labels", ", ".join(f"{k}={v}" for k, v in r["labels"].items()) or None),
        ("request id", r["request_id"]), ("reason", r.get("reason")), ("created", moment(r["created_at"])),
        ("ended", moment(r.get("ended_at"))), ("revision", r["revision"]),
    ]
    fields(rows)
    _legs(r)
    if r.get("wire"):
        _wire(r["wire"])


def _wire(legs: list[dict[str, Any]]) -> None:
    """Each leg's shaper as its agent last saw it: class, rate (and ceil), what it sent and dropped, what its rules
    classified (packets); then why a leg failed."""

    def count(values: dict[str, str], key: str, unit: str = "") -> str | None:
        v = values.get(key)
        if v is None or not (v.isascii() and v.isdigit()):
            return v  # (an agent's words, shown as they are)
        n = float(v)
        for prefix in ("", "k", "M", "G", "T"):
            if n < 1000 or prefix == "T":
                return f"{n:.0f}{unit}" if not prefix else f"{n:.1f}{prefix}{unit}"
            n /= 1000
        return v

    def rate(values: dict[str, str]) -> str | None:
        text, ceil = count(values, "rate"), values.get("ceil")
        return text if ceil in (None, values.get("rate")) else f"{text}/{count(values, 'ceil')}"

    def first(values: dict[str, str], *keys: str) -> str:
        return next((k for k in keys if k in values), keys[0])

    # Narrow enough for 80 columns: what it sent (bytes) and dropped (packets), the packets its rules matched (a
    # mirror's: copied; its collector's: received in sent), and when (UTC) its agent looked; the rest is in --json.
    table(("leg", "host", "state", "class", "rate", "sent", "drops", "matched", "seen"),
          ((w["leg"], w["host"], w["state"], w["observed"].get("classid") or w["observed"].get("tunnel")
            or w.get("outputs", {}).get("classid") or w.get("outputs", {}).get("tunnel"),
            rate(w["observed"]), count(w["observed"], first(w["observed"], "sent_bytes", "received_bytes"), "B"),
            count(w["observed"], "dropped"),
            count(w["observed"], first(w["observed"], "classified_packets", "mirrored_packets")),
            _seen(w.get("observed_at"))) for w in legs),
          title="on the wire")
    for w in legs:
        if w.get("reason"):
            say(f"{w['leg']} ({w['host']}): {w['reason']}")


def _mark_name(mark: int | None) -> str | None:
    if mark is None:
        return None
    name = next((n for n, v in DSCP_NAMES.items() if v == mark), None)
    return f"{name} ({mark})" if name else str(mark)


def _seen(at: str | None) -> str | None:
    """When an agent looked, in UTC: the time today, else the day and the minute."""
    if not at:
        return None
    when = datetime.fromisoformat(at).astimezone(UTC)
    return when.strftime("%H:%M:%S" if when.date() == datetime.now(UTC).date() else "%m-%d %H:%M")


def _paths(answer: dict[str, Any]) -> None:
    say(f"paths with room over {moment(answer['start'])} → {moment(answer['end'])}:")
    table(("#", "hops", "room", "nodes", "links"),
          ((i, p["hops"], format_rate(p["residual"]), " → ".join(p["nodes"]), ", ".join(p["links"]))
           for i, p in enumerate(answer["paths"], 1)))


def bar(used: int, usable: int, width: int) -> str:
    """``used/usable`` of ``width`` cells, to an eighth of a cell; a full bar when over (or nothing usable)."""
    if usable <= 0:
        return "█" * width if used > 0 else ""
    eighths = min(width * 8, round(used * width * 8 / usable))
    if used > 0 and eighths == 0:
        eighths = 1  # something is booked: never draw it as nothing
    full, rest = divmod(eighths, 8)
    return "█" * full + (EIGHTHS[rest] if rest else "")


def _usage(u: dict[str, Any]) -> None:
    say(f"link {u['link']} ({u['a']} — {u['b']}), times UTC")
    width = max(10, min(BAR_WIDTH, out.width - 50))
    for d in ("ab", "ba"):
        dd = u["directions"][d]
        alarm = f", alarm at {format_rate(dd['alarm'])}" if dd.get("alarm") is not None else ""
        say(f"{dd['from']} → {dd['to']}: capacity {format_rate(dd['capacity'])}, "
            f"usable {format_rate(dd['usable'])}{alarm}")
        if not dd["steps"]:
            say("  nothing booked")
            continue
        t = Table(box=box.SIMPLE, pad_edge=False)
        for name in ("from", "to", "used", "use"):
            t.add_column(name, no_wrap=True, justify="right" if name in ("used", "use") else "left")
        t.add_column(f"of {format_rate(dd['usable'])}", no_wrap=True, min_width=width)
        for s in dd["steps"]:
            alarmed = dd.get("alarm") is not None and s["used"] > dd["alarm"]
            t.add_row(_short(s["from"]), _short(s["to"]) if s["to"] else "forever", format_rate(s["used"]),
                      percent(s["used"], dd["usable"]) if s["used"] else "0%",
                      Text(bar(s["used"], dd["usable"], width), style="red" if alarmed else "green"))
        out.print(t)
        if dd.get("truncated"):
            warn(f"  only the first {len(dd['steps'])} steps are shown; narrow the window with --from/--to")


def _short(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%m-%d %H:%M:%S")
