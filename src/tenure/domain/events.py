"""Kinds of events, their operations, and who may see which event (pure rules).

Every service that emits events names its kind here, so the watch API can
refuse a misspelt kind instead of silently matching nothing. Visibility
follows the read rules of each kind's GET (DESIGN.md: the watch must not leak
what a GET would refuse).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tenure.domain.access import Principal, may_see_claim, may_use_pool

KINDS: tuple[str, ...] = ("pool", "claim", "token", "agent", "reservation", "topology", "limit",
                          "resource", "operation", "instance")
# monitor_failed: a host agent's monitor found a resource not as expected (kind resource)
OPS: tuple[str, ...] = ("created", "updated", "deleted", "monitor_failed")


def may_see_event(p: Principal, kind: str, object_id: str, labels: Mapping[str, str], body: Mapping[str, Any]) -> bool:
    """Whether ``p`` may see this event: the same answer as a GET of the object would give."""
    if p.is_admin:
        return True
    if kind == "claim":
        return may_see_claim(p, labels.get("project"), labels.get("host"))
    if kind == "pool":
        projects = body.get("projects")
        return may_use_pool(p, tuple(projects) if projects is not None else None)
    if kind == "agent":
        return p.role == "agent" and labels.get("host") == p.host
    if kind == "token":
        return object_id == p.token_id
    if kind == "reservation":  # as GET /v1/reservations/{id}: a member its project's, an agent its host's
        if p.role == "member":
            return labels.get("project") == p.project
        return p.role == "agent" and p.host in (labels.get("src"), labels.get("dst"))
    if kind == "topology":
        return True
    if kind == "limit":
        return p.role == "member" and labels.get("project") == p.project
    if kind == "instance":  # as GET /v1/instances/{id}: a member its project's, an agent its host's
        if p.role == "member":
            return labels.get("project") == p.project
        return p.role == "agent" and labels.get("host") == p.host
    # resource, operation: a host agent's local resource manager, administered by its admin tokens only
    return False


def implied_scope(p: Principal, kind: str) -> dict[str, str] | None:
    """Label equalities every event of ``kind`` visible to ``p`` satisfies (used to index watchers).

    ``None``: ``p`` may see no event of this kind at all. An empty dict: no narrowing by labels.
    """
    if p.is_admin or kind == "pool":
        return {}
    if kind == "claim":
        return {"project": p.project} if p.role == "member" and p.project else (
            {"host": p.host} if p.role == "agent" and p.host else None)
    if kind == "agent":
        return {"host": p.host} if p.role == "agent" and p.host else None
    if kind == "token":
        return {} if p.token_id else None
    if kind == "reservation":  # an agent's host may be src or dst: no single label to index it by
        return {"project": p.project} if p.role == "member" and p.project else ({} if p.role == "agent" else None)
    if kind == "topology":
        return {}
    if kind == "limit":
        return {"project": p.project} if p.role == "member" and p.project else None
    if kind == "instance":
        return {"project": p.project} if p.role == "member" and p.project else (
            {"host": p.host} if p.role == "agent" and p.host else None)
    return None
