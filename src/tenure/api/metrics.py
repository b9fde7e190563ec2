"""Prometheus metrics: requests, latency, claims, pool utilisation and reservations.

Each app gets its own registry (tests build many apps in one process). Pool
gauges are computed at scrape time from the published pool views, so they cost
nothing on the claim path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

disable_created_metrics()  # the _created series double every counter for no use here

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _LrmCollector(Collector):
    """The host agent's resource manager, read at scrape time."""

    def __init__(self, lrm: Callable[[], Any]) -> None:
        self._lrm = lrm

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        lrm = self._lrm()
        if lrm is None:
            return []
        st = lrm.stats()
        by_state = GaugeMetricFamily("tenure_lrm_resources", "Resource instances by state", labels=["state"])
        for state, n in sorted(st["states"].items()):
            by_state.add_metric([state], n)
        out = [by_state]
        for name, doc, value in (("tenure_lrm_in_flight", "Operations running now", st["in_flight"]),
                                 ("tenure_lrm_queued", "Operations waiting in instance queues", st["queued"]),
                                 ("tenure_lrm_recurring", "Recurring operations scheduled", st["recurring"]),
                                 ("tenure_lrm_long_polls", "Requests waiting for an operation's result (?wait=)",
                                  st["long_polls"])):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            out.append(g)
        done = CounterMetricFamily("tenure_lrm_operations", "Operations finished by action and execution status",
                                   labels=["action", "status"])
        for (action, status), n in sorted(st["finished"].items()):
            done.add_metric([action, status], n)
        out.append(done)
        return out


class _StateCollector(Collector):
    def __init__(self, runtime: Callable[[], Any], hub: Any) -> None:
        self._runtime = runtime
        self._hub = hub

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        rt = self._runtime()
        if rt is None:
            return []
        size = GaugeMetricFamily("tenure_pool_size", "Values a pool can hand out (ranges minus reserved)",
                                 labels=["pool"])
        used = GaugeMetricFamily("tenure_pool_used", "Values currently claimed in a pool", labels=["pool"])
        util = GaugeMetricFamily("tenure_pool_utilization", "Share of a pool in use (0..1)", labels=["pool"])
        for v in rt.allocator.pool_views():
            size.add_metric([v.name], v.size)
            used.add_metric([v.name], v.used)
            util.add_metric([v.name], v.used / v.size if v.size else 1.0)
        rev = GaugeMetricFamily("tenure_revision", "Newest committed revision of the event log")
        rev.add_metric([], rt.revision)
        batches = CounterMetricFamily("tenure_writer_batches", "Transactions committed by the writer")
        batches.add_metric([], rt.writer.batches)
        commands = CounterMetricFamily("tenure_writer_commands", "Commands applied by the writer")
        commands.add_metric([], rt.writer.commands)
        compacted = GaugeMetricFamily("tenure_compacted_revision", "Events at or below this revision are compacted")
        compacted.add_metric([], rt.history.compacted)
        by_state = GaugeMetricFamily("tenure_reservations", "Reservations by state (ended ones until purged)",
                                     labels=["state"])
        for state, n in rt.reservations.count_by_state().items():
            by_state.add_metric([state], n)
        instances = GaugeMetricFamily("tenure_instances", "Desired-state instances by state", labels=["state"])
        for state, n in rt.instances.count_by_state().items():
            instances.add_metric([state], n)
        out = [size, used, util, rev, batches, commands, compacted, by_state, instances]
        hub = self._hub
        if hub is not None:
            watchers = GaugeMetricFamily("tenure_watchers", "Open watch streams")
            watchers.add_metric([], hub.watchers)
            out.append(watchers)
            for name, doc, value in (
                ("tenure_watch_events", "Events dispatched to watchers", hub.dispatched),
                ("tenure_watch_deliveries", "Event deliveries to watchers", hub.delivered),
                ("tenure_watch_cutoffs", "Watchers cut off for reading too slowly", hub.cutoffs),
            ):
                c = CounterMetricFamily(name, doc)
                c.add_metric([], value)
                out.append(c)
        return out


class _BackupCollector(Collector):
    """Scheduled backups (``services.backups.Schedule``): the newest one's time and revision, and failures."""

    def __init__(self, schedule: Any) -> None:
        self._schedule = schedule

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        s = self._schedule
        when = GaugeMetricFamily("tenure_backup_last_success_timestamp_seconds",
                                 "When the newest scheduled backup was taken (Unix time; 0: none yet by this process)")
        when.add_metric([], s.last_at.timestamp() if s.last_at is not None else 0.0)
        revision = GaugeMetricFamily("tenure_backup_last_revision", "The revision the newest scheduled backup holds")
        revision.add_metric([], s.last.revision if s.last is not None else 0)
        failures = CounterMetricFamily("tenure_backup_failures", "Scheduled backups that failed")
        failures.add_metric([], s.failures)
        return [when, revision, failures]


class _ReplicaCollector(Collector):
    """This replica's part in a replica set (``services.replica.Replica``), read at scrape time."""

    ROLES = ("leader", "follower", "candidate")

    def __init__(self, replica: Callable[[], Any]) -> None:
        self._replica = replica

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        r = self._replica()
        if r is None:
            return []
        role = GaugeMetricFamily("tenure_replica_role", "1 for this replica's role now (leader, follower, candidate: "
                                 "between roles)", labels=["role"])
        for name in self.ROLES:
            role.add_metric([name], 1.0 if r.role.role == name else 0.0)
        epoch = GaugeMetricFamily("tenure_replica_epoch", "The leadership epoch this replica knows of")
        epoch.add_metric([], r.role.epoch)
        elections = CounterMetricFamily("tenure_replica_elections", "Times this replica took the lead")
        elections.add_metric([], r.elections)
        changes = CounterMetricFamily("tenure_replica_leader_changes", "Changes of leader this replica saw")
        changes.add_metric([], r.changes)
        lag, behind = r.lag()
        lag_rev = GaugeMetricFamily("tenure_replica_lag_revisions", "Revisions committed in the store and not yet "
                                    "applied here (0 on the leader)")
        lag_rev.add_metric([], lag)
        lag_s = GaugeMetricFamily("tenure_replica_lag_seconds", "Seconds since this follower was last caught up, "
                                  "while it is behind (0 when caught up, and on the leader)")
        lag_s.add_metric([], behind)
        return [role, epoch, elections, changes, lag_rev, lag_s]


class _HttpCollector(Collector):
    """The HTTP layer's connections (``api.server.HttpStats``), read at scrape time."""

    def __init__(self, stats: Any) -> None:
        self._stats = stats

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        st = self._stats
        conns = GaugeMetricFamily("tenure_http_connections", "Open HTTP connections")
        conns.add_metric([], st.open)
        limit = GaugeMetricFamily("tenure_http_connection_limit", "Most HTTP connections open at once; more are "
                                  "closed at once (set from the descriptor limit)")
        limit.add_metric([], st.max_connections if st.max_connections is not None else float("inf"))
        timeouts = CounterMetricFamily("tenure_http_header_timeouts", "Connections closed for not sending a "
                                       "request's headers within the header timeout")
        timeouts.add_metric([], st.header_timeouts)
        body = CounterMetricFamily("tenure_http_body_timeouts", "Connections closed for a request body that "
                                   "stopped coming for the body timeout")
        body.add_metric([], st.body_timeouts)
        refused = CounterMetricFamily("tenure_http_refused_connections", "Connections closed at once: at the "
                                      "connection limit")
        refused.add_metric([], st.refused_connections)
        errors = CounterMetricFamily("tenure_http_protocol_errors", "Requests refused by the HTTP layer before "
                                     "the app, by status (400 malformed, 414 URL, 431 headers)", labels=["status"])
        for status, n in sorted(st.errors.items()):
            errors.add_metric([str(status)], n)
        return [conns, limit, timeouts, body, refused, errors]


class Metrics:
    def __init__(self, runtime: Callable[[], Any], hub: Any = None, lrm: Callable[[], Any] | None = None,
                 replica: Callable[[], Any] | None = None, backups: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("tenure_http_requests", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("tenure_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.claims = Counter("tenure_claims", "Claim requests by pool and outcome (created, existing, refused)",
                              ["pool", "outcome"], registry=self.registry)
        self.releases = Counter("tenure_releases", "Claims released", ["pool"], registry=self.registry)
        self.reservations = Counter(
            "tenure_reservation_requests",
            "Reservation creates by outcome (created, existing, insufficient_capacity, limit_exceeded, no_path, "
            "invalid)", ["outcome"], registry=self.registry)
        self.registry.register(_StateCollector(runtime, hub))
        if lrm is not None:
            self.registry.register(_LrmCollector(lrm))
        if replica is not None:
            self.registry.register(_ReplicaCollector(replica))
        if backups is not None:
            self.registry.register(_BackupCollector(backups))

    def attach_http(self, stats: Any) -> None:
        """The server's connections (``api.server.HttpStats``): called once the server starts."""
        self.registry.register(_HttpCollector(stats))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
