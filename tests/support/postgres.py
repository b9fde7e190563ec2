"""Throwaway PostgreSQL servers for tests.

Why this exists
---------------
Tenure's store must behave the same on SQLite and PostgreSQL, and some
behaviour (concurrent writers, row locks, transaction isolation) only shows up
against a real PostgreSQL server.  We do not want tests to depend on a system
cluster (``pg_ctlcluster``, port 5432, passwords, leftover state), nor on
Docker, which CI does not have.  Instead each test session starts its own
private server from the machine's PostgreSQL binaries:

* data lives in a fresh temporary directory and is deleted afterwards;
* the server listens only on 127.0.0.1, on a free port, with ``trust`` auth,
  so URLs need no password;
* durability is switched off (``fsync=off`` etc.) because the data is thrown
  away, which makes tests much faster;
* ``initdb`` refuses to run as root, so when we are root the server runs as
  the ``postgres`` system user (which the Debian packages create).

``stop()`` (also called from ``__exit__``, on a failed ``start()`` and at
interpreter exit) shuts the server down and kills its whole process group, so
no ``postgres`` process outlives the test run.

Usage::

    with PostgresServer() as pg:
        url = pg.create_database("tenure_test_1")
        engine = sqlalchemy.create_engine(url)

``PostgresUnavailable`` is raised when no PostgreSQL binaries are installed;
callers (tests/conftest.py) decide whether that means "skip" or "fail".
"""

from __future__ import annotations

import atexit
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

__all__ = ["PostgresServer", "PostgresUnavailable", "find_pg_bin"]

# Debian/Ubuntu install each major version side by side here.
_PG_ROOT = pathlib.Path("/usr/lib/postgresql")
_START_DEADLINE_S = 30.0
_STOP_GRACE_S = 10.0
# Unquoted-safe PostgreSQL identifiers only (max 63 bytes): no quoting
# surprises, no injection through database names.
_IDENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresUnavailable(RuntimeError):
    """No usable PostgreSQL server binaries (or no user to run them as)."""


def _has_server(bin_dir: pathlib.Path) -> bool:
    return (bin_dir / "initdb").is_file() and (bin_dir / "postgres").is_file()


def _version_key(bin_dir: pathlib.Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin; versions look like "15" or "9.6".
    try:
        return tuple(int(part) for part in bin_dir.parent.name.split("."))
    except ValueError:
        return (-1,)


def find_pg_bin() -> pathlib.Path | None:
    """Return the directory holding ``initdb`` and ``postgres``, or None.

    ``TENURE_PG_BIN`` wins when set (for non-Debian layouts); otherwise the
    highest version under /usr/lib/postgresql/*/bin is used.
    """
    override = os.environ.get("TENURE_PG_BIN")
    if override:
        path = pathlib.Path(override)
        return path if _has_server(path) else None
    candidates = [p for p in _PG_ROOT.glob("*/bin") if _has_server(p)]
    return max(candidates, key=_version_key, default=None)


def free_port() -> int:
    # Ask the kernel for a free port. Another process could grab it before
    # postgres binds; start() retries on "address in use" for that reason.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A private PostgreSQL server in a temporary directory (context manager)."""

    host = "127.0.0.1"

    def __init__(self, bin_dir: pathlib.Path | None = None, *, durable: bool = False) -> None:
        """``durable=True`` keeps PostgreSQL's crash-safe defaults (benchmarks compare durable stores)."""
        self.bin_dir = bin_dir or find_pg_bin()
        self.durable = durable
        self.port: int | None = None
        self.dir: pathlib.Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log_path: pathlib.Path | None = None
        self._run_as: pwd.struct_passwd | None = None

    # -- public API ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        """SQLAlchemy URL of the default ``postgres`` database."""
        return self._url("postgres")

    def start(self) -> "PostgresServer":
        if self.bin_dir is None or not _has_server(self.bin_dir):
            raise PostgresUnavailable(
                "no PostgreSQL server binaries found under /usr/lib/postgresql/*/bin "
                "(install them with scripts/system-deps, or set TENURE_PG_BIN)"
            )
        if self._proc is not None:
            raise RuntimeError("server already started")
        # Register cleanup before creating anything, so even a crash halfway
        # through start() (or a forgotten stop()) leaves nothing behind.
        atexit.register(self.stop)
        try:
            self._run_as = self._postgres_user()
            self.dir = pathlib.Path(tempfile.mkdtemp(prefix="tenure-pg-"))
            if self._run_as is not None:
                os.chown(self.dir, self._run_as.pw_uid, self._run_as.pw_gid)
            self._log_path = self.dir / "postgres.log"
            self._initdb()
            for _attempt in range(3):
                if self._launch():
                    return self
            raise PostgresUnavailable(
                "postgres kept failing to bind a port\n" + self._log_tail()
            )
        except BaseException:
            self.stop()
            raise

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        if not _IDENT_RE.match(name):
            raise ValueError(f"invalid database name {name!r}: use [a-z_][a-z0-9_]*")
        import psycopg  # imported lazily: only needed once a server runs
        from psycopg import sql

        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self._url(name)

    def stop(self) -> None:
        """Stop the server, kill anything left in its process group, delete data.

        Safe to call more than once and on a half-started server.
        """
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            pgid = proc.pid  # start_new_session=True: pid == process group id
            # SIGINT is PostgreSQL's "fast shutdown": it disconnects clients
            # instead of waiting for them like SIGTERM ("smart") would; tests
            # often leave pooled connections open.  The postmaster reaps its
            # own children before exiting.
            _signal_pid(proc, signal.SIGINT)
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            # Last resort, and a sweep for any straggler backend.
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def restart(self, *, crash: bool = True) -> None:
        """Stop the server and start it again on the same port with the same data: ``crash`` stops it as a
        crash would (SIGQUIT: immediate shutdown, recovery from the WAL at the next start), else as an
        operator's fast shutdown (SIGINT). Clients lose their connections either way."""
        proc, self._proc = self._proc, None
        if proc is None:
            raise RuntimeError("the server is not running")
        _signal_pid(proc, signal.SIGQUIT if crash else signal.SIGINT)
        try:
            proc.wait(timeout=_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        if not self._launch(port=self.port):
            raise PostgresUnavailable(f"port {self.port} was taken while the server restarted")

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- internals ----------------------------------------------------------

    def _url(self, db: str) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{db}"

    def _dsn(self, db: str) -> str:
        return f"host={self.host} port={self.port} user=postgres dbname={db} connect_timeout=5"

    @staticmethod
    def _postgres_user() -> pwd.struct_passwd | None:
        """The account to run as: ``postgres`` when we are root, else ourselves."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root, but there is no 'postgres' user to run the server as"
            ) from None

    def _subprocess_kwargs(self) -> dict:
        # When root, drop to the postgres user directly in the child (setgid,
        # setgroups([]), setuid) rather than through `runuser`: runuser forks
        # and stays in between, and on SIGTERM it SIGKILLs its child after 2 s,
        # orphaning the backends.  This way our Popen pid *is* the postmaster.
        kwargs: dict = {"cwd": self.dir, "stdin": subprocess.DEVNULL}
        if self._run_as is not None:
            kwargs.update(
                user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[]
            )
        return kwargs

    def _initdb(self) -> None:
        cmd = [
            str(self.bin_dir / "initdb"),
            "-D", str(self.dir / "data"),
            "-U", "postgres",
            "--auth=trust",
            "--no-sync",
            "-E", "UTF8",
            # The C locale exists everywhere; the caller's LANG may not be
            # generated on this machine, which would make initdb fail.
            "--locale=C",
        ]
        result = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            **self._subprocess_kwargs(),
        )
        if result.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({result.returncode}):\n{result.stdout}")

    def _launch(self, port: int | None = None) -> bool:
        """Start the postmaster (on ``port``, else a free one) and wait until it accepts connections.

        Returns False when the port was taken meanwhile (caller retries).
        """
        self.port = port or free_port()
        cmd = [
            str(self.bin_dir / "postgres"),
            "-D", str(self.dir / "data"),
            "-k", str(self.dir),  # Unix socket in our own dir, not /run/postgresql
            "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "max_connections=200",
            "-c", "shared_buffers=128MB",
        ]
        if self.durable:
            cmd += ["-c", "fsync=on", "-c", "full_page_writes=on", "-c", "synchronous_commit=on"]
        else:
            # Throwaway data: durability buys nothing and costs a lot of time.
            cmd += ["-c", "fsync=off", "-c", "full_page_writes=off"]
        with open(self._log_path, "ab") as log:
            # Own session/process group, so stop() can kill everything the
            # postmaster spawned, and a Ctrl-C on the terminal doesn't hit it
            # before our cleanup runs.
            self._proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                **self._subprocess_kwargs(),
            )
        deadline = time.monotonic() + _START_DEADLINE_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self._log_tail()
                self._proc = None
                if "Address already in use" in tail:
                    return False
                raise PostgresUnavailable(f"postgres exited during start-up:\n{tail}")
            if self._accepting():
                return True
            time.sleep(0.1)
        raise PostgresUnavailable(
            f"postgres did not accept connections within {_START_DEADLINE_S:.0f} s:\n"
            + self._log_tail()
        )

    def _accepting(self) -> bool:
        # pg_isready ships with the server binaries; exit 0 means "accepting".
        result = subprocess.run(
            [str(self.bin_dir / "pg_isready"), "-q", "-h", self.host,
             "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-t", "2"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return result.returncode == 0

    def _log_tail(self, lines: int = 30) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _signal_pid(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass
