"""``tenure watch``: follow the event log, one line per event, until Ctrl-C.

The client's :meth:`~tenure.client.TenureClient.watch` does the work: it resumes
across lost connections (a server restart included) without losing or repeating
an event, so this command only filters, prints and stops. Lines go to stdout as
the events come (``--json``: the frame's JSON, as the API sends it); notes for a
human (the end of the initial state, a listing that starts over) go to stderr in
the readable mode, so stdout holds events only. Periodic bookmarks are not shown.

Ctrl-C ends it with status 0. History older than ``--since`` (410 ``gone``) is
status 1 with what to do instead: list, then watch from the list's revision, or
``--initial``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from tenure.cli.common import JsonOption, fail, session, warn
from tenure.client import TenureClient, TenureClientError, Watch, WatchEvent, WatchGone, locate

Many = list[str] | None


def watch(
    ctx: typer.Context,
    kind: Annotated[Many, typer.Option("--kind", "-k", metavar="KIND",
                                       help="pool, claim, token or agent (repeatable); default: every kind the "
                                            "token may see.")] = None,
    selector: Annotated[Many, typer.Option("--selector", "-l", metavar="SELECTOR",
                                           help="Label selector, e.g. 'pool=vlans,project in (a,b)' (repeatable: "
                                                "all must match).")] = None,
    id_: Annotated[Many, typer.Option("--id", metavar="ID",
                                      help="Exact object id: a pool's name, a claim's POOL/KEY, a token's id, an "
                                           "agent's host (repeatable).")] = None,
    op: Annotated[Many, typer.Option("--op", metavar="OP", help="created, updated or deleted (repeatable).")] = None,
    since: Annotated[int | None, typer.Option(min=0, metavar="REV",
                                              help="Replay the events after this revision first.")] = None,
    initial: Annotated[bool, typer.Option("--initial", help="Print the current objects first (revision '-'), "
                                                            "then follow.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print events as they happen, one per line, until Ctrl-C."""
    if since is not None and initial:
        raise typer.BadParameter("--since and --initial exclude each other", param_hint="--since")
    show = _json_line if as_json else _line
    follow(ctx, lambda c: c.watch(kind, ids=id_, selectors=selector, ops=op, since=since, initial=initial), show,
           gone_hint="list the objects, then watch with --since set to the list's revision, or watch with --initial")


def follow(ctx: typer.Context, start: Callable[[TenureClient], Watch], show: Callable[[WatchEvent], None], *,
           gone_hint: str) -> None:
    """Print a watch's events with ``show`` until Ctrl-C (``tenure watch``, ``tenure resource events``)."""
    s = session(ctx)
    try:
        target = locate(s.url, s.token, s.data_dir)
        with s.client(target.url, target.token) as client:
            client.health()  # fail now if the server cannot be reached; once watching, outages are waited out
            with start(client) as events:
                for event in events:
                    show(event)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except BrokenPipeError:  # `tenure watch | head`: the reader is done, so are we
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        raise typer.Exit(0) from None
    except WatchGone as exc:
        fail(exc.code, f"the events to resume from are no longer kept (history compacted up to revision "
                       f"{exc.compacted_revision}): {gone_hint}")
    except TenureClientError as exc:
        fail(exc.code, exc.message)


def _json_line(e: WatchEvent) -> None:
    if e.type == "bookmark" and not e.initial_end:
        return
    typer.echo(json.dumps(e.data, ensure_ascii=False, separators=(",", ":")))


def _line(e: WatchEvent) -> None:
    if e.type == "bookmark":
        if e.initial_end:
            warn(f"-- initial state complete at revision {e.revision}; following --")
        return
    if e.type == "resync":
        warn("-- connection lost during the initial state: listing again --")
        return
    typer.echo(describe(e))


def describe(e: WatchEvent) -> str:
    """``1234 created claim vlans/web project=blue value=12``: revision (``-`` in an initial listing), op,
    kind, id, the labels that the id does not already say, and the object's most telling field."""
    parts = ["-" if e.revision is None else str(e.revision), e.type, e.kind or "?", e.id or "?"]
    for name, value in sorted(e.labels.items()):
        if not (name == "pool" and e.kind in ("claim", "pool")):
            parts.append(f"{name}={value}")
    obj: dict[str, Any] = e.object or {}
    for field in _SALIENT.get(e.kind or "", ()):
        if obj.get(field) is not None and field not in e.labels:
            parts.append(f"{field}={obj[field]}")
    return " ".join(parts)


_SALIENT = {"claim": ("value",), "pool": ("used", "size"), "agent": ("state",), "token": ("role", "revoked_at")}
