"""The client's watch against the real server (uvicorn on SQLite and PostgreSQL): filters, the initial
state, 410, the async client, and ``tenure watch``.

Every watch here reads events that are already committed, or that the test commits after the watch is
known to be registered, so no test waits for time; pytest's timeout guards against a watch that hangs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import queue
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tenure.cli.common import Session
from tenure.client import AsyncTenureClient, TenureAPIError, TenureClient, Watch, WatchEvent, WatchGone
from tests.cli.conftest import Cli, base_url
from tests.conftest import Api

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def client(api: Api) -> Iterator[TenureClient]:
    with TenureClient(base_url(api), api.admin_token) as c:
        c.create_pool("p1", [[1, 1000]])
        c.create_pool("p2", [[1, 1000]])
        yield c


def changes(w: Watch, n: int) -> list[WatchEvent]:
    """The next ``n`` events that are not bookmarks."""
    return list(itertools.islice((e for e in w if e.type != "bookmark"), n))


def wait_for_watchers(client: TenureClient, n: int, timeout: float = 30.0) -> None:
    """Until the server has ``n`` watch streams registered (live), polling /healthz."""
    ticker = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if client.health().get("watchers", 0) >= n:
            return
        ticker.wait(0.01)
    raise AssertionError(f"fewer than {n} watchers registered after {timeout}s")


def test_filters_pick_exactly_the_matching_events(client: TenureClient) -> None:
    start = client.pools()["revision"]
    a = client.claim("p1", "a", project="blue")
    client.claim("p2", "a", project="blue")
    b = client.claim("p1", "b")
    gone = client.release("p1", "a")
    c = client.claim("p1", "c", project="red")
    with client.watch("claim", selectors="pool=p1", since=start) as w:
        got = changes(w, 4)
        assert w.revision == c["revision"]
    assert [(e.type, e.kind, e.id, e.revision) for e in got] == [
        ("created", "claim", "p1/a", a["revision"]), ("created", "claim", "p1/b", b["revision"]),
        ("deleted", "claim", "p1/a", gone["revision"]), ("created", "claim", "p1/c", c["revision"])]
    assert got[0].labels == {"pool": "p1", "project": "blue"}
    assert got[1].object == client.get_claim("p1", "b")  # the object as GET returns it
    assert got[0].ts is not None and not got[0].initial

    # ids, ops and a set-based selector together: the release of p1/c is filtered out by op, so the next
    # match after its creation is its re-creation.
    client.release("p1", "c")
    again = client.claim("p1", "c", project="red")
    with client.watch(["claim", "pool"], ids=["p1/c", "p2/zz"], ops="created", selectors="project in (red,x)",
                      since=start) as w:
        assert [(e.id, e.revision) for e in changes(w, 2)] == [("p1/c", c["revision"]), ("p1/c", again["revision"])]


def test_a_watch_from_now_sees_what_is_committed_after_it_starts(api: Api, client: TenureClient) -> None:
    client.claim("p1", "before")
    got: queue.Queue[Any] = queue.Queue()

    def follow() -> None:
        try:
            with client.watch("claim") as w:
                got.put(changes(w, 1)[0])
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            got.put(exc)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    # The watch is lazy and anchored at the revision /healthz reports when it starts; wait until its
    # stream is registered, then commit.
    wait_for_watchers(client, 1)
    after = client.claim("p1", "after")
    event = got.get(timeout=30)
    assert isinstance(event, WatchEvent), event
    assert (event.id, event.revision) == ("p1/after", after["revision"])
    thread.join(30)


def test_initial_lists_the_objects_then_the_bookmark_then_live_events(client: TenureClient) -> None:
    for i in range(5):
        client.claim("p1", f"k{i}", project="blue" if i % 2 else "red")
        client.claim("p2", f"k{i}")
    client.release("p1", "k0")
    listing = {f"p1/{c['key']}": c for c in client.iter_claims("p1")}
    now = client.health()["revision"]
    with client.watch("claim", selectors="pool=p1", initial=True) as w:
        objects = changes(w, len(listing))
        end = next(w)
        assert all(e.initial and e.revision is None and e.type == "created" for e in objects)
        assert {e.id: e.object for e in objects} == listing
        assert end.type == "bookmark" and end.initial_end and end.revision == now and w.revision == now
        new = client.claim("p1", "k9")
        client.claim("p2", "k9")
        [live] = changes(w, 1)
        assert (live.type, live.id, live.revision, live.initial) == ("created", "p1/k9", new["revision"], False)


def test_history_compacted_under_since_raises_watch_gone(api: Api, client: TenureClient) -> None:
    revs = [client.claim("p1", f"k{i}")["revision"] for i in range(10)]
    rt = api.app.state.tenure.runtime
    assert rt.history.compact(revs[5]) == revs[5]
    with pytest.raises(WatchGone) as info:
        next(client.watch("claim", since=revs[2]))
    gone = info.value
    assert isinstance(gone, TenureAPIError) and (gone.status, gone.code) == (410, "gone")
    assert gone.compacted_revision == revs[5] and gone.revision == revs[-1]
    # From the compaction point on, nothing is missing.
    with client.watch("claim", since=revs[5]) as w:
        assert [e.revision for e in changes(w, 4)] == revs[6:]

    result = Cli(api)("watch", "--kind", "claim", "--since", str(revs[1]))
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: gone: ") and "--initial" in result.stderr and "list" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_refusals_raise_without_retrying(api: Api, client: TenureClient) -> None:
    with pytest.raises(TenureAPIError) as info:
        next(client.watch("nope"))
    assert (info.value.status, info.value.code) == (400, "invalid_kind")
    with pytest.raises(TenureAPIError) as info:
        next(client.watch(selectors="pool in (", since=0))
    assert info.value.code == "invalid_selector"
    with TenureClient(base_url(api), "not-a-token") as stranger, pytest.raises(TenureAPIError) as info:
        next(stranger.watch(since=0))
    assert info.value.status == 401


def test_the_async_client(api: Api, client: TenureClient) -> None:
    start = client.pools()["revision"]

    async def main() -> tuple[Any, list[WatchEvent], dict[str, Any], dict[str, Any]]:
        async with AsyncTenureClient(base_url(api), api.admin_token) as c:
            assert (await c.health())["status"] == "ok"
            assert (await c.whoami())["role"] == "admin"
            assert [p["name"] for p in (await c.pools())["pools"]] == ["p1", "p2"]
            first = await c.claim("p1", "a", project="blue")
            assert first["created"] is True and (await c.claim("p1", "a"))["created"] is False
            await c.claim("p2", "a")
            await c.release("p1", "a")
            agent = await c.register_agent("h1", ["claim"], "1.0")
            assert agent["created"] is True
            assert (await c.heartbeat("h1"))["host"] == "h1"
            listed = await c.agents()
            got = []
            async with c.watch(["claim", "agent"], selectors="pool notin (p2)", since=start) as w:
                async for e in w:
                    if e.type != "bookmark":
                        got.append((e.type, e.kind, e.id))
                    if len(got) == 3:
                        break
            async with c.watch("claim", selectors="pool=p1", initial=True) as w:
                end = await anext(w)  # p1 is empty again: the listing is only its closing bookmark
                b = await c.claim("p1", "b")
                live = [e async for e in _first_change(w)]
            return got, [end, *live], listed, b

    got, initial, listed, b = asyncio.run(main())
    assert got == [("created", "claim", "p1/a"), ("deleted", "claim", "p1/a"), ("created", "agent", "h1")]
    assert [a["host"] for a in listed["agents"]] == ["h1"]
    assert initial[0].initial_end and initial[0].revision is not None
    assert (initial[1].type, initial[1].id, initial[1].revision) == ("created", "p1/b", b["revision"])


async def _first_change(w: Any) -> Any:
    async for e in w:
        if e.type != "bookmark":
            yield e
            return


class _Interrupted(TenureClient):
    """A client whose watch is interrupted (as by Ctrl-C) after ``after`` events."""

    after = 3
    listed = threading.Event()  # set once the initial listing has been received in full

    def watch(self, *args: Any, **kwargs: Any) -> Watch:
        inner = super().watch(*args, **kwargs)

        def events() -> Iterator[WatchEvent]:
            n = 0
            with inner:
                for e in inner:
                    yield e
                    if e.type == "bookmark" and e.initial_end:
                        self.listed.set()
                    n += e.type != "bookmark"
                    if n == self.after:
                        raise KeyboardInterrupt

        return Watch(inner.session, events())


def test_the_watch_command(api: Api, client: TenureClient) -> None:
    start = client.pools()["revision"]
    a = client.claim("p1", "web", project="blue")
    client.claim("p2", "x")
    rel = client.release("p1", "web")
    cli = Cli(api)
    args = ["--url", cli.url, "--token", api.admin_token, "watch", "--kind", "claim", "-l", "pool=p1",
            "--since", str(start)]
    _Interrupted.after = 2
    result = cli.raw(args, session=Session(connect=_Interrupted))
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.stdout.splitlines() == [
        f"{a['revision']} created claim p1/web project=blue value={a['value']}",
        f"{rel['revision']} deleted claim p1/web project=blue value={a['value']}"]

    result = cli.raw([*args, "--json"], session=Session(connect=_Interrupted))
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(d["type"], d["revision"], d["id"]) for d in lines] == [
        ("created", a["revision"], "p1/web"), ("deleted", rel["revision"], "p1/web")]
    assert lines[0]["object"]["value"] == a["value"]

    client.claim("p1", "db")
    _Interrupted.after = 2  # the listed object, then a live event
    initial = ["--url", cli.url, "--token", api.admin_token, "watch", "-k", "claim", "-l", "pool=p1", "--initial"]
    result_box: list[Any] = []
    runner = threading.Thread(target=lambda: result_box.append(cli.raw(initial, session=Session(connect=_Interrupted))),
                              daemon=True)
    _Interrupted.listed.clear()
    runner.start()
    # The hub counts a stream from its request, before its listing is read: wait for the listing itself,
    # so that what is committed next is live and not listed.
    assert _Interrupted.listed.wait(30)
    client.claim("p1", "late")
    runner.join(30)
    result = result_box[0]
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("- created claim p1/db value=") and " late" not in lines[0]
    assert lines[1].split()[1:4] == ["created", "claim", "p1/late"]
    assert "initial state complete at revision" in result.stderr

    bad = cli.raw(["--url", cli.url, "--token", api.admin_token, "watch", "--since", "1", "--initial"])
    assert bad.exit_code == 2
    refused = cli("watch", "--kind", "nope")
    assert refused.exit_code == 1 and refused.stderr.startswith("error: invalid_kind: ")
