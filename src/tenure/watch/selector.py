"""What a watcher wants: kinds, ids, operations and label selectors (pure, no I/O).

Label selectors use the Kubernetes syntax: requirements separated by commas,
each ``key=value``, ``key==value``, ``key!=value``, ``key in (a,b)``,
``key notin (a,b)``, ``key`` (the label is present) or ``!key`` (absent).
Several selectors are ANDed, like the requirements inside one.

:meth:`Filter.index_keys` says under which keys of the hub's index a watcher
is filed, per kind: its most selective equality (explicit, or implied by the
token's scope), so an event is only ever compared with the watchers filed
under one of its own keys (DESIGN.md invariant 9).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tenure.domain.access import Principal
from tenure.domain.errors import InvalidInput
from tenure.domain.events import KINDS, OPS, implied_scope

_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.\-/]{0,62}[A-Za-z0-9])?\Z")
_VALUE_MAX = 256
MAX_SELECTOR = 4096
MAX_VALUES = 256
# Which label narrows most, when a watcher gives several equalities.
_PREFERENCE = ("#id", "host", "project", "pool")

IndexKey = tuple[str, str, str]  # (kind, label or "#id" or "*", value)


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "in" | "notin" | "exists" | "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.key)
        if self.op == "in":
            return v is not None and v in self.values
        if self.op == "notin":
            return v is None or v not in self.values
        if self.op == "exists":
            return v is not None
        return v is None


def _bad(selector: str, why: str) -> InvalidInput:
    return InvalidInput(f"malformed selector {selector!r}: {why}", code="invalid_selector", selector=selector)


def _check_key(selector: str, key: str) -> str:
    if not _KEY.match(key):
        raise _bad(selector, f"{key!r} is not a label name (letters, digits, '_', '.', '-', '/'; 1-64 characters)")
    return key


def _check_value(selector: str, value: str) -> str:
    if not value or len(value) > _VALUE_MAX or any(c in value for c in "(),=! \x00"):
        raise _bad(selector, f"{value!r} is not a label value")
    return value


def _split(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(selector):
        if c == "(":
            depth += 1
            if depth > 1:
                raise _bad(selector, "nested parentheses")
        elif c == ")":
            depth -= 1
            if depth < 0:
                raise _bad(selector, "unbalanced ')'")
        elif c == "," and depth == 0:
            parts.append(selector[start:i])
            start = i + 1
    if depth:
        raise _bad(selector, "unbalanced '('")
    parts.append(selector[start:])
    return parts


_SET = re.compile(r"\s*(\S+?)\s+(in|notin)\s*\((.*)\)\s*\Z")


def parse_selector(selector: str) -> list[Requirement]:
    if len(selector) > MAX_SELECTOR:
        raise _bad(selector[:64] + "...", f"longer than {MAX_SELECTOR} characters")
    out: list[Requirement] = []
    for part in _split(selector):
        text = part.strip()
        if not text:
            raise _bad(selector, "empty requirement")
        m = _SET.match(text)
        if m:
            key = _check_key(selector, m.group(1))
            values = [v.strip() for v in m.group(3).split(",")]
            if not values or len(values) > MAX_VALUES:
                raise _bad(selector, f"a set needs 1 to {MAX_VALUES} values")
            out.append(Requirement(key, m.group(2), frozenset(_check_value(selector, v) for v in values)))
            continue
        for sym, op in (("!=", "notin"), ("==", "in"), ("=", "in")):
            if sym in text:
                key, _, value = text.partition(sym)
                out.append(Requirement(_check_key(selector, key.strip()), op,
                                       frozenset([_check_value(selector, value.strip())])))
                break
        else:
            if text.startswith("!"):
                out.append(Requirement(_check_key(selector, text[1:].strip()), "!exists"))
            else:
                out.append(Requirement(_check_key(selector, text), "exists"))
    return out


def _split_values(values: Iterable[str]) -> list[str]:
    """``a,b`` and repeated parameters alike; empty pieces ignored."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@dataclass(frozen=True, slots=True)
class Filter:
    kinds: frozenset[str]  # never empty: "all kinds" is spelt out
    ids: frozenset[str] | None = None
    ops: frozenset[str] | None = None
    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(
        cls,
        *,
        kinds: Iterable[str] = (),
        ids: Iterable[str] = (),
        ops: Iterable[str] = (),
        selectors: Iterable[str] = (),
    ) -> Filter:
        ks = _split_values(kinds)
        for k in ks:
            if k not in KINDS:
                raise InvalidInput(f"unknown kind {k!r}; kinds are: {', '.join(KINDS)}", code="invalid_kind", kind=k)
        os_ = _split_values(ops)
        for o in os_:
            if o not in OPS:
                raise InvalidInput(f"unknown op {o!r}; ops are: {', '.join(OPS)}", code="invalid_op", op=o)
        id_list = [i for i in ids if i]
        if len(id_list) > MAX_VALUES:
            raise InvalidInput(f"at most {MAX_VALUES} ids", code="invalid_id")
        reqs = [r for s in selectors for r in parse_selector(s)]
        return cls(
            kinds=frozenset(ks or KINDS),
            ids=frozenset(id_list) if id_list else None,
            ops=frozenset(os_) if os_ else None,
            requirements=tuple(reqs),
        )

    def matches(self, kind: str, object_id: str, op: str, labels: Mapping[str, str]) -> bool:
        if kind not in self.kinds:
            return False
        if self.ids is not None and object_id not in self.ids:
            return False
        if self.ops is not None and op not in self.ops:
            return False
        for r in self.requirements:
            if not r.matches(labels):
                return False
        return True

    def equalities(self) -> dict[str, frozenset[str]]:
        """Labels the filter pins to a set of values (intersected when given twice)."""
        eq: dict[str, frozenset[str]] = {}
        for r in self.requirements:
            if r.op == "in":
                eq[r.key] = eq[r.key] & r.values if r.key in eq else r.values
        return eq

    def pins(self, principal: Principal, kind: str) -> dict[str, frozenset[str]] | None:
        """What every event of ``kind`` this watcher receives has: label (or ``#id``) -> possible values.

        The filter's own equalities and ids, narrowed by what the token's scope implies (an agent's host,
        a member's project, a member's own token). None: the principal may see nothing of this kind.
        """
        scope = implied_scope(principal, kind)
        if scope is None:
            return None
        pinned = self.equalities()
        if self.ids is not None:
            pinned["#id"] = self.ids
        if principal.role != "admin" and kind == "token" and principal.token_id:
            scope = {**scope, "#id": principal.token_id}
        for label, value in scope.items():
            pinned[label] = pinned[label] & {value} if label in pinned else frozenset([value])
        return pinned

    def index_keys(self, principal: Principal) -> list[IndexKey]:
        """The hub index keys to file a watcher under: per kind, its most selective pinned label.

        Kinds the principal may not see at all get no key: such a watcher costs those events nothing.
        """
        keys: list[IndexKey] = []
        for kind in sorted(self.kinds):
            pinned = self.pins(principal, kind)
            if pinned is None:
                continue
            label = next((lab for lab in _PREFERENCE if lab in pinned), None)
            if label is None and pinned:
                label = min(pinned, key=lambda lab: (len(pinned[lab]), lab))
            if label is None:
                keys.append((kind, "*", ""))
            else:
                keys.extend((kind, label, v) for v in sorted(pinned[label]))
        return keys


def event_keys(kind: str, object_id: str, labels: Mapping[str, str]) -> list[IndexKey]:
    """Every index key an event can be found under (a watcher is filed under at most one of them)."""
    keys = [(kind, "*", ""), (kind, "#id", object_id)]
    keys.extend((kind, label, value) for label, value in labels.items())
    return keys
