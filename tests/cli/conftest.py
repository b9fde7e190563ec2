"""The CLI and the client against the real app: a ``TenureClient`` riding on the ``api`` fixture's TestClient."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from tenure.cli.common import Session
from tenure.cli.main import app
from tenure.client import TenureClient

URL = "http://testserver"  # the TestClient's own base URL


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The developer's own TENURE_* variables must not leak into what the tests resolve."""
    for name in ("TENURE_URL", "TENURE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TENURE_DATA_DIR", str(tmp_path / "no-such-data-dir"))


@pytest.fixture
def client(api: Any) -> TenureClient:
    return TenureClient(URL, api.admin_token, http=api.client)


@dataclass
class Cli:
    """Runs ``tenure ...`` in-process; every client it makes talks to the test app."""

    api: Any
    runner: CliRunner

    def session(self) -> Session:
        return Session(connect=lambda url, token: TenureClient(url, token, http=self.api.client))

    def raw(self, args: Sequence[str], *, env: dict[str, str | None] | None = None,
            session: Session | None = None) -> Result:
        return self.runner.invoke(app, list(args), obj=session or self.session(), env=env)

    def __call__(self, *args: str, token: str | None = None) -> Result:
        """``tenure --url URL --token TOKEN ARGS...``, admin token unless told otherwise."""
        return self.raw(["--url", URL, "--token", token or self.api.admin_token, *args])

    def ok(self, *args: str, token: str | None = None) -> Result:
        result = self(*args, token=token)
        assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result

    def json(self, *args: str, token: str | None = None) -> Any:
        return json.loads(self.ok(*args, "--json", token=token).stdout)

    def fails(self, *args: str, code: str, token: str | None = None) -> Result:
        result = self(*args, token=token)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        assert result.stderr.startswith(f"error: {code}: "), result.stderr
        assert "Traceback" not in result.stderr + result.stdout
        return result


@pytest.fixture
def cli(api: Any) -> Cli:
    return Cli(api, CliRunner())
