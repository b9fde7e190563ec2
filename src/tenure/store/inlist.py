"""Rows whose key is in a list of any length: ``IN`` lists of a bounded size, one statement per chunk.

A follower refreshes the objects a batch of events named (docs/replication.md); a bulk claim alone names up to
10,000 keys, more than a database should see in one ``IN`` list.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from sqlalchemy import Connection, Select
from sqlalchemy.sql import ColumnElement

CHUNK = 500


def rows_in(conn: Connection, query: Select[Any], column: ColumnElement[Any], values: Collection[Any]) -> Iterator[Any]:
    """The rows of ``query`` whose ``column`` is one of ``values`` (sorted, ``CHUNK`` at a time)."""
    ordered = sorted(values)
    for i in range(0, len(ordered), CHUNK):
        yield from conn.execute(query.where(column.in_(ordered[i : i + CHUNK])))
