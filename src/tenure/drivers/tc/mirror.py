"""``python:tenure.drivers.tc:Mirror``: a mirror reservation on the wire (docs/dataplane.md, section 4).

Two instances make one mirror, each on its own host:

- **source** (the mirrored host): a VXLAN device ``TUNNEL`` (VNI ``vni``, from ``local`` to the collector's
  ``remote``, UDP 4789) whose root qdisc is a token bucket (``tbf``) at the mirror's ``rate``, so the copies never
  take more than the mirror booked (what exceeds it is dropped; the original traffic is untouched); and on the
  mirrored ``device`` a ``clsact`` qdisc whose filters copy every frame (``direction`` ``out``: egress, ``in``:
  ingress, ``both``) into the tunnel with ``mirred egress mirror``. A filter before them on egress lets the tunnel's
  own packets to the collector pass uncopied (else each copy leaving by the device would be copied again). The
  outer packets carry the mirror's ``mark`` (DSCP; CS1 unless the reservation says).
- **collector**: the tunnel's other end, a VXLAN device with the same VNI, where the copies arrive as whole
  Ethernet frames (``tcpdump -i TUNNEL``, or the device's counters).

**Why VXLAN.** It carries whole Ethernet frames (the collector sees each copy as it was on the wire), needs no
control plane (the VNI tells mirrors apart), every capture tool decodes it, and it is what cloud traffic mirroring
uses (AWS VPC Traffic Mirroring sends VXLAN to UDP 4789). GRE tap was the first choice (docs/dataplane.md) but is
not in every kernel: the machines Tenure's CI runs on have VXLAN and no GRE; ERSPAN needs GRE too.

**Filters** are u32 (in every kernel that has tc; matchall and flower are not always built): ``match u32 0 0``
matches every frame. Each source instance has a ``slot`` from the agent's allocator: its copying filters are at
preference ``MIRROR_PREF + slot`` and its exclusion at ``slot`` (every exclusion before every copy, so no mirror
copies another's tunnel packets). A filter is the mirror's if it is at its preference and (copying) sends to its
tunnel. Everything is done with the ``ip`` and ``tc`` commands (iproute2, no shell; in another namespace through
``nsenter``): mirrors are few, and tc's JSON is the most faithful reading of filters and actions.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tenure.drivers.tc.netlink import Absent, deadline_of, held
from tenure.drivers.tc.nft import NftError, run_tool
from tenure.drivers.tc.params import ACTIONS, NETNS_PARAMETER, Invalid, checked, number, parse_rate

if TYPE_CHECKING:
    from tenure.drivers.pydriver import HandlerContext

OCF_SUCCESS, OCF_ERR_GENERIC, OCF_ERR_CONFIGURED, OCF_NOT_RUNNING = 0, 1, 6, 7
VXLAN_PORT = 4789
MIRROR_PREF = 10000  # the copying filters' preference is this + slot; the exclusions' is the slot
MAX_SLOT = 4000
MAX_VNI = 2**24 - 1
MIN_RATE = 1000  # bit/s: below, a bucket holding two frames would take minutes to fill (tc's ticks overflow)
OVERHEAD = {4: 50, 6: 70}  # bytes a copy gains in the tunnel: outer IP, UDP, VXLAN and the inner Ethernet header
DIRECTIONS = ("in", "out", "both")
ROLES = ("source", "collector")
PARAMS = ("role", "tunnel", "vni", "local", "remote", "device", "direction", "rate", "mark", "slot", "netns")
_TUNNEL = re.compile(r"tm[0-9a-f]{6}")

Result = int | tuple[int, str]

META_DATA = f"""<?xml version="1.0"?>
<resource-agent name="Mirror" version="1.1">
  <version>1.1</version>
  <longdesc lang="en">One end of a mirror: on the mirrored host (role source), a VXLAN tunnel to the collector shaped
to the mirror's rate (tbf) and clsact filters copying the device's frames into it (mirred mirror, direction in, out
or both); on the collector (role collector), the tunnel's other end, where the copies arrive. Idempotent: a start
that finds everything in place changes nothing. A monitor that finds it well outputs, on the source, mirrored_packets
and mirrored_bytes (frames copied), sent_packets, sent_bytes and dropped (the tunnel's token bucket: copies over the
rate are dropped); on the collector, received_packets and received_bytes.</longdesc>
  <shortdesc lang="en">Port mirroring into a shaped VXLAN tunnel</shortdesc>
  <parameters>
    <parameter name="role" unique="0" reloadable="0" required="1">
      <longdesc lang="en">source (the mirrored host) or collector.</longdesc>
      <shortdesc lang="en">Role</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="tunnel" unique="1" reloadable="0" required="1">
      <longdesc lang="en">The tunnel device's name: tm and six hex digits (the VNI's).</longdesc>
      <shortdesc lang="en">Tunnel device</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="vni" unique="0" reloadable="0" required="1">
      <longdesc lang="en">The VXLAN network identifier, 1 to 16777215: the same at both ends.</longdesc>
      <shortdesc lang="en">VNI</shortdesc>
      <content type="integer" />
    </parameter>
    <parameter name="local" unique="0" reloadable="0" required="1">
      <longdesc lang="en">This host's address (IPv4 or IPv6) the tunnel starts from.</longdesc>
      <shortdesc lang="en">Local address</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="remote" unique="0" reloadable="0" required="1">
      <longdesc lang="en">The other end's address, of local's family.</longdesc>
      <shortdesc lang="en">Remote address</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="device" unique="0" reloadable="0" required="0">
      <longdesc lang="en">Source: the mirrored device (required).</longdesc>
      <shortdesc lang="en">Mirrored device</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="direction" unique="0" reloadable="0" required="0">
      <longdesc lang="en">Source: in (frames the device receives), out (frames it sends) or both (the
default).</longdesc>
      <shortdesc lang="en">Direction</shortdesc>
      <content type="string" default="both" />
    </parameter>
    <parameter name="rate" unique="0" reloadable="1" required="0">
      <longdesc lang="en">Source: the most the copies may take, in bit/s (as 10M); required.</longdesc>
      <shortdesc lang="en">Rate (bit/s)</shortdesc>
      <content type="string" />
    </parameter>
    <parameter name="mark" unique="0" reloadable="0" required="0">
      <longdesc lang="en">The DSCP (0 to 63) of the tunnel's packets; default 0.</longdesc>
      <shortdesc lang="en">DSCP of the copies</shortdesc>
      <content type="integer" />
    </parameter>
    <parameter name="slot" unique="1" reloadable="0" required="0">
      <longdesc lang="en">Source: 1 to 4000, from the agent's local allocator: the filters' preferences (the slot for
the exclusion of the tunnel's own packets, 10000 + slot for the copying); required.</longdesc>
      <shortdesc lang="en">Filter slot</shortdesc>
      <content type="integer" />
    </parameter>
{NETNS_PARAMETER}  </parameters>
{ACTIONS}</resource-agent>
"""


@dataclass(frozen=True)
class End:
    """One end's parameters, checked."""

    role: str
    tunnel: str
    vni: int
    local: ipaddress.IPv4Address | ipaddress.IPv6Address | None  # None only for stop (identity)
    remote: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    netns: str | None = None
    device: str | None = None
    direction: str = "both"
    rate: int | None = None
    mark: int = 0
    slot: int | None = None

    @property
    def rate_bytes(self) -> int:
        assert self.rate is not None
        return -(-self.rate // 8)

    def burst(self, mtu: int) -> int:
        """The token bucket's depth: 10 ms at the rate, at least two of the device's largest frames in the tunnel."""
        assert self.remote is not None
        return max(self.rate_bytes // 100, 2 * (mtu + 14 + OVERHEAD[self.remote.version]))

    @property
    def hooks(self) -> tuple[str, ...]:
        return {"in": ("ingress",), "out": ("egress",), "both": ("ingress", "egress")}[self.direction]

    @property
    def where(self) -> str:
        return f"{self.tunnel}" + (f" in netns {self.netns}" if self.netns else "")


def _address(params: dict[str, str], name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    text = params.get(name)
    if text is None:
        raise Invalid(f"parameter {name!r} is required")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise Invalid(f"{name} {text!r} is not an IPv4 or IPv6 address") from None
    if addr.version == 6 and (addr.scope_id or addr.ipv4_mapped is not None):  # type: ignore[union-attr]
        raise Invalid(f"{name} {text!r} must be a global address (no zone, not IPv4-mapped)")
    return addr


def parse_end(params: dict[str, str], *, identity_only: bool = False) -> End:
    """An :class:`End`, or :class:`Invalid` with the reason. ``identity_only`` (stop): what it takes to find what a
    start made (role, tunnel, and on a source the device and slot), the rest as far as it parses."""
    checked(params, PARAMS, "mirror")
    role = params.get("role")
    if role not in ROLES:
        raise Invalid(f"role {role!r} must be source or collector")
    tunnel = params.get("tunnel", "")
    if _TUNNEL.fullmatch(tunnel) is None:
        raise Invalid(f"tunnel {tunnel!r} must be tm and six hex digits")
    netns, device = params.get("netns"), params.get("device")
    slot = number(params, "slot", 1, MAX_SLOT)
    if role == "source" and (device is None or slot is None):
        raise Invalid("a mirror's source needs device and slot")
    vni = int(tunnel[2:], 16)
    if identity_only:  # what stop needs: where it is; the addresses (when they parse) to recognise its tunnel
        addresses = []
        for name in ("local", "remote"):
            try:
                addresses.append(_address(params, name))
            except Invalid:
                addresses.append(None)
        return End(role=role, tunnel=tunnel, vni=vni, local=addresses[0], remote=addresses[1], netns=netns,
                   device=device, slot=slot)
    direction = params.get("direction", "both")
    if direction not in DIRECTIONS:
        raise Invalid(f"direction {direction!r} must be in, out or both")
    if number(params, "vni", 1, MAX_VNI) != vni:
        raise Invalid(f"vni {params.get('vni')!r} must be given, and be the tunnel's name's ({tunnel})")
    local, remote = _address(params, "local"), _address(params, "remote")
    if local.version != remote.version:
        raise Invalid(f"local {local} and remote {remote} are of different families")
    rate = parse_rate(params["rate"]) if params.get("rate") is not None else None
    if role == "source" and rate is None:
        raise Invalid("a mirror's source needs rate (what its copies may take)")
    if rate is not None and rate < MIN_RATE:
        raise Invalid(f"rate {params['rate']!r} is below {MIN_RATE} bit/s: a token bucket cannot hold a frame's "
                      f"burst that slowly")
    mark = number(params, "mark", 0, 63) or 0
    return End(role=role, tunnel=tunnel, vni=vni, local=local, remote=remote, netns=netns, device=device,
               direction=direction, rate=rate, mark=mark, slot=slot)


# --- reading and writing with ip and tc ---------------------------------------------------------------------


def _json(tool: str, end: End, args: list[str], deadline: float | None) -> list[dict[str, Any]]:
    out = run_tool(tool, end.netns, ["-j", *args], deadline).strip()
    try:
        data = json.loads(out) if out else []
    except ValueError as exc:
        raise NftError(f"{tool}'s output could not be read: {exc}") from None
    return data if isinstance(data, list) else []


def _link(end: End, name: str, deadline: float | None) -> dict[str, Any] | None:
    try:
        found = _json("ip", end, ["-d", "-s", "link", "show", "dev", name], deadline)
    except NftError as exc:
        if "does not exist" in str(exc) or "Cannot find device" in str(exc):
            return None
        raise
    return found[0] if found else None


def _tunnel_problem(end: End, link: dict[str, Any]) -> str | None:
    info = link.get("linkinfo") or {}
    data = info.get("info_data") or {}
    local, remote = _ip(data.get("local") or data.get("local6")), _ip(data.get("remote") or data.get("remote6"))
    tos = data.get("tos")
    want_tos = f"{end.mark << 2:#x}" if end.mark else None
    have = (info.get("info_kind"), data.get("id"), local, remote, data.get("port"),
            tos if tos not in ("inherit", "0", "0x0") else None)
    want = ("vxlan", end.vni, end.local, end.remote, VXLAN_PORT, want_tos)
    if have != want:
        return (f"the tunnel {end.where} is {have[0]} id {have[1]} {have[2]} -> {have[3]} port {have[4]} "
                f"tos {have[5]}, expected vxlan id {end.vni} {end.local} -> {end.remote} port {VXLAN_PORT} "
                f"tos {want_tos}")
    if "UP" not in (link.get("flags") or ()):
        return f"the tunnel {end.where} is down"
    return None


def _ip(text: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        return None


def _is_ours(end: End, link: dict[str, Any]) -> bool:
    """Whether a device by the tunnel's name is this mirror's: a VXLAN with its VNI (and its addresses, when
    known)."""
    info = link.get("linkinfo") or {}
    data = info.get("info_data") or {}
    if info.get("info_kind") != "vxlan" or data.get("id") != end.vni:
        return False
    return all(want is None or _ip(data.get(k) or data.get(f"{k}6")) == want
               for k, want in (("local", end.local), ("remote", end.remote)))


def _add_tunnel(end: End, deadline: float | None) -> None:
    add = (f"link add {end.tunnel} type vxlan id {end.vni} local {end.local} remote {end.remote} dstport {VXLAN_PORT}"
           f" nolearning" + (f" tos {end.mark << 2:#x}" if end.mark else ""))
    # No IPv6 link-local address: the device sends nothing of its own (router solicitations, MLD) into the tunnel.
    _batch("ip", end, [add, f"link set {end.tunnel} addrgenmode none", f"link set {end.tunnel} up"], deadline)


def _batch(tool: str, end: End, lines: list[list[str] | str], deadline: float | None) -> None:
    """Commands of ``tool`` (ip, tc) in one process (``-batch -``; it stops at the first that fails)."""
    if lines:
        text = "".join((line if isinstance(line, str) else " ".join(line)) + "\n" for line in lines)
        run_tool(tool, end.netns, ["-batch", "-"], deadline, stdin=text)


def _del_link(end: End, name: str, deadline: float | None) -> bool:
    try:
        run_tool("ip", end.netns, ["link", "del", name], deadline)
    except NftError as exc:
        if "Cannot find device" in str(exc) or "does not exist" in str(exc):
            return False
        raise
    return True


def _bucket(end: End, deadline: float | None) -> dict[str, Any] | None:
    roots = [q for q in _json("tc", end, ["-d", "-s", "qdisc", "show", "dev", end.tunnel], deadline) if q.get("root")]
    return roots[0] if roots else None


def _bucket_problem(end: End, q: dict[str, Any] | None) -> str | None:
    if q is None or q.get("kind") != "tbf":
        return f"the tunnel {end.where} has no token bucket (tbf) holding the copies to the mirror's rate"
    rate = (q.get("options") or {}).get("rate")
    if rate != end.rate_bytes:
        return f"the tunnel {end.where}'s token bucket is at {rate} bytes/s, expected {end.rate_bytes}"
    assert end.remote is not None
    overhead = (q.get("stab") or {}).get("overhead")
    if overhead != OVERHEAD[end.remote.version]:
        return (f"the tunnel {end.where}'s token bucket counts {overhead} bytes of overhead per copy, expected "
                f"{OVERHEAD[end.remote.version]}")
    return None


def _filters(end: End, hook: str, deadline: float | None) -> list[dict[str, Any]]:
    assert end.device is not None
    try:
        return _json("tc", end, ["-s", "filter", "show", "dev", end.device, hook], deadline)
    except NftError as exc:
        if "Cannot find device" in str(exc):
            raise Absent(f"device {end.device} does not exist") from None
        if "Invalid argument" in str(exc) or "Cannot find specified qdisc" in str(exc):
            return []  # no clsact on the device
        raise
    return []


def _copying(end: End, filters: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The mirred actions of the filters at the mirror's copying preference."""
    assert end.slot is not None
    out = []
    for f in filters:
        if f.get("pref") == MIRROR_PREF + end.slot:
            out += [a for a in (f.get("options") or {}).get("actions") or () if a.get("kind") == "mirred"]
    return out


def _has_pref(filters: list[dict[str, Any]], pref: int) -> bool:
    return any(f.get("pref") == pref for f in filters)


def _copies_into_tunnel(end: End, filters: list[dict[str, Any]]) -> bool:
    return any(a.get("to_dev") == end.tunnel and a.get("mirred_action") == "mirror" for a in _copying(end, filters))


def _foreign_copy(end: End, filters: list[dict[str, Any]]) -> bool:
    """Something at the copying preference that is not a filter copying into this mirror's tunnel."""
    assert end.slot is not None
    mine = [f for f in filters if f.get("pref") == MIRROR_PREF + end.slot]
    return bool(mine) and not all(a.get("to_dev") == end.tunnel for a in _copying(end, filters)) or any(
        f.get("kind") != "u32" for f in mine)


def _excluding(end: End, filters: list[dict[str, Any]]) -> bool | None:
    """The exclusion at the slot's preference: True if it is the mirror's (u32, a flowid and no action), False if
    something else is there, None if nothing is."""
    assert end.slot is not None
    mine = [f for f in filters if f.get("pref") == end.slot]
    if not mine:
        return None
    keys = [f.get("options") or {} for f in mine if "flowid" in (f.get("options") or {})]
    return all(f.get("kind") == "u32" for f in mine) and bool(keys) and all(
        k.get("flowid") == ":1" and not k.get("actions") for k in keys)


def _clsact(end: End, deadline: float | None) -> bool:
    assert end.device is not None
    return any(q.get("kind") == "clsact" for q in _json("tc", end, ["qdisc", "show", "dev", end.device], deadline))


def _exclusion_args(end: End) -> list[str]:
    """The egress filter letting the tunnel's own packets to the collector leave uncopied."""
    assert end.device is not None and end.slot is not None
    assert end.remote is not None
    if end.remote.version == 4:  # (the protocol is in every fragment's header; a port only in the first's)
        match = ["match", "ip", "protocol", "17", "0xff", "match", "ip", "src", f"{end.local}/32",
                 "match", "ip", "dst", f"{end.remote}/32"]
        proto = "ip"
    else:  # (IPv6 puts the protocol after any extension headers, a fragment's among them: addresses only)
        match = ["match", "ip6", "src", f"{end.local}/128", "match", "ip6", "dst", f"{end.remote}/128"]
        proto = "ipv6"
    return ["filter", "add", "dev", end.device, "egress", "pref", str(end.slot), "protocol", proto, "u32", *match,
            "flowid", ":1"]


def _copy_args(end: End, hook: str) -> list[str]:
    assert end.device is not None and end.slot is not None
    return ["filter", "add", "dev", end.device, hook, "pref", str(MIRROR_PREF + end.slot), "protocol", "all", "u32",
            "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", end.tunnel]


def _del_pref(end: End, hook: str, pref: int, deadline: float | None) -> None:
    assert end.device is not None
    try:
        run_tool("tc", end.netns, ["filter", "del", "dev", end.device, hook, "pref", str(pref)], deadline)
    except NftError as exc:
        if not any(m in str(exc) for m in ("Cannot find", "No such file", "Invalid argument", "not found")):
            raise


def _stat(obj: dict[str, Any], key: str) -> int:
    value = (obj.get("stats") or obj).get(key, 0)
    return int(value) if isinstance(value, int) else 0


# --- the handler ---------------------------------------------------------------------------------------------


_GUARD = threading.Lock()
_LOCKS: dict[tuple[str, str], threading.Lock] = {}


def _locked(end: End, deadline: float | None) -> Any:
    """The mirrored device's lock (its clsact and filters are shared by the mirrors on it), or the tunnel's."""
    key = (end.netns or "", end.device if end.role == "source" and end.device else end.tunnel)
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    return held(lock, deadline, f"device {key[1]}")


class Mirror:
    """The handler: start, reload, monitor and stop of one end of a mirror."""

    def meta_data(self) -> str:
        return META_DATA

    def start(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        try:
            end = parse_end(params)
        except Invalid as exc:
            return OCF_ERR_CONFIGURED, str(exc)
        deadline = deadline_of(ctx)
        try:
            with _locked(end, deadline):
                links = {ln.get("ifname"): ln for ln in _json("ip", end, ["-d", "link", "show"], deadline)}
                mtu = 1500
                if end.role == "source":
                    assert end.device is not None
                    device = links.get(end.device)
                    if device is None:
                        return OCF_ERR_GENERIC, f"device {end.device} does not exist; cannot mirror it"
                    mtu = int(device.get("mtu") or 1500)
                link = links.get(end.tunnel)
                kind = ((link or {}).get("linkinfo") or {}).get("info_kind")
                if link is not None and kind != "vxlan":
                    return OCF_ERR_GENERIC, (f"a device {end.where} that is not a mirror's tunnel "
                                             f"({kind or 'no kind'}) is in the way; not changing it")
                why = _tunnel_problem(end, link) if link is not None else None
                if why is not None and "is down" in why:
                    run_tool("ip", end.netns, ["link", "set", end.tunnel, "up"], deadline)
                    ctx.log(f"set the tunnel {end.where} up")
                elif why is not None:  # another mirror's (its parameters change only by a stop, then a start)
                    return OCF_ERR_GENERIC, f"{why}: another mirror's tunnel has its name; not changing it"
                if link is None:
                    _add_tunnel(end, deadline)
                    ctx.log(f"added the tunnel {end.where}: vxlan id {end.vni} {end.local} -> {end.remote}")
                if end.role == "source":
                    if (why := self._source(end, ctx, deadline, mtu)) is not None:
                        return OCF_ERR_GENERIC, why
        except Absent as exc:
            return OCF_ERR_GENERIC, f"{exc}; cannot mirror"
        except (NftError, OSError, TimeoutError) as exc:
            return OCF_ERR_GENERIC, f"mirror {end.where}: {exc}"
        if hasattr(ctx, "set_output"):
            ctx.set_output("tunnel", end.tunnel)
        return OCF_SUCCESS

    @staticmethod
    def _source(end: End, ctx: HandlerContext, deadline: float | None, mtu: int) -> None:
        """The tunnel's token bucket, then the device's clsact and filters (the exclusion before the copying)."""
        assert end.device is not None and end.slot is not None and end.remote is not None
        qdiscs = _json("tc", end, ["-d", "qdisc", "show"], deadline)  # every device's: the tunnel's and the device's
        bucket = next((q for q in qdiscs if q.get("dev") == end.tunnel and q.get("root")), None)
        clsact = any(q.get("kind") == "clsact" and q.get("dev") == end.device for q in qdiscs)
        found = {hook: _filters(end, hook, deadline) if clsact else [] for hook in ("ingress", "egress")}
        for hook, filters in found.items():  # checked before anything changes: never someone else's place
            if _foreign_copy(end, filters) or (hook == "egress" and _excluding(end, filters) is False):
                return (f"a filter that is not this mirror's is at preference {end.slot} or {MIRROR_PREF + end.slot} "
                        f"on {end.device} {hook}; not changing it")
        adds: list[list[str]] = []
        if _bucket_problem(end, bucket) is not None:
            adds.append(["qdisc", "replace", "dev", end.tunnel, "root", "handle", "1:", "stab", "overhead",
                         str(OVERHEAD[end.remote.version]), "tbf", "rate", f"{end.rate_bytes * 8}bit", "burst",
                         str(end.burst(mtu)), "latency", "100ms"])
            ctx.log(f"set the tunnel {end.where}'s token bucket to {end.rate_bytes * 8} bit/s")
        if not clsact:
            adds.append(["qdisc", "add", "dev", end.device, "clsact"])
            ctx.log(f"added the clsact qdisc on {end.device}")
        for hook, filters in found.items():
            wanted = hook in end.hooks
            if hook == "egress":
                if wanted and _excluding(end, filters) is None:
                    adds.append(_exclusion_args(end))
                    ctx.log(f"added the filter letting the tunnel's packets leave {end.device} uncopied")
                elif not wanted and _excluding(end, filters):
                    _del_pref(end, hook, end.slot, deadline)
            if wanted and not _copies_into_tunnel(end, filters):
                adds.append(_copy_args(end, hook))
                ctx.log(f"added the filter copying {end.device}'s {hook} frames into {end.tunnel}")
            elif not wanted and _copies_into_tunnel(end, filters):
                _del_pref(end, hook, MIRROR_PREF + end.slot, deadline)
        _batch("tc", end, adds, deadline)  # in order: the bucket, the clsact, the exclusion before the copying
        return None

    def reload(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        return self.start(params, ctx)

    def monitor(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        try:
            end = parse_end(params)
        except Invalid as exc:
            return OCF_ERR_CONFIGURED, str(exc)
        deadline = deadline_of(ctx)
        try:
            link = _link(end, end.tunnel, deadline)
            if link is None:
                return OCF_NOT_RUNNING
            if (why := _tunnel_problem(end, link)) is not None:
                return OCF_ERR_GENERIC, why
            out: dict[str, int] = {}
            if end.role == "collector":
                rx = (link.get("stats64") or {}).get("rx") or {}
                out = {"received_packets": int(rx.get("packets", 0)), "received_bytes": int(rx.get("bytes", 0))}
            else:
                assert end.device is not None
                q = _bucket(end, deadline)
                if (why := _bucket_problem(end, q)) is not None:
                    return OCF_ERR_GENERIC, why
                assert q is not None
                out = {"sent_packets": _stat(q, "packets"), "sent_bytes": _stat(q, "bytes"),
                       "dropped": _stat(q, "drops"), "mirrored_packets": 0, "mirrored_bytes": 0}
                for hook in end.hooks:
                    filters = _filters(end, hook, deadline)
                    if not _copies_into_tunnel(end, filters):
                        return OCF_ERR_GENERIC, f"the filter copying {end.device}'s {hook} frames is missing"
                    if hook == "egress" and not _excluding(end, filters):
                        return OCF_ERR_GENERIC, (f"the filter letting the tunnel's packets leave {end.device} "
                                                 f"uncopied is missing")
                    for action in _copying(end, filters):
                        out["mirrored_packets"] += _stat(action, "packets")
                        out["mirrored_bytes"] += _stat(action, "bytes")
            if hasattr(ctx, "set_output"):
                for key, value in {"tunnel": end.tunnel, **{k: str(v) for k, v in out.items()}}.items():
                    ctx.set_output(key, value)
        except Absent:
            return OCF_NOT_RUNNING
        except (NftError, OSError, TimeoutError) as exc:
            return OCF_ERR_GENERIC, f"mirror {end.where}: {exc}"
        return OCF_SUCCESS

    def stop(self, params: dict[str, str], ctx: HandlerContext) -> Result:
        """The copying filters first (nothing is copied into a tunnel about to go), the exclusion, the clsact qdisc
        if no filter is left on it, then the tunnel (its token bucket with it); absent is stopped."""
        try:
            end = parse_end(params, identity_only=True)
        except Invalid as exc:
            return OCF_ERR_CONFIGURED, str(exc)
        deadline = deadline_of(ctx)
        try:
            with _locked(end, deadline):
                if end.role == "source" and end.device is not None and end.slot is not None:
                    try:
                        left = 0
                        for hook in ("ingress", "egress"):
                            filters = _filters(end, hook, deadline)
                            mine: set[Any] = set()
                            if _copies_into_tunnel(end, filters) and not _foreign_copy(end, filters):
                                _del_pref(end, hook, MIRROR_PREF + end.slot, deadline)
                                ctx.log(f"deleted the filter copying {end.device}'s {hook} frames")
                                mine.add(MIRROR_PREF + end.slot)
                            if hook == "egress" and _excluding(end, filters):
                                _del_pref(end, hook, end.slot, deadline)
                                mine.add(end.slot)
                            left += len({f.get("pref") for f in filters} - mine)
                        if not left and _clsact(end, deadline):  # (an empty one, whoever added it, does nothing)
                            run_tool("tc", end.netns, ["qdisc", "del", "dev", end.device, "clsact"], deadline)
                            ctx.log(f"deleted the clsact qdisc on {end.device} (no filter left)")
                    except Absent:
                        pass  # the device is gone, and its filters with it
                link = _link(end, end.tunnel, deadline)
                if link is not None and _is_ours(end, link) and _del_link(end, end.tunnel, deadline):
                    ctx.log(f"deleted the tunnel {end.where}")
        except Absent:
            return OCF_SUCCESS
        except (NftError, OSError, TimeoutError) as exc:
            return OCF_ERR_GENERIC, f"mirror {end.where}: {exc}"
        return OCF_SUCCESS

