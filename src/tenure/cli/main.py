"""Entry point of the ``tenure`` command: the root options and the table of commands.

``--url``, ``--token`` and ``--data-dir`` belong to the root (``tenure --url URL
pool list``) so every client command takes them the same way; each command lives
in the module of its noun (:mod:`.pools`, :mod:`.claims`, :mod:`.audit`,
:mod:`.tokens`) and shares :mod:`.common`. ``serve`` keeps its own options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tenure.cli import (
    agents,
    audit,
    claims,
    instances,
    limits,
    pools,
    reservations,
    resources,
    tokens,
    topology,
    watch,
)
from tenure.cli.common import session
from tenure.config import DEFAULT_LISTEN, HEADER_TIMEOUT, Settings, default_data_dir

app = typer.Typer(help="Tenure: stable identifiers, reservations in time, resource operations.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(envvar="TENURE_URL", show_envvar=True,
                                            help="Server URL; default: the local server (server.json in the "
                                                 "data dir).")] = None,
    token: Annotated[str | None, typer.Option(envvar="TENURE_TOKEN", show_envvar=True,
                                              help="Bearer token; default: the local admin token.")] = None,
    data_dir: Annotated[Path | None, typer.Option(envvar="TENURE_DATA_DIR", show_envvar=True,
                                                  help="Where the local server keeps server.json and "
                                                       "admin.token.")] = None,
) -> None:
    """Tenure: stable identifiers, reservations in time, resource operations."""
    s = session(ctx)
    s.url, s.token, s.data_dir = url, token, data_dir


app.add_typer(pools.app, name="pool")
app.add_typer(audit.app, name="audit")
app.add_typer(tokens.app, name="token")
app.command("claim")(claims.claim)
app.command("release")(claims.release)
app.command("claims")(claims.claims)
app.command("lookup")(claims.lookup)
app.command("watch")(watch.watch)
app.command("agents")(agents.agents)
app.add_typer(topology.app, name="topology")
app.add_typer(reservations.reserve_app, name="reserve")
app.command("reservations")(reservations.reservations)
app.command("reservation")(reservations.reservation)
app.command("modify")(reservations.modify)
app.command("cancel")(reservations.cancel)
app.command("paths")(reservations.paths)
app.command("usage")(reservations.usage)
app.add_typer(limits.app, name="limit")
app.add_typer(resources.app, name="resource")
app.add_typer(instances.app, name="instance")


@app.command()
def serve(
    ctx: typer.Context,
    db: Annotated[str | None, typer.Option(help="Database URL (sqlite:///PATH or postgresql://...); "
                                              "default: SQLite in the data dir")] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on (port 0 picks a free one)")] = DEFAULT_LISTEN,
    data_dir: Annotated[Path | None, typer.Option(help="Where the database, admin token and server.json live; "
                                                  "default: the root --data-dir, else ~/.local/share/tenure",
                                                  envvar="TENURE_DATA_DIR")] = None,
    example: Annotated[bool, typer.Option(help="Create example pools if missing")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    history_age: Annotated[float, typer.Option(min=1, help="Seconds of event history kept for watchers to "
                                                          "resume from")] = Settings.history_age,
    history_events: Annotated[int, typer.Option(min=1, help="Most events kept in the history")]
    = Settings.history_events,
    agent_down_after: Annotated[float, typer.Option(min=1, help="Seconds without a heartbeat before an agent is "
                                                               "marked down")] = Settings.agent_down_after,
    watch_dispatch: Annotated[str, typer.Option(hidden=True, help="index, or broadcast (benchmark baseline)")]
    = "index",
    handlers: Annotated[Path | None, typer.Option(help="YAML: the resource types instances may have "
                                                  "(resources:); the built-in types without it")] = None,
    header_timeout: Annotated[float, typer.Option(min=0.001, help="Seconds a connection has to send a request's "
                                                  "headers (from its start, or from a request's first "
                                                  "bytes); closed after that")] = HEADER_TIMEOUT,
) -> None:
    """Run the Tenure server."""
    from tenure.cli.serve import serve as run

    if watch_dispatch not in ("index", "broadcast"):
        raise typer.BadParameter("index or broadcast", param_hint="--watch-dispatch")
    data_dir = data_dir or session(ctx).data_dir or default_data_dir()
    from tenure.domain.errors import TenureError
    from tenure.handlers import load_handlers

    try:
        types = {t.name: t.timeout for t in load_handlers(handlers).values()}
    except TenureError as exc:
        raise typer.BadParameter(exc.message, param_hint="--handlers") from None
    settings = Settings(history_age=history_age, history_events=history_events, agent_down_after=agent_down_after,
                        instance_types=types)
    run(db=db, listen=listen, data_dir=data_dir, example=example, log_level=log_level, settings=settings,
        watch_dispatch=watch_dispatch, header_timeout=header_timeout)


@app.command()
def agent(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option(help="The agent's local store, admin token and server.json; "
                                                  "default: the server's data dir + /agent "
                                                  "(~/.local/share/tenure/agent)",
                                                  envvar="TENURE_AGENT_DIR")] = None,
    listen: Annotated[str | None, typer.Option(help="unix:PATH or HOST:PORT; default: unix:DATA_DIR/agent.sock")]
    = None,
    ocf_root: Annotated[Path, typer.Option(help="OCF root (agents under resource.d/PROVIDER/TYPE)")]
    = Path("/usr/lib/ocf"),
    lsb_root: Annotated[Path, typer.Option(help="Where lsb:NAME init scripts live")] = Path("/etc/init.d"),
    drivers_dir: Annotated[list[Path] | None, typer.Option("--drivers-dir", help="A directory of exec:NAME "
                                                           "drivers (repeatable)")] = None,
    python_package: Annotated[list[str] | None, typer.Option("--python-package", help="A package python: "
                                                             "handlers may come from (repeatable)")] = None,
    playbook_dir: Annotated[list[Path] | None, typer.Option("--playbook-dir", help="A directory of "
                                                            "ansible:PLAYBOOK playbooks (repeatable)")] = None,
    run_as: Annotated[list[str] | None, typer.Option("--run-as", help="DRIVER=USER or CLASS=USER: run that "
                                                     "driver as USER (repeatable)")] = None,
    rsctmp: Annotated[Path | None, typer.Option(help="HA_RSCTMP for OCF agents; default /run/resource-agents "
                                                "as root, else DATA_DIR/rsctmp")] = None,
    max_parallel: Annotated[int, typer.Option(min=1, help="Operations running at once, all instances")] = 32,
    default_timeout: Annotated[float, typer.Option(min=0.001, help="Seconds, when the agent's meta-data does "
                                                   "not say")] = 20.0,
    kill_grace: Annotated[float, typer.Option(min=0, help="Seconds between SIGTERM and SIGKILL of a timed-out "
                                              "operation's process group")] = 5.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    host: Annotated[str | None, typer.Option(help="This host's name (its node id in the topology): with "
                                             "--server, follow that server's instances for this host")] = None,
    server: Annotated[str | None, typer.Option(help="The server's URL (http://HOST:PORT or unix:PATH)")] = None,
    server_token_file: Annotated[Path | None, typer.Option(help="A file holding this host's agent token for the "
                                                           "server (or set TENURE_SERVER_TOKEN)")] = None,
    handlers: Annotated[Path | None, typer.Option(help="YAML: resource types and their drivers (resources:); "
                                                  "the built-in types without it")] = None,
    heartbeat: Annotated[float, typer.Option(min=0.1, help="Seconds between heartbeats to the server")] = 20.0,
) -> None:
    """Run the host agent: the local resource manager over HTTP (same tokens and watch as the server).

    With --host and --server it also follows the server: it registers, watches this host's instances,
    converges each through the resource manager and reports the outcome."""
    import os

    from tenure.api.app import LrmConfig
    from tenure.cli.serve import serve as run
    from tenure.domain.errors import TenureError
    from tenure.drivers.spec import DriverRoots, parse_spec

    # Not the root --data-dir: that is the server's (TENURE_DATA_DIR), and an agent must never share its store.
    data_dir = (data_dir or default_data_dir() / "agent").resolve()
    users: dict[str, str] = {}
    for entry in run_as or []:
        spec, sep, user = entry.partition("=")
        if not sep or not spec or not user:
            raise typer.BadParameter(f"{entry!r} is not DRIVER=USER", param_hint="--run-as")
        cls = spec if ":" not in spec else spec.split(":", 1)[0]
        if cls not in ("ocf", "lsb", "exec"):  # python handlers run inside the agent: no user to switch to
            raise typer.BadParameter(f"{spec!r}: run-as applies to ocf, lsb and exec drivers (a class, or a "
                                     "driver like exec:NAME)", param_hint="--run-as")
        if ":" in spec:
            try:
                parse_spec(spec)
            except TenureError as exc:
                raise typer.BadParameter(exc.message, param_hint="--run-as") from None
        users[spec] = user
    roots = DriverRoots(ocf_root=ocf_root, lsb_root=lsb_root, exec_dirs=tuple(p.resolve() for p in drivers_dir or ()),
                        python_packages=tuple(python_package or ()) or DriverRoots().python_packages,
                        playbook_dirs=tuple(p.resolve() for p in playbook_dir or ()), run_as=users)
    tmp = rsctmp or (Path("/run/resource-agents") if os.geteuid() == 0 else data_dir / "rsctmp")
    sync = None
    if (host is None) != (server is None):
        raise typer.BadParameter("give both --host and --server, or neither", param_hint="--host/--server")
    if host is not None and server is not None:
        from tenure.agent.sync import SyncConfig
        from tenure.domain.pool import validate_name
        from tenure.handlers import load_handlers

        try:
            validate_name(host, what="host")
            types = load_handlers(handlers)
        except TenureError as exc:
            raise typer.BadParameter(exc.message) from None
        token = os.environ.get("TENURE_SERVER_TOKEN")
        if server_token_file is not None:
            try:
                token = server_token_file.read_text().strip()
            except OSError as exc:
                raise typer.BadParameter(f"cannot read {server_token_file}: {exc.strerror}",
                                         param_hint="--server-token-file") from None
        if not token:
            raise typer.BadParameter("the server needs this host's agent token: --server-token-file or "
                                     "TENURE_SERVER_TOKEN", param_hint="--server-token-file")
        sync = SyncConfig(host=host, server_url=server, token=token, handlers=types, heartbeat_interval=heartbeat)
    lrm = LrmConfig(roots=roots, rsctmp=tmp, max_parallel=max_parallel, default_timeout=default_timeout,
                    grace=kill_grace, sync=sync)
    run(db=None, listen=listen or f"unix:{data_dir / 'agent.sock'}", data_dir=data_dir, example=False,
        log_level=log_level, lrm=lrm)


def main() -> None:
    app()
