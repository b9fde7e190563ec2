"""Routes of /v1: pools, claims, audit and tokens. Thin: parse, authorize, call a service.

Writes are ``async`` and await the writer's group commit without holding a
thread; reads of the store are plain ``def`` so they run in the thread pool.
Request models forbid unknown fields and use strict types, so ``"5"`` is not a
value and ``true`` is not 1.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from tenure.api.auth import authenticate
from tenure.api.fields import NO_NUL, Key, Name, coded, int_in, text
from tenure.domain.access import Principal
from tenure.domain.errors import InvalidInput, TenureError
from tenure.domain.idspace import MAX_VALUE
from tenure.domain.names import MAX_KEY_LENGTH
from tenure.services.allocator import MAX_BULK, MAX_PAGE
from tenure.services.runtime import Runtime
from tenure.services.tokens import MAX_GRACE, MAX_TTL

router = APIRouter(prefix="/v1")

Auth = Annotated[Principal, Depends(authenticate)]


def _query_names(dependant: Any) -> frozenset[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return frozenset(names)


async def known_query(request: Request) -> None:
    """Refuse unknown query parameters, as request bodies refuse unknown fields: a misspelt one is an error."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known = getattr(route, "_tenure_query", None)
    if known is None:
        known = route._tenure_query = _query_names(dependant)
    for name in request.query_params:
        if name not in known:
            raise InvalidInput(f"unknown query parameter {name[:64]!r}; this operation takes "
                               f"{', '.join(sorted(known)) or 'none'}", code="invalid_request")

# domain/idspace.py's values and ranges (0 <= lo <= hi <= MAX_VALUE; a pool has a range or more).
Value = Annotated[int_in(0, MAX_VALUE), coded("value_out_of_range")]
Bound = Annotated[int_in(0, MAX_VALUE), coded("invalid_range")]
Ranges = list[Annotated[list[Bound], Field(min_length=2, max_length=2)]]


async def runtime(request: Request) -> Runtime:
    return request.app.state.tenure.require()


RT = Annotated[Runtime, Depends(runtime)]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PoolCreate(StrictModel):
    name: Name
    ranges: Annotated[Ranges, Field(min_length=1, max_length=1024), coded("invalid_range")] = Field(
        description="[[lo, hi], ...] with lo <= hi")
    reserved: Ranges = Field(default_factory=list, max_length=1024)
    strategy: Literal["lowest", "next", "random"] = "lowest"
    projects: list[Name] | None = Field(default=None, max_length=1024)


class ClaimCreate(StrictModel):
    key: Key
    value: Value | None = None
    project: Name | None = None
    host: Name | None = None


class BulkItem(StrictModel):
    key: Key
    value: Value | None = None


class BulkClaim(StrictModel):
    claims: list[BulkItem] = Field(min_length=1, max_length=MAX_BULK)
    project: Name | None = None
    host: Name | None = None


# An admin token has no scope; a member's is a project, an agent's a host (domain/access.py check_scope).
_SCOPES = {"oneOf": [
    {"properties": {"role": {"const": "admin"}, "project": {"type": "null"}, "host": {"type": "null"}}},
    {"properties": {"role": {"const": "member"}, "project": {"type": "string"}, "host": {"type": "null"}},
     "required": ["project"]},
    {"properties": {"role": {"const": "agent"}, "host": {"type": "string"}, "project": {"type": "null"}},
     "required": ["host"]},
]}


class TokenCreate(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_SCOPES)

    role: Literal["admin", "agent", "member"]
    project: Name | None = None
    host: Name | None = None
    description: text("invalid_text", 1024) | None = None
    ttl: Annotated[int_in(1, MAX_TTL) | None, coded("invalid_ttl", "seconds, 1 to ten years")] = Field(
        None, description="Seconds the token works for (none: until revoked); then 401 token_expired")


class TokenRotate(StrictModel):
    grace: Annotated[int_in(0, MAX_GRACE), coded("invalid_grace", "seconds, 0 to 30 days")] = Field(
        3600, description="Seconds the old secret keeps working (0: it stops at once)")


def _count(request: Request, pool: str, outcome: str, n: int = 1) -> None:
    rt: Runtime = request.app.state.tenure.runtime
    if rt is not None and rt.allocator.has_pool(pool):  # bounded label values: only pools that exist
        request.app.state.metrics.claims.labels(pool, outcome).inc(n)


# ------------------------------------------------------------------- pools


@router.post("/pools", status_code=201, tags=["pools"])
async def create_pool(body: PoolCreate, rt: RT, who: Auth) -> dict[str, Any]:
    op = rt.allocator.create_pool_op(
        body.name, ranges=body.ranges, reserved=body.reserved, strategy=body.strategy, projects=body.projects,
        principal=who,
    )
    return (await rt.arun(op)).body()


@router.get("/pools", tags=["pools"])
def list_pools(rt: RT, who: Auth) -> dict[str, Any]:
    revision = rt.revision  # first: the list then holds at least everything up to it (see Writer._committed)
    return {"pools": [v.body() for v in rt.allocator.pool_views(who)], "revision": revision}


@router.get("/pools/{pool}", tags=["pools"])
def get_pool(pool: str, rt: RT, who: Auth) -> dict[str, Any]:
    return rt.allocator.pool_view(pool, who).body()


@router.delete("/pools/{pool}", tags=["pools"])
async def delete_pool(pool: str, rt: RT, who: Auth, force: bool = False) -> dict[str, Any]:
    revision = await rt.arun(rt.allocator.delete_pool_op(pool, force=force, principal=who))
    return {"deleted": pool, "revision": revision}


# ------------------------------------------------------------------ claims


@router.post("/pools/{pool}/claims", tags=["claims"], status_code=201)
async def claim(pool: str, body: ClaimCreate, request: Request, response: Response, rt: RT, who: Auth) -> Any:
    try:
        op = rt.allocator.claim_op(pool, body.key, value=body.value, project=body.project, host=body.host,
                                   principal=who)
        result = await rt.arun(op)
    except TenureError:
        _count(request, pool, "refused")
        raise
    _count(request, pool, "created" if result.created else "existing")
    if not result.created:
        response.status_code = 200
    return result.body()


@router.post("/pools/{pool}/claims:bulk", tags=["claims"])
async def claim_bulk(pool: str, body: BulkClaim, request: Request, rt: RT, who: Auth) -> dict[str, Any]:
    items = [(i.key, i.value) for i in body.claims]
    try:
        op = rt.allocator.claim_many_op(pool, items, project=body.project, host=body.host, principal=who)
        results = await rt.arun(op)
    except TenureError:
        _count(request, pool, "refused", len(items))
        raise
    created = sum(r.created for r in results)
    _count(request, pool, "created", created)
    _count(request, pool, "existing", len(results) - created)
    return {
        "claims": [{**r.body(), "created": r.created} for r in results],
        "revision": max(r.revision for r in results),
    }


@router.get("/pools/{pool}/claims", tags=["claims"])
def list_claims(
    pool: str,
    rt: RT,
    who: Auth,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    after: Annotated[str | None, Query(max_length=MAX_KEY_LENGTH, pattern=NO_NUL)] = None,
) -> dict[str, Any]:
    revision = rt.revision  # first: the rows read then hold at least everything up to it
    page, nxt = rt.allocator.list_claims(pool, limit=limit, after=after, principal=who)
    return {"claims": [c.body() for c in page], "next": nxt, "revision": revision}


@router.get("/pools/{pool}/values/{value}", tags=["claims"])
def claim_by_value(pool: str, value: Annotated[int, Path(ge=0, le=2**32 - 1)], rt: RT, who: Auth) -> dict[str, Any]:
    return rt.allocator.find_value(pool, value, principal=who).body()


@router.get("/pools/{pool}/claims/{key:path}", tags=["claims"])
def get_claim(pool: str, key: str, rt: RT, who: Auth) -> dict[str, Any]:
    return rt.allocator.get_claim(pool, key, principal=who).body()


@router.delete("/pools/{pool}/claims/{key:path}", tags=["claims"])
async def release(pool: str, key: str, request: Request, rt: RT, who: Auth) -> dict[str, Any]:
    result = await rt.arun(rt.allocator.release_op(pool, key, principal=who))
    request.app.state.metrics.releases.labels(pool).inc()
    return result.body()


# ------------------------------------------------------------------- audit


@router.post("/pools/{pool}/audit:begin", tags=["audit"])
async def audit_begin(pool: str, rt: RT, who: Auth) -> dict[str, Any]:
    return (await rt.arun(rt.allocator.audit_begin_op(pool, principal=who))).body()


@router.post("/pools/{pool}/audit:end", tags=["audit"])
async def audit_end(pool: str, rt: RT, who: Auth) -> dict[str, Any]:
    view, released = await rt.arun(rt.allocator.audit_end_op(pool, principal=who))
    return {**view.body(), "released": [c.body() for c in released]}


# ------------------------------------------------------------------ tokens


@router.post("/tokens", status_code=201, tags=["tokens"])
async def create_token(body: TokenCreate, rt: RT, who: Auth) -> dict[str, Any]:
    op = rt.tokens.create_op(role=body.role, project=body.project, host=body.host, description=body.description,
                             principal=who, ttl=body.ttl)
    secret, info = await rt.arun(op)
    return {**info.body(), "token": secret}


@router.post("/tokens/{token_id}:rotate", tags=["tokens"])
async def rotate_token(token_id: str, rt: RT, who: Auth, body: TokenRotate | None = None) -> dict[str, Any]:
    """A new secret for the token (same id and scope); the old one works for ``grace`` seconds more."""
    secret, info = await rt.arun(rt.tokens.rotate_op(token_id, grace=(body or TokenRotate()).grace, principal=who))
    return {**info.body(), "token": secret}


@router.get("/tokens", tags=["tokens"])
def list_tokens(rt: RT, who: Auth, revoked: bool = False) -> dict[str, Any]:
    return {"tokens": [t.body() for t in rt.tokens.list(principal=who, include_revoked=revoked)]}


@router.delete("/tokens/{token_id}", tags=["tokens"])
async def revoke_token(token_id: str, rt: RT, who: Auth) -> dict[str, Any]:
    return (await rt.arun(rt.tokens.revoke_op(token_id, principal=who))).body()


@router.get("/whoami", tags=["tokens"])
def whoami(who: Auth) -> dict[str, Any]:
    return {"role": who.role, "project": who.project, "host": who.host, "token_id": who.token_id}
