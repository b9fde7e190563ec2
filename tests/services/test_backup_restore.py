"""Backup and restore end to end (issue 17; docs/operations.md sections 1 to 3): a running server's backup under 16
writers restores exactly the state of its revision; damaged files are refused by verify and by restore, naming the
damage, and change nothing; a store that holds data is refused unless forced; a restored store's watchers resume
from the backup's revision and get 410 from any later one; SQLite to PostgreSQL and back keeps every table."""

from __future__ import annotations

import gzip
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from tenure.cli.main import app as cli
from tenure.client import TenureClient, WatchGone
from tenure.services import backups
from tenure.services.examples import ensure_examples
from tenure.store import backup
from tenure.store.engine import make_engine
from tests.conftest import Api, start_api

WRITERS = 16
TOPO_HOSTS = ("h1", "h2", "h3", "h4")


def _ok(r: httpx.Response, *status: int) -> Any:
    assert r.status_code in (status or (200, 201)), r.text
    return r.json()


def fill(api: Api) -> None:
    """Data of every kind a server keeps: pools and claims, tokens, an agent, limits, reservations (their ledgers),
    the topology (the example's), instances; some of each changed or deleted."""
    _ok(api.post("/v1/pools", json={"name": "p", "ranges": [[1, 100]], "projects": ["blue"]}))
    for key in ("a", "b", "c ünï / key"):
        _ok(api.post("/v1/pools/p/claims", json={"key": key, "project": "blue", "host": "h1"}))
    _ok(api.delete("/v1/pools/p/claims/b"))
    _ok(api.post("/v1/pools/vlans/claims", json={"key": "net-1"}))
    tok = _ok(api.post("/v1/tokens", json={"role": "member", "project": "blue", "description": "kept"}))
    gone = _ok(api.post("/v1/tokens", json={"role": "member", "project": "red"}))
    _ok(api.delete(f"/v1/tokens/{gone['id']}"))
    agent = _ok(api.post("/v1/tokens", json={"role": "agent", "host": "h1"}))
    _ok(api.post("/v1/agents", json={"host": "h1", "kinds": ["instance"], "version": "1"}, token=agent["token"]))
    _ok(api.request("PUT", "/v1/limits/blue", json={"share": "50%"}))
    for i in range(3):
        _ok(api.post("/v1/reservations", json={"kind": "bandwidth", "src": "h1", "dst": "h3", "rate": f"{i + 1}G",
                                               "start": f"+{i}h", "end": f"+{i + 2}h", "project": "blue"},
                     token=tok["token"]))
    _ok(api.post("/v1/instances", json={"name": "m", "type": "memory", "host": "h1", "project": "blue"}))


def tables_of(path: Path) -> dict[str, list[list[Any]]]:
    """Every table of a backup file but the state row (which a restore moves on), rows as the file holds them."""
    out: dict[str, list[list[Any]]] = {}
    for name, row in backup.rows(path):
        out.setdefault(name, []).append(row)
    out.pop("state", None)
    return out


def cli_ok(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def cli_fails(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code != 0, result.output
    return result.output


def remote(api: Api) -> tuple[str, ...]:
    return ("--url", str(api.client.base_url), "--token", api.admin_token)


def listing(api: Api) -> dict[tuple[str, str], dict[str, Any]]:
    """Every object the server lists (a watch's initial listing), by (kind, id)."""
    out = {}
    with TenureClient(str(api.client.base_url), api.admin_token) as c:
        w = c.watch(initial=True)
        for ev in w:
            if ev.initial_end:
                break
            if ev.type == "resync":
                out.clear()
            elif ev.object is not None:
                out[(ev.kind, ev.id)] = ev.object
        w.close()
    return out


@pytest.fixture
def served(db_url: str, tmp_path: Path) -> Iterator[Api]:
    yield from start_api(db_url, tmp_path / "data", seed=ensure_examples)


def test_a_backup_under_16_writers_holds_exactly_its_revision(served: Api, new_db_url: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fill(served)
    rt = served.app.state.tenure.runtime
    stop, errors = threading.Event(), []
    progress = threading.Condition()

    def writer(n: int) -> None:
        with httpx.Client(base_url=served.client.base_url, headers=served.headers(), timeout=30) as c:
            i, claimed = 0, []
            while not stop.is_set():
                i += 1
                try:
                    if i % 4 == 0:
                        r = c.post("/v1/reservations", json={"kind": "bandwidth", "src": TOPO_HOSTS[n % 4],
                                                             "dst": TOPO_HOSTS[(n + 1) % 4], "rate": "1M",
                                                             "end": "+1h", "project": f"p{n}"})
                    elif i % 7 == 0 and claimed:
                        r = c.delete(f"/v1/pools/vlans/claims/{claimed.pop()}")
                    else:
                        r = c.post("/v1/pools/vlans/claims", json={"key": f"w{n}-{i}"})
                        if r.status_code == 201:
                            claimed.append(f"w{n}-{i}")
                    if r.status_code not in (200, 201, 409):
                        errors.append(r.text)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                with progress:
                    progress.notify_all()

    # The backup's process is stopped, its snapshot open, until the writers have committed 100 more revisions:
    # writes are not held up by it, and none of them gets into the backup.
    from tenure.api import admin

    class HeldChild(backups.Child):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            os.kill(self.proc.pid, signal.SIGSTOP)
            try:
                with progress:
                    assert progress.wait_for(lambda: rt.revision >= self.revision + 100 or bool(errors), timeout=60), \
                        "the writers made no progress while a backup's snapshot was open"
            finally:
                os.kill(self.proc.pid, signal.SIGCONT)

    monkeypatch.setattr(admin, "Child", HeldChild)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for t in threads:
        t.start()
    try:
        with progress:
            progress.wait_for(lambda: rt.revision > 200, timeout=60)
        out = tmp_path / "under-load.tbk"
        said = cli_ok(*remote(served), "backup", "--out", str(out))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    header = backup.verify(out)
    assert f"revision {header.revision}" in said
    assert rt.revision >= header.revision + 100  # committed while the snapshot was open, and not in it

    # The state at the backup's revision, by folding the source's event log up to it.
    with rt.engine.connect() as conn:
        assert conn.execute(text("SELECT compacted_revision FROM state")).scalar_one() == 0
        folded: dict[tuple[str, str], dict[str, Any] | None] = {}
        for kind, oid, op, body in conn.execute(text(
                "SELECT kind, object_id, op, body FROM events WHERE revision <= :r ORDER BY revision"),
                {"r": header.revision}):
            folded[(kind, oid)] = None if op == "deleted" else json.loads(body)
    expected = {k: v for k, v in folded.items() if v is not None and k[0] in ("claim", "reservation")}

    target = new_db_url()
    said = cli_ok("restore", str(out), "--db", target)
    assert f"goes on from revision {header.revision + backup.JUMP}" in said
    for restored in start_api(target, tmp_path / "restored"):
        restored.admin_token = served.admin_token  # the tokens are the backup's
        got = {k: v for k, v in listing(restored).items() if k[0] in ("claim", "reservation")}
        assert got.keys() == expected.keys()
        assert got == expected
        assert restored.app.state.tenure.runtime.revision == header.revision + backup.JUMP


def test_a_restored_store_holds_every_table_of_the_backup_and_serves(served: Api, new_db_url: Any,
                                                                   tmp_path: Path) -> None:
    fill(served)
    first = tmp_path / "first.tbk"
    cli_ok(*remote(served), "backup", "--out", str(first))
    header = backup.verify(first)
    target = new_db_url()
    cli_ok("restore", str(first), "--db", target)
    for restored in start_api(target, tmp_path / "restored"):
        restored.admin_token = served.admin_token
        again = tmp_path / "again.tbk"
        cli_ok(*remote(restored), "backup", "--out", str(again))
        assert tables_of(again) == tables_of(first)
        assert backup.verify(again).revision == header.revision + backup.JUMP
        # It serves: a new claim gets a revision past the jump; the old member token still works.
        r = _ok(restored.post("/v1/pools/p/claims", json={"key": "new", "project": "blue"}))
        assert r["revision"] > header.revision + backup.JUMP


def test_watchers_resume_from_the_backup_and_get_410_after_it(served: Api, new_db_url: Any, tmp_path: Path) -> None:
    fill(served)
    out = tmp_path / "b.tbk"
    cli_ok(*remote(served), "backup", "--out", str(out))
    r = backup.verify(out).revision
    _ok(served.post("/v1/pools/p/claims", json={"key": "lost", "project": "blue"}))  # after the backup: lost
    target = new_db_url()
    cli_ok("restore", str(out), "--db", target)
    for restored in start_api(target, tmp_path / "restored"):
        url = str(restored.client.base_url)
        with TenureClient(url, served.admin_token) as c:
            _ok(restored.post("/v1/pools/p/claims", json={"key": "after", "project": "blue"},
                              token=served.admin_token))
            w = c.watch("claim", since=r - 1, max_retries=0)  # at or before the backup: resumes
            seen = []
            for ev in w:
                seen.append(ev.id)
                if ev.id == "p/after" or len(seen) > 20:
                    break
            w.close()
            assert seen[-1] == "p/after" and "p/lost" not in seen
            with pytest.raises(WatchGone, match="restored from a backup taken at revision"):
                next(iter(c.watch("claim", since=r + 1, max_retries=0)))  # a revision only the old store issued
        gone = restored.client.get("/v1/watch", params={"since": r + 1},
                                   headers={"Authorization": f"Bearer {served.admin_token}"})
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "gone"


def test_a_store_that_holds_data_is_refused_unless_forced(served: Api, db_url: str, new_db_url: Any,
                                                          tmp_path: Path) -> None:
    fill(served)
    out = tmp_path / "b.tbk"
    cli_ok(*remote(served), "backup", "--out", str(out))
    target = new_db_url()
    cli_ok("restore", str(out), "--db", target)
    said = cli_fails("restore", str(out), "--db", target)
    assert "store_not_empty" in said and "--force" in said
    said = cli_ok("restore", str(out), "--db", target, "--force")
    assert "restored" in said
    said = cli_fails("restore", str(out), "--db", db_url)  # the server holds its store
    assert "store_locked" in said


def _damaged(good: Path, change: Any, name: str) -> Path:
    raw = gzip.decompress(good.read_bytes())
    out = good.with_name(name)
    out.write_bytes(gzip.compress(change(raw), mtime=0))
    return out


def test_damaged_backups_are_refused_by_verify_and_restore_and_change_nothing(served: Api, new_db_url: Any,
                                                                              tmp_path: Path) -> None:
    fill(served)
    good = tmp_path / "good.tbk"
    cli_ok(*remote(served), "backup", "--out", str(good))
    cases = {
        "flipped.tbk": (lambda b: b.replace(b'"net-1"', b'"net-2"', 1), "checksum mismatch"),
        "truncated.tbk": (lambda b: b[: b.rindex(b'{"sha256"')], "truncated"),
        "newer.tbk": (lambda b: b.replace(b'"version":1', b'"version":2', 1), "format version 2"),
    }
    target = new_db_url()
    for name, (change, message) in cases.items():
        bad = _damaged(good, change, name)
        assert message in cli_fails("backup", "verify", str(bad))
        said = cli_fails("restore", str(bad), "--db", target)
        assert "backup_invalid" in said and message in said
    cut = tmp_path / "cut.tbk"
    cut.write_bytes(good.read_bytes()[:-20])  # the gzip stream itself cut short
    assert "not a readable backup" in cli_fails("restore", str(cut), "--db", target)
    engine = make_engine(target)
    try:
        with engine.connect() as conn:
            assert not backup.holds_data(conn)  # nothing was written by any of them
    finally:
        engine.dispose()
    cli_ok("restore", str(good), "--db", target)  # and the good one still restores there


def test_from_dir_takes_the_newest_valid_revision_never_the_newest_file(served: Api, new_db_url: Any,
                                                                        tmp_path: Path) -> None:
    fill(served)
    d = tmp_path / "backups"
    d.mkdir()
    said = cli_ok(*remote(served), "backup", "--out", str(d))  # a directory: named by revision
    older = next(d.glob("*.tbk"))
    assert older.name in said
    _ok(served.post("/v1/pools/p/claims", json={"key": "newer", "project": "blue"}))
    cli_ok(*remote(served), "backup", "--out", str(d))
    newer = max(d.glob("*.tbk"), key=lambda p: backup.header_of(p).revision)
    _ok(served.post("/v1/pools/p/claims", json={"key": "newest", "project": "blue"}))
    cli_ok(*remote(served), "backup", "--out", str(d))
    newest = max(d.glob("*.tbk"), key=lambda p: backup.header_of(p).revision)
    # The newest is damaged; the oldest was touched last (a copy, say): neither may be chosen.
    raw = bytearray(gzip.decompress(newest.read_bytes()))
    raw[-200] ^= 0x01
    newest.write_bytes(gzip.compress(bytes(raw), mtime=0))
    older.touch()
    assert older.stat().st_mtime > newer.stat().st_mtime
    target = new_db_url()
    said = cli_ok("restore", "--from-dir", str(d), "--db", target)
    assert f"restored {newer}" in said
    assert f"skipped {newest.name}" in said
    path, header, _ = backups.newest(d)
    assert path == newer and header.revision == backup.header_of(newer).revision


def test_the_same_two_commands_move_a_store_sqlite_to_postgresql_and_back(pg_server: Any, tmp_path: Path) -> None:
    lite = f"sqlite:///{tmp_path / 'first.db'}"
    for api in start_api(lite, tmp_path / "first", seed=ensure_examples):
        fill(api)
        token = api.admin_token
    one, two, three = (tmp_path / f"{n}.tbk" for n in ("one", "two", "three"))
    cli_ok("backup", "--db", lite, "--out", str(one))  # a stopped store
    pg = pg_server.create_database("tenure_move")
    cli_ok("restore", str(one), "--db", pg)
    cli_ok("backup", "--db", pg, "--out", str(two))
    back = f"sqlite:///{tmp_path / 'back.db'}"
    cli_ok("restore", str(two), "--db", back)
    cli_ok("backup", "--db", back, "--out", str(three))
    assert tables_of(one) == tables_of(two) == tables_of(three)
    listed = []
    for url, where in ((pg, "pg"), (back, "back")):  # served (which records the tokens' use) only once compared
        for api in start_api(url, tmp_path / where):
            api.admin_token = token
            listed.append(listing(api))
    assert listed[0] == listed[1]


def test_a_schedule_takes_the_first_backup_when_the_directory_has_none_recent(alloc: Any, tmp_path: Path) -> None:
    from datetime import timedelta

    from tests.reservation_support import FakeClock

    clock = FakeClock()
    d = tmp_path / "scheduled"
    first = backups.Schedule(d, every=3600, keep=2, clock=clock)
    first.prepare()
    assert first.due()  # nothing there: at once
    alloc.create_pool("vlans", ranges=[[1, 10]])
    first.take(alloc.runtime.engine)
    assert not first.due()
    again = backups.Schedule(d, every=3600, keep=2, clock=clock)  # a restart: the directory says when
    again.prepare()
    assert again.last_at == clock.now and not again.due()
    clock.advance(hours=1)
    assert again.due() and again.last_at is not None and clock.now - again.last_at == timedelta(hours=1)


def test_a_backup_killed_half_way_leaves_no_file_under_a_final_name(alloc: Any, db_url: str,
                                                                     tmp_path: Path) -> None:
    import subprocess
    import sys

    alloc.create_pool("vlans", ranges=[[1, 4094]])
    alloc.claim_many("vlans", [f"k{i}" for i in range(500)])
    alloc.close()
    d = tmp_path / "scheduled"
    child = subprocess.Popen([sys.executable, "-c", KILLED, db_url, str(d)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "syncing"  # the whole file is written, not yet renamed
        child.kill()
    finally:
        child.wait(30)
    assert [p.name for p in d.iterdir() if not p.name.endswith(".partial")] == []
    assert list(d.glob("*.partial"))
    with pytest.raises(backup.BackupError, match="no backup that verifies"):
        backups.newest(d)
    schedule = backups.Schedule(d, every=3600, keep=2)
    schedule.clean()  # what the next scheduled backup does first: the killed one's file goes
    assert list(d.iterdir()) == []


KILLED = """
import os, sys, threading
from pathlib import Path
from tenure.services import backups
from tenure.store.engine import make_engine
real = os.fsync
def fsync(fd):
    print("syncing", flush=True)
    threading.Event().wait()
os.fsync = fsync
schedule = backups.Schedule(Path(sys.argv[2]), every=3600, keep=2)
schedule.prepare()
schedule.take(make_engine(sys.argv[1]))
"""


def test_scheduled_backups_keep_the_newest_revisions(alloc: Any, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    times = iter(datetime(2026, 12, 5, h, tzinfo=UTC) for h in (12, 11, 10, 9))  # a clock set back each time
    d = tmp_path / "scheduled"
    schedule = backups.Schedule(d, every=3600, keep=2, clock=lambda: next(times))
    schedule.prepare()
    alloc.create_pool("vlans", ranges=[[1, 4094]])
    taken = []
    for i in range(4):
        alloc.claim("vlans", f"k{i}")
        taken.append(schedule.take(alloc.runtime.engine))
    kept = sorted(d.glob("*.tbk"))
    assert kept == sorted(taken[-2:])  # the two newest revisions, though their times are the oldest
    assert [backup.header_of(p).revision for p in kept] == sorted(backup.header_of(p).revision for p in taken[-2:])
    assert schedule.last is not None and schedule.last.revision == alloc.runtime.revision
    assert schedule.last_at == datetime(2026, 12, 5, 9, tzinfo=UTC)


def test_compaction_by_count_counts_past_the_restore_gap(alloc: Any, new_db_url: Any, tmp_path: Path) -> None:
    from tenure.services.embedded import Allocator
    from tenure.services.runtime import Runtime, Settings

    alloc.create_pool("vlans", ranges=[[1, 4094]])
    for i in range(5):
        alloc.claim("vlans", f"k{i}")
    path = tmp_path / "b.tbk"
    backups.write_file(lambda out: backups.from_engine(alloc.runtime.engine, out, alloc.runtime.clock()), path)
    r = backup.verify(path).revision
    target = new_db_url()
    backups.restore(target, path)
    rt = Runtime.open(target, settings=Settings(housekeeping=False, history_events=4))
    try:
        assert rt.history.restored == (r, r + backup.JUMP)
        assert rt.history.target() == r - 4  # the newest 4 events are the backup's last 4
        restored = Allocator(rt)
        restored.claim("vlans", "after-1")
        restored.claim("vlans", "after-2")
        assert rt.revision == r + backup.JUMP + 2
        assert rt.history.target() == r - 2  # two of the backup's, the two new ones
        for _ in range(3):
            restored.claim("vlans", f"more-{_}")
        assert rt.history.target() == r + backup.JUMP + 1  # past the gap: counted as usual
        assert rt.history.compact() == r + backup.JUMP + 1
    finally:
        rt.close()


def test_a_forced_restore_of_a_damaged_file_leaves_the_store_it_would_replace(served: Api, new_db_url: Any,
                                                                              tmp_path: Path) -> None:
    fill(served)
    good = tmp_path / "good.tbk"
    cli_ok(*remote(served), "backup", "--out", str(good))
    target = new_db_url()
    cli_ok("restore", str(good), "--db", target)
    before = tmp_path / "before.tbk"
    cli_ok("backup", "--db", target, "--out", str(before))
    # The checksum fails only at the end, after every row was loaded over the dropped tables: all of it is undone.
    bad = _damaged(good, lambda b: b.replace(b'"net-1"', b'"net-2"', 1), "bad.tbk")
    said = cli_fails("restore", str(bad), "--db", target, "--force")
    assert "checksum mismatch" in said
    after = tmp_path / "after.tbk"
    cli_ok("backup", "--db", target, "--out", str(after))
    assert tables_of(after) == tables_of(before)
    assert backup.verify(after).revision == backup.verify(before).revision


def test_a_backup_file_is_readable_by_its_owner_only(served: Api, tmp_path: Path) -> None:
    out = tmp_path / "b.tbk"
    cli_ok(*remote(served), "backup", "--out", str(out))
    assert out.stat().st_mode & 0o777 == 0o600


def test_the_backup_process_says_why_it_failed(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    engine = make_engine(f"sqlite:///{tmp_path / 'not-a-store.db'}")
    try:
        with pytest.raises(backup.BackupError, match="no such table: state"):
            backups.Child(engine, datetime.now(UTC))
    finally:
        engine.dispose()


def test_the_backup_process_ends_with_the_server_that_started_it(alloc: Any, db_url: str) -> None:
    """A server killed while its backup is streamed leaves no process reading a snapshot behind."""
    import select
    import subprocess
    import sys

    alloc.create_pool("vlans", ranges=[[1, 1_000_000]])
    for n in range(3):  # more than the pipe holds: the child waits for its reader
        alloc.claim_many("vlans", [f"key-{n}-{i}" for i in range(10_000)])
    parent = subprocess.Popen([sys.executable, "-c", STARTS_A_BACKUP, db_url], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        child = os.pidfd_open(pid)
        try:
            assert not select.select([child], [], [], 0)[0]  # it runs, its snapshot open, blocked on its output
            parent.kill()
            assert select.select([child], [], [], 30)[0], "the backup process outlived the server that started it"
        finally:
            os.close(child)
    finally:
        parent.kill()
        parent.wait(30)


STARTS_A_BACKUP = """
import sys, threading
from datetime import UTC, datetime
from tenure.services.backups import Child
from tenure.store.engine import make_engine
child = Child(make_engine(sys.argv[1]), datetime.now(UTC))
print(child.proc.pid, flush=True)
threading.Event().wait()
"""


def test_a_backup_process_that_hangs_is_ended_when_its_client_goes_away(served: Api,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """(Its output never comes, so nothing reads its pipe: a watcher ends it, and its snapshot with it.)"""
    import select

    from tenure.api import admin

    started: list[backups.Child] = []

    class Hung(backups.Child):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            os.kill(self.proc.pid, signal.SIGSTOP)  # its snapshot open, nothing written
            started.append(self)

    monkeypatch.setattr(admin, "Child", Hung)
    with served.client.stream("GET", "/v1/admin/backup", headers=served.headers()) as r:
        assert r.status_code == 200
    assert len(started) == 1
    try:
        pidfd = os.pidfd_open(started[0].proc.pid)
    except ProcessLookupError:  # already ended and reaped
        return
    try:
        assert select.select([pidfd], [], [], 30)[0], "the hung backup process outlived its client"
    finally:
        os.close(pidfd)
