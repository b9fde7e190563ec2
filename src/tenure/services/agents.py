"""The agent registry: one agent per host, its heartbeats, and up/down as events (Neutron's report_state).

An agent registers (host, the kinds of events it consumes, version,
capabilities) and then heartbeats. A registration that is new, or that changes
something, is an event; a heartbeat alone only moves ``last_seen`` (written
through the writer like every change, but with no event and no new revision).
The sweeper marks silent agents ``down`` in one command; the next heartbeat or
registration brings them ``up`` again. Each transition is an event of kind
``agent``, object id the host, label ``host``.

Silence is measured from ``max(last_seen, restored_at)``: an agent is not
marked down merely because the server itself was down for a while.

The agents are a :class:`~tenure.store.writer.Published` map: the writer thread
changes it inside commands, readers see it as of the last commit.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update

from tenure.clock import Clock, utcnow
from tenure.domain.access import ADMIN, Principal, require_admin
from tenure.domain.errors import Forbidden, InvalidInput, NotFound
from tenure.domain.events import KINDS
from tenure.domain.names import validate_name, validate_text
from tenure.store import schema
from tenure.store.inlist import rows_in
from tenure.store.writer import Batch, Op, Published, Writer

log = logging.getLogger("tenure.agents")

MAX_VERSION_LENGTH = 64
MAX_CAPABILITIES_BYTES = 16 * 1024
MAX_CAPABILITIES_DEPTH = 32  # deeper JSON is no capability list, and some JSON encoders refuse it
UP, DOWN = "up", "down"

# Consecutive heartbeats of one batch become one executemany of this statement.
UPDATE_SEEN = (
    update(schema.agents)
    .where(schema.agents.c.host == bindparam("b_host"))
    .values(last_seen=bindparam("b_last_seen"))
)


@dataclass(frozen=True, slots=True)
class AgentInfo:
    host: str
    kinds: tuple[str, ...]
    version: str
    capabilities: dict[str, Any]
    state: str  # up | down
    registered_at: datetime
    last_seen: datetime
    revision: int

    def body(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "kinds": list(self.kinds),
            "version": self.version,
            "capabilities": self.capabilities,
            "state": self.state,
            "registered_at": self.registered_at.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "revision": self.revision,
        }

    def row(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "kinds": json.dumps(list(self.kinds)),
            "version": self.version,
            "capabilities": json.dumps(self.capabilities, ensure_ascii=False),
            "state": self.state,
            "registered_at": self.registered_at,
            "last_seen": self.last_seen,
            "revision": self.revision,
        }

    def same_registration(self, kinds: tuple[str, ...], version: str, capabilities: dict[str, Any]) -> bool:
        # Compared as canonical JSON: in Python 1 == 1.0 == True, in JSON they differ.
        return (self.kinds, self.version, _canonical(self.capabilities)) == (kinds, version, _canonical(capabilities))


# ----------------------------------------------------------------- validation


def validate_kinds(kinds: object) -> tuple[str, ...]:
    """The kinds of events an agent consumes: a list of known kinds, kept sorted and without repeats."""
    if not isinstance(kinds, list | tuple) or not all(isinstance(k, str) for k in kinds):
        raise InvalidInput("kinds must be a list of strings", code="invalid_kind")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise InvalidInput(
            f"unknown kind {unknown[0]!r}; valid kinds: {', '.join(KINDS)}", code="invalid_kind", valid=list(KINDS)
        )
    return tuple(sorted(set(kinds)))


def validate_version(version: object) -> str:
    if not isinstance(version, str) or not version:
        raise InvalidInput(f"version must be a string of 1 to {MAX_VERSION_LENGTH} characters",
                           code="invalid_version")
    return validate_text(version, what="version", max_length=MAX_VERSION_LENGTH, code="invalid_version")


def validate_capabilities(capabilities: object) -> dict[str, Any]:
    """A JSON object of at most 16 kB that every store and every JSON reader can take back."""
    if capabilities is None:
        return {}
    if not isinstance(capabilities, dict):
        raise InvalidInput("capabilities must be a JSON object", code="invalid_capabilities")
    if _depth(capabilities) > MAX_CAPABILITIES_DEPTH:
        raise InvalidInput(f"capabilities are nested more than {MAX_CAPABILITIES_DEPTH} levels deep",
                           code="invalid_capabilities")
    try:
        size = len(json.dumps(capabilities, ensure_ascii=False, allow_nan=False).encode("utf-8"))
    except (ValueError, TypeError):  # NaN or Infinity (not JSON), lone surrogates (not UTF-8)
        raise InvalidInput("capabilities must be plain JSON: no NaN or Infinity, no lone surrogates",
                           code="invalid_capabilities") from None
    if size > MAX_CAPABILITIES_BYTES:
        raise InvalidInput(
            f"capabilities are {size} bytes of JSON; the limit is {MAX_CAPABILITIES_BYTES}",
            code="invalid_capabilities",
        )
    return json.loads(json.dumps(capabilities))  # a private copy the caller cannot change afterwards


MAX_INTERFACES = 64
MAX_ADDRESSES = 16  # per interface


def validate_network(net: object) -> None:
    """``capabilities.network`` as ``tenure agent`` reports it (agent/netinfo.py): interfaces with names and
    addresses in CIDR form, and the default route's interface; anything else is refused, not stored."""
    def bad(why: str) -> InvalidInput:
        return InvalidInput(f"capabilities.network: {why}", code="invalid_capabilities")

    if not isinstance(net, dict) or set(net) - {"interfaces", "default"}:
        raise bad("must be an object with interfaces and default")
    interfaces = net.get("interfaces", [])
    if not isinstance(interfaces, list) or len(interfaces) > MAX_INTERFACES:
        raise bad(f"interfaces must be a list of at most {MAX_INTERFACES}")
    for iface in interfaces:
        if not isinstance(iface, dict) or set(iface) != {"name", "addresses"}:
            raise bad("each interface is an object with name and addresses")
        name, addresses = iface["name"], iface["addresses"]
        if not isinstance(name, str) or not 1 <= len(name) <= 15 or "/" in name or not name.isprintable():
            raise bad(f"interface name {name!r} is not an interface name")
        if not isinstance(addresses, list) or len(addresses) > MAX_ADDRESSES:
            raise bad(f"addresses of {name} must be a list of at most {MAX_ADDRESSES}")
        for a in addresses:
            try:
                if not isinstance(a, str) or "/" not in a:
                    raise ValueError(a)
                ipaddress.ip_interface(a)
            except ValueError:
                raise bad(f"{a!r} on {name} is not an address with its prefix length, as 10.0.0.1/24") from None
    default = net.get("default")
    if default is not None and not isinstance(default, str):
        raise bad("default must be an interface name or null")


def _ip(cidr: str) -> str:
    return str(ipaddress.ip_interface(cidr).ip)


def _interfaces(net: object) -> list[tuple[str, list[str]]]:
    """(name, [cidr]) of a stored ``capabilities.network``, skipping whatever is malformed (stored before it
    was checked, or by another client)."""
    ifaces = net.get("interfaces") if isinstance(net, Mapping) else None
    out = []
    for i in ifaces if isinstance(ifaces, list) else ():
        if isinstance(i, Mapping) and isinstance(i.get("name"), str) and isinstance(i.get("addresses"), list):
            out.append((i["name"], [a for a in i["addresses"] if isinstance(a, str) and _is_cidr(a)]))
    return out


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_interface(text)
    except ValueError:
        return False
    return True


def _depth(value: object) -> int:
    """How deeply lists and objects nest in ``value`` (iteratively: no recursion limit to hit)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list | tuple):
            deepest = max(deepest, d)
            if d <= MAX_CAPABILITIES_DEPTH:  # deeper than the limit is refused anyway: stop looking
                stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _canonical(value: dict[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _from_row(row: Any) -> AgentInfo:
    return AgentInfo(row.host, tuple(json.loads(row.kinds)), row.version, json.loads(row.capabilities), row.state,
                     row.registered_at, row.last_seen, row.revision)


def _labels(host: str) -> dict[str, str]:
    return {"host": host}


# -------------------------------------------------------------------- access


def _authorize(p: Principal, host: str, action: str) -> None:
    """Admins act for any host; an agent only for its own; members not at all."""
    if p.is_admin:
        return
    if p.role == "agent":
        if host != p.host:
            raise Forbidden(f"{action} for host {host!r}: this token is an {p.describe()}")
        return
    raise Forbidden(f"{action} needs an admin or agent token; this token is a {p.describe()}")


def _not_found(host: str, *, code: str = "agent_not_found") -> NotFound:
    return NotFound(f"no agent is registered for host {host!r}", code=code, host=host)


# ------------------------------------------------------------------- service


class AgentService:
    def __init__(self, *, writer: Writer, clock: Clock = utcnow, down_after: float = 75.0) -> None:
        if down_after <= 0:
            raise ValueError("down_after must be positive")
        self.writer = writer
        self.clock = clock
        self.down_after = timedelta(seconds=down_after)
        self.restored_at = clock()  # silence is counted from here at the earliest
        self._map: Published[str, AgentInfo] = Published()
        self._agents = self._map.working  # the writer thread's
        self._owners: dict[str, int] | None = None  # reported address -> how many agents report it
        self._views = self._map.view  # as of the last commit; read by anyone
        # Called inside a registration's command, as fn(batch, host): what waits for an agent on the host.
        self.on_registered: list[Callable[[Batch, str], None]] = []
        # Called with the hosts whose usable addresses may have changed: the registering (or removed) agent's,
        # and every host reporting an address it reported before or reports now (shared addresses are nobody's).
        self.on_network: list[Callable[[Batch, set[str]], None]] = []

    def registered(self, host: str) -> bool:
        """Whether an agent is registered for ``host`` (writer thread: the working map)."""
        return host in self._agents

    def network(self, host: str) -> Mapping[str, Any] | None:
        """What ``host``'s agent reported of its interfaces and addresses (writer thread: the working map),
        without any address another agent reports too: an agent vouches for its own host only, so an address
        two hosts claim is nobody's (its shapers then say that no address is known)."""
        info = self._agents.get(host)
        net = info.capabilities.get("network") if info is not None else None
        if not isinstance(net, Mapping):
            return None
        owners = self._address_owners()
        return {"default": net.get("default"), "interfaces": [
            {"name": name, "addresses": [a for a in cidrs if owners.get(_ip(a), 1) == 1]}
            for name, cidrs in _interfaces(net)]}

    def _address_owners(self) -> dict[str, int]:
        """How many agents report each address (rebuilt after a change of anyone's capabilities)."""
        if self._owners is None:
            owners: dict[str, int] = {}
            for info in self._agents.values():
                for ip in {_ip(a) for _, cidrs in _interfaces(info.capabilities.get("network")) for a in cidrs}:
                    owners[ip] = owners.get(ip, 0) + 1
            self._owners = owners
        return self._owners

    def _put(self, batch: Batch, host: str, info: AgentInfo | None) -> None:
        old = self._agents.get(host)
        self._map.put(batch, host, info)
        if old is None or info is None or old.capabilities is not info.capabilities:
            self._owners = None
            batch.on_undo(self._forget_owners)

    def _forget_owners(self) -> None:
        self._owners = None

    def _network_changed(self, batch: Batch, host: str, old: Mapping[str, Any] | None,
                         new: Mapping[str, Any] | None, before: Mapping[str, int]) -> None:
        """``host``'s report changed (``before``: the address index before it did): its own shapers follow, and
        those of every host one of whose addresses became its own or stopped being (an address shared by all,
        such as a docker0 bridge's, stays nobody's and touches nobody)."""
        after = self._address_owners()
        ips = {_ip(a) for caps in (old, new) if caps
               for _, cidrs in _interfaces(caps.get("network")) for a in cidrs}
        flipped = {ip for ip in ips if (before.get(ip, 0) == 1) != (after.get(ip, 0) == 1)}
        hosts = {host} | {h for h, info in self._agents.items()
                          if flipped and not flipped.isdisjoint(
                              _ip(a) for _, cidrs in _interfaces(info.capabilities.get("network")) for a in cidrs)}
        for fn in self.on_network:
            fn(batch, hosts)

    def load(self, conn: Connection) -> None:
        self._owners = None
        for row in conn.execute(select(schema.agents)):
            self._map.load(row.host, _from_row(row))
        self.restored_at = self.clock()

    def refresh(self, batch: Batch, conn: Connection, hosts: Collection[str] | None) -> None:
        """A follower: the agents that events named (``None``: all of them) as stored in ``conn``'s snapshot.

        Heartbeats move ``last_seen`` without an event; a follower's tailer refreshes every agent now and
        then (``hosts=None``) so that its answers do not show old heartbeats for long.
        """
        self._owners = None
        q = select(schema.agents)
        rows = conn.execute(q) if hosts is None else rows_in(conn, q, schema.agents.c.host, hosts)
        stored = {row.host: _from_row(row) for row in rows}
        for host in (hosts if hosts is not None else set(self._agents) | set(stored)):
            info = stored.get(host)
            if info != self._agents.get(host):
                self._put(batch, host, info)

    # ------------------------------------------------------------- helpers

    def _silent_since(self, info: AgentInfo) -> datetime:
        return max(info.last_seen, self.restored_at)

    # ------------------------------------------------------------- commands

    def register_op(
        self,
        host: str,
        *,
        kinds: object,
        version: object,
        capabilities: object = None,
        principal: Principal = ADMIN,
    ) -> Op:
        """Returns ``(info, created)``: created is True for a first registration (or one after removal)."""
        _authorize(principal, host, "registering an agent")
        validate_name(host, what="host")
        kinds_ = validate_kinds(kinds)
        version_ = validate_version(version)
        caps = validate_capabilities(capabilities)
        if "network" in caps:
            validate_network(caps["network"])

        def apply(batch: Batch) -> tuple[AgentInfo, bool]:
            old = self._agents.get(host)
            if old is None:
                info = AgentInfo(host, kinds_, version_, caps, UP, batch.now, batch.now, batch.next_revision())
                batch.write(schema.agents.insert(), info.row())
                before = dict(self._address_owners())
                self._put(batch, host, info)
                batch.emit("agent", host, "created", _labels(host), info.body())
                _log_on_commit(batch, "agent registered", host=host, version=version_)
                self._network_changed(batch, host, None, caps, before)
                for fn in self.on_registered:
                    fn(batch, host)
                return info, True
            if old.state == UP and old.same_registration(kinds_, version_, caps):
                info = replace(old, last_seen=batch.now)
                batch.write(UPDATE_SEEN, {"b_host": host, "b_last_seen": batch.now})
                self._put(batch, host, info)
                return info, False
            info = AgentInfo(host, kinds_, version_, caps, UP, old.registered_at, batch.now, batch.next_revision())
            row = info.row()
            del row["host"], row["registered_at"]
            batch.write(update(schema.agents).where(schema.agents.c.host == host).values(**row), {})
            network_changed = old.capabilities.get("network") != caps.get("network")
            before = dict(self._address_owners()) if network_changed else {}
            self._put(batch, host, info)
            batch.emit("agent", host, "updated", _labels(host), info.body())
            if old.state == DOWN:
                _log_on_commit(batch, "agent up", host=host)
            if network_changed:
                self._network_changed(batch, host, old.capabilities, caps, before)
            for fn in self.on_registered:
                fn(batch, host)
            return info, False

        return Op(apply)

    def heartbeat_op(self, host: str, *, principal: Principal = ADMIN) -> Op:
        """report_state: moves ``last_seen`` (no event), and brings a down agent up (an event)."""
        _authorize(principal, host, "heartbeating")

        def apply(batch: Batch) -> AgentInfo:
            old = self._agents.get(host)
            if old is None:
                raise NotFound(f"no agent is registered for host {host!r}; register it again",
                               code="agent_not_registered", host=host)
            if old.state == UP:
                info = replace(old, last_seen=batch.now)
                batch.write(UPDATE_SEEN, {"b_host": host, "b_last_seen": batch.now})
                self._put(batch, host, info)
                return info
            info = replace(old, state=UP, last_seen=batch.now, revision=batch.next_revision())
            batch.write(
                update(schema.agents)
                .where(schema.agents.c.host == host)
                .values(state=UP, last_seen=batch.now, revision=info.revision),
                {},
            )
            self._put(batch, host, info)
            batch.emit("agent", host, "updated", _labels(host), info.body())
            _log_on_commit(batch, "agent up", host=host)
            return info

        return Op(apply)

    def remove_op(self, host: str, *, principal: Principal = ADMIN) -> Op:
        require_admin(principal, "removing an agent")

        def apply(batch: Batch) -> AgentInfo:
            old = self._agents.get(host)
            if old is None:
                raise _not_found(host)
            removed = replace(old, revision=batch.next_revision())
            batch.write(delete(schema.agents).where(schema.agents.c.host == host), {})
            before = dict(self._address_owners())
            self._put(batch, host, None)
            self._network_changed(batch, host, old.capabilities, None, before)
            batch.emit("agent", host, "deleted", _labels(host), removed.body())
            _log_on_commit(batch, "agent removed", host=host)
            return removed

        return Op(apply)

    def sweep_op(self) -> Op:
        """Mark down every up agent silent for longer than ``down_after`` (as of the batch's clock).

        Returns the agents marked down, in host order.
        """

        def apply(batch: Batch) -> list[AgentInfo]:
            cutoff = batch.now - self.down_after
            marked = []
            for host in sorted(self._agents):
                old = self._agents[host]
                if old.state != UP or self._silent_since(old) >= cutoff:
                    continue
                info = replace(old, state=DOWN, revision=batch.next_revision())
                batch.write(
                    update(schema.agents)
                    .where(schema.agents.c.host == host)
                    .values(state=DOWN, revision=info.revision),
                    {},
                )
                self._put(batch, host, info)
                batch.emit("agent", host, "updated", _labels(host), info.body())
                _log_on_commit(batch, "agent down", host=host, last_seen=old.last_seen.isoformat())
                marked.append(info)
            return marked

        return Op(apply)

    def sweep(self) -> list[AgentInfo]:
        """What the periodic sweeper calls: a command only when some agent looks silent."""
        cutoff = self.clock() - self.down_after
        if not any(a.state == UP and self._silent_since(a) < cutoff for a in list(self._views.values())):
            return []
        return self.writer.execute(self.sweep_op())

    # ---------------------------------------------------------------- reads

    def list_at(
        self, conn: Connection, pins: Mapping[str, frozenset[str]]
    ) -> Iterator[tuple[str, dict[str, str], dict[str, Any]]]:
        """Every agent as of ``conn``'s snapshot (a watch's ``initial=true``): (host, labels, body)."""
        A = schema.agents.c
        q = select(schema.agents)
        for pin in ("#id", "host"):  # the object id of an agent is its host, and so is its one label
            if pin in pins:
                q = q.where(A.host.in_(sorted(pins[pin])))
        for row in conn.execute(q.order_by(A.host)).all():
            info = _from_row(row)
            yield info.host, _labels(info.host), info.body()

    def list(self, *, principal: Principal = ADMIN) -> list[AgentInfo]:
        if principal.is_admin:
            return sorted(self._views.values(), key=lambda a: a.host)
        if principal.role == "agent":
            own = self._views.get(principal.host or "")
            return [own] if own is not None else []
        raise Forbidden(f"listing agents needs an admin or agent token; this token is a {principal.describe()}")

    def get(self, host: str, *, principal: Principal = ADMIN) -> AgentInfo:
        _authorize(principal, host, "reading an agent")
        info = self._views.get(host)
        if info is None:
            raise _not_found(host)
        return info


def _log_on_commit(batch: Batch, msg: str, **fields: Any) -> None:
    batch.on_commit(lambda: log.info(msg, extra=fields))
