"""``tenure claim / release / claims / lookup``: the everyday verbs on keys and values of a pool.

These are top-level commands rather than a ``claim`` group because they are what
people type most; the pool comes first, as in the API's paths.
"""

from __future__ import annotations

import shlex
from typing import Annotated, Any

import typer

from tenure.cli.common import JsonOption, cell, claims_table, run, say
from tenure.client import MAX_PAGE, TenureClient

Pool = Annotated[str, typer.Argument(help="Pool name.")]
Key = Annotated[str, typer.Argument(help="Claim key (any text; slashes are fine).")]


def claim(
    ctx: typer.Context,
    pool: Pool,
    key: Key,
    value: Annotated[int | None, typer.Option(help="Ask for this value; refused if another key holds it.")] = None,
    project: Annotated[str | None, typer.Option(help="Project that owns the claim.")] = None,
    host: Annotated[str | None, typer.Option(help="Host that owns the claim.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Claim KEY in POOL and print its value (the same value again if KEY already holds one)."""
    run(ctx, lambda c: c.claim(pool, key, value=value, project=project, host=host), _claimed, as_json=as_json)


def release(ctx: typer.Context, pool: Pool, key: Key, as_json: JsonOption = False) -> None:
    """Release KEY's claim in POOL, freeing its value."""
    run(ctx, lambda c: c.release(pool, key),
        lambda r: say(f"released {r['pool']}/{r['key']} (value {r['value']})"), as_json=as_json)


def claims(
    ctx: typer.Context,
    pool: Pool,
    limit: Annotated[int, typer.Option(min=1, max=MAX_PAGE, help="Claims per page (per request with --all).")] = 100,
    after: Annotated[str | None, typer.Option(help="Start after this key (the previous page's next).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Follow pages to the end.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List POOL's claims in key order, one page (or --all)."""

    def call(c: TenureClient) -> dict[str, Any]:
        if not all_:
            return c.claims(pool, limit=limit, after=after)
        return {"claims": list(c.iter_claims(pool, page_size=limit, after=after)), "next": None}

    run(ctx, call, lambda page: _page(pool, page), as_json=as_json)


def lookup(
    ctx: typer.Context,
    pool: Pool,
    value: Annotated[int, typer.Option(help="The value to look up.")],
    as_json: JsonOption = False,
) -> None:
    """Show which key holds VALUE in POOL."""
    run(ctx, lambda c: c.find_value(pool, value), _held, as_json=as_json)


def _claimed(r: dict[str, Any]) -> None:
    say(f"{r['pool']}/{r['key']} = {r['value']} ({'new claim' if r['created'] else 'already held'})")


def _page(pool: str, page: dict[str, Any]) -> None:
    if not page["claims"]:
        say(f"no claims in {pool}")
    else:
        claims_table(page["claims"])
    if page.get("next") is not None:
        say(f"more: tenure claims {shlex.quote(pool)} --after {shlex.quote(page['next'])}")


def _held(r: dict[str, Any]) -> None:
    say(f"{r['pool']} value {r['value']} is held by key {r['key']!r} "
        f"(project {cell(r.get('project'))}, host {cell(r.get('host'))})")
