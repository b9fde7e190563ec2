"""Pools and claims: keyed, idempotent allocation with mark-and-sweep audit.

A pool maps keys (any Unicode string of 1..256 characters, so heterogeneous
owners share it: ``vrf:blue``, ``vmi:<uuid>``, ``route:blue/10.0.0.0/24``) to
values of its :class:`~tenure.domain.idspace.IdSpace`. Claiming a key that
already holds a value returns that value: the same key gets the same value until
it is released.

Audit (seed 000's stale flush after restart): ``audit_begin`` opens a new epoch;
every claim or re-claim marks the *stored* claim with the current epoch;
``audit_end`` releases every claim whose mark is older. Contrail shipped a bug
where the mark was cleared on a copy, so the audit freed labels still in use:
here the mark lives on the one record the pool holds, and the service persists
it in the same transaction as the re-claim.

Everything here is pure: the service layer persists what these methods change.
Each mutating method validates fully before it changes anything, so a refused
command leaves the pool as it was.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from tenure.domain.errors import Conflict, InvalidInput, NotFound
from tenure.domain.idspace import IdSpace
from tenure.domain.names import validate_key, validate_name


@dataclass(slots=True)
class Claim:
    """One key's hold on one value. ``mark`` is the audit epoch it was last (re-)claimed in."""

    key: str
    value: int
    project: str | None
    host: str | None
    mark: int
    revision: int


@dataclass(slots=True)
class ClaimOutcome:
    claim: Claim
    created: bool  # a new claim (201), or the key already held it (200)
    marked: bool  # an existing claim newly marked by an open audit: a stored change


@dataclass
class Pool:
    """A named ID space and the claims on it."""

    name: str
    ids: IdSpace
    projects: tuple[str, ...] | None = None  # None: open to every project
    audit_epoch: int = 0
    auditing: bool = False
    claims: dict[str, Claim] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        name: str,
        *,
        ranges: Sequence[Sequence[int]],
        reserved: Sequence[Sequence[int]] = (),
        strategy: str = "lowest",
        projects: Iterable[str] | None = None,
        rng: random.Random | None = None,
    ) -> Pool:
        validate_name(name)
        ids = IdSpace(ranges, reserved, strategy=strategy, rng=rng)
        proj = None
        if projects is not None:
            proj = tuple(sorted({validate_name(p, what="project") for p in projects}))
        return cls(name=name, ids=ids, projects=proj)

    # -- reading ---------------------------------------------------------

    @property
    def size(self) -> int:
        return self.ids.size

    @property
    def used(self) -> int:
        return len(self.claims)

    def get(self, key: str) -> Claim:
        claim = self.claims.get(key)
        if claim is None:
            raise NotFound(f"pool {self.name!r} has no claim for key {key!r}", code="claim_not_found")
        return claim

    def exhausted_error(self) -> Conflict:
        return Conflict(
            f"pool {self.name!r} is exhausted: {self.used} of {self.size} values in use",
            code="pool_exhausted",
            pool=self.name,
            size=self.size,
            used=self.used,
        )

    # -- changing --------------------------------------------------------

    def claim(
        self,
        key: str,
        *,
        value: int | None = None,
        project: str | None = None,
        host: str | None = None,
        revision: int,
    ) -> ClaimOutcome:
        """Claim ``key`` (optionally pinned to ``value``); idempotent per key.

        ``revision`` is the revision the change will be committed at; it is
        recorded only if something changes.
        """
        validate_key(key)
        existing = self.claims.get(key)
        if existing is not None:
            if value is not None and value != existing.value:
                raise Conflict(
                    f"key {key!r} already holds value {existing.value} in pool {self.name!r}, not {value}",
                    code="key_holds_other_value",
                    pool=self.name,
                    key=key,
                    value=existing.value,
                )
            marked = self.auditing and existing.mark < self.audit_epoch
            if marked:
                existing.mark = self.audit_epoch
                existing.revision = revision
            return ClaimOutcome(existing, created=False, marked=marked)

        if value is not None:
            self._check_pinnable(value)
            chosen, advance = value, False
        else:
            picked = self.ids.pick()
            if picked is None:
                raise self.exhausted_error()
            chosen, advance = picked, True
        self.ids.take(chosen, advance=advance)
        claim = Claim(key, chosen, project, host, self.audit_epoch, revision)
        self.claims[key] = claim
        return ClaimOutcome(claim, created=True, marked=False)

    def _check_pinnable(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput("value must be an integer", code="invalid_value")
        if not self.ids.in_range(value):
            raise InvalidInput(
                f"value {value} is outside pool {self.name!r} (ranges {[list(r) for r in self.ids.ranges]})",
                code="value_out_of_range",
            )
        if self.ids.is_reserved(value):
            raise Conflict(f"value {value} is reserved in pool {self.name!r}", code="value_reserved", value=value)
        if self.ids.is_taken(value):
            raise Conflict(
                f"value {value} is already claimed in pool {self.name!r}", code="value_taken", value=value
            )

    def release(self, key: str) -> Claim:
        claim = self.get(key)
        del self.claims[key]
        self.ids.release(claim.value)
        return claim

    def reinstate(self, claim: Claim) -> None:
        """Put back a released claim (undo of a release or an audit sweep being rolled back)."""
        self.claims[claim.key] = claim
        self.ids.take(claim.value)

    def unclaim(self, outcome: ClaimOutcome, *, cursor: int, mark: int, revision: int) -> None:
        """Undo a claim made in a command that is being rolled back."""
        claim = outcome.claim
        if outcome.created:
            del self.claims[claim.key]
            self.ids.release(claim.value)
            self.ids.cursor = cursor
        elif outcome.marked:
            claim.mark, claim.revision = mark, revision

    def audit_begin(self) -> int:
        if self.auditing:
            raise Conflict(
                f"an audit of pool {self.name!r} is already open (epoch {self.audit_epoch})",
                code="audit_in_progress",
            )
        self.audit_epoch += 1
        self.auditing = True
        return self.audit_epoch

    def audit_end(self) -> list[Claim]:
        """Close the audit; release and return every claim not re-claimed since it began."""
        if not self.auditing:
            raise Conflict(f"no audit of pool {self.name!r} is open", code="no_audit")
        stale = [c for c in self.claims.values() if c.mark < self.audit_epoch]
        for c in stale:
            del self.claims[c.key]
            self.ids.release(c.value)
        self.auditing = False
        return stale
