"""``tenure pool``: create, list, show and delete pools (named ID spaces)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from tenure.cli.common import JsonOption, fields, parse_spans, percent, run, say, spans, table

app = typer.Typer(help="Pools: named ID spaces with ranges, reserved values and a strategy.", no_args_is_help=True)

Strategy = Literal["lowest", "next", "random"]


@app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Pool name (letters, digits, - _ . :).")],
    ranges: Annotated[list[str], typer.Option(
        "--range", metavar="LO-HI", help="Values to hand out (repeatable); N alone means N-N.")],
    reserved: Annotated[list[str] | None, typer.Option(
        "--reserved", metavar="LO-HI", help="Values never handed out (repeatable).")] = None,
    strategy: Annotated[Strategy, typer.Option(help="Which free value a claim gets.")] = "lowest",
    projects: Annotated[list[str] | None, typer.Option(
        "--project", metavar="P", help="Open the pool only to these projects (repeatable); default: all.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a pool."""
    r = parse_spans(ranges, option="--range")
    res = parse_spans(reserved or (), option="--reserved")
    run(ctx, lambda c: c.create_pool(name, r, res, strategy, projects or None), _created, as_json=as_json)


@app.command("list")
def list_(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the pools you can see."""
    run(ctx, lambda c: c.pools(), _list, as_json=as_json)


@app.command("show")
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Pool name.")],
    as_json: JsonOption = False,
) -> None:
    """Show one pool: ranges, size, used, utilisation, audit state."""
    run(ctx, lambda c: c.pool(name), _show, as_json=as_json)


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Pool name.")],
    force: Annotated[bool, typer.Option("--force", help="Delete even if the pool still holds claims.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Delete a pool (refused while it holds claims, unless --force)."""
    run(ctx, lambda c: c.delete_pool(name, force=force), lambda r: say(f"deleted pool {r['deleted']}"),
        as_json=as_json)


def _created(pool: dict[str, Any]) -> None:
    say(f"created pool {pool['name']}: {spans(pool['ranges'])} ({pool['strategy']}, {pool['size']} values)")


def _list(answer: dict[str, Any]) -> None:
    pools = answer["pools"]
    if not pools:
        say("no pools")
        return
    table(("name", "strategy", "ranges", "size", "used", "use", "audit"),
          ((p["name"], p["strategy"], spans(p["ranges"]), p["size"], p["used"], percent(p["used"], p["size"]),
            "running" if p["auditing"] else None) for p in pools))


def _show(p: dict[str, Any]) -> None:
    projects = p.get("projects")
    fields([
        ("pool", p["name"]),
        ("strategy", p["strategy"]),
        ("ranges", spans(p["ranges"])),
        ("reserved", spans(p["reserved"])),
        ("projects", ", ".join(projects) if projects is not None else "any"),
        ("size", p["size"]),
        ("used", p["used"]),
        ("utilisation", percent(p["used"], p["size"])),
        ("audit", f"{'running' if p['auditing'] else 'idle'} (epoch {p['audit_epoch']})"),
        ("revision", p["revision"]),
    ])
