"""``tenure serve``: run the server on uvicorn (one process: the single writer owns the store)."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import stat
from pathlib import Path

from rich.console import Console

from tenure import logs
from tenure.agent.daemon import AgentConfig, create_agent_app
from tenure.api.app import ReplicaConfig, ServerConfig, create_app
from tenure.api.server import HttpLimits, server_for
from tenure.api.tls import ServerTLS, TLSConfigError
from tenure.config import ADMIN_TOKEN_FILE, HEADER_TIMEOUT, default_db_url, write_server_info
from tenure.gcpolicy import GCPolicy
from tenure.sdnotify import notify, reloading
from tenure.services.backups import Schedule
from tenure.services.examples import ensure_examples
from tenure.services.runtime import Settings

log = logging.getLogger("tenure.server")


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def bind(listen: str) -> tuple[socket.socket, str]:
    """Bind ``HOST:PORT`` (port 0 picks a free one) or ``unix:PATH`` (mode 0600); the socket and its URL."""
    if listen.startswith("unix:"):
        path = Path(listen[5:]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise ValueError(f"{path} exists and is not a socket: not replacing it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:  # nobody listens: a stale socket from an earlier run
                path.unlink(missing_ok=True)
            else:
                raise ValueError(f"something already listens on {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # created 0600: only the owner may even try a token
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        return sock, f"unix:{path}"
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound_port = sock.getsockname()[1]
    return sock, f"http://{'[' + host + ']' if family == socket.AF_INET6 else host}:{bound_port}"


def serve(
    *,
    db: str | None,
    listen: str,
    data_dir: Path,
    example: bool,
    log_level: str,
    settings: Settings | None = None,
    watch_dispatch: str = "index",
    agent: AgentConfig | None = None,
    header_timeout: float = HEADER_TIMEOUT,
    max_connections: int | None = None,
    replica: tuple[str, str | None, float] | None = None,
    backups: Schedule | None = None,
    tls: tuple[Path, Path] | None = None,
    tls_client_ca: Path | None = None,
) -> None:
    """Serve until interrupted: the server, or with ``agent`` a host agent (same store, tokens and watch)."""
    logs.configure(log_level)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    db_url = db or default_db_url(data_dir)
    server_tls = None
    if tls is not None:
        if listen.startswith("unix:"):
            raise SystemExit("error: --tls-cert needs a HOST:PORT --listen (a unix: socket is local and 0600)")
        try:
            server_tls = ServerTLS(*tls, client_ca=tls_client_ca)
        except TLSConfigError as exc:
            Console(stderr=True).print(f"[red]error:[/] {exc}")
            raise SystemExit(2) from None
    sock, url = bind(listen)  # first, so port 0 works and the printed URL is the real one
    if server_tls is not None:
        url = "https://" + url.removeprefix("http://")
    write_server_info(data_dir, url)
    console = Console(stderr=True)
    what = "agent" if agent is not None else "serving"
    console.print(f"[bold]Tenure[/] {what} on [cyan]{url}[/] (store: {db_url})")
    console.print(f"admin token: [cyan]{data_dir / ADMIN_TOKEN_FILE}[/] (written on first start, mode 0600)")
    if backups is not None:
        console.print(f"backups: every {backups.every:g} s into [cyan]{backups.directory}[/], the newest "
                      f"{backups.keep} kept")
    if agent is None and not url.startswith("unix:"):
        console.print(f"web console: [cyan]{url}/ui/[/] (a sign-in link: [bold]tenure ui[/])")
    failure: list[BaseException] = []

    def stop(exc: BaseException) -> None:  # the restore failed: nothing to serve, exit non-zero
        failure.append(exc)
        server.should_exit = True

    # SIGUSR1: every thread's stack to stderr (the log), for a process that seems stuck; it goes on running.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    def reload(*_: object) -> None:  # SIGHUP (systemctl reload): the certificate, key and client CA again
        reloading()
        if server_tls is not None:
            server_tls.reload()
        if app.state.tenure.ready.is_set():  # (a reload during the restore: READY=1 comes when it is done)
            notify("READY=1")

    GCPolicy().install()  # a long-lived heap: full collections walk only what is new (see tenure.gcpolicy)
    replica_config = None
    if replica is not None:
        name, advertise, lease = replica
        if advertise is None and (url.startswith("unix:") or "://0.0.0.0:" in url or "://[::]:" in url):
            console.print("[red]error:[/] --advertise URL is needed: the others cannot reach " + url)
            raise SystemExit(2)
        replica_config = ReplicaConfig(name=name, address=advertise or url, lease=lease)
        console.print(f"replica [cyan]{name}[/], advertised as [cyan]{replica_config.address}[/]")
    config = ServerConfig(db_url=db_url, data_dir=data_dir, seed=ensure_examples if example else None,
                          on_restore_failed=stop, settings=settings or Settings(), watch_mode=watch_dispatch,
                          replica=replica_config, backups=backups, agent_certs=tls_client_ca is not None)
    app = create_app(config) if agent is None else create_agent_app(config, agent)
    limits = HttpLimits(header_timeout=header_timeout, body_timeout=header_timeout, max_connections=max_connections)
    server = server_for(app, limits=limits, raise_fd_limit=agent is None,
                        tls=server_tls.context if server_tls is not None else None)
    # Under a service manager, or with a certificate to re-read, SIGHUP reloads; otherwise (a terminal) it still
    # ends the process, as hanging up should.
    if server_tls is not None or os.environ.get("NOTIFY_SOCKET"):
        signal.signal(signal.SIGHUP, reload)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if url.startswith("unix:"):  # ours: bind() made it (and replaced only a stale one)
            Path(url[5:]).unlink(missing_ok=True)
    if failure:
        console.print(f"[red]error:[/] could not restore the store: {failure[0]}")
        raise SystemExit(1)
    log.info("stopped", extra={"signal": ",".join(server.stopped_by) or None})
