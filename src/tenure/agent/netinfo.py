"""The host's interfaces and addresses, as its agent reports them when it registers (docs/dataplane.md, section 5).

A topology node may leave out its ``address`` and ``interface`` labels: the server takes them from what the
host's agent reported (``capabilities.network``), so shapers work without hand work. Only interfaces with a
global address count (not ``lo``, not link-local addresses); ``default`` is the interface of the IPv4 default
route (else IPv6's), if there is one.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

log = logging.getLogger(__name__)

RT_SCOPE_UNIVERSE = 0  # a global address
# Not reported: secondary IPv4 and temporary IPv6 (the same bit), duplicate, deprecated and tentative addresses.
SKIP_FLAGS = 0x01 | 0x08 | 0x20 | 0x40
MAX_INTERFACES, MAX_ADDRESSES = 64, 16  # the server's limits (services/agents.py validate_network)


def host_network() -> dict[str, Any]:
    """``{"interfaces": [{"name", "addresses": ["10.0.0.1/24", "fd00::1/64"]}], "default": name | None}``, read
    through netlink in the agent's own network namespace; ``{}`` if netlink cannot be read."""
    try:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
            found: dict[str, list[str]] = {}  # in the kernel's order: an interface's primary address first
            for addr in ipr.get_addr():
                name = names.get(addr["index"])
                flags = addr.get_attr("IFA_FLAGS") or addr["flags"]
                if name is None or name == "lo" or addr["scope"] != RT_SCOPE_UNIVERSE or flags & SKIP_FLAGS:
                    continue
                ip = addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")
                cidr = f"{ip}/{addr['prefixlen']}"
                listed = found.setdefault(name, [])
                if ip and cidr not in listed and len(listed) < MAX_ADDRESSES:
                    listed.append(cidr)
            default = None
            for family in (socket.AF_INET, socket.AF_INET6):
                for route in ipr.get_default_routes(family=family):
                    default = default or names.get(route.get_attr("RTA_OIF"))
    except Exception as exc:  # noqa: BLE001 - a report, never a reason not to register
        log.warning("cannot read the host's interfaces", extra={"error": str(exc)})
        return {}
    kept = sorted(found.items(), key=lambda item: (item[0] != default, item[0]))[:MAX_INTERFACES]  # default first
    return {"interfaces": [{"name": n, "addresses": a} for n, a in sorted(kept)],
            "default": default if default in found else None}
