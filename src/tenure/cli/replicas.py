"""``tenure replicas``: the replicas of the store (PostgreSQL), which one leads, with which epoch, how far each is."""

from __future__ import annotations

from typing import Any

import typer

from tenure.cli.common import JsonOption, run, say, table


def replicas(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the replicas: name, role, epoch, applied revision, address, last heartbeat."""
    run(ctx, lambda c: c.replicas(), _list, as_json=as_json)


def _list(answer: dict[str, Any]) -> None:
    found = answer["replicas"]
    if not found:
        say("no replicas: this server is not one of a set (tenure serve --replica-name)")
        return
    newest = max(r["revision"] for r in found)
    leader = answer.get("leader")
    table(("name", "role", "epoch", "revision", "behind", "address", "last heartbeat"),
          ((r["name"], r["role"], r["epoch"], r["revision"], newest - r["revision"], r["address"] or "",
            f"{r['seen_seconds_ago']:.1f}s ago") for r in found))
    say(f"leader: {leader['name']} (epoch {leader['epoch']}, {leader['address']})" if leader
        else "no leader right now (an election is under way)")
