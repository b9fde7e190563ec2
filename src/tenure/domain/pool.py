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

Memory: a pool holds each claim as one entry of a dict from its key to one
integer that packs the value, the revision, the owner (an index into the pool's
table of distinct (project, host) pairs) and the audit mark. A million claims
with keys like ``port:<uuid>`` take about the memory of a plain
``dict[str, int]`` of the same keys and values; a :class:`Claim` is made only
when one is asked for.

Everything here is pure: the service layer persists what these methods change.
Each mutating method validates fully before it changes anything, so a refused
command leaves the pool as it was.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import count

from tenure.domain.errors import Conflict, InvalidInput, NotFound
from tenure.domain.idspace import IdSpace
from tenure.domain.names import validate_key, validate_name

# A claim's record: value (32 bits) | revision (64 bits) << 32 | owner (32 bits) << 96 | mark << 128.
# A claim with no owner and mark 0 (the common case) is a two-digit int, the size of its bare value.
_VALUE = (1 << 32) - 1
_REV = (1 << 64) - 1
_OWNER = (1 << 32) - 1
NO_OWNER = 0  # index of (None, None) in every pool's owner table


def pack(value: int, revision: int, owner: int = NO_OWNER, mark: int = 0) -> int:
    """The record of a claim: what :meth:`Pool.load` takes (revision < 2**64, owner < 2**32)."""
    return value | revision << 32 | owner << 96 | mark << 128


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


class Claims(Mapping[str, Claim]):
    """A pool's claims by key, read-only; each :class:`Claim` is made from the pool's record when asked for."""

    __slots__ = ("_pool",)

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def __getitem__(self, key: str) -> Claim:
        return self._pool._claim(key, self._pool._held[key])

    def get(self, key: str, default: Claim | None = None) -> Claim | None:  # type: ignore[override]
        rec = self._pool._held.get(key)
        return default if rec is None else self._pool._claim(key, rec)

    def __contains__(self, key: object) -> bool:
        return key in self._pool._held

    def __iter__(self) -> Iterator[str]:
        return iter(self._pool._held)

    def __len__(self) -> int:
        return len(self._pool._held)


class Pool:
    """A named ID space and the claims on it."""

    __slots__ = ("name", "ids", "projects", "audit_epoch", "auditing", "_held", "_owners", "_owner_ix")

    def __init__(
        self,
        name: str,
        ids: IdSpace,
        *,
        projects: tuple[str, ...] | None = None,  # None: open to every project
        audit_epoch: int = 0,
        auditing: bool = False,
    ) -> None:
        self.name = name
        self.ids = ids
        self.projects = projects
        self.audit_epoch = audit_epoch
        self.auditing = auditing
        self._held: dict[str, int] = {}  # key -> record (see pack)
        self._owners: list[tuple[str | None, str | None]] = [(None, None)]
        self._owner_ix: dict[tuple[str | None, str | None], int] = {(None, None): NO_OWNER}

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
        return cls(name, ids, projects=proj)

    # -- records ---------------------------------------------------------

    def owner(self, project: str | None, host: str | None) -> int:
        """The index of (project, host) in the owner table, added if new."""
        pair = (project, host)
        ix = self._owner_ix.get(pair)
        if ix is None:
            ix = self._owner_ix[pair] = len(self._owners)
            self._owners.append(pair)
        return ix

    def _record(self, c: Claim) -> int:
        return pack(c.value, c.revision, self.owner(c.project, c.host), c.mark)

    def _claim(self, key: str, rec: int) -> Claim:
        project, host = self._owners[rec >> 96 & _OWNER]
        return Claim(key, rec & _VALUE, project, host, rec >> 128, rec >> 32 & _REV)

    def load(self, held: dict[str, int]) -> None:
        """Restore: ``held`` maps each key to its :func:`pack` record (owners already added with :meth:`owner`).

        The pool takes ``held`` as it is (no copy) and marks its values taken.
        """
        self._held = held
        self.ids.load(sorted(map(_VALUE.__and__, held.values())))

    # -- reading ---------------------------------------------------------

    @property
    def claims(self) -> Claims:
        return Claims(self)

    @property
    def size(self) -> int:
        return self.ids.size

    @property
    def used(self) -> int:
        return len(self._held)

    def get(self, key: str) -> Claim:
        rec = self._held.get(key)
        if rec is None:
            raise NotFound(f"pool {self.name!r} has no claim for key {key!r}", code="claim_not_found")
        return self._claim(key, rec)

    def holds_none(self, keys: Iterable[str]) -> bool:
        """True if no key of ``keys`` holds a claim."""
        return self._held.keys().isdisjoint(keys)

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
        rec = self._held.get(key)
        if rec is not None:
            held = rec & _VALUE
            if value is not None and value != held:
                raise Conflict(
                    f"key {key!r} already holds value {held} in pool {self.name!r}, not {value}",
                    code="key_holds_other_value",
                    pool=self.name,
                    key=key,
                    value=held,
                )
            marked = self.auditing and rec >> 128 < self.audit_epoch
            if marked:
                rec = pack(held, revision, rec >> 96 & _OWNER, self.audit_epoch)
                self._held[key] = rec
            return ClaimOutcome(self._claim(key, rec), created=False, marked=marked)

        if value is not None:
            self._check_pinnable(value)
            chosen, advance = value, False
        else:
            picked = self.ids.pick()
            if picked is None:
                raise self.exhausted_error()
            chosen, advance = picked, True
        self.ids.take(chosen, advance=advance)
        self._held[key] = pack(chosen, revision, self.owner(project, host), self.audit_epoch)
        return ClaimOutcome(Claim(key, chosen, project, host, self.audit_epoch, revision), created=True, marked=False)

    def claim_fresh(self, keys: Sequence[str], *, project: str | None = None, host: str | None = None,
                    revision: int) -> list[int]:
        """Claim ``keys`` (each valid by :func:`validate_key`, as the caller checked), none held, none twice,
        each with a picked value: the values that one :meth:`claim` after another would give, at revisions
        ``revision``, ``revision + 1``, ... Refused with nothing changed if a key is held or the pool lacks room.
        """
        if len(set(keys)) != len(keys) or not self.holds_none(keys):
            raise ValueError("claim_fresh takes distinct keys that hold no claim")
        if len(keys) > self.ids.free:
            raise self.exhausted_error()
        values = self.ids.take_many(len(keys))
        tail = self.owner(project, host) << 96 | self.audit_epoch << 128
        self._held.update(zip(keys, [v | r << 32 | tail for v, r in zip(values, count(revision))]))
        return values

    def unclaim_fresh(self, keys: Sequence[str], values: Sequence[int], *, cursor: int) -> None:
        """Undo :meth:`claim_fresh` (a command being rolled back)."""
        for key in keys:
            del self._held[key]
        for v in values:
            self.ids.release(v)
        self.ids.cursor = cursor

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
        del self._held[key]
        self.ids.release(claim.value)
        return claim

    def reinstate(self, claim: Claim) -> None:
        """Put back a released claim (undo of a release or an audit sweep being rolled back)."""
        self._held[claim.key] = self._record(claim)
        self.ids.take(claim.value)

    def replace(self, claim: Claim) -> None:
        """Replace the record of a key that keeps its value (a follower taking a stored row)."""
        rec = self._held[claim.key]
        if rec & _VALUE != claim.value:
            raise ValueError(f"key {claim.key!r} holds {rec & _VALUE}, not {claim.value}")
        self._held[claim.key] = self._record(claim)

    def unclaim(self, outcome: ClaimOutcome, *, cursor: int, mark: int, revision: int) -> None:
        """Undo a claim made in a command that is being rolled back."""
        claim = outcome.claim
        if outcome.created:
            del self._held[claim.key]
            self.ids.release(claim.value)
            self.ids.cursor = cursor
        elif outcome.marked:
            claim.mark, claim.revision = mark, revision
            self._held[claim.key] = self._record(claim)

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
        epoch = self.audit_epoch
        stale = [self._claim(k, rec) for k, rec in self._held.items() if rec >> 128 < epoch]
        for c in stale:
            del self._held[c.key]
            self.ids.release(c.value)
        self.auditing = False
        return stale
