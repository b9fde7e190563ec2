"""The OpenAPI document describes the server: Schemathesis against a live server, every operation, every check.

Two real servers on loopback (uvicorn, SQLite): the server (``tenure serve``: pools, claims, tokens, the
watch, agents, topology, reservations, limits, instances) and a host agent (``tenure agent``: the same app
with the resource manager: resources, operations, drivers). Each is seeded with real objects, and
Schemathesis runs over every operation of its ``/openapi.json`` (examples, coverage and fuzzing phases,
positive and negative data) with all of its checks and the admin token. The test fails on any server error
and on any failed check (an undocumented status, a body or content type not as documented, a schema-valid
request refused, a schema-invalid one accepted, ...).

Real ids are fed in: a path parameter that names an object (``{pool}``, ``{key}``, ``{rid}``, ``{iid}``,
``{ref}``, ``{op_id}``, ...) is, in most positive cases, replaced by the id of a seeded object (drawn by
Hypothesis, so failures shrink and replay), so operations are exercised past 404. An operation that
destroyed or changed a seeded object (a delete, a topology edit, a revoked token) is followed by
re-seeding: the next case finds the fixtures again (new ids where the old object cannot come back).

Streams: ``GET /v1/watch`` (Server-Sent Events) never ends by itself. Its cases go through the same
generation and checks, but are sent by this module: the answer's status and headers are read, then the
stream is closed, and the checks run on that answer (a 200 is ``text/event-stream`` with no schema; an
error is JSON with its body). ``GET .../operations/{op_id}?wait=`` (a long poll) is fed only operations
that already have a result, so it answers at once; a generated unknown id is a 404 at once. ``POST
.../operations?wait=`` waits for the operation it queues: on the seeded Dummy resources that is milliseconds.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.config._auth import AuthConfig
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

import tenure
from tenure.agent.daemon import AgentConfig, AgentDaemon, create_agent_app
from tenure.api.app import ServerConfig, create_app
from tenure.services.examples import EXAMPLE_TOPOLOGY, ensure_examples
from tests.conftest import Api, start_api
from tests.lrm_support import lrm_config

EXAMPLES = int(os.environ.get("TENURE_OAS_EXAMPLES", "50"))  # Hypothesis examples per operation in the fuzzing phase (the coverage phase adds its own cases)
REAL_ID_WEIGHT = 4  # out of 5 positive cases, a path parameter names a seeded object
_names = itertools.count()

SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


def _ok(r: httpx.Response, *statuses: int) -> Any:
    assert r.status_code in (statuses or (200, 201)), f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r.json()


@dataclass
class Live:
    """A live server, its admin token, and the ids of the objects seeded in it (path parameter -> values)."""

    api: Api
    ids: dict[str, list[Any]] = field(default_factory=dict)
    dirty: bool = False
    answers: dict[str, set[int]] = field(default_factory=dict)  # operation -> statuses seen
    topology: Any = None  # the seeded topology as the server shows it

    @property
    def base_url(self) -> str:
        return str(self.api.client.base_url).rstrip("/")

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api.admin_token}"}


# ---------------------------------------------------------------------- the server


def _authenticate(schema: Any, live: Live) -> None:
    """Schemathesis sends the admin token through the document's bearer scheme (and leaves it out on purpose
    when it checks that the server refuses requests without it)."""
    schema.config.auth = AuthConfig(openapi={"bearer": {"bearer": live.api.admin_token}})


def _seed_server(live: Live) -> None:
    """Pools with claims, a topology, a limit, an agent, a reservation, instances and a spare token."""
    api = live.api
    pools = {p["name"] for p in _ok(api.get("/v1/pools"))["pools"]}
    for spec in ({"name": "vlans", "ranges": [[1, 4094]], "reserved": [[1, 1]]},
                 {"name": "labels", "ranges": [[16, 1048575]], "strategy": "next", "projects": ["blue"]}):
        if spec["name"] not in pools:
            _ok(api.post("/v1/pools", json=spec), 201)
    keys = [("vlans", "net:blue"), ("vlans", "route/10.0.0.0/24"), ("labels", "vrf:blue")]
    values = []
    for pool, key in keys:
        body = {"key": key, **({"project": "blue"} if pool == "labels" else {})}
        values.append(_ok(api.post(f"/v1/pools/{pool}/claims", json=body))["value"])
    live.ids["pool"] = ["vlans", "labels"]
    live.ids["pool+key"] = keys
    live.ids["value"] = values

    topo = _ok(api.get("/v1/topology"))
    shape = (topo["nodes"], topo["links"], topo.get("headroom"), topo.get("alarm"))
    if shape != live.topology:
        put = _ok(api.request("PUT", "/v1/topology", json=EXAMPLE_TOPOLOGY))
        live.topology = (put["nodes"], put["links"], put.get("headroom"), put.get("alarm"))
    live.ids["node_id"] = [n["id"] for n in EXAMPLE_TOPOLOGY["nodes"]]
    live.ids["link_id"] = [lk["id"] for lk in EXAMPLE_TOPOLOGY["links"]]

    _ok(api.request("PUT", "/v1/limits/blue", json={"share": "50%"}))
    live.ids["project"] = ["blue"]

    _ok(api.post("/v1/agents", json={"host": "h1", "kinds": ["instance"], "version": "test"}), 200, 201)
    live.ids["host"] = ["h1"]

    rids = [r for r in live.ids.get("rid", [])
            if api.get(f"/v1/reservations/{r}").json().get("state") in ("pending", "active")]
    if not rids:
        res = _ok(api.post("/v1/reservations", json={
            "kind": "bandwidth", "src": "h1", "dst": "h3", "rate": "1G", "end": "+1d", "project": "blue",
            "protocol": "tcp", "dst_port": 5201, "request_id": f"seed-{next(_names)}"}), 201)
        rids = [res["id"]]
    live.ids["rid"] = rids

    iids = [i for i in live.ids.get("iid", [])
            if api.get(f"/v1/instances/{i}").json().get("state") not in (None, "deleting", "deleted")]
    if not iids:
        name = f"seed-{next(_names)}"
        inst = _ok(api.post("/v1/instances", json={"name": name, "type": "memory", "host": "h1",
                                                   "parameters": {"size": 1}, "labels": {"tier": "gold"}}), 201)
        iids = [inst["id"], inst["name"]]
    live.ids["iid"] = iids

    tids = [t for t in live.ids.get("token_id", [])
            if any(x["id"] == t for x in _ok(api.get("/v1/tokens"))["tokens"])]
    if not tids:
        r = _ok(api.post("/v1/tokens", json={"role": "member", "project": "blue", "description": "spare"}), 201)
        tids = [r["id"]]
    live.ids["token_id"] = tids
    live.dirty = False


@pytest.fixture(scope="module")
def server_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("oas-server")
    for api in start_api(f"sqlite:///{tmp / 'tenure.db'}", tmp / "data", seed=ensure_examples):
        live = Live(api)
        _authenticate(server, live)
        _seed_server(live)
        live.reseed = lambda: _seed_server(live)  # type: ignore[attr-defined]
        yield live


# ---------------------------------------------------------------------- the host agent


def _seed_agent(live: Live) -> None:
    """A Dummy resource, started, with a recurring monitor; another resource never started."""
    api, tmp = live.api, live.api.data_dir
    have = {r["name"]: r for r in _ok(api.get("/v1/resources"))["items"]}
    refs: list[str] = []
    ops: list[tuple[str, str]] = []
    for name in ("web", "db"):
        if name not in have:
            have[name] = _ok(api.post("/v1/resources", json={
                "name": name, "driver": "ocf:heartbeat:Dummy", "params": {"state": str(tmp / f"{name}.state")},
                "labels": {"tier": "front"}}), 201)
        refs += [name, have[name]["id"]]
    start = _ok(api.post("/v1/resources/web/operations", json={"action": "start"}), 202)
    _ok(api.get(f"/v1/resources/web/operations/{start['id']}", params={"wait": 30}))
    mon = _ok(api.post("/v1/resources/web/operations", json={"action": "monitor", "interval": 3600}), 202)
    _ok(api.get(f"/v1/resources/web/operations/{mon['id']}", params={"wait": 30}))
    ops += [("web", start["id"]), ("web", mon["id"])]
    live.ids["ref"] = refs
    live.ids["ref+op_id"] = ops
    live.ids["spec"] = ["ocf:heartbeat:Dummy", "exec:meta"]
    tids = [t for t in live.ids.get("token_id", [])
            if any(x["id"] == t for x in _ok(api.get("/v1/tokens"))["tokens"])]
    if not tids:
        tids = [_ok(api.post("/v1/tokens", json={"role": "member", "project": "p"}), 201)["id"]]
    live.ids["token_id"] = tids
    pools = {p["name"] for p in _ok(api.get("/v1/pools"))["pools"]}
    if "local" not in pools:
        _ok(api.post("/v1/pools", json={"name": "local", "ranges": [[1, 100]]}), 201)
    claim = _ok(api.post("/v1/pools/local/claims", json={"key": "web"}))
    live.ids["pool"] = ["local"]
    live.ids["pool+key"] = [("local", "web")]
    live.ids["value"] = [claim["value"]]
    live.dirty = False


@pytest.fixture(scope="module")
def agent_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("oas-agent")
    data = tmp / "agent"
    data.mkdir()
    for api in start_api(f"sqlite:///{data / 'tenure.db'}", data,
                         extension=AgentDaemon(lrm_config(tmp))):
        live = Live(api)
        _authenticate(agent, live)
        _seed_agent(live)
        live.reseed = lambda: _seed_agent(live)  # type: ignore[attr-defined]
        yield live


# ---------------------------------------------------------------------- one case


GROUPS = {("pool", "key"): "pool+key", ("ref", "op_id"): "ref+op_id"}


def _feed_ids(case: Any, live: Live, data: st.DataObject) -> None:
    """Name seeded objects in the path (in positive cases: a negative path parameter stays as generated)."""
    params = case.path_parameters
    if not params:
        return
    meta = case.meta
    component = meta.components.get(ParameterLocation.PATH) if meta is not None else None
    if component is not None and component.mode != GenerationMode.POSITIVE:
        return
    if not data.draw(st.integers(0, 4), label="real ids") < REAL_ID_WEIGHT:
        return
    names = set(params)
    for group, key in GROUPS.items():
        if set(group) <= names and live.ids.get(key):
            values = data.draw(st.sampled_from(live.ids[key]), label=key)
            params.update(zip(group, values, strict=True))
            names -= set(group)
    for name in names:
        if live.ids.get(name):
            params[name] = data.draw(st.sampled_from(live.ids[name]), label=name)


# Members of request bodies that name seeded things, and the real values fed into positive bodies.
BODY_VALUES: dict[str, list[Any]] = {
    "src": ["h1", "h2"], "dst": ["h3", "h4"], "collector": ["h4"], "via": [["fw1"]], "a": ["h1"], "b": ["leaf1"],
    "start": ["now"], "end": ["+1h", "+2d"], "type": ["memory"], "host": ["h1"], "depends_on": [[]],
    "driver": ["ocf:heartbeat:Dummy"], "action": ["monitor", "start", "stop", "meta-data", "validate-all"],
}
BODY_OPERATIONS = {"POST /v1/reservations", "PATCH /v1/reservations/{rid}", "POST /v1/paths",
                   "PUT /v1/topology/links/{link_id}", "POST /v1/instances", "POST /v1/instances/batch",
                   "PATCH /v1/instances/{iid}", "POST /v1/resources", "POST /v1/resources/{ref}/operations"}


def _feed_body(case: Any, data: st.DataObject) -> None:
    """In most positive bodies of BODY_OPERATIONS, name seeded nodes, types and drivers, and a window ahead."""
    if f"{case.method.upper()} {case.operation.path}" not in BODY_OPERATIONS or not isinstance(case.body, dict):
        return
    meta = case.meta
    component = meta.components.get(ParameterLocation.BODY) if meta is not None else None
    if component is not None and component.mode != GenerationMode.POSITIVE:
        return
    if not data.draw(st.integers(0, 4), label="real body") < REAL_ID_WEIGHT:
        return
    items = case.body.get("instances") if isinstance(case.body.get("instances"), list) else [case.body]
    for item in items:
        if not isinstance(item, dict):
            continue
        for name, values in BODY_VALUES.items():
            if item.get(name) is not None:
                item[name] = data.draw(st.sampled_from(values), label=name)
        if item.get("params") is not None:
            item["params"] = {}


def _feed_sign_in(case: Any, live: Live, data: st.DataObject) -> None:
    """In most positive sign-ins by token, the live server's admin token (a random one is 401, every time)."""
    if (f"{case.method.upper()} {case.operation.path}" != "POST /v1/ui/session" or not isinstance(case.body, dict)
            or not isinstance(case.body.get("token"), str)):
        return
    meta = case.meta
    component = meta.components.get(ParameterLocation.BODY) if meta is not None else None
    if component is not None and component.mode != GenerationMode.POSITIVE:
        return
    if data.draw(st.integers(0, 4), label="real token") < REAL_ID_WEIGHT:
        case.body["token"] = live.api.admin_token


def _call_stream(case: Any, live: Live) -> None:
    """A watch: read the status and headers, close the stream, and check that answer."""
    kwargs = case.as_transport_kwargs(base_url=live.base_url)
    with requests.request(**kwargs, stream=True, timeout=30) as r:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            r._content = b""  # the stream's first frames are not part of the document's promise
        else:
            r.content  # noqa: B018 (an error body: read it whole)
    case.validate_response(r, excluded_checks=EXCLUDED, additional_checks=ADDED)


# Refusals of schema-valid requests that JSON Schema cannot express: they depend on the state (a node that
# does not exist, a pool's range, the clock), relate several members (src == dst, lo > hi), or a value's
# magnitude inside a string ("2P" is over the 1P rate limit). Every other 400 of a schema-valid request fails.
BEYOND_SCHEMA: dict[str, set[str]] = {
    "POST /v1/pools": {"invalid_range", "overlapping_ranges", "invalid_reserved"},
    "POST /v1/pools/{pool}/claims": {"value_out_of_range", "project_required"},
    "POST /v1/pools/{pool}/claims:bulk": {"value_out_of_range", "project_required", "duplicate_key"},
    "POST /v1/reservations": {"unknown_node", "same_endpoints", "invalid_window", "start_in_past", "beyond_horizon",
                              "invalid_time", "invalid_rate", "not_a_middlebox", "port_required", "invalid_via",
                              "invalid_port", "invalid_endpoint", "invalid_match"},
    "PATCH /v1/reservations/{rid}": {"invalid_window", "start_in_past", "beyond_horizon", "invalid_time",
                                     "invalid_rate", "start_immutable"},
    "POST /v1/paths": {"unknown_node", "same_endpoints", "invalid_window", "start_in_past", "beyond_horizon",
                       "invalid_time", "invalid_rate", "invalid_endpoint"},
    "GET /v1/links/{link_id}/usage": {"invalid_time", "invalid_window"},
    "GET /v1/links/usage": {"invalid_time", "invalid_window"},  # at with from and to; from without to
    "PUT /v1/topology": {"dangling_link", "duplicate_id", "invalid_topology"},
    "PUT /v1/topology/nodes/{node_id}": {"id_mismatch"},
    "PUT /v1/topology/links/{link_id}": {"id_mismatch", "dangling_link", "invalid_topology"},
    "PUT /v1/limits/{project}": {"invalid_rate", "invalid_limit"},  # "0%": a share must be more than 0
    "POST /v1/instances": {"unknown_type", "unknown_dependency", "dependency_cycle", "invalid_reference",
                           "unresolved_reference", "owned_dependency"},
    "POST /v1/instances/batch": {"unknown_type", "unknown_dependency", "dependency_cycle", "invalid_reference",
                                 "unresolved_reference", "owned_dependency", "duplicate_instance"},
    "PATCH /v1/instances/{iid}": {"unknown_dependency", "dependency_cycle", "invalid_reference",
                                  "unresolved_reference", "owned_dependency"},
    "POST /v1/instances/{iid}/report": {"invalid_result"},  # any JSON, without NUL or lone surrogates
    "POST /v1/agents": {"invalid_capabilities"},  # any JSON object up to 16 kB and 32 levels, without NUL
    "POST /v1/agents/{host}/heartbeat": {"invalid_observation"},  # an observation's time within years 1 to 9999
    "GET /v1/reservations": {"invalid_cursor"},  # after: a cursor from a previous page
    "GET /v1/instances": {"invalid_cursor"},
    "GET /v1/watch": {"invalid_selector", "invalid_since"},
    "POST /v1/resources": {"invalid_driver", "driver_not_found", "unknown_parameter", "missing_parameter",
                           "invalid_parameter"},
    "GET /v1/drivers/{spec}/meta-data": {"invalid_driver"},  # the spec's grammar: DriverSpec
    # unknown_action: the actions a resource has are its driver's (a monitor on a Dummy, not "rate_out")
    "POST /v1/resources/{ref}/operations": {"invalid_action", "invalid_interval", "unknown_action"},
}


@schemathesis.check
def positive_data_acceptance_beyond_schema(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, except for the refusals listed in BEYOND_SCHEMA (by their error code), and
    413: a body over the server's limit (1 MiB), which a schema cannot state (256 parameters of 64 KiB fit it)."""
    if response.status_code == 413:
        return None
    if response.status_code == 400:
        try:
            code = json.loads(response.content)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if code in BEYOND_SCHEMA.get(f"{case.method.upper()} {case.operation.path}", ()):
            return None
    return positive_data_acceptance(ctx, response, case)


@schemathesis.check
def negative_data_rejection_or_too_large(ctx: Any, response: Any, case: Any) -> bool | None:
    """negative_data_rejection, with 413 (the body limit) as a rejection too."""
    if response.status_code == 413:
        return None
    return negative_data_rejection(ctx, response, case)


EXCLUDED = [positive_data_acceptance, negative_data_rejection]
ADDED = [positive_data_acceptance_beyond_schema, negative_data_rejection_or_too_large]


def _call(case: Any, live: Live) -> Any:
    return case.call_and_validate(base_url=live.base_url, excluded_checks=EXCLUDED, additional_checks=ADDED)


def exercise(case: Any, live: Live, data: st.DataObject) -> None:
    if live.dirty:
        live.reseed()  # type: ignore[attr-defined]
    _feed_ids(case, live, data)
    _feed_body(case, data)
    _feed_sign_in(case, live, data)
    try:
        if case.operation.path == "/v1/watch":
            _call_stream(case, live)
        else:
            response = _call(case, live)
            live.answers.setdefault(f"{case.method.upper()} {case.operation.path}", set()).add(
                response.status_code)
            if case.method != "GET" and response.status_code < 300:
                live.dirty = True  # it may have deleted or changed a seeded object: re-seed before the next case
    except BaseException:
        live.dirty = True
        raise


def _document(agent: bool = False) -> Any:
    """The app's own document (the same one each live server serves: test_the_served_document_is_the_apps)."""
    config = ServerConfig(db_url="sqlite://", data_dir=Path("/nonexistent"))
    app = create_agent_app(config, AgentConfig()) if agent else create_app(config)
    schema = schemathesis.openapi.from_dict(app.openapi())
    schema.config.update(request_timeout=30)
    return schema


server = _document()
agent = _document(agent=True)


@server.parametrize()
@server.given(data=st.data())
@SETTINGS
def test_server_document_is_true(case: Any, data: st.DataObject, server_live: Live) -> None:
    exercise(case, server_live, data)


@agent.parametrize()
@agent.given(data=st.data())
@SETTINGS
def test_agent_document_is_true(case: Any, data: st.DataObject, agent_live: Live) -> None:
    exercise(case, agent_live, data)


@pytest.mark.parametrize("which", ["server_live", "agent_live"])
def test_the_served_document_is_the_apps(which: str, request: pytest.FixtureRequest) -> None:
    live: Live = request.getfixturevalue(which)
    served = live.api.client.get("/openapi.json").json()
    assert served == live.api.app.openapi()
    assert served == (server if which == "server_live" else agent).raw_schema


@pytest.mark.parametrize("which", ["server_live", "agent_live"])
def test_every_operation_was_exercised_past_404(which: str, request: pytest.FixtureRequest) -> None:
    """After the runs above (same module, same servers): each operation (the watch aside, sent by
    _call_stream) was answered with something other than 400, 401 and 404 at least once."""
    live: Live = request.getfixturevalue(which)
    document = server if which == "server_live" else agent
    labels = {f"{m.upper()} {p}" for p, ops in document.raw_schema["paths"].items() for m in ops} - {"GET /v1/watch"}
    assert set(live.answers) == labels, labels ^ set(live.answers)
    shallow = {op: sorted(seen) for op, seen in live.answers.items() if not seen - {400, 401, 404}}
    assert not shallow, shallow


def test_every_refusal_allowed_beyond_the_schema_is_one_the_server_makes() -> None:
    """An allowance for a code the server never sends hides the refusal it meant (the batch's duplicate names are
    ``duplicate_instance``; the list said ``duplicate_name``, and Schemathesis found the refusal later)."""
    from tenure.api import fields

    root = Path(tenure.__file__).parent
    server = [p for p in root.rglob("*.py") if p.relative_to(root).parts[0] not in ("client", "cli")]
    source = "\n".join(p.read_text() for p in server)
    made = set(re.findall(r'code="([a-z_]+)"', source)) | set(fields.CODES)  # (fields: every coded(...) rule)
    patterns = [re.compile(re.sub(r"\{[a-z_]*\}", "[a-z_]+", p))
                for p in re.findall(r'code=f"([a-z_{}]+)"', source)]  # code=f"invalid_{what}"
    allowed = {code for codes in BEYOND_SCHEMA.values() for code in codes}
    assert all(code in made or any(p.fullmatch(code) for p in patterns) for code in allowed), sorted(
        code for code in allowed if code not in made and not any(p.fullmatch(code) for p in patterns))
