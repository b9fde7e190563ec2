"""Who may see and change what: roles and scopes, as pure rules.

Roles: ``admin`` (everything), ``member`` (one project), ``agent`` (one host).
A claim records the scope it was made in (a project, or a host for agents), and
only that scope, or an admin, may read or release it. A pool may be restricted
to a list of projects; members of other projects, and agents, may not use it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tenure.domain.errors import Forbidden, InvalidInput
from tenure.domain.names import validate_name

ROLES = ("admin", "agent", "member")


@dataclass(frozen=True, slots=True)
class Principal:
    role: str
    project: str | None = None
    host: str | None = None
    token_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def describe(self) -> str:
        if self.role == "member":
            return f"member of project {self.project!r}"
        if self.role == "agent":
            return f"agent of host {self.host!r}"
        return "admin"


ADMIN = Principal("admin")


def check_scope(role: str, project: str | None, host: str | None) -> None:
    """Validate the scope fields of a new token."""
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {role!r}", code="invalid_role")
    if role == "member":
        if not project or host:
            raise InvalidInput("a member token needs a project and no host", code="invalid_scope")
        validate_name(project, what="project")
    elif role == "agent":
        if not host or project:
            raise InvalidInput("an agent token needs a host and no project", code="invalid_scope")
        validate_name(host, what="host")
    elif project or host:
        raise InvalidInput("an admin token has no project or host", code="invalid_scope")


def require_admin(p: Principal, action: str) -> None:
    if not p.is_admin:
        raise Forbidden(f"{action} needs an admin token; this token is a {p.describe()}")


def may_use_pool(p: Principal, projects: tuple[str, ...] | None) -> bool:
    if p.is_admin or projects is None:
        return True
    return p.role == "member" and p.project in projects


def may_see_claim(p: Principal, project: str | None, host: str | None) -> bool:
    if p.is_admin:
        return True
    if p.role == "member":
        return project == p.project
    return host == p.host and project is None


def claim_scope(p: Principal, project: str | None, host: str | None) -> tuple[str | None, str | None]:
    """The (project, host) a new claim is recorded under. Only admins may claim on behalf of others."""
    if p.is_admin:
        if project is not None:
            validate_name(project, what="project")
        if host is not None:
            validate_name(host, what="host")
        return project, host
    own = (p.project, None) if p.role == "member" else (None, p.host)
    if (project is not None and project != own[0]) or (host is not None and host != own[1]):
        raise Forbidden(f"a {p.describe()} may claim only in its own scope")
    return own
