"""``tenure agent``: run the host agent (the local resource manager, and with --host and --server the sync loop).

Options are checked here, before anything starts (driver roots, run-as entries,
the instance types file, the server's token); the process itself is assembled
by :mod:`tenure.agent.daemon` and served by :func:`tenure.cli.serve.serve`.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import Annotated

import typer

from tenure.cli.common import tls_pair
from tenure.cli.config import ConfigOption
from tenure.config import default_data_dir


def agent(
    ctx: typer.Context,
    config: Annotated[Path | None, ConfigOption] = None,
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
    shutdown_wait: Annotated[float, typer.Option(min=0, help="At shutdown (SIGTERM, SIGINT), seconds running "
                                                 "operations may take before they are stopped as on a timeout")]
    = 30.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
    host: Annotated[str | None, typer.Option(help="This host's name (its node id in the topology): with "
                                             "--server, follow that server's instances for this host")] = None,
    server: Annotated[list[str] | None, typer.Option(help="The server's URL (http://HOST:PORT or unix:PATH); "
                                                   "repeat it (or separate by commas) for the replicas of one "
                                                   "store")] = None,
    server_token_file: Annotated[Path | None, typer.Option(help="A file holding this host's agent token for the "
                                                           "server (or set TENURE_SERVER_TOKEN)")] = None,
    types: Annotated[Path | None, typer.Option(help="YAML: resource types and their drivers (resources:); "
                                                  "the built-in types without it")] = None,
    heartbeat: Annotated[float, typer.Option(min=0.1, help="Seconds between heartbeats to the server")] = 20.0,
    ca_file: Annotated[Path | None, typer.Option(envvar="TENURE_CA_FILE", help="The CA that signs an https:// "
                                                 "server's certificate (default: the system's trust store)")]
    = None,
    tls_cert: Annotated[Path | None, typer.Option(help="Listen with TLS (with a HOST:PORT --listen): the "
                                                  "certificate; re-read on SIGHUP")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="With --tls-cert: its private key")] = None,
    client_cert: Annotated[Path | None, typer.Option(help="The certificate (PEM) this agent shows the server, "
                                                     "made for --host's name: needed when the server has "
                                                     "--tls-client-ca; a renewed one is used without a "
                                                     "restart")] = None,
    client_key: Annotated[Path | None, typer.Option(help="With --client-cert: its private key (PEM)")] = None,
) -> None:
    """Run the host agent: the local resource manager over HTTP (same tokens and watch as the server).

    With --host and --server it also follows the server: it registers, watches this host's instances,
    converges each through the resource manager and reports the outcome."""
    # Imported here: the agent's modules (drivers, FastAPI, SQLAlchemy) are not every command's cost.
    from tenure.agent.daemon import AgentConfig
    from tenure.cli.serve import serve as run
    from tenure.domain.driverspec import parse_spec
    from tenure.domain.errors import TenureError
    from tenure.domain.names import validate_name
    from tenure.drivers.spec import DriverRoots
    from tenure.instance_types import load_instance_types

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
    server_url = ",".join(server) if server else None
    if (host is None) != (server_url is None):
        raise typer.BadParameter("give both --host and --server, or neither", param_hint="--host/--server")
    if host is not None and server_url is not None:
        from tenure.agent.sync import SyncConfig

        try:
            validate_name(host, what="host")
            itypes = load_instance_types(types)
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
        if ca_file is not None and not ca_file.is_file():
            raise typer.BadParameter(f"{ca_file} is not a readable file", param_hint="--ca-file")
        pair = None
        if (client_cert is None) != (client_key is None):
            raise typer.BadParameter("give both --client-cert and --client-key, or neither", param_hint="--client-cert")
        if client_cert is not None and client_key is not None:
            from tenure.client import ClientCert, TenureConfigError

            pair = (str(client_cert), str(client_key))
            try:
                ClientCert(*pair).load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # one that cannot work: refused
            except TenureConfigError as exc:
                raise typer.BadParameter(exc.message, param_hint="--client-cert") from None
        sync = SyncConfig(host=host, server_url=server_url, token=token, types=itypes, heartbeat_interval=heartbeat,
                          token_file=server_token_file, ca_file=str(ca_file) if ca_file is not None else None,
                          client_cert=pair)
    elif client_cert is not None or client_key is not None:
        raise typer.BadParameter("only with --host and --server (the certificate is shown to the server)",
                                 param_hint="--client-cert")
    config = AgentConfig(roots=roots, rsctmp=tmp, max_parallel=max_parallel, default_timeout=default_timeout,
                         grace=kill_grace, shutdown_wait=shutdown_wait, sync=sync)
    run(db=None, listen=listen or f"unix:{data_dir / 'agent.sock'}", data_dir=data_dir, example=False,
        log_level=log_level, agent=config, tls=tls_pair(tls_cert, tls_key))
