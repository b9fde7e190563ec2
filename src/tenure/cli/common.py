"""What every client command shares: where the server is, one call, one answer, one way to fail.

A command is three things: a call on the :class:`~tenure.client.TenureClient`, a
way to show its answer to a human, and ``--json``. :func:`run` does the rest, the
same way for all: resolve URL and token (``--url``/``--token``/``--data-dir`` on
the root command, their environment variables, else the local server's files),
make the call, print the JSON or the human view, and turn any client error into
``error: <code>: <message>`` on stderr with exit status 1, never a traceback.

How a client is made is :attr:`Session.connect`: a test passes a ``Session``
as the Click context object (``CliRunner.invoke(app, ..., obj=Session(...))``)
whose ``connect`` puts the client on a ``TestClient``. Resolution of the URL and
token still runs for real; only the transport is swapped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tenure.client import TenureClient, TenureClientError, locate

T = TypeVar("T")
Connect = Callable[[str, str], TenureClient]  # (url, token) -> client

out = Console(highlight=False, emoji=False)
err = Console(stderr=True, highlight=False, emoji=False)

JsonOption = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer instead of a human view.")]


@dataclass
class Session:
    """The root options of one invocation, and how to turn them into a client."""

    url: str | None = None
    token: str | None = None
    data_dir: Path | None = None
    ca_file: str | None = None  # --ca-file / TENURE_CA_FILE: the CA of an https:// server's certificate
    connect: Connect | None = None  # a test's transport; None: a real client

    def client(self, url: str, token: str) -> TenureClient:
        if self.connect is not None:
            return self.connect(url, token)
        return TenureClient(url, token, ca_file=self.ca_file)


def session(ctx: typer.Context) -> Session:
    return ctx.ensure_object(Session)


def fail(code: str, message: str) -> NoReturn:
    # soft_wrap: a long message stays one line, so `2>&1 | grep` and tests see it whole.
    err.print(Text(f"error: {code}: {message}", style="red"), soft_wrap=True)
    raise typer.Exit(1)


def run(ctx: typer.Context, call: Callable[[TenureClient], T], show: Callable[[T], None], *, as_json: bool) -> None:
    """Make one call on a fresh client; print its JSON or ``show`` it; fail cleanly on any client error."""
    s = session(ctx)
    try:
        target = locate(s.url, s.token, s.data_dir)
        with s.client(target.url, target.token) as client:
            result = call(client)
    except TenureClientError as exc:
        fail(exc.code, exc.message)
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        show(result)


# ------------------------------------------------------------------ parsing


def tls_pair(cert: Path | None, key: Path | None) -> tuple[Path, Path] | None:
    """``--tls-cert`` and ``--tls-key``: both, or neither."""
    if (cert is None) != (key is None):
        raise typer.BadParameter("give both --tls-cert and --tls-key, or neither", param_hint="--tls-cert")
    return (cert, key) if cert is not None and key is not None else None


_SPAN = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def parse_spans(texts: Iterable[str], *, option: str) -> list[tuple[int, int]]:
    """``LO-HI`` or ``N`` (meaning ``N-N``) per entry; a malformed one is a usage error (exit 2)."""
    spans = []
    for text in texts:
        m = _SPAN.fullmatch(text)
        if m is None:
            raise typer.BadParameter(f"{text!r} is not N or LO-HI", param_hint=option)
        lo = int(m.group(1))
        spans.append((lo, int(m.group(2)) if m.group(2) is not None else lo))
    return spans


# ---------------------------------------------------------------- rendering


def cell(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def spans(ranges: Sequence[Sequence[int]]) -> str:
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges) or "-"


def percent(part: int, whole: int) -> str:
    if whole <= 0:
        return "-"
    pct = 100 * part / whole
    return "<0.1%" if 0 < pct < 0.1 else f"{pct:.1f}%"


def when(iso: str | None) -> str | None:
    """A UTC timestamp to the minute: tables need the day and hour, not the microseconds."""
    if not iso:
        return None
    t = datetime.fromisoformat(iso)
    return (t.astimezone(timezone.utc) if t.tzinfo else t).strftime("%Y-%m-%d %H:%MZ")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
    # The first column names the row (key, pool, token id) and is what gets copied into the next
    # command, so it never wraps; the others fold rather than end in "…", so nothing is lost.
    t = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        t.add_column(name, no_wrap=i == 0, overflow="fold")
    for row in rows:
        t.add_row(*(Text(cell(v)) for v in row))  # Text: a key like "a[b]" or ":x:" is data, not markup
    out.print(t)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    """A two-column name/value listing, for one object."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in pairs:
        grid.add_row(name, Text(cell(value)))
    out.print(grid)


def say(message: str) -> None:
    out.print(message, soft_wrap=True, markup=False)


def warn(message: str) -> None:
    err.print(Text(message, style="yellow"), soft_wrap=True)


def claims_table(claims: Sequence[dict[str, Any]], *, title: str | None = None) -> None:
    table(("key", "value", "project", "host"),
          ((c["key"], c["value"], c.get("project"), c.get("host")) for c in claims), title=title)
