"""Published: a service's map, changed by the writer inside commands and read by others as of the last commit."""

from __future__ import annotations

from datetime import UTC, datetime

from tenure.store.writer import Batch, Published


def batch() -> Batch:
    return Batch(revision=0, now=datetime(2026, 1, 1, tzinfo=UTC))


def commit(b: Batch) -> None:
    """What the writer does after a successful commit."""
    for fn in (*b.after_commit, *b.after_commit_once.values()):
        fn()


def test_a_change_is_seen_by_readers_only_after_the_commit() -> None:
    m: Published[str, int] = Published()
    b = batch()
    m.put(b, "a", 1)
    assert m.working == {"a": 1} and m.view == {}
    commit(b)
    assert m.view == {"a": 1}


def test_a_refused_command_puts_the_old_value_back_and_publishes_only_what_is_committed() -> None:
    published: list[tuple[str, int | None]] = []
    m: Published[str, int] = Published(on_publish=lambda k, v: published.append((k, v)))
    m.load("a", 1)
    b = batch()
    mark = b.mark()
    m.put(b, "a", 2)
    m.put(b, "b", 3)
    m.put(b, "a", None)
    b.rollback_to(mark)
    assert m.working == {"a": 1} and m.view == {"a": 1}
    commit(b)  # the batch's other commands commit: the refused one's keys are published as they stand
    assert m.view == {"a": 1}
    assert sorted(published, key=str) == [("a", 1), ("b", None)]


def test_a_failed_commit_undoes_every_change_of_the_batch() -> None:
    m: Published[str, int] = Published()
    m.load("a", 1)
    b = batch()
    m.put(b, "a", 2)
    m.put(b, "b", 3)
    for fn in reversed(b.undo):  # what the writer does when the commit fails
        fn()
    assert m.working == {"a": 1} and m.view == {"a": 1}


def test_several_changes_of_one_key_publish_once_with_the_last_value() -> None:
    published: list[tuple[str, int | None]] = []
    m: Published[str, int] = Published(on_publish=lambda k, v: published.append((k, v)))
    b = batch()
    m.put(b, "a", 1)
    m.put(b, "a", 2)
    m.put(b, "b", 5)
    m.put(b, "b", None)
    commit(b)
    assert m.view == {"a": 2}
    assert sorted(published) == [("a", 2), ("b", None)]


def test_indexes_follow_changes_and_their_undo() -> None:
    index: dict[int, str] = {}

    def swap(old: tuple[str, int] | None, new: tuple[str, int] | None) -> None:
        if old is not None:
            del index[old[1]]
        if new is not None:
            index[new[1]] = new[0]

    m: Published[str, tuple[str, int]] = Published(on_swap=swap)
    m.load("a", ("a", 1))
    b = batch()
    mark = b.mark()
    m.put(b, "a", ("a", 2))
    assert index == {2: "a"}
    b.rollback_to(mark)
    assert index == {1: "a"} and m.working == {"a": ("a", 1)}


def test_two_maps_keyed_alike_publish_independently() -> None:
    first: Published[str, int] = Published()
    second: Published[str, int] = Published()
    b = batch()
    first.put(b, "k", 1)
    second.put(b, "k", 2)
    commit(b)
    assert first.view == {"k": 1} and second.view == {"k": 2}
