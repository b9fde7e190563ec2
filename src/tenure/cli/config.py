"""``--config FILE`` for ``tenure serve`` and ``tenure agent``, and ``tenure config show`` (docs/operations.md,
section 6).

The file is TOML. Its keys are the command's option names without the dashes (``listen = "0.0.0.0:7470"``,
``history-age = 3600``); a table prefixes its keys (``[backup] dir = ...`` is ``backup-dir``, ``[tls] cert`` is
``tls-cert``). The values become the command's defaults (Click's ``default_map``), so the precedence is the
file < the environment (``TENURE_SERVE_LISTEN``, ``TENURE_AGENT_HOST``..., and the variables an option names
itself, such as ``TENURE_DATA_DIR``) < the flags, each value's origin known to Click. A key the command does not
have is an error naming the key, the file and its line.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import typer


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}-{key}" if prefix else key
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _line_of(text: str, key: str) -> int | None:
    leaf = key.rsplit("-", 1)[-1]
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(rf"\s*[\"']?({re.escape(key)}|{re.escape(leaf)})[\"']?\s*=", line):
            return n
    return None


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if getattr(p, "param_type_name", "") == "option"]


def read(path: Path, command: Any) -> dict[str, Any]:
    """The file's values as ``command``'s parameter names -> values; a usage error naming what is wrong."""
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint="--config") from None
    except tomllib.TOMLDecodeError as exc:
        raise typer.BadParameter(f"{path} is not TOML: {exc}", param_hint="--config") from None
    names = {opt.lstrip("-"): p.name for p in _options(command) for opt in p.opts
             if opt.startswith("--") and p.name != "config"}
    out: dict[str, Any] = {}
    for key, value in _flatten(data).items():
        name = names.get(key)
        if name is None:
            line = _line_of(text, key)
            where = f"{path}, line {line}" if line else str(path)
            raise typer.BadParameter(f"unknown key {key!r} ({where}): `tenure {command.name} --help` lists the "
                                     "options, which are the keys", param_hint="--config")
        out[name] = value
    return out


def load(ctx: typer.Context, _param: typer.CallbackParam, value: Path | None) -> Path | None:
    """The eager ``--config`` callback: the file's values become the command's defaults."""
    if value is not None and not ctx.resilient_parsing:
        ctx.default_map = {**(ctx.default_map or {}), **read(value, ctx.command)}
    return value


ConfigOption = typer.Option("--config", is_eager=True, callback=load, envvar="TENURE_CONFIG",
                            help="A TOML file of this command's options (keys: the option names; flags and "
                                 "environment variables override it).")


def show(ctx: typer.Context, command_name: str, config: Path | None) -> list[tuple[str, Any, str]]:
    """``(option, value, origin)`` of every option ``tenure COMMAND`` would run with now (no flags given)."""
    root = ctx.find_root().command
    command = root.get_command(ctx, command_name)  # type: ignore[attr-defined]
    if command is None:
        raise typer.BadParameter(f"no command {command_name!r}")
    sub = command.make_context(command_name, ["--config", str(config)] if config else [], parent=ctx.find_root(),
                               resilient_parsing=False, auto_envvar_prefix=f"TENURE_{command_name.upper()}")
    out = []
    for p in _options(command):
        if p.hidden or p.name in ("config", "help"):
            continue
        source = sub.get_parameter_source(p.name)  # type: ignore[arg-type]
        origin = {"DEFAULT_MAP": f"file {config}", "ENVIRONMENT": "environment", "DEFAULT": "default",
                  "COMMANDLINE": "flag"}.get(source.name if source else "DEFAULT", "default")
        out.append((max(p.opts, key=len), sub.params.get(p.name), origin))  # type: ignore[arg-type]
    return out
