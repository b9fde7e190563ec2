"""The hub's indexed dispatch, against a brute-force model: every watcher gets exactly the events its filter and
scope admit, and an event is compared only with the watchers filed under its own keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tenure.domain.access import Principal
from tenure.domain.errors import InvalidInput
from tenure.domain.events import KINDS, may_see_event
from tenure.store.writer import Event
from tenure.watch.hub import Hub, Watcher
from tenure.watch.selector import Filter, parse_selector

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HOSTS = ["h1", "h2", "h3"]
PROJECTS = ["blue", "red"]
POOLS = ["p1", "p2"]


def _event(rev: int, kind: str, oid: str, op: str, labels: dict[str, str], body: dict[str, Any] | None = None) -> Event:
    return Event(rev, NOW, kind, oid, op, labels, body or {})


labels_st = st.fixed_dictionaries(
    {}, optional={"pool": st.sampled_from(POOLS), "project": st.sampled_from(PROJECTS), "host": st.sampled_from(HOSTS)}
)
events_st = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.sampled_from(["a", "b", "p1/x", "h1"]),
        st.sampled_from(["created", "updated", "deleted"]),
        labels_st,
        st.sampled_from([None, ["blue"], ["red"]]),
    ),
    max_size=40,
)
requirement_st = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["pool", "project", "host"]), st.sampled_from(HOSTS + PROJECTS + POOLS)),
    st.builds(lambda k, v: f"{k}!={v}", st.sampled_from(["pool", "project", "host"]), st.sampled_from(HOSTS + PROJECTS)),
    st.builds(lambda k, vs: f"{k} in ({','.join(vs)})", st.sampled_from(["host", "project"]),
              st.lists(st.sampled_from(HOSTS + PROJECTS), min_size=1, max_size=3)),
    st.builds(lambda k, vs: f"{k} notin ({','.join(vs)})", st.sampled_from(["host", "pool"]),
              st.lists(st.sampled_from(HOSTS + POOLS), min_size=1, max_size=3)),
    st.sampled_from(["host", "!host", "project", "!project"]),
)
filter_st = st.builds(
    lambda kinds, ids, ops, reqs: Filter.parse(kinds=kinds, ids=ids, ops=ops, selectors=[",".join(reqs)] if reqs else []),
    st.lists(st.sampled_from(KINDS), max_size=2),
    st.lists(st.sampled_from(["a", "b", "p1/x", "h1"]), max_size=2),
    st.lists(st.sampled_from(["created", "updated", "deleted"]), max_size=2),
    st.lists(requirement_st, max_size=3),
)
principal_st = st.one_of(
    st.just(Principal("admin", token_id="t0")),
    st.builds(lambda p: Principal("member", project=p, token_id="a"), st.sampled_from(PROJECTS)),
    st.builds(lambda h: Principal("agent", host=h, token_id="b"), st.sampled_from(HOSTS)),
)


@settings(max_examples=300, deadline=None)
@given(watchers=st.lists(st.tuples(filter_st, principal_st), max_size=12), events=events_st,
       mode=st.sampled_from(["index", "broadcast"]))
def test_dispatch_matches_the_model(watchers: list[tuple[Filter, Principal]], events: list[Any], mode: str) -> None:
    hub = Hub(mode=mode, max_pending=10**6)
    ws = []
    for flt, p in watchers:
        w = Watcher(flt, p)
        hub.register(w, floor=0, pending=[])
        ws.append(w)
    evs = [_event(i + 1, k, oid, op, labels, {"projects": projects} if k == "pool" else {})
           for i, (k, oid, op, labels, projects) in enumerate(events)]
    hub._dispatch(evs)
    for w, (flt, p) in zip(ws, watchers, strict=True):
        expected = [e.revision for e in evs
                    if flt.matches(e.kind, e.object_id, e.op, e.labels)
                    and may_see_event(p, e.kind, e.object_id, e.labels, e.body)]
        assert [i.revision for i in w.pending] == expected


def test_an_event_is_compared_only_with_watchers_under_its_keys() -> None:
    hub = Hub()
    calls = 0

    class Counting(Watcher):
        __slots__ = ()

        def wants(self, item: Any) -> bool:
            nonlocal calls
            calls += 1
            return super().wants(item)

    admin = Principal("admin")
    for i in range(1000):
        hub.register(Counting(Filter.parse(kinds=["claim"], selectors=[f"host=h{i}"]), admin), floor=0, pending=[])
    for i in range(100):  # agents with no filter at all are filed under their own host by their scope
        hub.register(Counting(Filter.parse(), Principal("agent", host=f"h{i}", token_id=f"t{i}")), floor=0, pending=[])
    hub._dispatch([_event(1, "claim", "p1/k", "created", {"pool": "p1", "host": "h7"})])
    assert calls == 2  # the admin watcher of h7 and the agent of h7, out of 1,100
    calls = 0
    hub._dispatch([_event(2, "claim", "p1/k", "created", {"pool": "p1", "host": "h5000"})])
    assert calls == 0


def test_a_member_watching_everything_is_filed_under_its_project() -> None:
    keys = Filter.parse().index_keys(Principal("member", project="blue", token_id="tk"))
    assert ("claim", "project", "blue") in keys
    assert ("token", "#id", "tk") in keys
    assert not any(k[0] == "agent" for k in keys)  # members see no agents: no key at all
    assert ("pool", "*", "") in keys


def test_cut_off_only_while_blocked_writing() -> None:
    hub = Hub(max_pending=3)
    w = Watcher(Filter.parse(), Principal("admin"))
    hub.register(w, floor=0, pending=[])
    hub._dispatch([_event(i, "claim", "p/k", "created", {}) for i in range(1, 11)])
    assert w.closed is None and len(w.pending) == 10  # one commit's worth, taken at the next turn
    w.pending = []
    w.sending = True
    hub._dispatch([_event(i, "claim", "p/k", "created", {}) for i in range(11, 16)])
    assert w.closed == "too slow" and w.pending == [] and hub.cutoffs == 1


def test_ring_serves_resumes_and_knows_what_it_lacks() -> None:
    hub = Hub(ring_size=4)
    hub.attach(loop=None, revision=10)  # type: ignore[arg-type]
    assert hub.ring.covers(10) and not hub.ring.covers(9)
    hub._dispatch([_event(r, "claim", "p/k", "created", {"host": "h1" if r % 2 else "h2"}) for r in range(11, 19)])
    assert hub.ring.base == 14 and hub.ring.covers(14) and not hub.ring.covers(13)
    w = Watcher(Filter.parse(selectors=["host=h1"]), Principal("admin"))
    items, scanned = hub.collect(w, 14, limit=10)
    assert [i.revision for i in items] == [15, 17] and scanned == 18
    items, scanned = hub.collect(w, 14, limit=1)
    assert [i.revision for i in items] == [15] and scanned == 16


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host=h1", [("host", "in", {"h1"})]),
        ("host==h1, project != red", [("host", "in", {"h1"}), ("project", "notin", {"red"})]),
        ("host in (a, b),pool notin (p)", [("host", "in", {"a", "b"}), ("pool", "notin", {"p"})]),
        ("host,!project", [("host", "exists", set()), ("project", "!exists", set())]),
        ("example.com/zone=eu-1", [("example.com/zone", "in", {"eu-1"})]),
    ],
)
def test_selector_syntax(text: str, expected: list[tuple[str, str, set[str]]]) -> None:
    assert [(r.key, r.op, set(r.values)) for r in parse_selector(text)] == expected


@pytest.mark.parametrize("text", ["", "host=", "=h1", "host in ()", "host in (a", "host)", "h ost=a", "host=a=b",
                                  "host in ((a))", "-host=a", "host=a b", "!", "host in (a,,b)"])
def test_malformed_selectors(text: str) -> None:
    with pytest.raises(InvalidInput) as e:
        parse_selector(text)
    assert e.value.code == "invalid_selector"


def test_contradictory_equalities_file_nothing() -> None:
    assert Filter.parse(kinds=["claim"], selectors=["host=a", "host=b"]).index_keys(Principal("admin")) == []
