"""Instances: resources on hosts with a desired and an observed state, and how they are stitched (pure rules).

An instance is something a host agent makes real through the driver of its
*type* (a VM, a VLAN interface, a bandwidth shaper). The server holds its
desired state (``present`` or ``absent``) and its parameters; the host's agent
converges the host and reports what it observed. The states:

- ``pending``: not yet sent to the agent: a dependency is not active, or no
  agent is registered on the host (``reason`` says which);
- ``provisioning``: sent (created or modified), waiting for the agent's result;
- ``active``: its driver's create (or modify) succeeded, and its probes agree;
- ``deleting``: desired absent, waiting for the agent to confirm;
- ``deleted``: gone (the row is removed; the last event carries this state);
- ``failed``: with a ``reason``: the driver failed or timed out, a dependency
  failed, a reference could not be resolved, or the agent did not report
  before the deadline. A failed instance is re-tried when it is modified, and
  one that failed *before* it was sent is re-evaluated whenever one of its
  dependencies changes.

Stitching (FABRIC's): a parameter value may contain references that the
server resolves just before it sends the instance to its agent:

- ``${claim:POOL:KEY}``: the value claimed for KEY in POOL (the pool name is
  what comes before the first ``:``);
- ``${instance:NAME.outputs.KEY}``: an output reported by the agent of the
  instance NAME in the same project, which makes NAME a dependency.

``$${`` is a literal ``${``. An instance is sent only when every dependency
(explicit ``depends_on`` and implied by references) is active; dependencies
may not form a cycle.

Generations: every change of the desired state (create, modify, delete) bumps
``generation``; ``dispatched`` is the generation last sent to the agent and
``observed`` the one its last report answered, so a late report for an older
generation cannot overwrite a newer intent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tenure.domain.errors import InvalidInput
from tenure.domain.names import validate_key, validate_name, validate_text
from tenure.domain.units import iso

PENDING, PROVISIONING, ACTIVE, DELETING, DELETED, FAILED = (
    "pending", "provisioning", "active", "deleting", "deleted", "failed")
STATES = (PENDING, PROVISIONING, ACTIVE, DELETING, DELETED, FAILED)
TRANSITIONAL = frozenset({PROVISIONING, DELETING})
PRESENT, ABSENT = "present", "absent"
DESIRED = (PRESENT, ABSENT)
# What an agent may report: the outcome of converging one generation.
REPORTS = (ACTIVE, FAILED, DELETED)

MAX_PARAMETERS = 64
MAX_PARAMETER_LENGTH = 4096
MAX_LABELS = 32
MAX_DEPENDENCIES = 64
MAX_OUTPUTS = 64
MAX_OUTPUT_LENGTH = 4096
MAX_REASON = 1024
MAX_INT = 2**63 - 1  # integers are taken as their decimal text up to this size
PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
OUTPUT_NAME = PARAM_NAME
REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}")


@dataclass(frozen=True, slots=True)
class Ref:
    """One reference in a parameter: ``claim`` (pool, key) or ``instance`` (name, output key)."""

    kind: str  # claim | instance
    target: str  # pool | instance name
    key: str  # claim key | output name

    @property
    def text(self) -> str:
        if self.kind == "claim":
            return f"${{claim:{self.target}:{self.key}}}"
        return f"${{instance:{self.target}.outputs.{self.key}}}"


def _ref(body: str, where: str) -> Ref:
    kind, sep, rest = body.partition(":")
    bad = InvalidInput(
        f"{where}: invalid reference ${{{body}}}; expected ${{claim:POOL:KEY}} or ${{instance:NAME.outputs.KEY}} "
        "(write $${ for a literal ${)", code="invalid_reference", reference=f"${{{body}}}")
    if not sep:
        raise bad
    if kind == "claim":
        pool, sep, key = rest.partition(":")
        if not sep or not pool or not key:
            raise bad
        try:
            validate_name(pool, what="pool name")
            validate_key(key)
        except InvalidInput:
            raise bad from None
        return Ref("claim", pool, key)
    if kind == "instance":
        name, sep, key = rest.rpartition(".outputs.")
        if not sep or not name or OUTPUT_NAME.fullmatch(key) is None:
            raise bad
        try:
            validate_name(name, what="instance name")
        except InvalidInput:
            raise bad from None
        return Ref("instance", name, key)
    raise bad


def references(value: str, where: str = "parameter") -> list[Ref]:
    """The references in one parameter value, in order (``invalid_reference`` for a malformed one)."""
    out = []
    for m in REFERENCE.finditer(value):
        if m.group(0) == "$${":
            continue
        out.append(_ref(m.group(1), where))
    return out


def substitute(value: str, resolve: Callable[[Ref], str]) -> str:
    """``value`` with each reference replaced by ``resolve(ref)`` and ``$${`` by ``${``."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        return resolve(_ref(m.group(1), "parameter"))

    return REFERENCE.sub(one, value)


class Unresolved(Exception):
    """A reference that cannot be resolved now; the message says why (it becomes the failure reason)."""


def resolve_parameters(params: Mapping[str, str], resolve: Callable[[Ref], str]) -> dict[str, str]:
    """Every parameter with its references resolved; ``resolve`` raises :class:`Unresolved`."""
    out = {}
    for k, v in params.items():
        text = substitute(v, resolve)
        if len(text) > MAX_PARAMETER_LENGTH:
            raise Unresolved(f"parameter {k!r} is {len(text)} characters once resolved; the limit is "
                             f"{MAX_PARAMETER_LENGTH}")
        out[k] = text
    return out


# ------------------------------------------------------------------ the instance


@dataclass(frozen=True, slots=True)
class Instance:
    id: str
    name: str
    project: str | None
    type: str
    host: str
    parameters: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()  # explicit dependencies (names); references add more
    desired: str = PRESENT
    state: str = PENDING
    reason: str | None = None
    generation: int = 1
    dispatched: int = 0  # the generation last sent to the agent (0: never sent)
    observed: int = 0  # the generation the agent's last report answered
    resolved: Mapping[str, str] | None = None  # the parameters as sent (references resolved)
    outputs: Mapping[str, str] = field(default_factory=dict)
    result: Mapping[str, Any] | None = None  # the last operation result the agent reported
    owner: str | None = None  # what made it, e.g. "reservation:<id>/out"; None for a user's instance
    timeout: float = 60.0  # seconds the driver's operation may take (from the type)
    deadline: int | None = None  # µs: a transitional state fails if no report comes by then
    created_at: int = 0
    updated_at: int = 0
    revision: int = 0

    @property
    def dependencies(self) -> tuple[str, ...]:
        """Explicit dependencies and those implied by ``${instance:...}`` references, without repeats."""
        return dependencies_of(self.depends_on, self.parameters)

    def event_labels(self) -> dict[str, str]:
        labels = {"host": self.host, "type": self.type, "state": self.state, "name": self.name}
        if self.project is not None:
            labels["project"] = self.project
        if self.owner is not None:
            labels["owner"] = self.owner.partition("/")[0]
        return labels

    def body(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "project": self.project, "type": self.type, "host": self.host,
            "parameters": dict(self.parameters), "labels": dict(self.labels), "depends_on": list(self.depends_on),
            "desired": self.desired, "state": self.state, "reason": self.reason,
            "generation": self.generation, "dispatched": self.dispatched, "observed": self.observed,
            "resolved": dict(self.resolved) if self.resolved is not None else None,
            "outputs": dict(self.outputs), "result": dict(self.result) if self.result is not None else None,
            "owner": self.owner, "timeout": self.timeout,
            "deadline": iso(self.deadline) if self.deadline is not None else None,
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at), "revision": self.revision,
        }


def dependencies_of(depends_on: Iterable[str], params: Mapping[str, str]) -> tuple[str, ...]:
    seen: dict[str, None] = dict.fromkeys(depends_on)
    for v in params.values():
        for r in references(v):
            if r.kind == "instance":
                seen.setdefault(r.target)
    return tuple(seen)


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle of ``graph`` (name -> names it depends on) as [a, b, ..., a], or None. Iterative DFS."""
    WHITE, GREY, BLACK = 0, 1, 2
    color: dict[str, int] = {}
    for root in graph:
        if color.get(root, WHITE) != WHITE:
            continue
        stack: list[tuple[str, Any]] = [(root, iter(graph.get(root, ())))]
        path = [root]
        color[root] = GREY
        while stack:
            node, children = stack[-1]
            for child in children:
                c = color.get(child, WHITE)
                if c == GREY:
                    return path[path.index(child):] + [child]
                if c == WHITE and child in graph:
                    color[child] = GREY
                    stack.append((child, iter(graph.get(child, ()))))
                    path.append(child)
                    break
            else:
                color[node] = BLACK
                stack.pop()
                path.pop()
    return None


# ------------------------------------------------------------------ validation


def validate_type(type_: object, known: Iterable[str]) -> str:
    known = tuple(known)
    if not isinstance(type_, str) or type_ not in known:
        raise InvalidInput(f"unknown instance type {type_!r}; the types are {', '.join(sorted(known)) or '(none)'}",
                           code="unknown_type", type=str(type_), valid=sorted(known))
    return type_


def validate_parameters(params: object) -> dict[str, str]:
    """Names like shell variables; values strings (integers are taken as their decimal text); references checked."""
    if params is None:
        return {}
    if not isinstance(params, Mapping) or len(params) > MAX_PARAMETERS:
        raise InvalidInput(f"parameters must be an object of at most {MAX_PARAMETERS} entries",
                           code="invalid_parameters")
    out = {}
    for k, v in params.items():
        if not isinstance(k, str) or PARAM_NAME.fullmatch(k) is None:
            raise InvalidInput(f"parameter name {k!r} must be 1-64 of A-Z a-z 0-9 _, not starting with a digit",
                               code="invalid_parameters")
        if isinstance(v, int) and not isinstance(v, bool) and -MAX_INT <= v <= MAX_INT:
            v = str(v)
        if not isinstance(v, str):
            raise InvalidInput(f"parameter {k!r} must be a string or an integer of at most 64 bits",
                               code="invalid_parameters")
        out[k] = validate_text(v, what=f"parameter {k!r}", max_length=MAX_PARAMETER_LENGTH,
                               code="invalid_parameters")
        references(out[k], where=f"parameter {k!r}")
    return out


def validate_depends_on(deps: object) -> tuple[str, ...]:
    if deps is None:
        return ()
    if not isinstance(deps, list | tuple) or len(deps) > MAX_DEPENDENCIES:
        raise InvalidInput(f"depends_on must be a list of at most {MAX_DEPENDENCIES} instance names",
                           code="invalid_dependencies")
    out: dict[str, None] = {}
    for d in deps:
        validate_name(d, what="instance name")
        out[d] = None
    return tuple(out)


def validate_outputs(outputs: object) -> dict[str, str]:
    if outputs is None:
        return {}
    if not isinstance(outputs, Mapping) or len(outputs) > MAX_OUTPUTS:
        raise InvalidInput(f"outputs must be an object of at most {MAX_OUTPUTS} entries", code="invalid_outputs")
    out = {}
    for k, v in outputs.items():
        if not isinstance(k, str) or OUTPUT_NAME.fullmatch(k) is None:
            raise InvalidInput(f"output name {k!r} must be 1-64 of A-Z a-z 0-9 _", code="invalid_outputs")
        if isinstance(v, int) and not isinstance(v, bool) and -MAX_INT <= v <= MAX_INT:
            v = str(v)
        if not isinstance(v, str):
            raise InvalidInput(f"output {k!r} must be a string or an integer of at most 64 bits",
                               code="invalid_outputs")
        out[k] = validate_text(v, what=f"output {k!r}", max_length=MAX_OUTPUT_LENGTH, code="invalid_outputs")
    return out


def validate_reason(reason: object) -> str | None:
    if reason is None:
        return None
    if not isinstance(reason, str):
        raise InvalidInput("reason must be a string", code="invalid_reason")
    return validate_text(reason[:MAX_REASON], what="reason", max_length=MAX_REASON, code="invalid_reason")
