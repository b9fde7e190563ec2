"""The CLI and the client against the real server: the ``api`` fixture serves through uvicorn on loopback.

So nothing is faked between argv and the store: the CLI resolves ``--url`` and
``--token`` as it would for a user and talks HTTP to the app. Only the test of an
unreachable server swaps the transport, through :class:`tenure.cli.common.Session`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from tenure.cli.common import Session
from tenure.cli.main import app
from tenure.client import TenureClient


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The developer's own TENURE_* variables and data dir must not leak into what the tests resolve."""
    for name in ("TENURE_URL", "TENURE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TENURE_DATA_DIR", str(tmp_path / "no-such-data-dir"))


def base_url(api: Any) -> str:
    return str(api.client.base_url).rstrip("/")


@pytest.fixture
def client(api: Any) -> Any:
    with TenureClient(base_url(api), api.admin_token) as c:
        yield c


@dataclass
class Cli:
    """Runs ``tenure ...`` in-process against the test server."""

    api: Any
    runner: CliRunner = field(default_factory=CliRunner)

    @property
    def url(self) -> str:
        return base_url(self.api)

    def raw(self, args: Sequence[str], *, env: dict[str, str | None] | None = None,
            session: Session | None = None) -> Result:
        """Exactly these arguments: no --url or --token added."""
        return self.runner.invoke(app, list(args), obj=session, env=env)

    def __call__(self, *args: str, token: str | None = None) -> Result:
        """``tenure --url URL --token TOKEN ARGS...``, with the admin token unless told otherwise."""
        return self.raw(["--url", self.url, "--token", token or self.api.admin_token, *args])

    def ok(self, *args: str, token: str | None = None) -> Result:
        result = self(*args, token=token)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str, token: str | None = None) -> Any:
        return json.loads(self.ok(*args, "--json", token=token).stdout)

    def fails(self, *args: str, code: str, token: str | None = None) -> Result:
        """The command exits 1 with ``error: CODE: ...`` on stderr, nothing on stdout, no traceback."""
        result = self(*args, token=token)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert result.stderr.startswith(f"error: {code}: "), result.stderr
        assert result.stdout == "" and "Traceback" not in result.stderr
        return result


@pytest.fixture
def cli(api: Any) -> Cli:
    return Cli(api)
