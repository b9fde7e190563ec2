"""``python:tenure.drivers.tc:Shaper``: one bandwidth reservation leg as Linux traffic control and nftables.

A leg reserved for a flow leaving this host becomes an HTB class that the
flow's packets are classified into. The tc side is done through rtnetlink (no
``tc`` process; see Reads below). On the egress device the wire layout is one tree::

    root qdisc   htb 1:  default fffe       shared by every leg on the device
    class        1:1     (parent 1:)        rate = ceil = the interface's capacity
    class        1:fffe  (parent 1:1)       everything unreserved: rate = capacity - the legs' rates,
                                            ceil = capacity, prio 1
    class        1:<classid> (parent 1:1)   one per leg: rate = the leg's, ceil = the rate (cap) or the
                                            capacity (borrow), prio 0

and in the namespace's nftables table ``inet tenure`` (:mod:`.nft`), the leg's rules: one per address family of
its destination (in the chain of its device and destination host, reached through a verdict map, so that other
traffic does not walk it), setting the packet's priority to the leg's class (HTB takes such a packet straight into
it) and its DSCP to the leg's ``mark``; and, shared by the legs marking alike, rules re-marking other packets that
carry that DSCP to best effort.

- **A guarantee, not a cap.** Every class shares the parent 1:1 at the interface's capacity, and unclassified
  traffic goes to the default class 1:fffe, which gets what the legs leave: a leg keeps its rate however much
  other traffic the host sends (docs/dataplane.md). Starting, changing or stopping a leg touches its own class,
  its own rules and the default class's rate, never another leg's.
- **Ownership.** A root qdisc with handle 0 is the kernel's default (noqueue,
  pfifo_fast, mq, fq_codel) and is replaced; ``htb 1: default fffe`` is taken to be
  ours, and ``htb 1: default 0`` is ours from before the tree (the first start on the device makes the
  tree in its place; monitors report its legs not running, so they are started again). Anything else
  (another handle or kind, an HTB with another default class) was
  configured by someone else: start refuses (OCF_ERR_GENERIC with the reason)
  instead of destroying it, and stop and monitor treat the leg as absent. The
  root qdisc is deleted when the last leg's class goes (the kernel puts its
  default back), the nftables table with the last rule. In the table, a leg's rules are those whose comment
  starts ``tenure DEVICE 1:CLASSID``; rules without such a comment are never touched.
- **The u32 filters of before.** Agents before nftables classified with a u32 filter at a fixed place per
  classid (preference ``100 + (classid-1) // 4095``, node ``(classid-1) % 4095 + 1``). A start deletes the
  leg's filter there if it finds one; a monitor reports the leg's rules missing, so after an upgrade each leg
  is started once again. stop deletes any filter still into the leg's class.
- **Steering.** A leg with ``via`` (a segment of a steering reservation that ends at a middlebox) also routes its
  flow to that next hop: a firewall mark from its nftables rules, an ip rule and a routing table of its own
  (:mod:`.steer`). One with ``forward`` (on a middlebox) needs the device to forward, and says so if it does not.
- **Match.** IPv4, IPv6 or both (a ``dst`` of one address of each family): destination (and source) prefix,
  protocol, ports (nftables finds the transport header past IPv6 extension headers and IPv4 options), DSCP.
- **Idempotent and minimal.** start reads the qdisc, class and rules first and
  writes only what differs: an unchanged leg sends nothing to the kernel (class
  statistics and rule counters keep counting), a changed rate or burst is a change of the class in
  place (same handle, same counters), a changed match or mark a replacement of the leg's rules in one nftables
  transaction. reload is start.
- **Why the classid is a parameter.** The agent takes it from its local
  allocator (a claim keyed by the instance), so the same instance gets the same
  classid after an agent restart, and the restart's start finds everything in
  place and changes nothing. The classid output is ``1:<classid in hex>``, as
  ``tc class show`` prints it.

Rates are bit/s of layer-2 bytes (HTB counts the Ethernet header): the class
rate is ``ceil(rate / 8)`` bytes/s, and the least rate is 64 bit/s (pyroute2
always sends HTB's rate table, whose 2 KiB entry must fit 32 bits of scheduler
ticks). The default burst (and cburst) is 10 ms at the rate, at least 1600
bytes; a given burst must fit HTB's buffer (2^32 ticks, about 274 s).

**Reads** are rtnetlink requests parsed here, a few attributes per object
(pyroute2's decoding costs ~0.5 ms an object; it only adds and changes). What
an operation reads:

- **The leg's old u32 filter** (start only) by two lookups (non-dump RTM_GETTFILTER): the preference's root
  hash table, whose id the kernel chose, then the node in it; the same cost whatever else is on the device.
- **The namespace's nftables table** (``nft -j list table``), fresh for start and stop, and for monitor vouched
  for by a netfilter socket subscribed to nftables' notifications, as below for tc.
- **The device's View**: its index (RTM_GETLINK by name), root qdisc (a qdisc
  dump: one per device of the namespace) and classes (a class dump: every class
  on the device, ~2 us each in the kernel; a class decoded only when asked for).
  A class cannot be fetched alone: a non-dump RTM_GETTCLASS (like RTM_GETQDISC)
  answers the asker nothing unless it asks for an echo, and sends the class to
  every RTNLGRP_TC listener, a notification of a change that did not happen.
- **Fresh for start, reload and stop**: a View from a dump that started after
  they asked. Dumps are single-flight per device: whoever asks while none runs
  makes one, whoever asks while one runs waits for the next, and all who wait
  when it starts share it.
- **Vouched for, for monitor**: each namespace has a watch, a socket subscribed
  to its link and tc notifications (RTMGRP_LINK, RTMGRP_TC). The kernel queues
  a notification before the request that made the change returns, and reports
  lost ones (ENOBUFS), so a View is still the device's state as long as nothing
  arrived since just before its dump started. monitor uses the last View while
  that holds, else a fresh one as above. On a device where nothing changes a
  monitor reads nothing from the kernel, however many legs it holds; the dumps
  (proportional to the classes) are paid by start and stop and by the first
  monitor after any change in the namespace.
- **Writes**: adding or changing a class goes through pyroute2
  (an IPRoute opened for the operation, only when something differs); deletes
  are sent by hand; rules go in one ``nft -j -f -`` transaction. stop deletes the leg's rules (first: no packet
  is classified into a class about to go), an old filter at the leg's place, then the class;
  only if other filters still hold the class (the kernel answers EBUSY), or the
  class is already gone, does it dump the device's filters to delete every u32
  node into the class.

**Threads, locks, sockets.** Handler methods run in threads, several at once,
and the agent makes a Shaper per instance: device locks, Views, watches and
sockets belong to the module, shared by all. start, reload and stop on one
device run under that device's lock; monitor only reads and takes no lock (the
agent runs one operation at a time per instance, and legs share only the root
qdisc). Sockets are kept per namespace, each lent to one operation at a time,
and closed after IDLE_SOCKET_SECONDS unused (by a timer thread that exists only
while some are kept), because a socket keeps its namespace alive: every use
checks what the namespace's name refers to now, so a deleted namespace is
absent (its sockets are closed at once) and a re-created one gets new sockets.
A socket for another namespace (``netns``) is made by a short-lived thread that
enters the namespace (``setns`` moves only the calling thread) and leaves the
socket behind, already bound to it; pyroute2's ``NetNS`` would fork the agent,
a multi-threaded process, for every call.

**Modules.** :mod:`.params` (a leg's parameters, checked, and where it lives
on the device), :mod:`.netlink` (rtnetlink by hand: messages, dumps, sockets
per namespace, TC and nftables watches), :mod:`.wire` (the kernel's classes and nodes, a
device's View, and :class:`~.wire.Wire`, which reads and writes one leg's class), :mod:`.nft` (the leg's
nftables rules), :mod:`.steer` (a steered leg's ip rules and routes: policy routing to the next hop) and
:mod:`.shaper` (the handler, :class:`Shaper`, under its device's lock).
"""

from __future__ import annotations

from tenure.drivers.tc.mirror import Mirror
from tenure.drivers.tc.shaper import Shaper

__all__ = ["Mirror", "Shaper"]
