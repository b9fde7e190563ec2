"""The OpenAPI document, made true: the error answers the server really gives, and how it authenticates.

FastAPI documents a 422 with its own body for request validation; Tenure answers 400 with
``{"error": {"code", "message", ...}}`` (:mod:`tenure.api.errors`). :func:`install` replaces the app's
``openapi()`` with one that post-processes FastAPI's document once: the 422s go, and every operation
documents the statuses it can answer with the shared ``Error`` schema: 400 (bad input: every operation
that takes parameters or a body), 401 and 403 (the bearer token), 404 (an operation naming an object
in its path), 409 (the operations listed in :data:`CONFLICTS`, with their codes), 413 (a body over the
limit), 503 (restoring, or a write that could not commit in time). The bearer token is the document's
security scheme.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from tenure.api.reservations import TopologyDoc

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "what went wrong, for programs (e.g. pool_exhausted)"},
                "message": {"type": "string", "description": "what went wrong, for people"},
            },
            "additionalProperties": True,
            "description": "details of the error as more members (e.g. link, needed, available)",
        },
    },
}

# Operations (method, path) that can answer 409, with the codes they may give.
CONFLICTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("post", "/v1/pools"): ("pool_exists",),
    ("delete", "/v1/pools/{pool}"): ("pool_in_use",),
    ("post", "/v1/pools/{pool}/claims"): ("key_holds_other_value", "value_taken", "value_reserved",
                                          "pool_exhausted"),
    ("post", "/v1/pools/{pool}/claims:bulk"): ("key_holds_other_value", "value_taken", "value_reserved",
                                               "pool_exhausted"),
    ("delete", "/v1/pools/{pool}/claims/{key}"): ("key_in_use",),
    ("post", "/v1/pools/{pool}/audit:begin"): ("audit_in_progress",),
    ("post", "/v1/pools/{pool}/audit:end"): ("no_audit",),
    ("post", "/v1/reservations"): ("insufficient_capacity", "limit_exceeded", "no_path", "request_id_conflict"),
    ("post", "/v1/paths"): ("insufficient_capacity", "limit_exceeded", "no_path"),
    ("patch", "/v1/reservations/{rid}"): ("insufficient_capacity", "limit_exceeded", "no_path",
                                          "reservation_ended"),
    ("delete", "/v1/topology/nodes/{node_id}"): ("node_in_use",),
    ("put", "/v1/topology/nodes/{node_id}"): ("node_in_use",),
    ("post", "/v1/instances"): ("instance_exists",),
    ("post", "/v1/instances/batch"): ("instance_exists",),
    ("patch", "/v1/instances/{iid}"): ("instance_deleting", "owned_instance"),
    ("delete", "/v1/instances/{iid}"): ("instance_in_use", "owned_instance"),
    ("post", "/v1/instances/{iid}/report"): ("unknown_generation",),
    ("post", "/v1/resources"): ("name_taken",),
    ("delete", "/v1/resources/{ref}"): ("resource_running", "operation_running"),
    ("post", "/v1/resources/{ref}/operations"): ("queue_full",),
    ("delete", "/v1/resources/{ref}/operations/{op_id}"): ("operation_running", "operation_finished"),
}

# Operations documented as 201 (created) that answer 200 when the object was already there.
EXISTING: dict[tuple[str, str], str] = {
    ("post", "/v1/pools/{pool}/claims"): "The key already held a value: the same claim",
    ("post", "/v1/agents"): "Registered again (the same host)",
    ("post", "/v1/reservations"): "The same request_id and request again: the existing reservation",
    ("post", "/v1/instances"): "The same instance again (the same spec)",
    ("post", "/v1/instances/batch"): "Every instance of the batch already existed with the same spec",
}

# Operations whose path names no object but that answer 404 all the same (an object named in the body).
NOT_FOUND: dict[tuple[str, str], str] = {}

EXTRA_MODELS = (TopologyDoc,)
UNAUTHENTICATED = {"/healthz"}  # every other operation needs a bearer token, but for SIGN_IN's
# The console's sign-in (api/console.py): no token needed (the body carries a code or a token; the cookie signs out),
# yet a code or token that is not valid is 401 and an agent's token 403.
SIGN_IN = {("post", "/v1/ui/session"), ("delete", "/v1/ui/session")}
WITHOUT_SCOPE = {("get", "/v1/whoami")}  # any valid token may ask: never 403


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _operation_errors(method: str, path: str, op: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    takes_input = bool(op.get("parameters")) or "requestBody" in op
    if takes_input:
        out["400"] = _error("Bad input, the error's code says which: invalid_request (not of the shape this "
                            "document gives), or the code of the rule a member breaks (invalid_name, "
                            "invalid_rate, invalid_time, ...)")
    if path not in UNAUTHENTICATED:
        out["401"] = _error("No token, or not a valid one (missing_token, invalid_token)")
        if (method, path) not in WITHOUT_SCOPE:
            out["403"] = _error("The token's role or scope does not allow this (forbidden)")
    if "{" in path or (method, path) in NOT_FOUND:
        out["404"] = _error(NOT_FOUND.get((method, path), "An object named in the path does not exist, or is "
                                                           "outside the token's scope"))
    if (method, path) in CONFLICTS:
        out["409"] = _error("Refused by the current state: " + ", ".join(CONFLICTS[(method, path)]))
    if "requestBody" in op:
        out["413"] = _error("The body is over the limit (1 MiB; 64 MiB for a topology)")
    out["503"] = _error("Restoring its state (not_ready), or a write did not commit in time (store_timeout, "
                        "outcome_unknown)")
    return out


def _keys_as_names(node: Any) -> None:
    """pydantic writes dict[Pattern, V] as patternProperties, which lets any other key through with any value:
    state it as it is checked, every key matching the pattern (propertyNames) and every value V."""
    if isinstance(node, dict):
        pp, names = node.get("patternProperties"), node.get("propertyNames")
        if isinstance(pp, dict) and len(pp) == 1 and "additionalProperties" not in node:
            [(pattern, value)] = pp.items()
            node["propertyNames"] = {**(names or {}), "pattern": pattern}
            node["additionalProperties"] = value
            del node["patternProperties"]
        for v in node.values():
            _keys_as_names(v)
    elif isinstance(node, list):
        for v in node:
            _keys_as_names(v)


def _not_null(param: dict[str, Any]) -> None:
    """A query or path parameter is never null: absent is how a request leaves it out."""
    schema = param.get("schema", {})
    options = schema.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [o for o in options if o != {"type": "null"}]
        del schema["anyOf"]
        if len(rest) == 1:
            schema.update(rest[0])
        else:
            schema["anyOf"] = rest


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document with the answers the server really gives."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["Error"] = ERROR_SCHEMA
    for model in EXTRA_MODELS:  # bodies a route reads itself (the topology: JSON or YAML)
        _, defs = models_json_schema([(model, "validation")], ref_template="#/components/schemas/{model}")
        schemas.update(defs.get("$defs", {}))
    _keys_as_names(doc)
    components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                "description": "a token from POST /v1/tokens, or admin.token"}}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", ()):
                _not_null(param)
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            if (method, path) in EXISTING and "201" in responses:
                responses.setdefault("200", {**responses["201"], "description": EXISTING[(method, path)]})
            for status, answer in _operation_errors(method, path, op).items():
                responses.setdefault(status, answer)
            if "410" in responses:  # the watch: history compacted past the resume point
                responses["410"] = _error("Resuming from before the retained history (gone, with revision and "
                                          "compacted_revision): list, then watch from the list's revision")
            if path not in UNAUTHENTICATED and (method, path) not in SIGN_IN:
                op["security"] = [{"bearer": []}]
    return doc


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
