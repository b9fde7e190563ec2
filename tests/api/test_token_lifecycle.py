"""Tokens that end, over HTTP and the CLI (issue 17): ``ttl`` at creation, 401 ``token_expired``, the watch it
opened ending at its expiry, ``:rotate`` with a grace, ``tenure token list`` with expiry and last use."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tenure.cli.main import app as cli
from tests.conftest import Api, start_api
from tests.reservation_support import FakeClock
from tests.watch.stream import open_stream


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def served(db_url: str, tmp_path: Path, clock: FakeClock) -> Iterator[Api]:
    yield from start_api(db_url, tmp_path / "data", clock=clock)


def test_an_expired_token_gets_401_token_expired_and_its_watch_ends(served: Api, clock: FakeClock) -> None:
    r = served.post("/v1/tokens", json={"role": "member", "project": "blue", "ttl": 60})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["expires_at"] and body["expired"] is False
    secret = body["token"]
    assert served.get("/v1/whoami", token=secret).status_code == 200
    stream = open_stream(served.client, secret, {"kind": "claim"})
    clock.advance(seconds=61)
    r = served.get("/v1/whoami", token=secret)
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"
    served.app.state.tenure.runtime.tokens.scheduler.run_due()  # the timer, by hand
    stream.until_end(10)  # the server ends it (else: queue.Empty)
    listed = served.get("/v1/tokens").json()["tokens"]
    assert [t["expired"] for t in listed if t["id"] == body["id"]] == [True]


@pytest.mark.parametrize(("ttl", "code"), [(0, "invalid_ttl"), (-5, "invalid_ttl"),
                                          (10 * 366 * 86400 + 1, "invalid_ttl"),
                                          ("30d", "invalid_request"), (1.5, "invalid_request")])  # not seconds
def test_a_bad_ttl_is_400_and_creates_nothing(served: Api, ttl: object, code: str) -> None:
    before = served.get("/v1/tokens").json()["tokens"]
    r = served.post("/v1/tokens", json={"role": "admin", "ttl": ttl})
    assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    assert served.get("/v1/tokens").json()["tokens"] == before


def test_rotate_gives_a_new_secret_and_the_old_one_works_for_the_grace(served: Api, clock: FakeClock) -> None:
    made = served.post("/v1/tokens", json={"role": "member", "project": "blue"}).json()
    r = served.post(f"/v1/tokens/{made['id']}:rotate", json={"grace": 300})
    assert r.status_code == 200, r.text
    new = r.json()["token"]
    assert r.json()["id"] == made["id"] and r.json()["previous_secret_until"]
    assert served.get("/v1/whoami", token=made["token"]).status_code == 200
    assert served.get("/v1/whoami", token=new).json()["token_id"] == made["id"]
    clock.advance(seconds=300)
    r = served.get("/v1/whoami", token=made["token"])
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_rotated"
    assert served.post("/v1/tokens/nope:rotate").status_code == 404
    bad = served.post(f"/v1/tokens/{made['id']}:rotate", json={"grace": -1})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_grace"
    member = served.post(f"/v1/tokens/{made['id']}:rotate", token=new)
    assert member.status_code == 403


def test_the_cli_creates_with_a_ttl_rotates_and_lists_expiry_and_last_use(served: Api) -> None:
    base = ["--url", str(served.client.base_url), "--token", served.admin_token]
    runner = CliRunner()
    made = runner.invoke(cli, [*base, "token", "create", "--role", "admin", "--ttl", "30d", "--json"])
    assert made.exit_code == 0, made.output
    token = json.loads(made.stdout[made.stdout.index("{"):])
    assert served.get("/v1/whoami", token=token["token"]).status_code == 200
    rotated = runner.invoke(cli, [*base, "token", "rotate", token["id"], "--grace", "1h"])
    assert rotated.exit_code == 0 and "the old secret works until" in rotated.output, rotated.output
    served.app.state.tenure.runtime.tokens.flush_use()  # what the leader does once a minute
    listed = runner.invoke(cli, [*base, "token", "list"])
    assert listed.exit_code == 0 and "expi" in listed.output, listed.output  # (a narrow terminal folds the cells)
    as_json = runner.invoke(cli, [*base, "token", "list", "--json"])
    [mine] = [t for t in json.loads(as_json.stdout)["tokens"] if t["id"] == token["id"]]
    assert mine["expires_at"] == token["expires_at"] and mine["last_used_at"] is not None
    assert mine["previous_secret_until"] is not None
    bad = runner.invoke(cli, [*base, "token", "create", "--role", "admin", "--ttl", "soon"])
    assert bad.exit_code == 2 and "--ttl" in bad.output
