"""Streams still catching up (initial listing or replay) are streams like any other: counted against the
watcher limit, ended by token revocation and by shutdown, cut off when their reader stops reading, and
unable to hold the store's connections: at most a few listings read the store at once."""

from __future__ import annotations

from pathlib import Path

from tests.watch.support import Served, SlowWatch, fill_claims, serve, wait_for

LISTING = 20_000  # claims of ~600-byte frames: 12 MB, more than the loopback socket buffers hold


def _dispatched(served: Served, revision: int) -> None:
    hub = served.api.app.state.tenure.hub
    wait_for(lambda: hub.revision >= revision, what=f"the hub to dispatch revision {revision}")


def test_a_token_revoked_during_the_initial_listing_ends_its_stream(db_url: str, tmp_path: Path) -> None:
    with serve(db_url, tmp_path / "data", bookmark_interval=3600) as served:
        api = served.api
        fill_claims(api, "p", LISTING, project="blue")
        r = api.post("/v1/tokens", json={"role": "member", "project": "blue"})
        token, token_id = r.json()["token"], r.json()["id"]
        slow = SlowWatch(served.port, token, {"kind": "claim", "initial": "true"})
        assert slow.status == 200
        wait_for(lambda: served.paused_writers() >= 1, what="the server to block writing the listing")
        rev = api.delete(f"/v1/tokens/{token_id}").json()["revision"]
        _dispatched(served, rev)
        assert api.get("/v1/watch", token=token).status_code == 401  # revoked, for every new request
        after = api.post("/v1/pools/p/claims", json={"key": "after-revocation", "project": "blue"}).json()
        _dispatched(served, after["revision"])
        slow.drain()
        frames, found = slow.until(lambda f: f.data.get("id") == "p/after-revocation")
        slow.close()
        assert not found and len(frames) < LISTING  # cut in the middle of its listing, nothing after


def test_shutdown_ends_a_stream_stalled_in_its_initial_listing(db_url: str, tmp_path: Path) -> None:
    with serve(db_url, tmp_path / "data", bookmark_interval=3600) as served:
        fill_claims(served.api, "p", LISTING)
        idle = SlowWatch(served.port, served.api.admin_token, {"kind": "pool"})
        slow = SlowWatch(served.port, served.api.admin_token, {"kind": "claim", "initial": "true"})
        wait_for(lambda: served.paused_writers() >= 1, what="the server to block writing the listing")
        served.server.should_exit = True
        served.thread.join(10)
        stopped = not served.thread.is_alive()
        slow.close()
        idle.close()
        assert stopped, "the server did not shut down with a stream stalled in its listing"


def test_stalled_listings_cannot_starve_the_store(db_url: str, tmp_path: Path) -> None:
    with serve(db_url, tmp_path / "data", bookmark_interval=3600) as served:
        api = served.api
        fill_claims(api, "p", LISTING)
        rt = api.app.state.tenure.runtime
        pool = rt.engine.pool
        capacity = pool.size() + pool._max_overflow  # 8 + 8 in make_engine
        streams = [SlowWatch(served.port, api.admin_token, {"kind": "claim", "initial": "true"})
                   for _ in range(capacity)]
        wait_for(lambda: served.paused_writers() >= 4, timeout=60, what="four listings to block")
        assert pool.checkedout() <= 2 + 4  # the writer (and the owner lock on PostgreSQL) + four listings
        pool._timeout = 1.0  # a GET that had to wait for a connection would fail within a second
        try:
            r = api.get("/v1/pools/p/claims/00000001-" + "x" * 191)
            status = r.status_code
        finally:
            for s in streams:
                s.close()
        assert status == 200


def test_a_listing_whose_reader_stops_is_cut_off(db_url: str, tmp_path: Path) -> None:
    with serve(db_url, tmp_path / "data", bookmark_interval=3600) as served:
        api = served.api
        fill_claims(api, "p", LISTING)
        hub = api.app.state.tenure.hub
        hub.send_timeout = 0.2
        slow = SlowWatch(served.port, api.admin_token, {"kind": "claim", "initial": "true"})
        wait_for(lambda: hub.cutoffs == 1, what="the stalled listing to be cut off")
        wait_for(lambda: hub.watchers == 0, what="the stream to end")
        frames, ended = slow.drain().until(lambda f: False)  # the connection was dropped: EOF after the buffer
        assert not ended and 0 < len(frames) < LISTING
        slow.close()
        again = api.get("/v1/pools/p/claims/00000001-" + "x" * 191)  # and its connection went back to the pool
        assert again.status_code == 200


def test_streams_in_catch_up_count_against_the_watcher_limit(db_url: str, tmp_path: Path) -> None:
    with serve(db_url, tmp_path / "data", bookmark_interval=3600) as served:
        fill_claims(served.api, "p", LISTING)
        hub = served.api.app.state.tenure.hub
        hub.max_watchers = 1
        streams = [SlowWatch(served.port, served.api.admin_token, {"kind": "claim", "initial": "true"})
                   for _ in range(3)]
        statuses = sorted(s.status for s in streams)
        for s in streams:
            s.close()
        assert statuses == [200, 503, 503]
