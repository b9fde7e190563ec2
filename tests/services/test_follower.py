"""A follower holds the state a restore would build: every object, index, ledger and timer (docs/replication.md).

A stateful test drives random commands of every service through a writing runtime (pools, claims, audits,
tokens, agents, topology, limits, reservations, instances, the clock moving on, compaction), and a follower
runtime on the same store tails it at random moments. After each tail the follower's memory equals the
writer's, and at the end both equal a fresh restore's, compared object by object, down to the free/taken
runs of each pool, each ledger's steps and each armed timer. The watch hub of the follower hears the same
events with the same revisions.
"""

from __future__ import annotations

import shutil
import threading
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import text

from tenure.domain.access import Principal
from tenure.domain.errors import TenureError
from tenure.domain.reservation import ReservationRequest
from tenure.domain.topology import Topology
from tenure.services.follower import FollowerBehind
from tenure.services.runtime import Runtime
from tenure.store import schema
from tenure.store.engine import SchemaMismatch
from tenure.store.writer import Event

from tests.reservation_support import SQUARE, FakeClock, open_rt

POOLS = ["vlan", "label", "vni"]
KEYS = [f"k{i}" for i in range(8)]
HOSTS = ["h1", "h2", "h3", "c1"]
PROJECTS = ["p1", "p2"]
RATES = ["100M", "400M", "1G"]


def _ledger(led: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(led._t), tuple(led._v)


def digest(rt: Runtime) -> dict[str, Any]:
    """Everything a runtime holds in memory, in a comparable form (the test reaches into the services)."""
    al, tok, ag, res, top, inst = rt.allocator, rt.tokens, rt.agents, rt.reservations, rt.topology, rt.instances
    pools = {}
    for name, e in al._entries.items():
        p = e.pool
        pools[name] = (e.id, e.created_at, e.revision, p.projects, p.audit_epoch, p.auditing, p.ids.ranges,
                       p.ids.reserved, p.ids.strategy, p.ids.cursor, tuple(p.ids._taken.runs()),
                       sorted((c.key, c.value, c.project, c.host, c.mark, c.revision) for c in p.claims.values()))
    cap = res.cap
    return {
        "revision": rt.writer.revision,
        "pools": pools,
        "pool_views": dict(al._views),
        "tokens": (dict(tok._tokens), dict(tok._by_hash), dict(tok._hash_of)),
        "agents": (dict(ag._map.working), dict(ag._map.view)),
        "limits": (dict(top._limits.working), dict(top._limits.view)),
        "topology": (top._topology_view[0].doc(), top._topology_view[1:], cap.topology.doc()),
        "use": [_ledger(led) for led in cap.use],
        "held": {k: _ledger(led) for k, led in cap.held.items()},
        "reservations": (dict(res._res), dict(res._views), list(res._res), dict(res._requests)),
        # The next admission's number: past every stored one (the writer's may be further on, past ones purged).
        "next_seq_ok": all(r.seq < res._next_seq for r in res._res.values()),
        "reservation_timers": dict(res.scheduler._armed),
        "instances": (dict(inst._inst), dict(inst._views), dict(inst._names), dict(inst._dependents),
                      dict(inst._by_host), dict(inst._by_owner)),
        "instance_deadlines": {i: t for i, t in inst.scheduler._armed.items()
                               if inst._inst.get(i) is not None and inst._inst[i].deadline == t},
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in a:
        assert a[key] == b[key], (key, a[key], b[key])


class FollowerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.url = f"sqlite:///{self.dir}/f.db"
        self.clock = FakeClock()
        self.rt = open_rt(self.url, self.clock)
        self.follower = open_rt(self.url, self.clock, follower=True)
        self.follower.tailer.agents_every = 0  # heartbeats carry no event: each idle step re-reads the agents
        self.heard: list[Event] = []
        self.follower.writer.subscribe(self.heard.extend)
        self.tokens: list[str] = []
        self.reservations: list[str] = []
        self.instances: list[str] = []

    def teardown(self) -> None:
        self.follower.close()
        self.rt.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @initialize()
    def start(self) -> None:
        """A world where most commands can succeed from the first step: a topology, agents, a pool."""
        self.rt.run(self.rt.topology.set_topology_op(Topology.parse(SQUARE)))
        for host in HOSTS[:3]:
            self.rt.run(self.rt.agents.register_op(host, kinds=["instance"], version="1",
                                                   principal=Principal("agent", host=host)))
        self.rt.run(self.rt.allocator.create_pool_op("vlan", ranges=[[1, 12]], strategy="next"))

    def run(self, make: Any) -> Any:
        """Build the command and run it; a refusal (at either step) is a possible outcome, not a failure."""
        try:
            return self.rt.run(make())
        except TenureError:
            return None

    # ------------------------------------------------------------ the allocator

    @rule(name=st.sampled_from(POOLS), strategy=st.sampled_from(["lowest", "next", "random"]),
          projects=st.sampled_from([None, ["p1"]]))
    def create_pool(self, name: str, strategy: str, projects: list[str] | None) -> None:
        self.run(lambda: self.rt.allocator.create_pool_op(name, ranges=[[1, 12]], reserved=[[5, 5]], strategy=strategy,
                                                  projects=projects))

    @rule(name=st.sampled_from(POOLS))
    def delete_pool(self, name: str) -> None:
        self.run(lambda: self.rt.allocator.delete_pool_op(name, force=True))

    @rule(pool=st.sampled_from(POOLS), key=st.sampled_from(KEYS), value=st.sampled_from([None, None, 3, 7]),
          project=st.sampled_from([None, "p1"]))
    def claim(self, pool: str, key: str, value: int | None, project: str | None) -> None:
        self.run(lambda: self.rt.allocator.claim_op(pool, key, value=value, project=project))

    @rule(pool=st.sampled_from(POOLS), keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True))
    def claim_many(self, pool: str, keys: list[str]) -> None:
        self.run(lambda: self.rt.allocator.claim_many_op(pool, [(k, None) for k in keys], project="p1"))

    @rule(pool=st.sampled_from(POOLS), key=st.sampled_from(KEYS))
    def release(self, pool: str, key: str) -> None:
        self.run(lambda: self.rt.allocator.release_op(pool, key))

    @rule(pool=st.sampled_from(POOLS), end=st.booleans())
    def audit(self, pool: str, end: bool) -> None:
        a = self.rt.allocator
        self.run(lambda: a.audit_end_op(pool) if end else a.audit_begin_op(pool))

    # ------------------------------------------------------------ tokens, agents

    @rule(role=st.sampled_from(["admin", "member", "agent"]))
    def create_token(self, role: str) -> None:
        kw = {"member": {"project": "p1"}, "agent": {"host": "h1"}}.get(role, {})
        out = self.run(lambda: self.rt.tokens.create_op(role=role, **kw))
        if out is not None:
            self.tokens.append(out[1].id)

    @precondition(lambda self: self.tokens)
    @rule(data=st.data())
    def revoke_token(self, data: st.DataObject) -> None:
        self.run(lambda: self.rt.tokens.revoke_op(data.draw(st.sampled_from(self.tokens))))

    @rule(host=st.sampled_from(HOSTS), version=st.sampled_from(["1", "2"]))
    def register_agent(self, host: str, version: str) -> None:
        self.run(lambda: self.rt.agents.register_op(host, kinds=["instance", "reservation"], version=version,
                                            principal=Principal("agent", host=host)))

    @rule(host=st.sampled_from(HOSTS), how=st.sampled_from(["heartbeat", "remove", "sweep"]))
    def agent_changes(self, host: str, how: str) -> None:
        ag = self.rt.agents
        self.run({"heartbeat": lambda: ag.heartbeat_op(host), "remove": lambda: ag.remove_op(host),
                  "sweep": ag.sweep_op}[how])

    # ------------------------------------------------------------ topology, limits, reservations

    @rule(link=st.sampled_from([lk["id"] for lk in SQUARE["links"]] + [None]),
          capacity=st.sampled_from(["300M", "1G", "2G"]))
    def set_topology(self, link: str | None, capacity: str) -> None:
        links = []
        for lk in SQUARE["links"]:
            if lk["id"] == link:
                lk = {k: v for k, v in lk.items() if k not in ("capacity_ab", "capacity_ba")} | {"capacity": capacity}
            links.append(lk)
        self.run(lambda: self.rt.topology.set_topology_op(Topology.parse({**SQUARE, "links": links})))

    @rule(project=st.sampled_from(PROJECTS), max_bps=st.sampled_from(["500M", "2G", None]))
    def limit(self, project: str, max_bps: str | None) -> None:
        t = self.rt.topology
        self.run(lambda: t.set_limit_op(project, max_bps=max_bps) if max_bps else t.delete_limit_op(project))

    @rule(kind=st.sampled_from(["bandwidth", "oneway", "steering", "mirror"]), src=st.sampled_from(HOSTS),
          dst=st.sampled_from(HOSTS), rate=st.sampled_from(RATES), start=st.integers(0, 8), length=st.integers(1, 8),
          project=st.sampled_from([None, *PROJECTS]), request_id=st.sampled_from([None, "r1", "r2"]))
    def reserve(self, kind: str, src: str, dst: str, rate: str, start: int, length: int, project: str | None,
                request_id: str | None) -> None:
        raw: dict[str, Any] = {"kind": kind, "src": src, "rate": rate,
                               "start": f"+{start * 15}m" if start else "now", "end": f"+{(start + length) * 15}m"}
        raw["collector" if kind == "mirror" else "dst"] = dst
        if kind == "steering":
            raw["via"] = ["m1"]
        if project is not None:
            raw["project"] = project
        if request_id is not None:
            raw["request_id"] = request_id
        try:
            request = ReservationRequest.parse(raw)
        except TenureError:
            return
        out = self.run(lambda: self.rt.reservations.create_op(request))
        if out is not None:
            self.reservations.append(out[0].id)

    @precondition(lambda self: self.reservations)
    @rule(data=st.data(), how=st.sampled_from(["cancel", "longer", "faster"]))
    def change_reservation(self, data: st.DataObject, how: str) -> None:
        rid = data.draw(st.sampled_from(self.reservations))
        r = self.rt.reservations
        self.run({"cancel": lambda: r.cancel_op(rid), "longer": lambda: r.modify_op(rid, {"end": "+4h"}),
                  "faster": lambda: r.modify_op(rid, {"rate": "500M"})}[how])

    @rule(minutes=st.sampled_from([5, 30, 120, 60 * 24 * 8]))
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes=minutes)
        self.rt.reservations.scheduler.run_due()
        self.rt.instances.scheduler.run_due()

    # ------------------------------------------------------------ instances

    @rule(name=st.sampled_from(["a", "b", "c"]), host=st.sampled_from(HOSTS),
          depends=st.sampled_from([[], ["a"]]), project=st.sampled_from([None, "p1"]))
    def create_instance(self, name: str, host: str, depends: list[str], project: str | None) -> None:
        spec: dict[str, Any] = {"name": name, "type": "memory", "host": host, "parameters": {"v": "1"}}
        if depends:
            spec["depends_on"] = depends
        if project is not None:
            spec["project"] = project
        out = self.run(lambda: self.rt.instances.create_op([spec]))
        if out is not None:
            self.instances.extend(i.id for i, _ in out)

    @precondition(lambda self: self.instances)
    @rule(data=st.data(), how=st.sampled_from(["active", "failed", "delete"]))
    def change_instance(self, data: st.DataObject, how: str) -> None:
        iid = data.draw(st.sampled_from(self.instances))
        inst = self.rt.instances._views.get(iid)
        if inst is None:
            return
        if how == "delete":
            self.run(lambda: self.rt.instances.delete_op(iid, force=True))
            return
        self.run(lambda: self.rt.instances.report_op(iid, {"generation": inst.dispatched, "state": how},
                                             principal=Principal("agent", host=inst.host)))

    # ------------------------------------------------------------ the log, the follower

    @rule()
    def compact_some(self) -> None:
        h = self.rt.history
        upto = max(h.compacted, self.follower.writer.revision - 3)  # never past what the follower applied
        if upto > h.compacted:
            h.compact(upto)

    @rule()
    def follow(self) -> None:
        while self.follower.tailer.poll():
            pass
        assert self.follower.writer.revision == self.rt.writer.revision
        assert_same(digest(self.rt), digest(self.follower))

    @invariant()
    def heard_every_event_in_order(self) -> None:
        revisions = [e.revision for e in self.heard]
        assert revisions == list(range(revisions[0], revisions[0] + len(revisions))) if revisions else True

    def check_restore(self) -> None:
        self.follow()
        fresh = open_rt(self.url, self.clock, follower=True)
        try:
            assert_same(digest(fresh), digest(self.follower))
        finally:
            fresh.close()


class FollowerMachineChecked(FollowerMachine):
    def teardown(self) -> None:
        try:
            self.check_restore()
        finally:
            super().teardown()


TestFollowerMachine = FollowerMachineChecked.TestCase
TestFollowerMachine.settings = settings(max_examples=60, stateful_step_count=60, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ on both stores


@pytest.fixture
def pair(db_url: str) -> Any:
    clock = FakeClock()
    leader = open_rt(db_url, clock)
    follower = open_rt(db_url, clock, follower=True)
    try:
        yield leader, follower
    finally:
        follower.close()
        leader.close()


def test_a_follower_follows_and_hears_the_leaders_revisions(pair: Any) -> None:
    leader, follower = pair
    heard: list[Event] = []
    follower.writer.subscribe(heard.extend)
    leader.run(leader.allocator.create_pool_op("vlan", ranges=[[100, 199]]))
    leader.run(leader.allocator.claim_many_op("vlan", [(f"k{i}", None) for i in range(50)]))
    secret, info = leader.run(leader.tokens.create_op(role="member", project="p1"))
    assert follower.tailer.poll() == 52
    assert follower.revision == leader.revision == 52
    assert [e.revision for e in heard] == list(range(1, 53))
    assert follower.allocator.pool_view("vlan").used == 50
    assert follower.tokens.authenticate(secret).project == "p1"  # the hash was read from the row
    leader.run(leader.tokens.revoke_op(info.id))
    follower.tailer.poll()
    with pytest.raises(TenureError):
        follower.tokens.authenticate(secret)
    assert_same(digest(leader), digest(follower))


def test_a_follower_behind_the_compacted_log_says_so(pair: Any) -> None:
    leader, follower = pair
    leader.run(leader.allocator.create_pool_op("vlan", ranges=[[1, 100]]))
    for i in range(5):
        leader.run(leader.allocator.claim_op("vlan", f"k{i}"))
    leader.history.compact(4)
    with pytest.raises(FollowerBehind, match="compacted"):
        follower.tailer.poll()


def test_a_gap_in_the_log_is_refused_not_skipped(pair: Any) -> None:
    leader, follower = pair
    leader.run(leader.allocator.create_pool_op("vlan", ranges=[[1, 100]]))
    leader.run(leader.allocator.claim_op("vlan", "a"))
    with leader.engine.begin() as conn:
        conn.execute(schema.events.delete().where(schema.events.c.revision == 1))
    with pytest.raises(FollowerBehind, match="gap"):
        follower.tailer.poll()
    assert follower.revision == 0 and not follower.allocator.has_pool("vlan")


def test_a_follower_refuses_a_store_of_another_schema(db_url: str) -> None:
    clock = FakeClock()
    rt = open_rt(db_url, clock)
    with rt.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    rt.close()
    with pytest.raises(SchemaMismatch, match="0099.*0010"):
        open_rt(db_url, clock, follower=True)
    with pytest.raises(SchemaMismatch, match="0099.*0010"):
        open_rt(db_url, clock)  # nor does a writer migrate a store newer than its code


def test_the_tailer_thread_wakes_on_the_leaders_notification(db_url: str) -> None:
    """On PostgreSQL a commit notifies the followers: with a poll interval of a minute, the follower still
    applies a commit at once. (On SQLite the tailer polls; the test gives it a short interval.)"""
    clock = FakeClock()
    leader = open_rt(db_url, clock)
    follower = open_rt(db_url, clock, follower=True)
    assert follower.tailer is not None
    follower.tailer.interval = 60.0 if leader.engine.dialect.name == "postgresql" else 0.05
    reached = threading.Event()
    follower.writer.subscribe(lambda events: events[-1].revision >= 3 and reached.set())
    follower.tailer.start()
    try:
        leader.run(leader.allocator.create_pool_op("vlan", ranges=[[1, 10]]))
        leader.run(leader.allocator.claim_op("vlan", "a"))
        leader.run(leader.allocator.claim_op("vlan", "b"))
        assert reached.wait(20), "the follower did not apply the commits"
        assert follower.allocator.pool_view("vlan").used == 2
    finally:
        follower.close()
        leader.close()


@pytest.mark.parametrize("first", ["k0", "k1"])
def test_a_value_passed_from_one_key_to_another_between_two_steps(pair: Any, first: str) -> None:
    """k0 releases value 1 and k1 takes it: whichever key the follower looks at first, 1 is held once, by k1."""
    leader, follower = pair
    leader.run(leader.allocator.create_pool_op("vlan", ranges=[[1, 10]]))
    leader.run(leader.allocator.claim_op("vlan", "k0"))
    follower.tailer.poll()
    leader.run(leader.allocator.release_op("vlan", "k0"))
    assert leader.run(leader.allocator.claim_op("vlan", "k1")).value == 1
    keys = ["vlan/k0", "vlan/k1"] if first == "k0" else ["vlan/k1", "vlan/k0"]
    follower.allocator.refresh(_NoBatch(), _snapshot(follower), [], keys)
    pool = follower.allocator._entries["vlan"].pool
    assert {k: c.value for k, c in pool.claims.items()} == {"k1": 1}
    assert pool.ids._taken.runs() == [(1, 1)]


class _NoBatch:
    def on_commit_once(self, key: Any, fn: Any) -> None:
        pass


def _snapshot(rt: Runtime) -> Any:
    conn, _ = rt.history.open_snapshot()
    return conn


def test_a_follower_restores_one_state_while_its_leader_writes(db_url: str, monkeypatch: Any) -> None:
    """The restore reads the pools, then the claims in two parts: the leader's commits in between must not show
    (a pool the follower has not read, or a value passed from a plain claim to an owned one, would be a crash or a
    value held twice). The follower restores the snapshot, then tails to the leader."""
    from tenure.services.allocator import AllocatorService

    clock = FakeClock()
    leader = open_rt(db_url, clock)
    follower = None
    try:
        leader.run(leader.allocator.create_pool_op("vlan", ranges=[[1, 10]]))
        leader.run(leader.allocator.claim_op("vlan", "k0"))  # value 1, a plain record
        entry_from_row = AllocatorService._entry_from_row
        wrote = []

        def meanwhile(self: Any, row: Any) -> Any:  # between the follower's read of the pools and of the claims
            if not wrote:
                wrote.append(True)
                leader.run(leader.allocator.release_op("vlan", "k0"))
                assert leader.run(leader.allocator.claim_op("vlan", "k1", project="p1")).value == 1
                leader.run(leader.allocator.create_pool_op("late", ranges=[[1, 10]]))
                leader.run(leader.allocator.claim_op("late", "x"))
            return entry_from_row(self, row)

        monkeypatch.setattr(AllocatorService, "_entry_from_row", meanwhile)
        follower = open_rt(db_url, clock, follower=True)
        monkeypatch.undo()
        assert wrote
        pool = follower.allocator._entries["vlan"].pool
        assert {k: c.value for k, c in pool.claims.items()} == {"k0": 1} and pool.ids._taken.runs() == [(1, 1)]
        assert "late" not in follower.allocator._entries and follower.revision == 2
        follower.tailer.poll()
        assert_same(digest(leader), digest(follower))
    finally:
        if follower is not None:
            follower.close()
        leader.close()
