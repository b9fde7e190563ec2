"""``tenure audit begin|end``: the mark-and-sweep that reclaims values whose owners forgot them.

Between ``begin`` and ``end`` every owner re-claims the keys it still uses (a
claim of a held key marks it); ``end`` releases whatever was not re-claimed and
lists it, so the operator sees exactly what was taken back.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tenure.cli.common import JsonOption, claims_table, run, say

app = typer.Typer(help="Audit a pool: release the claims nobody re-claims.", no_args_is_help=True)

Pool = Annotated[str, typer.Argument(help="Pool name.")]


@app.command("begin")
def begin(ctx: typer.Context, pool: Pool, as_json: JsonOption = False) -> None:
    """Begin an audit of POOL: from now on, owners re-claim the keys they still use."""
    run(ctx, lambda c: c.audit_begin(pool), _begun, as_json=as_json)


@app.command("end")
def end(ctx: typer.Context, pool: Pool, as_json: JsonOption = False) -> None:
    """End the audit of POOL: release every claim not re-claimed since `audit begin`, and list them."""
    run(ctx, lambda c: c.audit_end(pool), _ended, as_json=as_json)


def _begun(p: dict[str, Any]) -> None:
    say(f"audit of {p['name']} begun (epoch {p['audit_epoch']}); owners re-claim their keys, "
        f"then: tenure audit end {p['name']}")


def _ended(p: dict[str, Any]) -> None:
    released = p["released"]
    if not released:
        say(f"audit of {p['name']} ended: nothing released")
        return
    say(f"audit of {p['name']} ended: released {len(released)} claim{'s' if len(released) != 1 else ''}")
    claims_table(released)
