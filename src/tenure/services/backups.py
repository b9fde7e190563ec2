"""Backup files: taken whole or not at all, named and chosen by revision, kept on a schedule (docs/operations.md).

A backup is written as ``NAME.partial``, fsynced, verified, renamed to ``NAME`` and the directory fsynced: a backup
killed half-way is never found under a final name, and a file under a final name has been read back once. In a
backup directory the files are ``tenure-<revision, 20 digits>-<UTC stamp>.tbk``; which is newest is decided by the
revision in each file's verified header, never by a file's modification time (Tegu once restored the wrong
checkpoint that way).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from sqlalchemy import Engine

from tenure.clock import Clock, utcnow
from tenure.store import backup
from tenure.store.backup import BackupError, Header
from tenure.store.engine import StoreLocked, acquire_owner_lock, check_schema, make_engine, open_snapshot

log = logging.getLogger("tenure.backup")

SUFFIX = ".tbk"
PARTIAL = ".partial"


def file_name(revision: int, when: datetime) -> str:
    return f"tenure-{revision:020d}-{when.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}{SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(fill: Callable[[IO[bytes]], object], path: Path) -> tuple[Header, Path]:
    """Write a backup with ``fill(out)`` to ``path`` whole or not at all; its verified header and final path.

    ``path`` may be a directory: the file is then named by the backup's revision and time inside it.
    """
    directory = path if path.is_dir() else path.parent
    partial = directory / (f".tenure-backup-{os.getpid()}{PARTIAL}" if path.is_dir() else path.name + PARTIAL)
    try:
        # 0600: a backup holds the whole store (token hashes included); O_TRUNC: a partial file a killed run left
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        header = backup.verify(partial)
        final = directory / file_name(header.revision, datetime.fromisoformat(header.created_at)) \
            if path.is_dir() else path
        os.replace(partial, final)
        _fsync_dir(directory)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return header, final


class Child:
    """A backup of the store behind ``engine``, read from one snapshot by another process
    (``tenure.store.backup_child``), so that the server's writer keeps its interpreter and its core meanwhile.

    The backup goes to ``out`` (a file descriptor: the backup file) or, without one, to :attr:`stdout` (a pipe to
    read until its end). :attr:`revision` is the snapshot's, known once the constructor returns. Every wait is
    bounded: ``OPEN`` seconds for the snapshot to open, ``LIMIT`` for the whole backup; :meth:`close` ends the
    process in any case (it also ends by itself when this process goes away).
    """

    OPEN = 30.0
    LIMIT = 4 * 3600.0

    def __init__(self, engine: Engine, now: datetime, out: int | None = None) -> None:
        self.started = time.monotonic()
        self._status = -1
        self._said = b""
        with contextlib.ExitStack() as undo:  # what a start that fails lets go of
            try:
                self._errors = undo.enter_context(tempfile.TemporaryFile())
                read, write = os.pipe()
                undo.callback(os.close, read)
                try:
                    self.proc = subprocess.Popen(
                        [sys.executable, "-m", "tenure.store.backup_child"], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE if out is None else out, stderr=self._errors, pass_fds=(write,))
                finally:
                    os.close(write)
            except OSError as exc:  # too many processes or open files
                raise BackupError(f"cannot start the backup process: {exc.strerror or exc}") from None
            undo.pop_all()
        self._status = read
        try:
            assert self.proc.stdin is not None
            # the URL (its password too) by a pipe, not the command line that any user of the host can read
            self.proc.stdin.write(json.dumps({"url": engine.url.render_as_string(hide_password=False),
                                              "now": now.isoformat(), "status_fd": write}).encode() + b"\n")
            self.proc.stdin.flush()
            self.revision = int(self._next("revision", self.OPEN))  # type: ignore[arg-type]
        except BrokenPipeError:  # it ended before reading its request: its own words say why
            error = self._ended()
            self.close()
            raise error from None
        except BaseException:
            self.close()
            raise

    def _ended(self) -> BackupError:
        """The process has ended: why, in its own words (its last line on standard error)."""
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._errors.seek(0)
        said = self._errors.read().decode(errors="replace").strip().splitlines()
        return BackupError(f"the backup process ended (exit status {self.proc.returncode})"
                           + (f": {said[-1]}" if said else ""))

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def _next(self, key: str, within: float) -> object:
        """The next status line's ``key``; :class:`BackupError` with the child's own words if it says otherwise."""
        deadline = time.monotonic() + within
        poller = select.poll()  # (not select.select: a busy server's descriptors go past 1023)
        poller.register(self._status, select.POLLIN)
        while b"\n" not in self._said:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise BackupError(f"the backup process did not answer within {within:.0f} s")
            more = os.read(self._status, 4096)
            if not more:
                raise self._ended()
            self._said += more
        line, self._said = self._said.split(b"\n", 1)
        try:
            status = json.loads(line)
        except ValueError:
            raise BackupError(f"the backup process said something else than its status: {line[:200]!r}") from None
        if not isinstance(status, dict) or key not in status:
            raise BackupError(str(status.get("error", status) if isinstance(status, dict) else status))
        return status[key]

    def overdue(self) -> bool:
        """Whether the backup has run for longer than ``LIMIT``."""
        return time.monotonic() - self.started > self.LIMIT

    def kill(self) -> None:
        """End the process now (from another thread: whoever reads :attr:`stdout` then finds its end)."""
        with contextlib.suppress(OSError):
            if self.proc.poll() is None:
                self.proc.kill()

    def finish(self) -> None:
        """Wait for the backup to be written whole (after :attr:`stdout` is read to its end, if it is a pipe)."""
        try:
            self._next("done", max(1.0, self.LIMIT - (time.monotonic() - self.started)))
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise BackupError("the backup process did not end after its backup") from None
        finally:
            self.close()

    def close(self) -> None:
        """End the process (if it still runs) and let go of its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.proc.wait()
        if self._status >= 0:
            os.close(self._status)
            self._status = -1
        self._errors.close()


def in_child(engine: Engine, out: IO[bytes], now: datetime) -> int:
    """A backup of a running store (``engine``'s) written to the file ``out`` by another process; its revision."""
    out.flush()
    child = Child(engine, now, out.fileno())
    child.finish()
    return child.revision


def from_engine(engine: object, out: IO[bytes], now: datetime) -> Header:
    """One snapshot of the store behind ``engine`` (a read transaction: writers go on), written to ``out`` in this
    process (a stopped store's backup: no writer to hold up)."""
    conn, revision = open_snapshot(engine)  # type: ignore[arg-type]
    try:
        return backup.write(conn, revision, out, now=now)
    finally:
        conn.close()


@contextlib.contextmanager
def _owned(url: str) -> Iterator[Engine]:
    """The store at ``url``, owned (its owner lock held) for the time of the block: no server runs on it."""
    engine = make_engine(url)
    try:
        lock = acquire_owner_lock(engine)
        try:
            yield engine
        finally:
            lock.release()
    finally:
        engine.dispose()


def from_stopped_store(url: str, out: IO[bytes], now: datetime) -> Header:
    """A backup of a store no server runs on (its owner lock is taken for the time of the backup)."""
    try:
        with _owned(url) as engine:
            check_schema(engine)  # a store an older tenure left: the server upgrades it when it starts
            return from_engine(engine, out, now)
    except StoreLocked as exc:
        raise BackupError(f"{exc.message}: take the backup through the server (tenure backup --out FILE, "
                          "without --db)") from None


def _by_revision(directory: Path, skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """The backups in ``directory``, newest first by the revision (then the time) in each header, never by a
    file's mtime; the files whose header does not parse go to ``skipped``, with why."""
    dated: list[tuple[int, str, Path]] = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            h = backup.header_of(path)
        except BackupError as exc:
            if skipped is not None:
                skipped.append((path, str(exc)))
            continue
        dated.append((h.revision, h.created_at, path))
    return [p for _, _, p in sorted(dated, reverse=True)]


def newest(directory: Path) -> tuple[Path, Header, list[tuple[Path, str]]]:
    """The backup in ``directory`` with the highest revision in its verified header, and the files skipped on the
    way (each with why). Raises :class:`BackupError` when none verifies."""
    if not directory.is_dir():
        raise BackupError(f"{directory}: not a directory")
    skipped: list[tuple[Path, str]] = []
    for path in _by_revision(directory, skipped):
        try:
            return path, backup.verify(path), skipped
        except BackupError as exc:
            skipped.append((path, str(exc)))
    raise BackupError(f"{directory}: no backup that verifies"
                      + "".join(f"\n  {p.name}: {why}" for p, why in skipped))


@dataclass
class Schedule:
    """``tenure serve --backup-dir DIR --backup-every 1h --backup-keep 48``."""

    directory: Path
    every: float
    keep: int
    clock: Clock = utcnow
    last: Header | None = field(default=None, init=False)
    last_at: datetime | None = field(default=None, init=False)
    failures: int = field(default=0, init=False)
    prepared: bool = field(default=False, init=False)

    def prepare(self) -> None:
        """Before the first check (by the timer, not on the server's start: it verifies the newest backup): the
        directory exists (0700); the newest backup in it is when the last one was taken."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.prepared = True
        try:
            _, header, _ = newest(self.directory)
        except BackupError:
            return
        self.last_at = datetime.fromisoformat(header.created_at)

    def due(self) -> bool:
        """Whether a backup is due: none taken (here or by an earlier run into this directory) for ``every``."""
        return self.last_at is None or (self.clock() - self.last_at).total_seconds() >= self.every

    def clean(self) -> None:
        """Partial files that scheduled runs left when they were killed (not a running one's: those are named by
        this process's pid, and only one process takes the scheduled backups)."""
        mine = f".tenure-backup-{os.getpid()}{PARTIAL}"
        for stale in self.directory.glob(f".tenure-backup-*{PARTIAL}"):
            if stale.name != mine:
                log.warning("removing a partial backup left by an interrupted run", extra={"path": str(stale)})
                stale.unlink(missing_ok=True)

    def take(self, engine: Engine) -> Path:
        """One backup into the directory, then the oldest beyond ``keep`` (by revision) removed; its path."""
        self.clean()
        now = self.clock()
        try:
            header, path = write_file(lambda out: in_child(engine, out, now), self.directory)
        except Exception:
            self.failures += 1
            raise
        self.last, self.last_at = header, now
        log.info("backup written", extra={"path": str(path), "revision": header.revision})
        self.prune()
        return path

    def prune(self) -> list[Path]:
        """Remove the backups beyond ``keep``, oldest revision first (files that do not parse are left alone)."""
        gone = _by_revision(self.directory)[self.keep:]
        for path in gone:
            path.unlink(missing_ok=True)
            log.info("old backup removed", extra={"path": str(path)})
        return gone


def restore(url: str, path: Path, *, force: bool = False, verified: Header | None = None) -> backup.Restored:
    """Restore the backup at ``path`` into the store at ``url``, which no server may hold (its owner lock is taken
    for the time of the restore)."""
    with _owned(url) as engine:
        return backup.restore(engine, path, force=force, verified=verified)
