"""Routes of the host agent's local resource manager: /v1/resources and /v1/drivers. Thin.

Served by ``tenure agent`` only. Every route needs an admin token of the agent
(the LRM runs programs as root: nobody else may ask it to). Submitting an
operation answers 202 with its id at once (or, with ``?wait=S``, once it has its
result or after ``S`` seconds); the result arrives as an ``operation`` event, in
the instance's history, and from ``GET .../operations/{id}?wait=S`` (a long poll
of at most ``S`` seconds).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import ConfigDict, Field, StrictFloat, StrictStr

from tenure.api.fields import NO_NUL, coded, int_in
from tenure.api.routes import Auth, StrictModel
from tenure.domain.access import require_admin
from tenure.domain.errors import Unavailable
from tenure.lrm.executor import Lrm
from tenure.lrm.model import (
    MAX_INTERVAL,
    MAX_LABEL_VALUE,
    MAX_LABELS,
    MAX_PARAM_VALUE,
    MAX_PARAMS,
    MAX_TIMEOUT,
    MIN_INTERVAL,
)

router = APIRouter(prefix="/v1")

MAX_WAIT = 60.0  # seconds a long poll may hold a request (the client reads for wait + its own timeout)


async def lrm(request: Request, who: Auth) -> Lrm:
    require_admin(who, "using the local resource manager")
    state = request.app.state.tenure
    state.require()
    if state.lrm is None:
        raise Unavailable("this process has no local resource manager", code="no_lrm")
    return state.lrm


LRM = Annotated[Lrm, Depends(lrm)]


def seconds(ge: float, le: float) -> Any:
    return Annotated[StrictFloat, Field(ge=ge, le=le)] | int_in(math.ceil(ge), math.floor(le))


# lrm/model.py's rules: a name is not a UUID (ids and names share {ref}); label keys like Kubernetes'.
RESOURCE_NAME = r"^(?![0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$)[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"
LABEL_KEY = r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,62}[A-Za-z0-9])?$"


class ResourceCreate(StrictModel):
    model_config = ConfigDict(extra="forbid", regex_engine="python-re")  # RESOURCE_NAME looks ahead

    name: Annotated[StrictStr, Field(max_length=128, pattern=RESOURCE_NAME), coded(
        "invalid_name", "1 to 128 letters, digits and _ . : @ -, starting with a letter or digit, not a UUID")]
    driver: StrictStr = Field(max_length=512, description="ocf:PROVIDER:TYPE, lsb:NAME, exec:NAME, "
                                                          "python:module:Class or ansible:PLAYBOOK (GET /v1/drivers)")
    params: dict[StrictStr, Annotated[StrictStr, Field(max_length=MAX_PARAM_VALUE)]] = Field(
        default_factory=dict, max_length=MAX_PARAMS)
    labels: dict[Annotated[StrictStr, Field(pattern=LABEL_KEY), coded("invalid_labels", "1 to 64 letters, digits and "
                                                                                          "_ . / -, starting and "
                                                                                          "ending with a letter or "
                                                                                          "digit")],
                 Annotated[StrictStr, Field(max_length=MAX_LABEL_VALUE, pattern=NO_NUL), coded("invalid_labels")]] = Field(
        default_factory=dict, max_length=MAX_LABELS)


class OperationCreate(StrictModel):
    action: StrictStr = Field(min_length=1, max_length=64, description="an action the driver declares")
    interval: Annotated[seconds(0, 0) | seconds(MIN_INTERVAL, MAX_INTERVAL), coded(  # type: ignore[valid-type]
        "invalid_interval", f"0, or {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds")] = Field(
        default=0, description="seconds between runs of a recurring operation; 0: once")
    timeout: Annotated[seconds(0.001, MAX_TIMEOUT), coded(  # type: ignore[valid-type]
        "invalid_timeout", f"0.001 to {MAX_TIMEOUT:g} seconds")] | None = None
    report: Literal["change", "always"] = "change"
    expect: Annotated[int_in(0, 255), coded("invalid_expect", "an exit code 0-255")] = 0  # type: ignore[valid-type]


@router.post("/resources", status_code=201, tags=["resources"])
async def add_resource(body: ResourceCreate, lrm: LRM) -> dict[str, Any]:
    return await lrm.add(body.name, body.driver, params=body.params, labels=body.labels)


@router.get("/resources", tags=["resources"])
async def list_resources(lrm: LRM) -> dict[str, Any]:
    return {"items": lrm.list()}


@router.get("/resources/{ref}", tags=["resources"])
async def get_resource(ref: str, lrm: LRM) -> dict[str, Any]:
    return lrm.get(ref)


@router.delete("/resources/{ref}", tags=["resources"])
async def remove_resource(ref: str, lrm: LRM, force: bool = False) -> dict[str, Any]:
    return await lrm.remove(ref, force=force)


@router.post("/resources/{ref}/operations", status_code=202, tags=["resources"])
async def submit(ref: str, body: OperationCreate, lrm: LRM,
                 wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0.0) -> dict[str, Any]:
    """Queue an operation. With ``wait``: answered once it has its result (a recurring one: its first), or after
    ``wait`` seconds, as it then stands: one request where a submit and a long poll take two."""
    return await lrm.submit(ref, body.action, interval=body.interval, timeout=body.timeout, report=body.report,
                            expect=body.expect, wait=wait)


@router.get("/resources/{ref}/operations", tags=["resources"])
async def list_operations(ref: str, lrm: LRM) -> dict[str, Any]:
    return {"items": lrm.operations(ref)}


@router.get("/resources/{ref}/operations/{op_id}", tags=["resources"])
async def get_operation(ref: str, op_id: str, lrm: LRM,
                        wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0.0) -> dict[str, Any]:
    return await lrm.operation(ref, op_id, wait=wait)


@router.delete("/resources/{ref}/operations/{op_id}", tags=["resources"])
async def cancel(ref: str, op_id: str, lrm: LRM) -> dict[str, Any]:
    return await lrm.cancel(ref, op_id)


@router.get("/resources/{ref}/history", tags=["resources"])
async def history(ref: str, lrm: LRM, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
    return {"items": await lrm.history(ref, limit)}


@router.get("/drivers", tags=["resources"])
async def drivers(lrm: LRM) -> dict[str, Any]:
    return {"items": await lrm.drivers()}


@router.get("/drivers/{spec}/meta-data", tags=["resources"])
async def meta_data(spec: str, lrm: LRM) -> dict[str, Any]:
    meta = await lrm.meta_data(spec)
    return {"driver": spec, "meta_data": meta.to_dict() if meta is not None else None}


