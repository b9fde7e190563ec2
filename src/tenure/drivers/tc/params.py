"""A leg's parameters, checked: where it lives on the device (classid; the place an old u32 filter had) and what it
matches and marks."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from pyroute2.netlink.rtnl.tcmsg.common import calc_xmittime, tick_in_usec

from tenure.domain.units import format_rate
from tenure.drivers.tc.netlink import NETNS_DIR

ROOT_HANDLE = 0x10000  # 1:
PARENT_HANDLE = ROOT_HANDLE | 0x1  # 1:1, the interface's capacity: every class of ours is under it
DEFAULT_MINOR = 0xFFFE  # 1:fffe, everything unreserved (the root qdisc's default)
DEFAULT_HANDLE = ROOT_HANDLE | DEFAULT_MINOR
TC_H_ROOT = 0xFFFFFFFF
ETH_P_IP = 0x0800
FILTER_PRIO_BASE = 100
U32_NODES = 0xFFF  # node ids 1..4095 per u32 hash table
MIN_CLASSID, MAX_CLASSID = 2, 65533  # 1:1 is the parent class, 1:fffe the default; 1:ffff is not a valid minor
OLD_MAX_CLASSID = 65534  # before the tree: a leg of an old agent may still hold 1:fffe, and must be able to stop
MIN_RATE = 64  # bit/s: 8 bytes/s, the least whose HTB rate table (2 KiB at the rate) fits 32 bits of ticks
MAX_RATE = 10**12  # bit/s
MAX_TICKS = 0xFFFFFFFF
DEFAULT_BURST_SECONDS = 0.01
MIN_DEFAULT_BURST = 1600  # bytes: one frame and then some


PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "sctp": 132}
PORT_PROTOCOLS = ("tcp", "udp", "sctp")
PARAMS = ("device", "rate", "classid", "dst", "src", "protocol", "dst_port", "src_port", "netns", "burst", "capacity",
          "borrow", "dscp", "mark", "via", "forward")
BOOLEANS = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
IDENTITY = ("device", "classid", "netns")  # what stop needs: where the leg is, not what it matches
STEER_BASE = 0x54450000  # a steered leg's firewall mark and routing table: this | classid (unique per namespace)
STEER_RULE_PRIORITY = 30000  # its ip rule: before the main table's (32766)

_RATE = re.compile(r"([1-9][0-9]{0,12})([kKMG]?)")
_RATE_SCALE = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9}
_NUMBER = re.compile(r"[1-9][0-9]{0,9}")
_IFNAME = re.compile(r"[^\s/:]{1,15}")
_NETNS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")


# What the handlers' OCF meta-data share (shaper.py, mirror.py).
NETNS_PARAMETER = """    <parameter name="netns" unique="0" reloadable="0" required="0">
      <longdesc lang="en">Name of a network namespace in /var/run/netns to work in; default: the agent's.</longdesc>
      <shortdesc lang="en">Network namespace</shortdesc>
      <content type="string" />
    </parameter>
"""
ACTIONS = """  <actions>
    <action name="start" timeout="20s" />
    <action name="stop" timeout="20s" />
    <action name="monitor" timeout="20s" interval="10s" />
    <action name="reload" timeout="20s" />
    <action name="meta-data" timeout="5s" />
  </actions>
"""


class Invalid(ValueError):
    """A parameter the shaper cannot take (OCF_ERR_CONFIGURED)."""


def parse_rate(text: str, what: str = "rate") -> int:
    """Bit/s from ``"50000000"`` or ``"50M"`` (K/k, M, G: powers of 1000); 64 to 10^12."""
    m = _RATE.fullmatch(text)
    if m is None:
        raise Invalid(f"{what} {text!r} is not a rate: use whole bit/s with an optional K, M or G suffix, as '50M'")
    bps = int(m.group(1)) * _RATE_SCALE[m.group(2)]
    if not MIN_RATE <= bps <= MAX_RATE:
        raise Invalid(f"{what} {text!r} is out of range: HTB takes {MIN_RATE} to 10^12 bit/s")
    return bps


def number(params: dict[str, str], name: str, lo: int, hi: int) -> int | None:
    """A decimal integer parameter within [lo, hi] (None if absent)."""
    text = params.get(name)
    if text is None:
        return None
    if (_NUMBER.fullmatch(text) is None and text != "0") or not lo <= int(text) <= hi:
        raise Invalid(f"{name} {text!r} must be a decimal integer from {lo} to {hi}")
    return int(text)


def checked(params: dict[str, str], known: tuple[str, ...], what: str) -> None:
    """Every parameter known (or OCF_CHECK_LEVEL) and a string, and ``device`` and ``netns``, when given, names
    that can be an interface's and a namespace's."""
    unknown = sorted(set(params) - set(known) - {"OCF_CHECK_LEVEL"})
    if unknown:
        raise Invalid(f"unknown parameter {unknown[0]!r}; the {what} takes {', '.join(known)}")
    for name, value in params.items():
        if not isinstance(value, str):
            raise Invalid(f"{name} must be a string, not {type(value).__name__}")
    device = params.get("device")
    if device is not None and (_IFNAME.fullmatch(device) is None or device in (".", "..")):
        raise Invalid(f"device {device!r} is not an interface name (1-15 characters, no '/', ':' or spaces)")
    netns = params.get("netns")
    if netns is not None and (_NETNS_NAME.fullmatch(netns) is None or netns in (".", "..")):
        raise Invalid(f"netns {netns!r} is not a namespace name in {NETNS_DIR}")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(params: dict[str, str], name: str) -> tuple[Network, ...]:
    """An address or network (CIDR, host bits zero), or an IPv4 and an IPv6 one separated by a comma (dual stack),
    IPv4 first."""
    text = params.get(name)
    if text is None:
        return ()
    out: list[Network] = []
    for part in text.split(","):
        try:
            out.append(ipaddress.ip_network(part.strip(), strict=True))
        except ValueError as exc:
            raise Invalid(f"{name} {part.strip()!r} is not an IPv4 or IPv6 address or network: {exc}") from None
    if len({n.version for n in out}) != len(out):
        raise Invalid(f"{name} {text!r} must be one address or network, or one of each family (IPv4,IPv6)")
    return tuple(sorted(out, key=lambda n: n.version))


def matched(dst: tuple[Network, ...], src: tuple[Network, ...]) -> list[Network]:
    """The destinations a leg's flow is matched to: each of ``dst``, but, when it names a ``src``, only those of a
    family the source has too (a rule without the source would claim every sender's packets)."""
    versions = {n.version for n in src}
    return [d for d in dst if not src or d.version in versions]


def _u32_ticks(rate_bytes: int, burst: int) -> int:
    """HTB's buffer for ``burst`` bytes at ``rate_bytes``/s, in scheduler ticks (pyroute2's arithmetic)."""
    return calc_xmittime(rate_bytes, burst)


@dataclass(frozen=True)
class Leg:
    """Validated parameters, and where they go on the wire."""

    device: str
    classid: int
    netns: str | None
    rate: int | None = None  # bit/s; None only for stop, which does not need it
    dst: tuple[Network, ...] = ()  # at most one of each family
    src: tuple[Network, ...] = ()
    protocol: str | None = None
    dst_port: int | None = None
    src_port: int | None = None
    burst: int | None = None  # bytes, None for the default
    capacity: int | None = None  # bit/s of the interface (the parent class); None: keep the one on the wire
    borrow: bool = False  # may use idle capacity above the rate (ceil = capacity), or capped at the rate
    dscp: int | None = None  # matched: only the flow's packets that arrive with this DSCP
    mark: int | None = None  # the DSCP the flow's packets leave with; others arriving with it are re-marked CS0
    via: tuple[Network, ...] = ()  # steering: the next hop (one address per family) the flow is routed to
    forward: bool = False  # steering through this host (a middlebox): the flow arrives here and is forwarded

    @property
    def steer_mark(self) -> int:
        """The firewall mark (and routing table id) a steered leg's flow gets here."""
        return STEER_BASE | self.classid

    @property
    def handle(self) -> int:
        return ROOT_HANDLE | self.classid

    @property
    def classid_text(self) -> str:
        return f"1:{self.classid:x}"

    @property
    def prio(self) -> int:
        """The preference of the u32 filter the leg had before nftables classified it (removed when found)."""
        return FILTER_PRIO_BASE + (self.classid - 1) // U32_NODES

    @property
    def node(self) -> int:
        """That filter's u32 node id."""
        return (self.classid - 1) % U32_NODES + 1

    @property
    def where(self) -> str:
        return f"{self.device}" + (f" in netns {self.netns}" if self.netns else "")

    @property
    def rate_bytes(self) -> int:
        assert self.rate is not None
        return -(-self.rate // 8)  # rounded up: the flow gets at least its reservation

    @property
    def capacity_bytes(self) -> int | None:
        return None if self.capacity is None else -(-self.capacity // 8)

    @property
    def burst_bytes(self) -> int:
        if self.burst is not None:
            return self.burst
        # Always within HTB's limit: 1600 bytes at the least rate (8 bytes/s) is 200 s, under ~274 s.
        return max(int(self.rate_bytes * DEFAULT_BURST_SECONDS), MIN_DEFAULT_BURST)

    @property
    def buffer_ticks(self) -> int:
        return _u32_ticks(self.rate_bytes, self.burst_bytes)

    def cburst_bytes(self, ceil: int) -> int:
        """The ceil's bucket: the burst given, else 10 ms at the ceil (a borrowing leg's ceil is the capacity)."""
        if self.burst is not None:
            return self.burst
        return max(int(ceil * DEFAULT_BURST_SECONDS), MIN_DEFAULT_BURST)

    @property
    def ports(self) -> bool:
        return self.src_port is not None or self.dst_port is not None


def _dscp(params: dict[str, str], name: str) -> int | None:
    text = params.get(name)
    if text is None:
        return None
    if text != "0" and (_NUMBER.fullmatch(text) is None or int(text) > 63):
        raise Invalid(f"{name} {text!r} must be a DSCP value, a decimal integer from 0 to 63")
    return int(text)


def parse_params(params: dict[str, str], *, identity_only: bool = False) -> Leg:
    """A :class:`Leg`, or :class:`Invalid` with the reason."""
    checked(params, PARAMS, "shaper")
    for name in ("device", "classid") + (() if identity_only else ("rate", "dst")):
        if not params.get(name):
            raise Invalid(f"parameter {name!r} is required")
    device, netns = params["device"], params.get("netns")
    classid = number(params, "classid", MIN_CLASSID, OLD_MAX_CLASSID if identity_only else MAX_CLASSID)
    assert classid is not None
    if identity_only:  # (a steered leg's via says stop has its policy routing to remove: not reloadable)
        try:
            via = _networks(params, "via")
        except Invalid:
            via = ()
        return Leg(device=device, classid=classid, netns=netns, via=via)

    rate = parse_rate(params["rate"])
    protocol = params.get("protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        raise Invalid(f"protocol {protocol!r} must be one of {', '.join(PROTOCOLS)}")
    dst_port = number(params, "dst_port", 1, 65535)
    src_port = number(params, "src_port", 1, 65535)
    if (dst_port or src_port) and protocol not in PORT_PROTOCOLS:
        raise Invalid(f"ports need protocol {', '.join(PORT_PROTOCOLS)}, not {protocol or 'none'}")
    capacity = parse_rate(params["capacity"], "capacity") if params.get("capacity") is not None else None
    if capacity is not None and capacity < rate:
        raise Invalid(f"rate {format_rate(rate)}bit/s is more than the interface's capacity "
                      f"{format_rate(capacity)}bit/s")
    borrow = BOOLEANS.get(params.get("borrow", "no").lower())
    if borrow is None:
        raise Invalid(f"borrow {params['borrow']!r} must be yes or no")
    dst, src = _networks(params, "dst"), _networks(params, "src")
    if src and not {n.version for n in src} & {n.version for n in dst}:
        raise Invalid(f"src {params['src']!r} has no address of the family of dst {params['dst']!r}")
    via = _networks(params, "via")
    forward = BOOLEANS.get(params.get("forward", "no").lower())
    if forward is None:
        raise Invalid(f"forward {params['forward']!r} must be yes or no")
    for hop in via:
        if hop.prefixlen != hop.max_prefixlen:
            raise Invalid(f"via {params['via']!r} must be addresses (the next hop), not networks")
    if via:
        missing = [str(d) for d in matched(dst, src) if d.version not in {h.version for h in via}]
        if missing:
            raise Invalid(f"via {params['via']!r} has no next hop of the family of dst {missing[0]}: that part of "
                          f"the flow would not be steered")
    if (via or forward) and not src:
        raise Invalid("a steered leg needs src: without it, the rule would steer every sender's traffic to dst")
    leg = Leg(device=device, classid=classid, netns=netns, rate=rate, dst=dst, src=src, protocol=protocol,
              dst_port=dst_port, src_port=src_port, burst=number(params, "burst", 1, 2**32 - 1), capacity=capacity,
              borrow=borrow, dscp=_dscp(params, "dscp"), mark=_dscp(params, "mark"), via=via, forward=forward)
    if leg.burst is not None and leg.buffer_ticks > MAX_TICKS:
        raise Invalid(f"burst {leg.burst} bytes is more than HTB can hold at rate {format_rate(rate)}bit/s: "
                      f"its buffer is 2^32 scheduler ticks, about {MAX_TICKS / tick_in_usec / 1e6:.0f} s of sending")
    return leg
