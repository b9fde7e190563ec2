"""``tenure agents`` and the client's agent methods, against the real server (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tenure.cli import agents as cli_agents
from tenure.client import TenureAPIError, TenureClient
from tests.cli.conftest import Cli, base_url


def test_agents_table_and_json(cli: Cli, client: TenureClient, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "no agents" in cli.ok("agents").stdout
    first = client.register_agent("compute-1", ["claim", "pool"], "2.4.1", capabilities={"tc": True})
    assert first["created"] is True and first["state"] == "up"
    again = client.register_agent("compute-1", ["claim", "pool"], "2.4.1", capabilities={"tc": True})
    assert again["created"] is False
    client.register_agent("compute-0", ["agent"], "2.4.0")
    assert client.heartbeat("compute-0")["host"] == "compute-0"

    document = cli.json("agents")
    assert document == client.agents()
    assert [a["host"] for a in document["agents"]] == ["compute-0", "compute-1"]

    seen = datetime.fromisoformat(client.agent("compute-1")["last_seen"])
    monkeypatch.setattr(cli_agents, "now", lambda: seen + timedelta(seconds=12))
    shown = cli.ok("agents").stdout
    for text in ("compute-0", "compute-1", "up", "2.4.1", "claim, pool", "12s ago",
                 seen.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")):
        assert text in shown, (text, shown)

    removed = client.remove_agent("compute-0")
    assert removed["host"] == "compute-0"
    with pytest.raises(TenureAPIError) as info:
        client.heartbeat("compute-0")
    assert info.value.code == "agent_not_registered"
    assert [a["host"] for a in cli.json("agents")["agents"]] == ["compute-1"]


def test_agents_scopes_in_the_cli(cli: Cli, client: TenureClient) -> None:
    client.register_agent("compute-1", ["claim"], "1")
    own = client.create_token("agent", host="compute-2")["token"]
    with TenureClient(base_url(cli.api), own) as agent:
        agent.register_agent("compute-2", ["claim"], "1")
        with pytest.raises(TenureAPIError) as info:
            agent.heartbeat("compute-1")
        assert info.value.status == 403
    assert [a["host"] for a in cli.json("agents", token=own)["agents"]] == ["compute-2"]
    member = client.create_token("member", project="blue")["token"]
    cli.fails("agents", code="forbidden", token=member)


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s ago"), (59, "59s ago"), (60, "1m ago"), (3599, "59m ago"), (3600, "1h ago"), (86400 * 3, "3d ago"),
    (-5, "in the future"),
])
def test_ago(seconds: int, text: str) -> None:
    t = datetime(2026, 11, 22, 4, 20, 7, 123456, tzinfo=UTC)
    assert cli_agents.ago(t.isoformat(), at=t + timedelta(seconds=seconds)) == f"{text} (2026-11-22 04:20:07Z)"
    assert cli_agents.ago(None) is None
