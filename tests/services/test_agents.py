"""The agent service against the runtime, on both stores: batches, undo, the sweeper, snapshots, validation."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, select

from tenure.domain.access import Principal
from tenure.domain.errors import Forbidden, InvalidInput, NotFound, Unavailable
from tenure.services.agents import validate_capabilities, validate_kinds, validate_version
from tenure.services.runtime import Runtime, Settings
from tenure.store import schema

from tests.store.test_writer import WAIT, writer_held

T0 = datetime(2026, 11, 22, 4, 20, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def open_rt(db_url: str, clock: FakeClock, **settings: Any) -> Runtime:
    return Runtime.open(db_url, clock=clock, settings=Settings(**{"housekeeping": False, **settings}))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def stored(rt: Runtime) -> dict[str, tuple[str, int]]:
    with rt.engine.connect() as conn:
        return {r.host: (r.state, r.revision) for r in conn.execute(select(schema.agents))}


def test_two_registrations_of_a_new_host_in_one_batch(db_url: str, clock: FakeClock) -> None:
    with open_rt(db_url, clock) as rt:
        svc = rt.agents
        with writer_held(rt.writer):
            first = rt.writer.submit(svc.register_op("h1", kinds=["claim"], version="1"))
            same = rt.writer.submit(svc.register_op("h1", kinds=["claim"], version="1"))
            changed = rt.writer.submit(svc.register_op("h1", kinds=["claim"], version="2"))
        (a, created_a), (b, created_b), (c, created_c) = (f.result(WAIT) for f in (first, same, changed))
        assert (created_a, created_b, created_c) == (True, False, False)
        assert a.revision == b.revision < c.revision and c.version == "2"
        assert stored(rt) == {"h1": ("up", c.revision)}
        assert svc.get("h1") == c


class FailAgentWrites:
    """The next write to the agents table raises (say, the disk is full), once."""

    def __init__(self, engine: Any) -> None:
        self.armed = True
        event.listen(engine, "before_cursor_execute", self)

    def __call__(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.armed and "agents" in statement.lower() and not statement.lstrip().upper().startswith("SELECT"):
            self.armed = False
            raise RuntimeError("injected: disk full")


def test_a_failed_commit_leaves_the_registry_as_it_was(db_url: str, clock: FakeClock) -> None:
    with open_rt(db_url, clock) as rt:
        svc = rt.agents
        info, _ = rt.run(svc.register_op("h1", kinds=["claim"], version="1"))
        clock.advance(100)
        FailAgentWrites(rt.engine)
        with pytest.raises(Unavailable):
            rt.run(svc.sweep_op())
        assert svc.get("h1") == info
        FailAgentWrites(rt.engine)
        with pytest.raises(Unavailable):
            rt.run(svc.register_op("h2", kinds=[], version="1"))
        with pytest.raises(NotFound):
            svc.get("h2")
        # The working map was undone too: the next commands see h1 up and h2 unknown.
        assert [a.host for a in rt.run(svc.sweep_op())] == ["h1"]
        assert rt.run(svc.register_op("h2", kinds=[], version="1"))[1] is True
    with open_rt(db_url, clock) as rt:
        assert {a.host: a.state for a in rt.agents.list()} == {"h1": "down", "h2": "up"}


def test_readers_see_only_committed_state(db_url: str, clock: FakeClock) -> None:
    with open_rt(db_url, clock) as rt:
        with writer_held(rt.writer):
            fut = rt.writer.submit(rt.agents.register_op("h1", kinds=[], version="1"))
            with pytest.raises(NotFound):
                rt.agents.get("h1")  # queued, not committed
        fut.result(WAIT)
        assert rt.agents.get("h1").state == "up"


def test_sweep_submits_a_command_only_when_an_agent_is_due(db_url: str, clock: FakeClock) -> None:
    with open_rt(db_url, clock, agent_down_after=10) as rt:
        rt.run(rt.agents.register_op("h1", kinds=[], version="1"))
        commands = rt.writer.commands
        clock.advance(10)
        assert rt.agents.sweep() == []
        assert rt.writer.commands == commands  # nothing due: no command at all
        clock.advance(1)
        assert [a.host for a in rt.agents.sweep()] == ["h1"]
        assert stored(rt)["h1"][0] == "down"


def test_the_background_sweeper_marks_silent_agents_down(db_url: str, clock: FakeClock) -> None:
    with open_rt(db_url, clock, housekeeping=True, agent_down_after=10, agent_sweep_interval=0.01) as rt:
        rt.run(rt.agents.register_op("h1", kinds=["agent"], version="1"))
        down = threading.Event()
        rt.writer.subscribe(lambda events: any(e.kind == "agent" and e.body["state"] == "down" for e in events)
                            and down.set())
        clock.advance(11)
        assert down.wait(WAIT), "the sweeper did not mark the agent down"
        assert rt.agents.get("h1").state == "down"


def test_restart_grace_counts_silence_from_the_restore(db_url: str, clock: FakeClock) -> None:
    with open_rt(db_url, clock, agent_down_after=10) as rt:
        rt.run(rt.agents.register_op("h1", kinds=[], version="1"))
    clock.advance(1000)
    with open_rt(db_url, clock, agent_down_after=10) as rt:
        assert rt.agents.restored_at == clock()
        assert rt.run(rt.agents.sweep_op()) == []
        clock.advance(10)
        assert rt.run(rt.agents.sweep_op()) == []
        clock.advance(0.001)
        assert [a.host for a in rt.run(rt.agents.sweep_op())] == ["h1"]


def test_scopes_are_decided_before_the_command(db_url: str, clock: FakeClock) -> None:
    with open_rt(db_url, clock) as rt:
        svc = rt.agents
        agent, member = Principal("agent", host="h1"), Principal("member", project="blue")
        rt.run(svc.register_op("h2", kinds=[], version="1"))
        for build in (
            lambda p: svc.register_op("h2", kinds=[], version="2", principal=p),
            lambda p: svc.heartbeat_op("h2", principal=p),
            lambda p: svc.remove_op("h2", principal=p),
            lambda p: svc.get("h2", principal=p),
        ):
            for p in (agent, member):
                with pytest.raises(Forbidden):
                    build(p)
        with pytest.raises(Forbidden):
            svc.list(principal=member)
        assert svc.list(principal=agent) == []
        rt.run(svc.register_op("h1", kinds=[], version="1", principal=agent))
        assert [a.host for a in svc.list(principal=agent)] == ["h1"]
        assert [a.host for a in svc.list()] == ["h1", "h2"]


def test_list_at_reads_a_snapshot_and_honours_pins(db_url: str, clock: FakeClock) -> None:
    with open_rt(db_url, clock) as rt:
        for host in ("h2", "h1", "h3"):
            rt.run(rt.agents.register_op(host, kinds=["claim"], version="1"))
        with rt.engine.connect() as conn:
            everything = list(rt.agents.list_at(conn, {}))
            pinned = list(rt.agents.list_at(conn, {"host": frozenset({"h3", "h1", "zz"})}))
            by_id = list(rt.agents.list_at(conn, {"#id": frozenset({"h2"})}))
        assert [(h, labels) for h, labels, _ in everything] == [(h, {"host": h}) for h in ("h1", "h2", "h3")]
        assert [body for _, _, body in everything] == [a.body() for a in rt.agents.list()]
        assert [h for h, _, _ in pinned] == ["h1", "h3"]
        assert [h for h, _, _ in by_id] == ["h2"]


def test_validators() -> None:
    assert validate_kinds(["pool", "claim", "pool"]) == ("claim", "pool")
    assert validate_kinds([]) == ()
    for bad in ("claim", ["claims"], [1], None):
        with pytest.raises(InvalidInput) as info:
            validate_kinds(bad)
        assert info.value.code == "invalid_kind"
    assert validate_version("v" * 64) == "v" * 64
    for bad in ("", "v" * 65, "a\x00", "\ud800", 1, None):
        with pytest.raises(InvalidInput) as info:
            validate_version(bad)
        assert info.value.code == "invalid_version"
    assert validate_capabilities(None) == {}
    caps = {"a": [1, {"b": None}]}
    copy = validate_capabilities(caps)
    assert copy == caps and copy is not caps
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    for bad in ([], "x", {"x": float("nan")}, {"x": object()}, {"\udc80": 1}, {"x": deep}, {"x": "y" * 20_000}):
        with pytest.raises(InvalidInput) as info:
            validate_capabilities(bad)
        assert info.value.code == "invalid_capabilities"
