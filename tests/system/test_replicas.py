"""Three replicas of one PostgreSQL store, as real processes (docs/replication.md).

One leads and the others follow; a write sent to a follower is forwarded; a read with ``min_revision`` on a
follower sees a write made through another replica; the client with every URL goes on through faults: the
leader killed with -9, paused past its lease with SIGSTOP (and resumed: it commits nothing more), and its
election connection terminated by the database. Afterwards the history is checked: every acknowledged claim
holds its value, no value is held twice, every acknowledged reservation is there as it was left and no link is
over-committed at any instant, the event log has no gap and its epochs never go back (two leaders
never both committed), and a watcher begun on each replica, resuming across the faults, got every event once, in order.
"""

from __future__ import annotations

import random
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from tenure.client import TenureAPIError, TenureClient, TenureClientError

from tests.api.test_metrics_exposition import promtool_check
from tests.topologies import SQUARE
from tests.support.postgres import PostgresServer
from tests.system.replica_support import TENURE, Replica, ReplicaSet, wait_for

pytestmark = pytest.mark.system

LEASE = 2.0


@pytest.fixture
def replicas(tmp_path: Path, pg_server: PostgresServer) -> Iterator[ReplicaSet]:
    db = pg_server.create_database(f"replicas_{random.randrange(1 << 30)}")
    rs = ReplicaSet(tmp_path, db, lease=LEASE)
    try:
        yield rs.start()
    finally:
        rs.close()


def client(rs: ReplicaSet, *, timeout: float = 10.0, first: int | None = None) -> TenureClient:
    """A client of every replica, in a random order, or starting with replica ``first`` and going round."""
    urls = rs.urls()
    if first is None:
        random.shuffle(urls)
    else:
        urls = urls[first:] + urls[:first]
    return TenureClient(",".join(urls), rs.token, timeout=timeout)


def test_one_leads_followers_forward_writes_and_read_them(replicas: ReplicaSet) -> None:
    leader = replicas.leader()
    followers = [r for r in replicas if r is not leader]
    for r in followers:
        h = r.health()
        assert h is not None and h["replica"]["role"] == "follower"
        assert h["replica"]["leader"]["name"] == leader.name and h["replica"]["epoch"] == leader.health()[
            "replica"]["epoch"]
    with TenureClient(followers[0].url, replicas.token) as c:  # one follower only: its writes are forwarded
        c.create_pool("vlan", [[1, 100]])
        claimed = [c.claim("vlan", f"k{i}") for i in range(10)]
        c.put_topology(SQUARE)
        c.set_limit("p1", max="2G")
        c.reserve(kind="bandwidth", src="h1", dst="h2", rate="100M", start="now", end="+1h", project="p1")
        c.create_instance(name="i1", type="memory", host="h1", parameters={"v": "1"})
    newest = max(x["revision"] for x in claimed)
    answer = httpx.get(f"{followers[1].url}/v1/pools/vlan", params={"min_revision": newest},
                       headers={"Authorization": f"Bearer {replicas.token}"}, timeout=10)
    assert answer.status_code == 200 and answer.json()["used"] == 10  # the other follower waited for the write
    far = httpx.get(f"{followers[1].url}/v1/pools/vlan", params={"min_revision": newest + 1000},
                    headers={"Authorization": f"Bearer {replicas.token}"}, timeout=10)
    assert far.status_code == 504 and far.json()["error"]["code"] == "not_yet_applied"
    with TenureClient(followers[1].url, replicas.token) as c:
        assert [c.claim("vlan", f"k{i}")["value"] for i in range(10)] == [x["value"] for x in claimed]
        listed = c.replicas()
    assert sorted(r["name"] for r in listed["replicas"]) == ["a", "b", "c"]
    assert listed["leader"]["name"] == leader.name
    same_answers(replicas)
    for r, role in ((leader, "leader"), (followers[0], "follower")):
        text_ = httpx.get(f"{r.url}/metrics", headers={"Authorization": f"Bearer {replicas.token}"}).text
        assert f'tenure_replica_role{{role="{role}"}} 1.0' in text_ and "tenure_replica_epoch " in text_
        assert promtool_check(text_).returncode == 0, promtool_check(text_).stdout


READS = ["/v1/pools", "/v1/pools/vlan", "/v1/pools/vlan/claims?limit=1000", "/v1/pools/vlan/claims/k3",
         "/v1/pools/vlan/values/4", "/v1/tokens", "/v1/topology", "/v1/reservations", "/v1/instances",
         "/v1/limits", "/v1/agents", "/v1/whoami", "/v1/types", "/v1/links/h1-s1/usage"]


def _epoch(r: Replica) -> int:
    """The epoch a replica reports; -1 while it does not answer (a stalled or starting replica: not yet)."""
    h = r.health()
    return -1 if h is None else h["replica"]["epoch"]


def same_answers(rs: ReplicaSet) -> None:
    """Every replica answers every read as the leader does, at the same revision."""
    headers = {"Authorization": f"Bearer {rs.token}"}
    newest = max(r.health()["revision"] for r in rs)
    some = next(iter(rs))  # and each leg on the wire of a few reservations (followers ask the leader)
    listed = httpx.get(f"{some.url}/v1/reservations?limit=2&min_revision={newest}", headers=headers, timeout=10)
    wires = [f"/v1/reservations/{x['id']}/wire" for x in listed.json()["reservations"]]
    answers = {}
    for r in rs:
        for path in READS + wires:
            sep = "&" if "?" in path else "?"
            got = httpx.get(f"{r.url}{path}{sep}min_revision={newest}", headers=headers, timeout=10)
            answers.setdefault(path, {})[r.name] = (got.status_code, got.json())
    for path, by_replica in answers.items():
        first = next(iter(by_replica.values()))
        assert first[0] == 200, (path, first)
        assert all(a == first for a in by_replica.values()), (path, by_replica)


def test_a_second_replica_with_a_live_ones_name_is_refused(replicas: ReplicaSet, tmp_path: Path) -> None:
    out = subprocess.run([str(TENURE), "serve", "--db", replicas.db, "--listen", "127.0.0.1:0", "--data-dir",
                          str(tmp_path / "dup"), "--replica-name", "b"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "a replica named 'b' is running" in out.stdout + out.stderr


def test_replicas_need_postgresql(tmp_path: Path) -> None:
    out = subprocess.run([str(TENURE), "serve", "--data-dir", str(tmp_path), "--replica-name", "a"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "replicas need a PostgreSQL store" in out.stdout + out.stderr


class Writers:
    """Clients claiming and releasing keys through random replicas until stopped; what was acknowledged."""

    def __init__(self, rs: ReplicaSet, n: int = 3, *, reserving: bool = False) -> None:
        self.rs = rs
        self.acked: dict[str, int] = {}  # key -> value, for every claim acknowledged and not released since
        self.released: set[str] = set()
        self.unknown: set[str] = set()  # outcome unknown (a release cut): either state is right
        self.reservations: dict[str, str] = {}  # id -> the state it was left in, for every one acknowledged
        self.reserving = reserving
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self.threads:
            t.join(60)

    def _run(self, i: int) -> None:
        rng = random.Random(i)
        with client(self.rs, timeout=5) as c:
            n = 0
            while not self._stop.is_set():
                n += 1
                key = f"w{i}-{n}"
                if self.reserving and n % 5 == 0:
                    self._reserve(c, rng, key)
                    continue
                try:
                    value = c.claim("vlan", key)["value"]
                except (TenureAPIError, TenureClientError):
                    with self._lock:
                        self.unknown.add(key)  # a claim is retried by key; one that failed may still hold
                    continue
                with self._lock:
                    self.acked[key] = value
                if rng.random() < 0.3:
                    try:
                        c.release("vlan", key)
                    except (TenureAPIError, TenureClientError):
                        with self._lock:
                            self.unknown.add(key)
                            self.acked.pop(key, None)
                        continue
                    with self._lock:
                        self.released.add(key)
                        self.acked.pop(key, None)


HOSTS = ["h1", "h2", "h3", "c1"]


def _reserve(self: Writers, c: TenureClient, rng: random.Random, key: str) -> None:
    """A reservation with a request_id (so a retry after a lost answer is safe); some are then cancelled."""
    src, dst = rng.sample(HOSTS, 2)
    try:
        res = c.reserve(kind="bandwidth", src=src, dst=dst, rate=rng.choice(["100M", "300M", "500M"]),
                        start="now", end=f"+{rng.randint(10, 120)}m", request_id=key)
    except TenureAPIError as exc:
        if exc.code in ("insufficient_capacity", "no_path"):
            return  # refused: a full link is what the check below is about
        with self._lock:
            self.unknown.add(key)
        return
    except TenureClientError:
        with self._lock:
            self.unknown.add(key)
        return
    state = res["state"]
    if rng.random() < 0.3:
        try:
            state = c.cancel_reservation(res["id"])["state"]
        except (TenureAPIError, TenureClientError):
            with self._lock:
                self.unknown.add(key)
            return
    with self._lock:
        self.reservations[res["id"]] = state


Writers._reserve = _reserve  # type: ignore[attr-defined]


def _claims(c: TenureClient) -> dict[str, int]:
    return {x["key"]: x["value"] for x in c.iter_claims("vlan")}


def _accepting_writes(rs: ReplicaSet, key: str) -> bool:
    with client(rs, timeout=3) as c:
        c.claim("vlan", key)
        return True


class Watcher:
    """A watch of every claim event, begun on replica ``first`` and resuming on the others across faults."""

    def __init__(self, rs: ReplicaSet, first: int) -> None:
        self.rs = rs
        self.first = first
        self.seen: list[int] = []
        self.others: list[tuple[str, int | None]] = []
        self.until: int | None = None  # set by stop_watchers: return on the first event at or past it
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with client(self.rs, timeout=5, first=self.first) as c:
            for event in c.watch("claim", since=0, bookmarks=False, max_retries=None):
                if event.type in ("created", "updated", "deleted"):
                    self.seen.append(event.revision)
                else:
                    self.others.append((event.type, event.revision))
                if self.until is not None and event.revision is not None and event.revision >= self.until:
                    return


def watchers(rs: ReplicaSet) -> list[Watcher]:
    """One watcher begun on each replica."""
    return [Watcher(rs, i) for i in range(len(rs.urls()))]


def stop_watchers(rs: ReplicaSet, ws: list[Watcher]) -> None:
    """Each watcher hears everything up to a last claim, then ends (a follower's watcher may be behind: it
    ends at that claim, not at whatever it hears first)."""
    with client(rs) as c:
        last = c.claim("vlan", "last")["revision"]
        for w in ws:
            w.until = last
        c.claim("vlan", "last-2")  # for a watcher that heard ``last`` before its ``until`` was set
    for w in ws:
        w._thread.join(30)
        assert not w._thread.is_alive(), f"the watcher begun on replica {w.first} did not end"


def check_history(rs: ReplicaSet, writers: Writers, ws: list[Watcher], *, epochs_at_least: int) -> None:
    """What must hold after any faults: see the module docstring."""
    rs.leader()
    with client(rs) as c:
        stored = _claims(c)
    for key, value in writers.acked.items():
        assert stored.get(key) == value, (key, value, stored.get(key))  # every acknowledged claim holds
    for key in writers.released - writers.unknown:
        assert key not in stored  # every acknowledged release holds
    assert len(set(stored.values())) == len(stored)  # no value held twice
    if writers.reserving:
        with client(rs) as c:
            for rid, state in writers.reservations.items():
                assert c.reservation(rid)["state"] == state, rid  # every acknowledged reservation, as left
            for link in SQUARE["links"]:  # no link direction booked past its usable capacity, at any instant
                for direction, d in c.usage(link["id"])["directions"].items():
                    assert all(step["used"] <= d["usable"] for step in d["steps"]), (link["id"], direction, d)
        assert writers.reservations, "no reservation was made"
    engine = create_engine(rs.db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT revision, epoch, kind FROM events ORDER BY revision")).all()
    finally:
        engine.dispose()
    revisions = [r.revision for r in rows]
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions)))  # no gap, no duplicate
    epochs = [r.epoch for r in rows]
    assert None not in epochs and epochs == sorted(epochs)  # epochs never go back: never two leaders at once
    assert len(set(epochs)) >= epochs_at_least
    stop_watchers(rs, ws)
    expected = [r.revision for r in rows if r.kind == "claim"]
    for w in ws:  # each watcher, wherever it began and resumed, heard each event once, in order
        assert [x for x in w.seen if x <= rows[-1].revision] == expected, (w.first, w.others)
        assert w.seen == sorted(set(w.seen)), w.first  # and the later ones too


def test_faults_lose_nothing_acknowledged_and_never_two_leaders(replicas: ReplicaSet) -> None:
    with client(replicas) as c:
        c.create_pool("vlan", [[1, 1_000_000]])
        c.put_topology(SQUARE)
    ws = watchers(replicas)
    engine = create_engine(replicas.db)
    with Writers(replicas, reserving=True) as writers:
        wait_for(lambda: len(writers.acked) > 20, timeout=30, what="writes before the faults")
        stopped_epoch: int | None = None
        for round_, fault in enumerate(["kill", "stop", "terminate", "kill"]):
            leader = replicas.leader()
            epoch = leader.health()["replica"]["epoch"]
            before = len(writers.acked)
            if fault == "kill":
                leader.kill()
            elif fault == "stop":
                leader.stop()
                stopped_epoch = epoch
            else:  # the database ends the leader's election session: its lock is free, another takes over
                with engine.connect() as conn:
                    ended = conn.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                              "WHERE application_name = :app AND datname = current_database()"),
                                         {"app": f"tenure election {leader.name}"}).scalar_one()
                assert ended == 1
            wait_for(lambda e=epoch: _epoch(replicas.leader()) > e, timeout=LEASE * 4 + 10,
                     what=f"a new leader after {fault}")
            wait_for(lambda r=round_: _accepting_writes(replicas, f"probe-{r}"), timeout=30,
                     what=f"writes accepted again after {fault}")
            wait_for(lambda b=before: len(writers.acked) > b + 5, timeout=30, what=f"writers go on after {fault}")
            if fault == "kill":
                leader.start()
                replicas.wait_ok(leader)
            elif fault == "stop":
                leader.cont()
                replicas.wait_ok(leader)
    check_history(replicas, writers, ws, epochs_at_least=5)  # the first leader's, and one per fault
    assert stopped_epoch is not None
    try:  # the paused leader committed under its epoch, and nothing once resumed (its successor had begun)
        with engine.connect() as conn:
            mine, late = conn.execute(text(
                "SELECT count(*), count(*) FILTER (WHERE revision > "
                "(SELECT min(revision) FROM events WHERE epoch > :e)) FROM events WHERE epoch = :e"),
                {"e": stopped_epoch}).one()
    finally:
        engine.dispose()
    assert mine > 0 and late == 0


def test_postgresql_restarted_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """The database crashes (immediate shutdown) and comes back on the same address, twice, while clients
    write: the replicas reconnect, one leads again, and every acknowledged change is there."""
    with PostgresServer() as pg:
        rs = ReplicaSet(tmp_path, pg.create_database("restarted"), lease=LEASE)
        try:
            rs.start()
            with client(rs) as c:
                c.create_pool("vlan", [[1, 1_000_000]])
            ws = watchers(rs)
            with Writers(rs) as writers:
                for round_, crash in enumerate((True, False)):
                    before = len(writers.acked)
                    wait_for(lambda b=before: len(writers.acked) > b + 20, timeout=30, what="writes before")
                    pg.restart(crash=crash)
                    wait_for(lambda r=round_: _accepting_writes(rs, f"probe-{r}"), timeout=60,
                             what="writes accepted again after the database restarted")
                    wait_for(lambda b=before: len(writers.acked) > b + 40, timeout=30, what="writers go on")
            check_history(rs, writers, ws, epochs_at_least=1)
        finally:
            rs.close()
