"""Routes of /v1/agents: registration, heartbeat (report_state), listing and removal of host agents.

Thin like :mod:`tenure.api.routes`: strict request models, scope and validation
in :mod:`tenure.services.agents`, writes awaited on the writer's group commit.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Response
from pydantic import AwareDatetime, BeforeValidator, Field, StrictStr

from tenure.api.fields import Name, coded, text
from tenure.api.routes import RT, Auth, StrictModel
from tenure.domain.errors import InvalidInput
from tenure.domain.events import KINDS
from tenure.domain.units import FIRST_INSTANT, LAST_INSTANT, iso, to_us
from tenure.services.agents import MAX_VERSION_LENGTH

router = APIRouter(prefix="/v1")
MAX_OBSERVATIONS = 2000  # per heartbeat (agent/sync.py sends at most this many)
MAX_OBSERVATION_VALUES = 32


class AgentRegister(StrictModel):
    host: Name
    kinds: list[Annotated[Literal[KINDS], coded("invalid_kind")]] = Field(max_length=64)  # type: ignore[valid-type]
    version: text("invalid_version", MAX_VERSION_LENGTH, min_length=1)  # type: ignore[valid-type]
    capabilities: dict[str, Any] | None = None


def _text_only(value: Any) -> Any:
    """An instant as ISO 8601 text with its zone, not a number (pydantic would take one as Unix time)."""
    if not isinstance(value, str):
        raise ValueError("at must be an ISO 8601 date and time with its zone, as text")
    return value


ObservationKey = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$"),
                           coded("invalid_observation", "lower-case letters, digits and _")]


class Observation(StrictModel):
    """What a monitor of ``instance`` found on the wire at ``at`` (its outputs)."""

    instance: text("invalid_observation", 64, min_length=1)  # type: ignore[valid-type]
    at: Annotated[AwareDatetime, BeforeValidator(_text_only), coded("invalid_observation")]
    values: Annotated[dict[ObservationKey, text("invalid_observation", 256)],  # type: ignore[valid-type]
                      Field(max_length=MAX_OBSERVATION_VALUES), coded("invalid_observation")]


class Heartbeat(StrictModel):
    """A strict model, so that a misspelt field is refused rather than ignored."""

    observations: list[Observation] | None = Field(default=None, max_length=MAX_OBSERVATIONS)


@router.post("/agents", status_code=201, tags=["agents"])
async def register_agent(body: AgentRegister, response: Response, rt: RT, who: Auth) -> dict[str, Any]:
    op = rt.agents.register_op(body.host, kinds=body.kinds, version=body.version, capabilities=body.capabilities,
                               principal=who)
    info, created = await rt.arun(op)
    if not created:
        response.status_code = 200
    return info.body()


@router.post("/agents/{host}/heartbeat", tags=["agents"])
async def heartbeat(
    host: str, rt: RT, who: Auth, body: Annotated[Heartbeat | None, Body()] = None
) -> dict[str, Any]:
    observations = []
    for o in (body.observations if body is not None else None) or ():  # checked before anything changes
        at = to_us(o.at)
        if not FIRST_INSTANT <= at <= LAST_INSTANT:
            raise InvalidInput(f"observation of {o.instance!r}: at {o.at.isoformat()} is out of range",
                               code="invalid_observation")
        observations.append({"instance": o.instance, "at": iso(at), "values": o.values})
    info = (await rt.arun(rt.agents.heartbeat_op(host, principal=who))).body()
    if observations:  # (the heartbeat authorized the agent for this host)
        rt.instances.observe(host, observations)
    return info


@router.get("/agents", tags=["agents"])
def list_agents(rt: RT, who: Auth) -> dict[str, Any]:
    revision = rt.revision  # first: the list then holds at least everything up to it (see Writer._committed)
    return {"agents": [a.body() for a in rt.agents.list(principal=who)], "revision": revision}


@router.get("/agents/{host}", tags=["agents"])
def get_agent(host: str, rt: RT, who: Auth) -> dict[str, Any]:
    return rt.agents.get(host, principal=who).body()


@router.delete("/agents/{host}", tags=["agents"])
async def remove_agent(host: str, rt: RT, who: Auth) -> dict[str, Any]:
    return (await rt.arun(rt.agents.remove_op(host, principal=who))).body()
