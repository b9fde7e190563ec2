"""``tenure token create|list|rotate|revoke``: bearer tokens for people, agents and projects.

The server keeps only a hash of each secret, so ``create`` is the one moment the
secret exists in the clear; the command says so, on stderr, so that stdout holds
only what a script may capture.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from tenure.cli.common import JsonOption, run, say, table, warn, when

app = typer.Typer(help="API tokens: create, list, rotate, revoke.", no_args_is_help=True)

Role = Literal["admin", "agent", "member"]


@app.command("create")
def create(
    ctx: typer.Context,
    role: Annotated[Role, typer.Option(help="admin: everything; agent: one host's claims; member: one project's.")],
    project: Annotated[str | None, typer.Option(help="The project a member token acts for.")] = None,
    host: Annotated[str | None, typer.Option(help="The host an agent token acts for.")] = None,
    description: Annotated[str | None, typer.Option(help="A note for whoever lists tokens later.")] = None,
    ttl: Annotated[str | None, typer.Option(help="How long it works: 30d, 12h, 1w2d... (default: until "
                                            "revoked)")] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a token and print its secret (shown only this once)."""
    seconds = _seconds(ttl, "--ttl")
    run(ctx, lambda c: c.create_token(role, project=project, host=host, description=description, ttl=seconds),
        _created, as_json=as_json)
    warn("warning: the secret is shown only this once; store it now")  # reached only if the call succeeded


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (from `tenure token list`).")],
    grace: Annotated[str, typer.Option(help="How long the old secret keeps working: 1h, 1d, 0s (stops at "
                                       "once)")] = "1h",
    as_json: JsonOption = False,
) -> None:
    """Give a token a new secret (same id and scope) and print it; the old one works for the grace period."""
    seconds = _seconds(grace, "--grace", zero=True)
    run(ctx, lambda c: c.rotate_token(token_id, grace=seconds), _rotated, as_json=as_json)
    warn("warning: the new secret is shown only this once; store it now")


def _seconds(text: str | None, option: str, *, zero: bool = False) -> int | None:
    from tenure.domain.errors import TenureError
    from tenure.domain.units import parse_duration

    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except TenureError as exc:
        raise typer.BadParameter(exc.message, param_hint=option) from None
    if seconds == 0 and not zero:
        raise typer.BadParameter("must be more than 0", param_hint=option)
    return seconds


def _rotated(t: dict[str, Any]) -> None:
    until = t.get("previous_secret_until")
    say(f"rotated token {t['id']}: the old secret works until {when(until)}" if until else
        f"rotated token {t['id']}: the old secret no longer works")
    say(t["token"])


@app.command("list")
def list_(
    ctx: typer.Context,
    revoked: Annotated[bool, typer.Option("--revoked", help="Include revoked tokens.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List tokens (never their secrets)."""
    run(ctx, lambda c: c.tokens(revoked=revoked), _list, as_json=as_json)


@app.command("revoke")
def revoke(
    ctx: typer.Context,
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id (from `tenure token list`).")],
    as_json: JsonOption = False,
) -> None:
    """Revoke a token: it stops working at once."""
    run(ctx, lambda c: c.revoke_token(token_id), lambda t: say(f"revoked token {t['id']}"), as_json=as_json)


def _created(t: dict[str, Any]) -> None:
    scope = "".join(f", {k} {t[k]}" for k in ("project", "host") if t.get(k))
    say(f"created token {t['id']} (role {t['role']}{scope})")
    say(t["token"])


def _list(answer: dict[str, Any]) -> None:
    tokens = answer["tokens"]
    if not tokens:
        say("no tokens")
        return
    table(("id", "role", "project", "host", "description", "created", "expires", "last used", "revoked"),
          ((t["id"], t["role"], t.get("project"), t.get("host"), t.get("description"), when(t["created_at"]),
            (when(t.get("expires_at")) or "never") + (" (expired)" if t.get("expired") else ""),
            when(t.get("last_used_at")), when(t.get("revoked_at"))) for t in tokens))


def ui(
    ctx: typer.Context,
    open_: Annotated[bool, typer.Option("--open", help="Open the link in a browser on this machine.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print a link that signs a browser in to the web console as this token (valid 60 s, once)."""

    def show(answer: dict[str, Any]) -> None:
        say(answer["url"])
        warn(f"the link signs in once, until {when(answer['expires_at'])}; it carries the code in its fragment, "
             f"which the browser never sends and the console removes from its history")
        if open_:
            import webbrowser

            webbrowser.open(answer["url"])

    run(ctx, lambda c: c.console_code(), show, as_json=as_json)
