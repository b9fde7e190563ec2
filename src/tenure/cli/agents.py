"""``tenure agents``: the host agents the server knows, whether they are up, and when each was last heard from."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer

from tenure.cli.common import JsonOption, run, say, table


def now() -> datetime:
    """The client's idea of now, for "12s ago" (a test may replace it)."""
    return datetime.now(UTC)


def agents(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the registered agents: host, state, version, kinds, last seen."""
    run(ctx, lambda c: c.agents(), _list, as_json=as_json)


def ago(iso: str | None, *, at: datetime | None = None) -> str | None:
    """``12s ago (2026-11-22 04:20:07Z)``: how long since, to the largest whole unit, and the UTC time to the second."""
    if not iso:
        return None
    t = datetime.fromisoformat(iso)
    t = t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
    seconds = int(((at or now()) - t).total_seconds())
    if seconds < 0:
        since = "in the future"  # the server's clock is ahead of this machine's
    elif seconds < 60:
        since = f"{seconds}s ago"
    elif seconds < 3600:
        since = f"{seconds // 60}m ago"
    elif seconds < 86400:
        since = f"{seconds // 3600}h ago"
    else:
        since = f"{seconds // 86400}d ago"
    return f"{since} ({t.strftime('%Y-%m-%d %H:%M:%SZ')})"


def _list(answer: dict[str, Any]) -> None:
    found = answer["agents"]
    if not found:
        say("no agents")
        return
    at = now()
    table(("host", "state", "version", "kinds", "last seen"),
          ((a["host"], a["state"], a["version"], ", ".join(a["kinds"]), ago(a["last_seen"], at=at)) for a in found))
