"""The durable allocator against a few-line model, across restarts, on both stores.

Each example opens an embedded :class:`~tenure.Allocator` on a fresh database,
creates three small pools (one per strategy: lowest, next, random) and runs a
random sequence of commands against it and against a model
(allocator_model.py): per pool a dict ``{key: value}``, the reserved values,
the next-fit cursor and the audit state.
Pools hold 8-20 values and there are more keys than that, so exhaustion, reuse
of released values and wrap-around of the cursor happen in most examples.

The model says exactly what each command must answer: the value (for ``lowest``
the lowest free value, for ``next`` the first free value at or after the
cursor, wrapping; for ``random`` any free value), or the error class *and* code.
A refused command must change nothing; a bulk claim is all or nothing, and takes its
pinned values before its picks.

RESTART closes the allocator and opens a new one on the same URL: every pool,
claim (with its revision), the pool counters, the cursor and an open audit with
its marks must come back as they were. The model is not told about the restart
at all, so every later step checks that the restored state behaves the same.

Hypothesis drives one state machine per backend; the database is created
inside the machine (a fixture per example does not fit hypothesis), and the
machine's ``teardown`` closes the allocator, which otherwise holds the store's
owner lock, and throws the database away.
"""

from __future__ import annotations

import copy
import itertools
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test
from sqlalchemy import create_engine, text

from tenure import Allocator
from tenure.domain.errors import Conflict, InvalidInput, NotFound, TenureError
from tenure.domain.idspace import MAX_VALUE, STRATEGIES
from tenure.services.allocator import ClaimResult

from tests.services.allocator_model import Grant, PoolModel, Refusal, bulk_order, check_grant, check_refusal

# More keys than any pool has values; a few unusual but valid ones among them.
KEY_NAMES = [f"k{i}" for i in range(18)] + [
    "vrf:blue",
    "route:blue/10.0.0.0/24",
    "🦀",
    "日本語",
    "k" * 256,
    "K0",  # keys differ by case,
    "k0 ",  # by a trailing space,
    "\u00e9",  # and by Unicode normalisation: precomposed e-acute ...
    "e\u0301",  # ... and e followed by a combining acute accent
]
KEYS = st.sampled_from(KEY_NAMES)
PAGE = 7  # small pages, so listing a pool's claims takes several of them


# ------------------------------------------------------------------- the pools


@st.composite
def pool_shapes(draw: st.DrawFn) -> tuple[list[list[int]], list[list[int]]]:
    """One or two ranges of 8-20 values in all, sometimes at the top of the 32-bit space; a few reserved."""
    first = draw(st.integers(min_value=4, max_value=12))
    start = draw(st.integers(min_value=0, max_value=40))
    ranges = [[start, start + first - 1]]
    where = draw(st.sampled_from(["none", "touching", "gap", "top"]))
    second = draw(st.integers(min_value=4, max_value=8))
    if where == "none":
        ranges[0][1] += second
    elif where in ("touching", "gap"):
        lo = ranges[0][1] + 1 + (draw(st.integers(min_value=1, max_value=5)) if where == "gap" else 0)
        ranges.append([lo, lo + second - 1])
    else:
        hi = MAX_VALUE - draw(st.sampled_from([0, 0, 2]))
        ranges.append([hi - second + 1, hi])
    values = [v for lo, hi in ranges for v in range(lo, hi + 1)]
    reserved = draw(st.sets(st.sampled_from(values), max_size=3))
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        reserved.add(max(values))  # the next-fit cursor then has to wrap before reaching the top
    return draw(st.permutations(ranges)), [[v, v] for v in sorted(reserved)]


# ------------------------------------------------------------- the machine


def all_claims(alloc: Allocator, pool: str) -> list[ClaimResult]:
    out: list[ClaimResult] = []
    after: str | None = None
    while True:
        page, after = alloc.claims(pool, limit=PAGE, after=after)
        out.extend(page)
        if after is None:
            return out
        assert len(page) == PAGE


def check_bulk_refusal(m: PoolModel, items: list[tuple[str, int | None]], exc: TenureError) -> None:
    """Is ``exc`` the refusal the model gives the bulk claim ``items`` on pool ``m``?"""
    keys = [k for k, _ in items]
    if len(set(keys)) != len(keys):
        assert isinstance(exc, InvalidInput) and exc.code == "duplicate_key", repr(exc)
        return
    # The first item the model refuses, pinned values first (a refusal among the picks can only be exhaustion,
    # so which free value a random pick takes does not matter).
    trial = copy.deepcopy(m)
    expected: Refusal | None = None
    for i in bulk_order(items):
        key, value = items[i]
        prediction = trial.predict(key, value)
        if isinstance(prediction, Refusal):
            expected = prediction
            break
        got = prediction.value if prediction.value is not None else trial.free_values()[0]
        trial.apply(key, got, picked=value is None)
    assert expected is not None, f"bulk {items} refused with {exc!r} {exc.code}; the model says granted"
    if expected.code == "pool_exhausted":
        # A refused bulk reports the pool as it stays (the bulk is undone), not as it was mid-way.
        expected = Refusal(Conflict, "pool_exhausted",
                           {"pool": m.name, "size": m.size, "used": len(m.claims), "requested": len(items)})
    check_refusal(expected, exc)


def make_machine(new_url: Callable[[], str], drop_url: Callable[[str], None]) -> type[RuleBasedStateMachine]:
    class AllocatorMachine(RuleBasedStateMachine):
        """The embedded allocator over ``new_url()`` against :class:`PoolModel` per pool."""

        def __init__(self) -> None:
            super().__init__()
            self.url = new_url()
            self.seed = 0
            self.opened = 0
            self.alloc: Allocator | None = None
            self.models: dict[str, PoolModel] = {}

        def open(self) -> Allocator:
            # A seeded generator per opening keeps the random strategy reproducible, so hypothesis can shrink.
            self.alloc = Allocator.open(self.url, rng=random.Random(self.seed + self.opened))
            self.opened += 1
            return self.alloc

        def teardown(self) -> None:
            if self.alloc is not None:
                self.alloc.close()
                self.alloc = None
            drop_url(self.url)

        @initialize(
            seed=st.integers(min_value=0, max_value=2**32),
            shapes=st.tuples(pool_shapes(), pool_shapes(), pool_shapes()),
        )
        def create_pools(self, seed: int, shapes: tuple[Any, ...]) -> None:
            self.seed = seed
            alloc = self.open()
            for strategy, (ranges, reserved) in zip(STRATEGIES, shapes, strict=True):
                name = f"pool-{strategy}"
                view = alloc.create_pool(name, ranges=ranges, reserved=reserved, strategy=strategy)
                model = PoolModel.new(name, strategy, ranges, reserved)
                assert view.size == model.size and view.used == 0 and view.strategy == strategy
                self.models[name] = model

        # -- helpers ------------------------------------------------------

        @property
        def a(self) -> Allocator:
            assert self.alloc is not None
            return self.alloc

        def claim(self, m: PoolModel, key: str, value: int | None) -> None:
            expected = m.predict(key, value)
            try:
                result = self.a.claim(m.name, key, value=value)
            except TenureError as exc:
                assert isinstance(expected, Refusal), f"claim({key!r}, value={value}) refused: {exc!r}; model: {expected}"
                check_refusal(expected, exc)
                return
            assert isinstance(expected, Grant), f"claim({key!r}, value={value}) gave {result}; model: {expected}"
            check_grant(expected, result, m)
            assert result.key == key and result.pool == m.name
            # The answer is what was committed: the store holds the same value at the same revision.
            stored = self.a.get(m.name, key)
            assert (stored.value, stored.revision) == (result.value, result.revision), (stored, result)
            m.apply(key, result.value, picked=value is None)

        # -- rules --------------------------------------------------------

        @rule(pool=st.sampled_from(STRATEGIES), key=KEYS)
        def claim_any_value(self, pool: str, key: str) -> None:
            self.claim(self.models[f"pool-{pool}"], key, None)

        @rule(
            pool=st.sampled_from(STRATEGIES),
            key=KEYS,
            kind=st.sampled_from(["free", "taken", "reserved", "out_of_range"]),
            data=st.data(),
        )
        def claim_pinned_value(self, pool: str, key: str, kind: str, data: st.DataObject) -> None:
            m = self.models[f"pool-{pool}"]
            candidates = {
                "free": m.free_values(),
                "taken": sorted(m.claims.values()),
                "reserved": sorted(m.reserved),
                "out_of_range": m.out_of_range_values(),
            }[kind]
            if not candidates:
                return
            self.claim(m, key, data.draw(st.sampled_from(candidates), label=f"{kind} value"))

        @rule(pool=st.sampled_from(STRATEGIES), data=st.data())
        def fill_pool(self, pool: str, data: st.DataObject) -> None:
            """Claim new keys one by one until the pool is exhausted (there are more keys than values)."""
            m = self.models[f"pool-{pool}"]
            unused = [k for k in KEY_NAMES if k not in m.claims]
            for key in data.draw(st.permutations(unused), label="fill order"):
                self.claim(m, key, None)
                if len(m.claims) == m.size:
                    break
            assert not m.free_values()
            self.claim(m, "one-too-many", None)  # the model expects pool_exhausted with size and used

        @rule(pool=st.sampled_from(STRATEGIES), pinned=st.booleans(), data=st.data())
        def reclaim_existing_key(self, pool: str, pinned: bool, data: st.DataObject) -> None:
            m = self.models[f"pool-{pool}"]
            if not m.claims:
                return
            key = data.draw(st.sampled_from(sorted(m.claims)), label="existing key")
            self.claim(m, key, m.claims[key] if pinned else None)

        @rule(pool=st.sampled_from(STRATEGIES), key=KEYS)
        def release(self, pool: str, key: str) -> None:
            self.release_key(self.models[f"pool-{pool}"], key)

        @rule(pool=st.sampled_from(STRATEGIES), data=st.data())
        def release_held_key(self, pool: str, data: st.DataObject) -> None:
            m = self.models[f"pool-{pool}"]
            if m.claims:
                self.release_key(m, data.draw(st.sampled_from(sorted(m.claims)), label="held key"))

        @rule(pool=st.sampled_from(STRATEGIES), data=st.data())
        def churn(self, pool: str, data: st.DataObject) -> None:
            """Release a few held keys, then claim as many new ones: a long-lived pool's life.

            After a full pool this walks the next-fit cursor around the range, so
            picks that must wrap below the cursor happen often.
            """
            m = self.models[f"pool-{pool}"]
            if not m.claims:
                return
            gone = data.draw(st.lists(st.sampled_from(sorted(m.claims)), min_size=1, max_size=3, unique=True))
            for key in gone:
                self.release_key(m, key)
            fresh = data.draw(st.permutations([k for k in KEY_NAMES if k not in m.claims]), label="new keys")
            for key in fresh[: len(gone)]:
                self.claim(m, key, None)

        def release_key(self, m: PoolModel, key: str) -> None:
            try:
                result = self.a.release(m.name, key)
            except NotFound as exc:
                assert key not in m.claims, f"release of held key {key!r} said {exc!r}"
                assert exc.code == "claim_not_found"
                return
            assert key in m.claims, f"release of missing key {key!r} answered {result}"
            assert (result.key, result.value) == (key, m.claims.pop(key))
            m.marked.discard(key)

        @rule(
            pool=st.sampled_from(STRATEGIES),
            shape=st.lists(st.tuples(KEYS, st.sampled_from(["pick", "pick", "pin", "outside"])), min_size=1, max_size=6),
            data=st.data(),
        )
        def claim_many(self, pool: str, shape: list[tuple[str, str]], data: st.DataObject) -> None:
            m = self.models[f"pool-{pool}"]
            # "pin": any value of the pool, so free, taken and reserved ones; "outside": out of range.
            items: list[tuple[str, int | None]] = [
                (key, None)
                if how == "pick"
                else (key, data.draw(st.sampled_from(m.values if how == "pin" else m.out_of_range_values())))
                for key, how in shape
            ]
            keys = [k for k, _ in items]
            try:
                results = self.a.claim_many(m.name, items)
            except TenureError as exc:
                check_bulk_refusal(m, items, exc)
                return
            assert len(set(keys)) == len(keys), f"bulk with a duplicate key accepted: {keys}"
            # Granted: replay the items on a copy, with the values actually handed out.
            trial = copy.deepcopy(m)
            assert len(results) == len(items), (items, results)
            changed: list[int] = []  # the revisions of the items that changed something, in the order taken
            for i in bulk_order(items):
                (key, value), result = items[i], results[i]
                assert result.key == key, f"bulk answers out of the request's order: {items} -> {results}"
                expected = trial.predict(key, value)
                assert isinstance(expected, Grant), f"bulk item {key!r}={value} granted {result}; model: {expected}"
                check_grant(expected, result, trial)
                if expected.created or (trial.auditing and key not in trial.marked):
                    changed.append(result.revision)
                stored = self.a.get(m.name, key)
                assert (stored.value, stored.revision) == (result.value, result.revision), (stored, result)
                trial.apply(key, result.value, picked=value is None)
            assert changed == sorted(set(changed)), f"bulk revisions not rising in order taken: {items} -> {results}"
            self.models[m.name] = trial

        @rule(pool=st.sampled_from(STRATEGIES))
        def audit_begin(self, pool: str) -> None:
            m = self.models[f"pool-{pool}"]
            try:
                view = self.a.audit_begin(m.name)
            except Conflict as exc:
                assert m.auditing and exc.code == "audit_in_progress", repr(exc)
                return
            assert not m.auditing, "a second audit_begin was accepted"
            m.auditing, m.epoch, m.marked = True, m.epoch + 1, set()
            assert view.auditing and view.audit_epoch == m.epoch

        @rule(pool=st.sampled_from(STRATEGIES))
        def audit_end(self, pool: str) -> None:
            m = self.models[f"pool-{pool}"]
            try:
                view, released = self.a.audit_end(m.name)
            except Conflict as exc:
                assert not m.auditing and exc.code == "no_audit", repr(exc)
                return
            assert m.auditing, "audit_end without an open audit was accepted"
            stale = {k: v for k, v in m.claims.items() if k not in m.marked}
            assert {r.key: r.value for r in released} == stale
            assert len(released) == len(stale)
            for key in stale:
                del m.claims[key]
            m.auditing, m.marked = False, set()
            assert not view.auditing and view.used == len(m.claims)

        @rule(pool=st.sampled_from(STRATEGIES), key=KEYS)
        def read_one(self, pool: str, key: str) -> None:
            m = self.models[f"pool-{pool}"]
            if key in m.claims:
                assert self.a.get(m.name, key).value == m.claims[key]
                assert self.a.find_value(m.name, m.claims[key]).key == key
            else:
                with pytest.raises(NotFound):
                    self.a.get(m.name, key)

        @rule()
        def restart(self) -> None:
            before_views = {name: self.a.pool(name) for name in self.models}
            before_claims = {name: all_claims(self.a, name) for name in self.models}
            before_revision = self.a.runtime.revision
            self.a.close()
            self.alloc = None
            alloc = self.open()
            assert alloc.runtime.revision == before_revision
            for name in self.models:
                assert alloc.pool(name) == before_views[name]
                assert all_claims(alloc, name) == before_claims[name]

        # -- invariants ---------------------------------------------------

        @invariant()
        def store_matches_model(self) -> None:
            if self.alloc is None:
                return
            for name, m in self.models.items():
                stored = all_claims(self.a, name)
                keys = [c.key for c in stored]
                assert len(set(keys)) == len(keys), f"a key listed twice: {keys}"
                assert {c.key: c.value for c in stored} == m.claims
                values = [c.value for c in stored]
                assert len(set(values)) == len(values), f"one value held by two keys: {stored}"
                for v in values:
                    assert m.in_range(v) and v not in m.reserved, v
                view = self.a.pool(name)
                assert view.used == len(m.claims)
                assert view.size == m.size
                assert (view.auditing, view.audit_epoch) == (m.auditing, m.epoch)

    return AllocatorMachine


# ------------------------------------------------------------------ the test

BUDGET = {
    # Examples x steps: about 20-40 s per backend on a 2-core machine (PostgreSQL creates a database per example).
    "sqlite": settings(max_examples=60, stateful_step_count=50),
    "postgresql": settings(max_examples=30, stateful_step_count=40),
}


def test_allocator_matches_the_model_across_restarts(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    counter = itertools.count()
    if backend == "sqlite":
        def new_url() -> str:
            d = tmp_path / f"example-{next(counter)}"
            d.mkdir()
            return f"sqlite:///{d / 'tenure.db'}"

        def drop_url(url: str) -> None:
            shutil.rmtree(Path(url.removeprefix("sqlite:///")).parent, ignore_errors=True)

    else:
        pg = request.getfixturevalue("pg_server")
        admin = create_engine(pg.base_url, isolation_level="AUTOCOMMIT")
        request.addfinalizer(admin.dispose)

        def new_url() -> str:
            return pg.create_database(f"tenure_sm_{os.getpid()}_{next(counter)}")

        def drop_url(url: str) -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))

    machine = make_machine(new_url, drop_url)
    run_state_machine_as_test(
        machine,
        settings=settings(
            BUDGET[backend],
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        ),
    )


def test_the_bulk_check_takes_pins_first_and_accepts_no_other_refusal() -> None:
    """The case CI found (2026-12-06), where a random pick took 0 before K0 pinned it: now only k12's pin of the
    held 6 may refuse that bulk, and a bulk the model grants may not be refused at all."""
    m = PoolModel.new("pool-random", "random", [[0, 7]], [[7, 7]])
    m.apply("k" * 256, 6, picked=True)
    items: list[tuple[str, int | None]] = [("k0", None), ("k5", None), ("K0", 0), ("k12", 6)]
    check_bulk_refusal(m, items, Conflict("value 6 is already claimed", code="value_taken", value=6))
    with pytest.raises(AssertionError):
        check_bulk_refusal(m, items, Conflict("value 0 is already claimed", code="value_taken", value=0))
    with pytest.raises(AssertionError):
        check_bulk_refusal(m, items[:3], Conflict("value 0 is already claimed", code="value_taken", value=0))
    assert bulk_order(items) == [2, 3, 0, 1]
