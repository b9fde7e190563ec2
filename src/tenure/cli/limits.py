"""``tenure limit set|list|rm``: how much bandwidth a project may hold on each link direction.

A limit is either ``--max`` (bit/s, e.g. ``1G``) or ``--share`` (of each
link's capacity, e.g. ``25%``), checked at admission alongside the capacity
itself; the server refuses a limit that is neither or both.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tenure.cli.common import JsonOption, run, say, table
from tenure.domain.units import format_rate

app = typer.Typer(help="Per-project limits on reserved bandwidth.", no_args_is_help=True)

Project = Annotated[str, typer.Argument(help="Project name.")]


@app.command("set")
def set_(
    ctx: typer.Context,
    project: Project,
    max_: Annotated[str | None, typer.Option("--max", metavar="RATE", help="At most this much per link "
                                             "direction: bit/s or 100M, 1G.")] = None,
    share: Annotated[str | None, typer.Option(metavar="SHARE", help="At most this share of each link "
                                              "direction's capacity: 0.25 or 25%.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Set (or replace) PROJECT's limit: --max or --share."""
    run(ctx, lambda c: c.set_limit(project, max=max_, share=share), lambda r: say(f"limit of {_describe(r)}"),
        as_json=as_json)


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the projects' limits."""
    run(ctx, lambda c: c.limits(), _list, as_json=as_json)


@app.command("rm")
def rm(ctx: typer.Context, project: Project, as_json: JsonOption = False) -> None:
    """Remove PROJECT's limit: it may then hold whatever capacity is free."""
    run(ctx, lambda c: c.delete_limit(project), lambda r: say(f"removed the limit of {r['project']}"),
        as_json=as_json)


def _amount(limit: dict[str, Any]) -> str:
    if limit.get("max") is not None:
        return f"{format_rate(limit['max'])} per link direction"
    return f"{limit['share']} of each link direction"


def _describe(limit: dict[str, Any]) -> str:
    return f"{limit['project']}: {_amount(limit)}"


def _list(answer: dict[str, Any]) -> None:
    found = answer["limits"]
    if not found:
        say("no limits")
        return
    table(("project", "max", "share"),
          ((lim["project"], format_rate(lim["max"]) if lim.get("max") is not None else None, lim.get("share"))
           for lim in found))
