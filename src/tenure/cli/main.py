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
    agent,
    agents,
    audit,
    backup,
    claims,
    instances,
    limits,
    pools,
    replicas,
    reservations,
    resources,
    tokens,
    topology,
    watch,
)
from tenure.cli.common import JsonOption, session, tls_pair
from tenure.cli.config import ConfigOption
from tenure.config import DEFAULT_LISTEN, HEADER_TIMEOUT, Settings, default_data_dir

app = typer.Typer(help="Tenure: stable identifiers, reservations in time, resource operations.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _root(
    ctx: typer.Context,
    url: Annotated[list[str] | None, typer.Option(envvar="TENURE_URL", show_envvar=True,
                                                  help="Server URL; repeat it (or separate by commas) for the "
                                                       "replicas of one store; default: the local server "
                                                       "(server.json in the data dir).")] = None,
    token: Annotated[str | None, typer.Option(envvar="TENURE_TOKEN", show_envvar=True,
                                              help="Bearer token; default: the local admin token.")] = None,
    data_dir: Annotated[Path | None, typer.Option(envvar="TENURE_DATA_DIR", show_envvar=True,
                                                  help="Where the local server keeps server.json and "
                                                       "admin.token.")] = None,
    ca_file: Annotated[Path | None, typer.Option(envvar="TENURE_CA_FILE", show_envvar=True,
                                                 help="The CA that signs an https:// server's certificate "
                                                      "(default: the system's trust store).")] = None,
) -> None:
    """Tenure: stable identifiers, reservations in time, resource operations."""
    s = session(ctx)
    s.url, s.token, s.data_dir = (",".join(url) if url else None), token, data_dir
    s.ca_file = str(ca_file) if ca_file is not None else None


app.add_typer(pools.app, name="pool")
app.add_typer(audit.app, name="audit")
app.add_typer(tokens.app, name="token")
app.command("ui")(tokens.ui)
app.command("claim")(claims.claim)
app.command("release")(claims.release)
app.command("claims")(claims.claims)
app.command("lookup")(claims.lookup)
app.command("watch")(watch.watch)
app.command("agents")(agents.agents)
app.command("replicas")(replicas.replicas)
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
app.command("agent", context_settings={"auto_envvar_prefix": "TENURE_AGENT"})(agent.agent)
app.add_typer(backup.app, name="backup")
app.command("restore")(backup.restore)


@app.command(context_settings={"auto_envvar_prefix": "TENURE_SERVE"})
def serve(
    ctx: typer.Context,
    config: Annotated[Path | None, ConfigOption] = None,
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
    types: Annotated[Path | None, typer.Option(help="YAML: the resource types instances may have "
                                                  "(resources:); the built-in types without it")] = None,
    header_timeout: Annotated[float, typer.Option(min=0.001, help="Seconds a connection has to send a request's "
                                                  "headers (from its start, or from a request's first "
                                                  "bytes), and that a request's body may stall; closed after "
                                                  "that")] = HEADER_TIMEOUT,
    max_connections: Annotated[int | None, typer.Option(min=1, help="Most HTTP connections open at once; more are "
                                                        "closed at once (default: the descriptor limit less a "
                                                        "reserve, at most 16384)")] = None,
    replica_name: Annotated[str | None, typer.Option(help="Run as one replica of a PostgreSQL store, with this "
                                                     "name (unique among them): one leads, the others follow "
                                                     "and take over")] = None,
    advertise: Annotated[str | None, typer.Option(help="With --replica-name: the URL the other replicas reach "
                                                  "this one at (default: the listening address)")] = None,
    lease: Annotated[float, typer.Option(min=0.5, max=3600, help="With --replica-name: seconds a leader's lease "
                                         "lasts; a paused or cut-off leader is replaced after it")] = 5.0,
    backup_dir: Annotated[Path | None, typer.Option(help="Take backups on a schedule into this directory "
                                                    "(tenure-REVISION-TIME.tbk; on replicas, the leader takes "
                                                    "them)")] = None,
    backup_every: Annotated[str, typer.Option(help="With --backup-dir: how often (30m, 1h, 1d...)")] = "1h",
    backup_keep: Annotated[int, typer.Option(min=1, help="With --backup-dir: how many backups to keep (the "
                                             "oldest revisions are removed first)")] = 48,
    tls_cert: Annotated[Path | None, typer.Option(help="Listen with TLS: the certificate (PEM, with its chain); "
                                                  "re-read on SIGHUP")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="With --tls-cert: its private key (PEM)")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(help="With --tls-cert: ask clients for a certificate "
                                                       "signed by this CA; an agent's token is then accepted "
                                                       "only with a certificate naming its host. Re-read on "
                                                       "SIGHUP")] = None,
) -> None:
    """Run the Tenure server."""
    from tenure.cli.serve import serve as run

    if watch_dispatch not in ("index", "broadcast"):
        raise typer.BadParameter("index or broadcast", param_hint="--watch-dispatch")
    data_dir = data_dir or session(ctx).data_dir or default_data_dir()
    from tenure.domain.errors import TenureError
    from tenure.instance_types import load_instance_types

    try:
        timeouts = {t.name: t.timeout for t in load_instance_types(types).values()}
    except TenureError as exc:
        raise typer.BadParameter(exc.message, param_hint="--types") from None
    settings = Settings(history_age=history_age, history_events=history_events, agent_down_after=agent_down_after,
                        instance_types=timeouts)
    replica = None
    if replica_name is not None:
        from tenure.domain.names import validate_name

        if not (db or "").startswith("postgresql"):
            raise typer.BadParameter("replicas need a PostgreSQL store (--db postgresql://...): a SQLite store "
                                     "has one process", param_hint="--replica-name")
        try:
            validate_name(replica_name, what="replica name")
        except TenureError as exc:
            raise typer.BadParameter(exc.message, param_hint="--replica-name") from None
        if advertise is not None and not advertise.startswith(("http://", "https://")):
            raise typer.BadParameter("an http:// or https:// URL", param_hint="--advertise")
        replica = (replica_name, advertise, lease)
    elif advertise is not None:
        raise typer.BadParameter("only with --replica-name", param_hint="--advertise")
    if tls_client_ca is not None:
        if tls_cert is None:
            raise typer.BadParameter("only with --tls-cert (client certificates are asked for in TLS)",
                                     param_hint="--tls-client-ca")
        if replica is not None:  # a follower forwards an agent's writes: the leader could not see its certificate
            raise typer.BadParameter("not yet with --replica-name: a write forwarded by a follower reaches the "
                                     "leader without the agent's certificate", param_hint="--tls-client-ca")
    schedule = None
    if backup_dir is not None:
        from tenure.domain.units import parse_duration
        from tenure.services.backups import Schedule

        try:
            every = parse_duration(backup_every)
        except TenureError as exc:
            raise typer.BadParameter(exc.message, param_hint="--backup-every") from None
        if every < 60:
            raise typer.BadParameter("at least 1m", param_hint="--backup-every")
        schedule = Schedule(backup_dir.resolve(), every=float(every), keep=backup_keep)
    run(db=db, listen=listen, data_dir=data_dir, example=example, log_level=log_level, settings=settings,
        watch_dispatch=watch_dispatch, header_timeout=header_timeout, max_connections=max_connections,
        replica=replica, backups=schedule, tls=tls_pair(tls_cert, tls_key), tls_client_ca=tls_client_ca)


config_app = typer.Typer(help="The configuration of tenure serve and tenure agent.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", help="The TOML file the command would read (else "
                                                "TENURE_SERVE_CONFIG / TENURE_AGENT_CONFIG).")] = None,
    agent_: Annotated[bool, typer.Option("--agent", help="tenure agent's, not tenure serve's.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print the options the command would run with (without flags), and where each value comes from."""
    import json

    from tenure.cli.common import table
    from tenure.cli.config import show

    rows = show(ctx, "agent" if agent_ else "serve", config)
    if as_json:
        typer.echo(json.dumps([{"option": opt, "value": _plain(value), "from": origin} for opt, value, origin in rows],
                              indent=2))
        return
    table(("option", "value", "from"), ((opt, "-" if value is None else value, origin) for opt, value, origin in rows))


def _plain(value: object) -> object:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if value is None or isinstance(value, int | float | bool | str) else str(value)


def main() -> None:
    app()
