"""Routes of /v1/instances (desired-state instances) and /v1/types. Thin: parse, authorize, call the service.

Admins and members create, modify and delete instances (members in their own
project); the host's agent reads its host's instances and reports the outcome
of each generation (``POST /v1/instances/{id}/report``). Instances are named
by id or, within the caller's project, by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import ConfigDict, Field, StrictStr

from tenure.api.fields import NO_NUL, Labels, Name, coded, int_in
from tenure.api.routes import RT, Auth, StrictModel
from tenure.domain.instance import (
    MAX_DEPENDENCIES,
    MAX_OUTPUT_LENGTH,
    MAX_OUTPUTS,
    MAX_PARAMETER_LENGTH,
    MAX_PARAMETERS,
    MAX_REASON,
    PARAM_NAME,
    STATES,
)
from tenure.services.instances import MAX_BATCH, MAX_PAGE

router = APIRouter(prefix="/v1")

# Integer values within what every JSON reader keeps exactly (I-JSON); larger numbers go as strings.
JSON_INT = 2**53 - 1
VARIABLE = f"^{PARAM_NAME.pattern}$"


def _entries(code: str, max_length: int, name: str = VARIABLE) -> Any:
    """parameters or outputs (domain/instance.py): names like shell variables, text or integer values."""
    value = Annotated[StrictStr, Field(max_length=max_length, pattern=NO_NUL)] | int_in(-JSON_INT, JSON_INT)
    return dict[Annotated[StrictStr, Field(pattern=name), coded(code, "1 to 64 of A-Z a-z 0-9 _, not starting "
                                                                       "with a digit")],
                Annotated[value, coded(code, f"text of at most {max_length} characters without NUL, or an "
                                             f"integer within +-{JSON_INT}")]]


Parameters = _entries("invalid_parameters", MAX_PARAMETER_LENGTH)
Outputs = _entries("invalid_outputs", MAX_OUTPUT_LENGTH)
State = Annotated[Literal[STATES], coded("invalid_state")]  # type: ignore[valid-type]


class InstanceCreate(StrictModel):
    name: Name
    type: Name = Field(description="one of GET /v1/types")
    host: Name
    parameters: Parameters | None = Field(default=None, max_length=MAX_PARAMETERS)
    labels: Labels | None = None
    depends_on: list[Name] | None = Field(default=None, max_length=MAX_DEPENDENCIES)
    project: Name | None = None


class InstanceBatch(StrictModel):
    instances: list[InstanceCreate] = Field(min_length=1, max_length=MAX_BATCH)


class InstancePatch(StrictModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={  # at least one change (null is no change)
        "anyOf": [{"required": [f], "properties": {f: {"not": {"type": "null"}}}}
                  for f in ("parameters", "labels", "depends_on")]})

    parameters: Parameters | None = Field(default=None, max_length=MAX_PARAMETERS)
    labels: Labels | None = None
    depends_on: list[Name] | None = Field(default=None, max_length=MAX_DEPENDENCIES)


class Report(StrictModel):
    generation: Annotated[int_in(1, JSON_INT), coded("invalid_report")]  # type: ignore[valid-type]
    state: Annotated[Literal["active", "failed", "deleted"], coded("invalid_report")]
    reason: Annotated[StrictStr, Field(pattern=NO_NUL), coded("invalid_reason")] | None = Field(
        default=None, description=f"kept up to {MAX_REASON} characters")
    outputs: Annotated[Outputs, Field(max_length=MAX_OUTPUTS), coded("invalid_outputs")] | None = None
    result: dict[str, Any] | None = None


@router.post("/instances", status_code=201, tags=["instances"])
async def create_instance(body: InstanceCreate, response: Response, rt: RT, who: Auth) -> dict[str, Any]:
    [(inst, created)] = await rt.arun(rt.instances.create_op([body.model_dump(exclude_none=True)], principal=who))
    if not created:
        response.status_code = 200
    return inst.body()


@router.post("/instances/batch", status_code=201, tags=["instances"])
async def create_instances(body: InstanceBatch, response: Response, rt: RT, who: Auth) -> dict[str, Any]:
    """Several instances, possibly depending on each other, all or nothing."""
    items = [i.model_dump(exclude_none=True) for i in body.instances]
    out = await rt.arun(rt.instances.create_op(items, principal=who))
    if not any(created for _, created in out):
        response.status_code = 200
    return {"instances": [inst.body() for inst, _ in out]}


@router.get("/instances", tags=["instances"])
def list_instances(
    rt: RT, who: Auth, host: str | None = None, state: State | None = None, type: str | None = None,
    project: str | None = None, after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
) -> dict[str, Any]:
    revision = rt.revision  # first: the page then holds at least everything up to it (see Writer._committed)
    page, cursor = rt.instances.list(principal=who, host=host, state=state, type_=type, project=project,
                                     after=after, limit=limit)
    return {"instances": [i.body() for i in page], "next": cursor, "revision": revision}


@router.get("/instances/{iid}", tags=["instances"])
def get_instance(iid: str, rt: RT, who: Auth) -> dict[str, Any]:
    return rt.instances.get(iid, principal=who).body()


@router.get("/instances/{iid}/observed", tags=["instances"])
def instance_observed(iid: str, rt: RT, who: Auth) -> dict[str, Any]:
    """What the instance's agent last saw on the wire (its last good monitor's outputs, from a heartbeat; the
    leader has them): ``observed_at`` null and ``observed`` empty if nothing yet."""
    inst = rt.instances.get(iid, principal=who)
    return {"instance": inst.id, "host": inst.host, "state": inst.state, **rt.instances.observed(inst.id)}


@router.patch("/instances/{iid}", tags=["instances"])
async def modify_instance(iid: str, body: InstancePatch, rt: RT, who: Auth) -> dict[str, Any]:
    op = rt.instances.modify_op(iid, body.model_dump(exclude_none=True), principal=who)
    return (await rt.arun(op)).body()


@router.delete("/instances/{iid}", tags=["instances"])
async def delete_instance(iid: str, rt: RT, who: Auth, force: bool = False) -> dict[str, Any]:
    return (await rt.arun(rt.instances.delete_op(iid, principal=who, force=force))).body()


@router.post("/instances/{iid}/report", tags=["instances"])
async def report_instance(iid: str, body: Report, rt: RT, who: Auth) -> dict[str, Any]:
    """A host agent's outcome for one generation; ``stale`` when a newer generation was sent since."""
    inst, stale = await rt.arun(rt.instances.report_op(iid, body.model_dump(exclude_none=True), principal=who))
    return {"instance": inst.body(), "stale": stale}


@router.get("/types", tags=["instances"])
def list_types(rt: RT, who: Auth) -> dict[str, Any]:
    return {"types": [{"name": n, "timeout": t} for n, t in sorted(rt.instances.types.items())]}
