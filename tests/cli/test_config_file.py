"""``--config FILE`` (TOML) for ``tenure serve`` and ``tenure agent``, and ``tenure config show`` (issue 17,
docs/operations.md section 6): the file < the environment < the flags, each value's origin shown; a key the
command does not have, or a file that is not TOML, is refused naming the key, the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer.main
from typer.testing import CliRunner

from tenure.cli.main import app

CONFIG = """# tenure serve's options
listen = "127.0.0.1:7999"
history-age = 7200
log-level = "debug"

[backup]
dir = "/var/backups/tenure"
keep = 5
"""


def _parsed(args: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], Any]:
    """``tenure serve ARGS`` parsed as the command would run (nothing started): values and their sources."""
    import os

    group = typer.main.get_command(app)
    old = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        root = group.make_context("tenure", ["serve", *args])
        serve = group.get_command(root, "serve")
        ctx = serve.make_context("serve", list(args), parent=root)
        return ctx.params, ctx
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_the_file_the_environment_and_the_flags_in_that_order(tmp_path: Path) -> None:
    path = tmp_path / "tenure.toml"
    path.write_text(CONFIG)
    params, ctx = _parsed(["--config", str(path)])
    assert params["listen"] == "127.0.0.1:7999" and params["history_age"] == 7200.0
    assert params["backup_dir"] == Path("/var/backups/tenure") and params["backup_keep"] == 5
    assert params["lease"] == 5.0  # not in the file: the default
    params, _ = _parsed(["--config", str(path)], env={"TENURE_SERVE_HISTORY_AGE": "60", "TENURE_SERVE_LISTEN": "e:1"})
    assert params["history_age"] == 60.0 and params["listen"] == "e:1"  # the environment beats the file
    params, _ = _parsed(["--config", str(path), "--listen", "f:2"], env={"TENURE_SERVE_LISTEN": "e:1"})
    assert params["listen"] == "f:2"  # the flag beats both
    params, _ = _parsed([], env={"TENURE_SERVE_CONFIG": str(path)})
    assert params["listen"] == "127.0.0.1:7999"  # the file named by the environment


def test_config_show_says_where_each_value_comes_from(tmp_path: Path) -> None:
    path = tmp_path / "tenure.toml"
    path.write_text(CONFIG)
    out = CliRunner().invoke(app, ["config", "show", "--config", str(path), "--json"],
                             env={"TENURE_SERVE_LEASE": "9"})
    assert out.exit_code == 0, out.output
    rows = {r["option"]: [r["value"], r["from"]] for r in json.loads(out.stdout)}
    assert rows["--listen"] == ["127.0.0.1:7999", f"file {path}"]
    assert rows["--lease"] == [9.0, "environment"]
    assert rows["--header-timeout"] == [10.0, "default"]
    human = CliRunner().invoke(app, ["config", "show", "--config", str(path)])
    assert human.exit_code == 0 and "--listen" in human.stdout, human.output
    agent_file = tmp_path / "agent.toml"
    agent_file.write_text('drivers-dir = "/opt/drivers"\nserver = ["https://a:7470", "https://b:7470"]\n')
    agent = CliRunner().invoke(app, ["config", "show", "--agent", "--json"],
                               env={"TENURE_AGENT_HOST": "h1", "TENURE_AGENT_CONFIG": str(agent_file)})
    assert agent.exit_code == 0, agent.output
    shown = {r["option"]: r for r in json.loads(agent.stdout)}
    assert shown["--host"]["value"] == "h1" and shown["--host"]["from"] == "environment"
    assert shown["--drivers-dir"]["value"] == ["/opt/drivers"]  # one value for a repeatable option
    assert shown["--server"] == {"option": "--server", "value": ["https://a:7470", "https://b:7470"],
                                 "from": f"file {agent_file}"}


def test_an_unknown_key_is_refused_naming_it_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('listen = "127.0.0.1:1"\n\n[backup]\nkeeep = 3\n')
    for args in (["serve", "--config", str(path)], ["config", "show", "--config", str(path)],
                 ["agent", "--config", str(path)]):
        out = CliRunner().invoke(app, args)
        assert out.exit_code == 2, (args, out.output)
        said = _flat(out.output)  # (the error box wraps it)
        assert _flat("unknown key 'backup-keeep'") in said and _flat(f"{path}, line 4") in said, out.output
    path.write_text('[tls]\ncert = "a"\n[backup]\ncert = "b"\n')  # the same leaf under two tables: the right line
    out = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert _flat(f"unknown key 'backup-cert' ({path}, line 4)") in _flat(out.output), out.output
    path.write_text('backup-dir = "a"\n[backup]\ndir = "b"\n')
    out = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert out.exit_code == 2 and _flat("'backup-dir' is given twice") in _flat(out.output), out.output
    path.write_bytes(b"listen = \"\xff\"\n")
    out = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert out.exit_code == 2 and _flat("is not UTF-8") in _flat(out.output), out.output
    path.write_text("listen = \n")
    out = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert out.exit_code == 2 and _flat("is not TOML") in _flat(out.output), out.output


def _flat(text: str) -> str:
    import re

    return re.sub(r"[\s│╭╮╰╯─]", "", text)
