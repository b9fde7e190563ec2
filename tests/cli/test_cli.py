"""``tenure`` commands end to end: argv in, the real app (SQLite and PostgreSQL) behind, stdout/stderr/exit out."""

from __future__ import annotations

from pathlib import Path

import httpx

from tenure.cli.common import Session
from tenure.client import TenureClient
from tests.cli.conftest import Cli


def test_pool_create_list_show_delete(cli: Cli) -> None:
    pool = cli.json("pool", "create", "lab", "--range", "1-10", "--range", "20", "--reserved", "5",
                    "--strategy", "next", "--project", "blue")
    assert pool["name"] == "lab"
    assert pool["ranges"] == [[1, 10], [20, 20]] and pool["reserved"] == [[5, 5]]
    assert pool["strategy"] == "next" and pool["projects"] == ["blue"]
    assert pool["size"] == 10 and pool["used"] == 0

    assert [p["name"] for p in cli.json("pool", "list")["pools"]] == ["lab"]
    assert "lab" in cli.ok("pool", "list").stdout

    cli.ok("claim", "lab", "a")
    assert cli.json("pool", "show", "lab")["used"] == 1
    shown = cli.ok("pool", "show", "lab").stdout
    assert "utilisation" in shown and "10.0%" in shown and "1-10, 20" in shown

    cli.fails("pool", "delete", "lab", code="pool_in_use")
    deleted = cli.json("pool", "delete", "lab", "--force")
    assert deleted["deleted"] == "lab" and isinstance(deleted["revision"], int)
    cli.fails("pool", "show", "lab", code="pool_not_found")
    assert "no pools" in cli.ok("pool", "list").stdout


def test_pool_create_refuses_malformed_range_as_usage_error(cli: Cli) -> None:
    result = cli("pool", "create", "lab", "--range", "ten-twenty")
    assert result.exit_code == 2
    assert "ten-twenty" in result.stderr
    assert cli.json("pool", "list")["pools"] == []


def test_claim_is_new_once_then_already_held(cli: Cli) -> None:
    cli.ok("pool", "create", "vlans", "--range", "100-199")
    first = cli.ok("claim", "vlans", "web/eth0").stdout
    assert "= 100" in first and "new claim" in first
    again = cli.ok("claim", "vlans", "web/eth0").stdout
    assert "= 100" in again and "already held" in again

    fresh = cli.json("claim", "vlans", "db/eth0", "--value", "150")
    assert fresh["value"] == 150 and fresh["created"] is True
    held = cli.json("claim", "vlans", "db/eth0")
    assert held["value"] == 150 and held["created"] is False


def test_claim_of_a_value_held_by_another_key_fails_with_its_code(cli: Cli) -> None:
    cli.ok("pool", "create", "vlans", "--range", "100-199")
    cli.ok("claim", "vlans", "a", "--value", "120")
    result = cli.fails("claim", "vlans", "b", "--value", "120", code="value_taken")
    assert "120" in result.stderr
    cli.fails("claim", "vlans", "b", "--value", "120", "--json", code="value_taken")
    cli.fails("lookup", "vlans", "--value", "121", code="claim_not_found")


def test_release_frees_the_value(cli: Cli) -> None:
    cli.ok("pool", "create", "vlans", "--range", "1-5")
    cli.ok("claim", "vlans", "a")
    held = cli.json("lookup", "vlans", "--value", "1")
    assert held["key"] == "a"
    assert "held by key 'a'" in cli.ok("lookup", "vlans", "--value", "1").stdout

    released = cli.ok("release", "vlans", "a").stdout
    assert "released vlans/a (value 1)" in released
    cli.fails("lookup", "vlans", "--value", "1", code="claim_not_found")
    cli.fails("release", "vlans", "a", code="claim_not_found")
    assert cli.json("claim", "vlans", "b")["value"] == 1


def test_claims_pages_and_all(cli: Cli) -> None:
    cli.ok("pool", "create", "ids", "--range", "1-100")
    keys = [f"k{i}" for i in range(5)]
    for key in keys:
        cli.ok("claim", "ids", key)

    first = cli.json("claims", "ids", "--limit", "2")
    assert [c["key"] for c in first["claims"]] == ["k0", "k1"] and first["next"] == "k1"
    second = cli.json("claims", "ids", "--limit", "2", "--after", first["next"])
    assert [c["key"] for c in second["claims"]] == ["k2", "k3"]
    assert "--after k1" in cli.ok("claims", "ids", "--limit", "2").stdout

    everything = cli.json("claims", "ids", "--limit", "2", "--all")
    assert [c["key"] for c in everything["claims"]] == keys and everything["next"] is None
    assert [c["key"] for c in cli.json("claims", "ids", "--all", "--after", "k2")["claims"]] == ["k3", "k4"]
    table = cli.ok("claims", "ids", "--limit", "2", "--all").stdout
    assert all(k in table for k in keys) and "more:" not in table


def test_audit_releases_the_keys_nobody_reclaimed(cli: Cli) -> None:
    cli.ok("pool", "create", "ids", "--range", "1-100")
    for key in ("kept", "forgotten"):
        cli.ok("claim", "ids", key)

    begun = cli.json("audit", "begin", "ids")
    assert begun["auditing"] is True
    cli.ok("claim", "ids", "kept")
    ended = cli.json("audit", "end", "ids")
    assert ended["auditing"] is False
    assert [c["key"] for c in ended["released"]] == ["forgotten"]
    assert [c["key"] for c in cli.json("claims", "ids")["claims"]] == ["kept"]

    cli.ok("audit", "begin", "ids")
    cli.ok("claim", "ids", "kept")
    assert "nothing released" in cli.ok("audit", "end", "ids").stdout
    cli.fails("audit", "end", "ids", code="no_audit")


def test_audit_end_lists_released_claims(cli: Cli) -> None:
    cli.ok("pool", "create", "ids", "--range", "1-100")
    cli.ok("claim", "ids", "stale-key")
    cli.ok("audit", "begin", "ids")
    out = cli.ok("audit", "end", "ids").stdout
    assert "released 1 claim" in out and "stale-key" in out


def test_ui_prints_a_one_time_sign_in_link(cli: Cli) -> None:
    result = cli.ok("ui")
    url = result.stdout.strip()
    assert "/ui/#code=tnc_" in url and "signs in once" in result.stderr
    code = url.partition("#code=")[2]
    with httpx.Client(base_url=cli.url, timeout=30) as browser:
        assert browser.post("/v1/ui/session", json={"code": code}).status_code == 200
        assert browser.post("/v1/ui/session", json={"code": code}).status_code == 401  # once


def test_token_create_list_revoke(cli: Cli) -> None:
    created = cli("token", "create", "--role", "member", "--project", "blue", "--description", "ci")
    assert created.exit_code == 0, created.stderr
    assert "shown only this once" in created.stderr
    token = cli.json("token", "create", "--role", "member", "--project", "blue")
    assert token["role"] == "member" and token["project"] == "blue" and token["token"]

    listed = cli.json("token", "list")["tokens"]
    assert token["id"] in {t["id"] for t in listed}
    assert all("token" not in t for t in listed)
    assert cli.json("pool", "list", token=token["token"])["pools"] == []

    assert cli.json("token", "revoke", token["id"])["revoked_at"] is not None
    assert token["id"] not in {t["id"] for t in cli.json("token", "list")["tokens"]}
    assert token["id"] in {t["id"] for t in cli.json("token", "list", "--revoked")["tokens"]}
    cli.fails("pool", "list", token=token["token"], code="invalid_token")


def test_member_token_cannot_create_tokens(cli: Cli) -> None:
    secret = cli.json("token", "create", "--role", "member", "--project", "blue")["token"]
    cli.fails("token", "create", "--role", "admin", token=secret, code="forbidden")
    cli.fails("token", "create", "--role", "member", code="invalid_scope")


def test_missing_token_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    result = cli.raw(["--url", cli.url, "--data-dir", str(tmp_path), "pool", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: not_configured: no token:")
    assert "--token" in result.stderr and "TENURE_TOKEN" in result.stderr
    assert "Traceback" not in result.output


def test_missing_url_is_a_clear_error(cli: Cli, tmp_path: Path) -> None:
    result = cli.raw(["--token", "x", "--data-dir", str(tmp_path), "pool", "list"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: not_configured: no server URL:")


def test_local_admin_token_and_env_are_found_without_flags(cli: Cli) -> None:
    from_data_dir = cli.raw(["--url", cli.url, "--data-dir", str(cli.api.data_dir), "pool", "list", "--json"])
    assert from_data_dir.exit_code == 0, from_data_dir.stderr
    from_env = cli.raw(["pool", "list", "--json"], env={"TENURE_URL": cli.url, "TENURE_TOKEN": cli.api.admin_token})
    assert from_env.exit_code == 0, from_env.stderr


def test_unreachable_server_is_a_clear_error(cli: Cli) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    offline = Session(connect=lambda url, token: TenureClient(url, token, transport=httpx.MockTransport(refuse)))
    result = cli.raw(["--url", "http://tenure.invalid:7470", "--token", "t", "pool", "list"], session=offline)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: unreachable: cannot reach the Tenure server at http://tenure.invalid:7470")
    assert "Traceback" not in result.output


def test_keys_with_url_syntax_work_from_the_command_line(cli: Cli) -> None:
    cli.ok("pool", "create", "ids", "--range", "1-100")
    key = "a/b?c#d %e"
    value = cli.json("claim", "ids", key)["value"]
    assert cli.json("claim", "ids", key)["value"] == value
    assert cli.json("release", "ids", key)["key"] == key



def test_tables_show_keys_verbatim(cli: Cli) -> None:
    cli.ok("pool", "create", "ids", "--range", "1-100")
    for key in ("net[blue]", ":thumbs_up:", "[bold]x"):
        cli.ok("claim", "ids", key)
    table = cli.ok("claims", "ids").stdout
    assert "net[blue]" in table and ":thumbs_up:" in table and "[bold]x" in table
    assert cli.ok("claim", "ids", ":thumbs_up:").stdout.startswith("ids/:thumbs_up: = ")


def test_token_list_shows_whole_ids(cli: Cli) -> None:
    token = cli.json("token", "create", "--role", "member", "--project", "a-rather-long-project-name",
                     "--description", "a description long enough to squeeze the other columns of the table")
    assert token["id"] in cli.ok("token", "list").stdout
