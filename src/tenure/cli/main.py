"""Entry point of the ``tenure`` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tenure.config import DEFAULT_LISTEN, default_data_dir

app = typer.Typer(help="Tenure: stable identifiers, reservations in time, resource operations.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """Tenure: stable identifiers, reservations in time, resource operations."""


@app.command()
def serve(
    db: Annotated[str | None, typer.Option(help="Database URL (sqlite:///PATH or postgresql://...); "
                                              "default: SQLite in the data dir")] = None,
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on (port 0 picks a free one)")] = DEFAULT_LISTEN,
    data_dir: Annotated[Path, typer.Option(help="Where the database, admin token and server.json live",
                                           envvar="TENURE_DATA_DIR")] = default_data_dir(),
    example: Annotated[bool, typer.Option(help="Create example pools if missing")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the Tenure server."""
    from tenure.cli.serve import serve as run

    run(db=db, listen=listen, data_dir=data_dir, example=example, log_level=log_level)


def main() -> None:
    app()
