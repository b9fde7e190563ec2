"""Lossless resume: a watcher disconnected at random points 100 times while 10,000 changes are made
receives every matching event exactly once, in order.

All the parts are real: the server (uvicorn on SQLite and on PostgreSQL), the
sync client's :meth:`~tenure.client.TenureClient.watch` and its resume logic, and
TCP. Between the client and the server sits :class:`CuttingProxy`, which forwards
bytes both ways and, on each of the first 100 connections, cuts the connection
after a random number of bytes from the server (seeded), with a FIN or an RST:
inside the response head, inside a frame, between frames, during a replay from
the database or live. A writer thread meanwhile makes 10,000 changes in two pools
(bulk claims, single claims, releases); the watcher follows only claims of pool
p1. The ground truth is the ``events`` table, read after the fact.

It runs twice per backend: with the server's default ring of recent events (resumes
are served from memory) and with a tiny ring (most resumes replay from the
database and hand over to the live stream under the writes).
"""

from __future__ import annotations

import itertools
import json
import random
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tenure.client import Backoff, TenureClient, WatchEvent
from tenure.store import schema
from tests.conftest import Api, start_api

CUTS = 100
CHANGES = 10_000
SEED = 20261122
END_KEY = "__end__"


class CuttingProxy:
    """A TCP proxy on loopback that cuts its first ``cuts`` connections after a random number of bytes
    from upstream (uniform in ``[0, max_offset]``), then forwards the rest untouched."""

    def __init__(self, upstream: tuple[str, int], *, cuts: int, max_offset: int, seed: int) -> None:
        self.upstream = upstream
        self.planned = cuts
        self.max_offset = max_offset
        self.rng = random.Random(seed)
        self.cuts = 0  # connections really cut
        self.connections = 0
        self.cut_offsets: list[int] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream)
            except OSError:
                down.close()
                continue
            with self._lock:
                self.connections += 1
                # One watch connection at a time: a plan per connection, until the cuts are all made.
                plan = (self.rng.randint(0, self.max_offset), self.rng.random() < 0.5) \
                    if self.cuts < self.planned else None
            threading.Thread(target=self._pump, args=(down, up), daemon=True).start()
            threading.Thread(target=self._from_server, args=(up, down, plan), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        """Client to server, untouched; an end on either side ends both."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        _close(src)
        _close(dst)

    def _from_server(self, up: socket.socket, down: socket.socket, plan: tuple[int, bool] | None) -> None:
        sent = 0
        try:
            while data := up.recv(65536):
                if plan is not None and sent + len(data) >= plan[0]:
                    down.sendall(data[: plan[0] - sent])
                    with self._lock:
                        self.cuts += 1
                        self.cut_offsets.append(plan[0])
                    _close(down, reset=plan[1])
                    _close(up)
                    return
                down.sendall(data)
                sent += len(data)
        except OSError:
            pass
        _close(down)
        _close(up)

    def close(self) -> None:
        self._closed = True
        _close(self._listener)


def _close(s: socket.socket, *, reset: bool = False) -> None:
    try:
        if reset:  # close with SO_LINGER 0: the peer gets an RST instead of a FIN
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.shutdown(socket.SHUT_RD)  # wakes a recv blocked on it in another thread, sends nothing
        else:
            s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class Writer(threading.Thread):
    """Makes at least ``CHANGES`` changes in pools p1 and p2: mostly bulk claims, plus single claims and
    releases; then claims ``p1/__end__``, the watcher's signal that everything was sent."""

    def __init__(self, api: Api) -> None:
        super().__init__(name="writer", daemon=True)
        self.api = api
        self.rng = random.Random(SEED + 1)
        self.changes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def _run(self) -> None:
        api, rng = self.api, self.rng
        held: dict[str, list[str]] = {"p1": [], "p2": []}
        serial = 0
        while self.changes < CHANGES:
            pool = rng.choice(("p1", "p2"))
            roll = rng.random()
            if roll < 0.06:
                n = min(rng.randint(50, 300), CHANGES - self.changes)
                keys = [f"b{serial + i}" for i in range(n)]
                serial += n
                r = api.post(f"/v1/pools/{pool}/claims:bulk", json={"claims": [{"key": k} for k in keys]})
                assert r.status_code == 200, r.text
                assert all(c["created"] for c in r.json()["claims"])
                held[pool].extend(keys)
                self.changes += n
            elif roll < 0.5 or not held[pool]:
                key = f"s{serial}"
                serial += 1
                r = api.post(f"/v1/pools/{pool}/claims", json={"key": key, "project": rng.choice(("blue", "red"))})
                assert r.status_code == 201, r.text
                held[pool].append(key)
                self.changes += 1
            else:
                keys = held[pool]
                i = rng.randrange(len(keys))
                keys[i], keys[-1] = keys[-1], keys[i]
                r = api.delete(f"/v1/pools/{pool}/claims/{keys.pop()}")
                assert r.status_code == 200, r.text
                self.changes += 1
        r = api.post("/v1/pools/p1/claims", json={"key": END_KEY})
        assert r.status_code == 201, r.text


@pytest.fixture(params=["ring", "tiny-ring"])
def server(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Iterator[Api]:
    config = {"watch_ring": 64} if request.param == "tiny-ring" else {}
    yield from start_api(db_url, tmp_path / "data", **config)


@pytest.mark.timeout(300)  # above its own waits (120 s + 120 s), so they say what was missing
def test_a_watcher_cut_100_times_gets_every_matching_event_once_in_order(server: Api) -> None:
    api = server
    for pool in ("p1", "p2"):
        r = api.post("/v1/pools", json={"name": pool, "ranges": [[1, 1_000_000]]})
        assert r.status_code == 201, r.text
    start = api.get("/v1/pools").json()["revision"]
    upstream = api.client.base_url
    # About half the changes are p1's, ~250 bytes per frame: cuts at most 4 kB apart on average use about a
    # third of the stream, so all 100 happen well before its end, wherever the replays restart.
    proxy = CuttingProxy((upstream.host, upstream.port), cuts=CUTS, max_offset=8_000, seed=SEED)
    got: list[WatchEvent] = []
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def follow() -> None:
        try:
            with TenureClient(proxy.url, api.admin_token) as client, client.watch(
                "claim", selectors="pool=p1", since=start, sleep=lambda _: None, rng=random.Random(SEED + 2),
                backoff=Backoff(first=0.001, cap=0.01),
            ) as w:
                for e in w:
                    if e.type == "bookmark":
                        continue
                    got.append(e)
                    if e.id == f"p1/{END_KEY}":
                        break
                outcome["session"] = w.session
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc
        finally:
            done.set()

    watcher = threading.Thread(target=follow, name="watcher", daemon=True)
    watcher.start()
    writer = Writer(api)
    writer.start()
    writer.join(120)
    assert not writer.is_alive(), "the writer did not finish"
    assert writer.error is None, writer.error
    assert done.wait(120), f"the watcher did not receive the end marker ({len(got)} events so far)"
    proxy.close()
    assert "error" not in outcome, outcome.get("error")

    # The ground truth: every committed event after the start, from the store.
    e = schema.events.c
    with api.app.state.tenure.runtime.engine.connect() as conn:
        rows = conn.execute(
            select(e.revision, e.kind, e.object_id, e.op, e.labels, e.body).where(e.revision > start)
            .order_by(e.revision)
        ).all()
    assert len(rows) >= CHANGES + 1
    expected = [
        (r.revision, r.op, r.object_id, json.loads(r.body))
        for r in rows
        if r.kind == "claim" and json.loads(r.labels).get("pool") == "p1"
    ]
    received = [(ev.revision, ev.type, ev.id, ev.object) for ev in got]
    assert len(received) == len(expected)
    assert received == expected  # every matching event, once each, in order, as stored
    revisions = [ev.revision for ev in got]
    assert all(a < b for a, b in itertools.pairwise(revisions))
    assert all(ev.kind == "claim" and ev.labels.get("pool") == "p1" for ev in got)  # p2 never shows
    assert len(expected) < len(rows) - 1000  # and p2 did change meanwhile

    session = outcome["session"]
    assert proxy.cuts == CUTS, (proxy.cuts, proxy.connections)
    assert session.reconnects >= CUTS and session.skipped == 0
