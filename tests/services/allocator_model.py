"""A few-line model of one pool's claims, for the allocator's state-machine test.

Per pool: a dict ``{key: value}``, the reserved values, the next-fit cursor and
the audit state (which keys were claimed since the audit began). ``predict``
says exactly what a claim must answer: a value (any free one for ``random``),
or an error class and code with the details the allocator must report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tenure.domain.errors import Conflict, InvalidInput, TenureError
from tenure.domain.idspace import MAX_VALUE
from tenure.services.allocator import ClaimResult


@dataclass(frozen=True)
class Refusal:
    error: type[TenureError]
    code: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grant:
    value: int | None  # None: any free value (random strategy)
    created: bool


@dataclass
class PoolModel:
    name: str
    strategy: str
    ranges: list[list[int]]
    reserved: set[int]
    values: list[int]  # every value of the ranges, ascending
    claims: dict[str, int] = field(default_factory=dict)
    cursor: int = 0
    auditing: bool = False
    epoch: int = 0
    marked: set[str] = field(default_factory=set)

    @classmethod
    def new(cls, name: str, strategy: str, ranges: list[list[int]], reserved: list[list[int]]) -> PoolModel:
        values = sorted(v for lo, hi in ranges for v in range(lo, hi + 1))
        res = {v for lo, hi in reserved for v in range(lo, hi + 1)}
        return cls(name, strategy, ranges, res, values, cursor=values[0])

    @property
    def size(self) -> int:
        return len(self.values) - len(self.reserved)

    def in_range(self, v: int) -> bool:
        return any(lo <= v <= hi for lo, hi in self.ranges)

    def free_values(self) -> list[int]:
        taken = set(self.claims.values())
        return [v for v in self.values if v not in self.reserved and v not in taken]

    def predict(self, key: str, value: int | None) -> Refusal | Grant:
        """What claiming ``key`` (optionally pinned to ``value``) must answer."""
        if key in self.claims:
            held = self.claims[key]
            if value is not None and value != held:
                return Refusal(Conflict, "key_holds_other_value", {"key": key, "value": held})
            return Grant(held, created=False)
        if value is not None:
            if not self.in_range(value):
                return Refusal(InvalidInput, "value_out_of_range")
            if value in self.reserved:
                return Refusal(Conflict, "value_reserved", {"value": value})
            if value in self.claims.values():
                return Refusal(Conflict, "value_taken", {"value": value})
            return Grant(value, created=True)
        free = self.free_values()
        if not free:
            return Refusal(
                Conflict, "pool_exhausted", {"pool": self.name, "size": self.size, "used": len(self.claims)}
            )
        if self.strategy == "lowest":
            return Grant(free[0], created=True)
        if self.strategy == "next":
            return Grant(next((v for v in free if v >= self.cursor), free[0]), created=True)
        return Grant(None, created=True)

    def apply(self, key: str, value: int, *, picked: bool) -> None:
        """Record a granted claim (``picked``: chosen by the strategy, not pinned)."""
        if key not in self.claims:
            self.claims[key] = value
            if picked and self.strategy == "next":
                self.cursor = value + 1 if value < self.values[-1] else self.values[0]
        if self.auditing:
            self.marked.add(key)

    def out_of_range_values(self) -> list[int]:
        near = {-1, 0, MAX_VALUE, MAX_VALUE + 1}
        for lo, hi in self.ranges:
            near |= {lo - 1, hi + 1}
        return sorted(v for v in near if not self.in_range(v))


def bulk_order(items: list[tuple[str, int | None]]) -> list[int]:
    """The order a bulk claim takes its items in: every pinned value first, then the picks, each in request order."""
    return [i for i, (_, v) in enumerate(items) if v is not None] + [i for i, (_, v) in enumerate(items) if v is None]


def check_grant(grant: Grant, result: ClaimResult, model: PoolModel) -> None:
    assert result.created == grant.created, (result, grant)
    if grant.value is not None:
        assert result.value == grant.value, f"{model.strategy} pool gave {result.value}, model says {grant.value}"
    else:
        assert result.value in model.free_values(), f"random pool gave {result.value}, not a free value"


def check_refusal(refusal: Refusal, exc: TenureError) -> None:
    assert type(exc) is refusal.error, f"expected {refusal.error.__name__}/{refusal.code}, got {exc!r} {exc.code}"
    assert exc.code == refusal.code, (exc.code, refusal.code, exc.message)
    for name, value in refusal.details.items():
        assert exc.details.get(name) == value, (name, exc.details, refusal.details)
