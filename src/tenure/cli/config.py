"""``--config FILE`` for ``tenure serve`` and ``tenure agent``, and ``tenure config show`` (docs/operations.md,
section 6).

The file is TOML. Its keys are the command's option names without the dashes (``listen = "0.0.0.0:7470"``,
``history-age = 3600``); a table prefixes its keys (``[backup] dir = ...`` is ``backup-dir``, ``[tls] cert`` is
``tls-cert``). The values become the command's defaults (Click's ``default_map``), so the precedence is the
file < the environment (``TENURE_SERVE_LISTEN``, ``TENURE_AGENT_HOST``..., and the variables an option names
itself, such as ``TENURE_DATA_DIR``) < the flags, each value's origin known to Click. The file itself may be named
by ``TENURE_SERVE_CONFIG`` / ``TENURE_AGENT_CONFIG``. ``tenure config show`` shows what the options resolve to;
the command's own checks of combinations (both ``--tls-cert`` and ``--tls-key``, say) run only when it runs. A
key the command does not have is an error naming the key, the file and its line.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import typer


def _flatten(table: dict[str, Any], prefix: str = "", out: dict[str, Any] | None = None,
             twice: list[str] | None = None) -> dict[str, Any]:
    """``{"backup": {"dir": x}}`` as ``{"backup-dir": x}``; a name reached twice is added to ``twice``."""
    out = {} if out is None else out
    for key, value in table.items():
        name = f"{prefix}-{key}" if prefix else key
        if isinstance(value, dict):
            _flatten(value, name, out, twice)
        else:
            if name in out and twice is not None:
                twice.append(name)
            out[name] = value
    return out


def _line_of(text: str, key: str) -> int | None:
    """The line of flattened ``key`` (``backup-keep``: ``keep`` under ``[backup]``, or a top-level ``backup-keep``)."""
    table = ""
    for n, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([A-Za-z0-9_.-]+)\s*\]", line)
        if header:
            table = header.group(1).replace(".", "-")
            continue
        m = re.match(r"\s*[\"']?([A-Za-z0-9_-]+)[\"']?\s*=", line)
        if m and (f"{table}-{m.group(1)}" if table else m.group(1)) == key:
            return n
    return None


def _options(command: Any) -> list[Any]:
    return [p for p in command.params if getattr(p, "param_type_name", "") == "option"]


def read(path: Path, command: Any) -> dict[str, Any]:
    """The file's values as ``command``'s parameter names -> values; a usage error naming what is wrong."""
    try:
        text = path.read_bytes().decode("utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint="--config") from None
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{path} is not UTF-8 text", param_hint="--config") from None
    except tomllib.TOMLDecodeError as exc:
        raise typer.BadParameter(f"{path} is not TOML: {exc}", param_hint="--config") from None
    options = {opt.lstrip("-"): p for p in _options(command) for opt in p.opts
               if opt.startswith("--") and p.name != "config"}
    out: dict[str, Any] = {}
    twice: list[str] = []
    flat = _flatten(data, twice=twice)
    if twice:
        raise typer.BadParameter(f"{twice[0]!r} is given twice ({path}): as a key and in a table",
                                 param_hint="--config")
    for key, value in flat.items():
        line = _line_of(text, key)
        where = f"{path}, line {line}" if line else str(path)
        p = options.get(key)
        if p is None:
            raise typer.BadParameter(f"unknown key {key!r} ({where}): `tenure {command.name} --help` lists the "
                                     "options, which are the keys", param_hint="--config")
        if p.name in out:
            raise typer.BadParameter(f"{key!r} is given twice ({where})", param_hint="--config")
        if getattr(p, "multiple", False) and not isinstance(value, list):
            value = [value]  # one value for a repeatable option
        out[p.name] = value
    return out


def load(ctx: typer.Context, _param: typer.CallbackParam, value: Path | None) -> Path | None:
    """The eager ``--config`` callback: the file's values become the command's defaults."""
    if value is not None and not ctx.resilient_parsing:
        ctx.default_map = {**(ctx.default_map or {}), **read(value, ctx.command)}
    return value


ConfigOption = typer.Option("--config", is_eager=True, callback=load,
                            help="A TOML file of this command's options (keys: the option names; flags and "
                                 "environment variables override it); also TENURE_SERVE_CONFIG / "
                                 "TENURE_AGENT_CONFIG.")


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
        origin = {"DEFAULT_MAP": f"file {sub.params.get('config')}", "ENVIRONMENT": "environment", "DEFAULT": "default",
                  "COMMANDLINE": "flag"}.get(source.name if source else "DEFAULT", "default")
        out.append((max(p.opts, key=len), sub.params.get(p.name), origin))  # type: ignore[arg-type]
    return out
