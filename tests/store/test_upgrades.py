"""Upgrades lose nothing (issue 17, docs/operations.md section 8): for every schema version from 0001 to this
release's, a store created by that version's migrations and holding data of every kind its tables can hold is
upgraded to the head; every row and every column it had comes through unchanged, the columns added since hold their
defaults, and the server restores from it. A store newer than this code is refused, naming both versions.

The data: a store filled at the head through the server (pools and claims, tokens, an agent, limits,
reservations, the topology, instances, their events), backed up, and loaded into each old schema by the columns
that schema has (the rows' JSON bodies are the head's, which the migrations carry as they are)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import DateTime, MetaData, inspect, text

from tenure.services.backups import from_engine, write_file
from tenure.services.examples import ensure_examples
from tenure.services.runtime import Runtime, Settings
from tenure.store import backup
from tenure.store.engine import SchemaMismatch, _config, make_engine, migrate, upgrade_to
from tests.conftest import start_api
from tests.services.test_backup_restore import cli_ok, fill


def versions() -> list[str]:
    return [r.revision for r in reversed(list(ScriptDirectory.from_config(_config()).walk_revisions()))]


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[tuple[str, ...], list[list[Any]]]]:
    """Every table of a store filled at the head: (columns, rows as the backup holds them)."""
    tmp = tmp_path_factory.mktemp("head")
    url = f"sqlite:///{tmp / 'head.db'}"
    for api in start_api(url, tmp / "data", seed=ensure_examples):
        fill(api)
    out = tmp / "head.tbk"
    cli_ok("backup", "--db", url, "--out", str(out))
    header = backup.verify(out)
    rows: dict[str, list[list[Any]]] = {}
    for name, row in backup.rows(out):
        rows.setdefault(name, []).append(row)
    return {name: (cols, rows.get(name, [])) for name, cols, _ in header.tables}


def _load_old(conn: Any, filled: dict[str, tuple[tuple[str, ...], list[list[Any]]]]) -> dict[str, list[str]]:
    """The head's rows into the tables this schema has, by the columns it has; those columns, by table."""
    meta = MetaData()
    meta.reflect(conn)
    kept: dict[str, list[str]] = {}
    for table in meta.sorted_tables:
        if table.name not in filled:
            continue
        cols, rows = filled[table.name]
        have = [c for c in cols if c in table.columns]
        kept[table.name] = have
        conn.execute(table.delete())
        if rows:
            idx = [cols.index(c) for c in have]
            conn.execute(table.insert(), [{c: _value(table.columns[c], r[i]) for c, i in zip(have, idx, strict=True)}
                                          for r in rows])
    return kept


def _value(col: Any, v: Any) -> Any:
    if v is not None and isinstance(col.type, DateTime):
        return datetime.fromisoformat(v)
    return v


@pytest.mark.parametrize("version", versions()[:-1])
def test_a_store_of_every_earlier_version_upgrades_with_nothing_lost(version: str, db_url: str, filled: Any,
                                                                     tmp_path: Path) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            upgrade_to(conn, version)
            kept = _load_old(conn, filled)
        assert "claims" in kept and "events" in kept  # the oldest schema already holds claims and events
        migrate(engine)  # what a server does at start
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == versions()[-1]
            out = tmp_path / "upgraded.tbk"
            write_file(lambda f: from_engine(engine, f, datetime.now(UTC)), out)
        after: dict[str, list[list[Any]]] = {}
        for name, row in backup.rows(out):
            after.setdefault(name, []).append(row)
        cols_after = {name: cols for name, cols, _ in backup.verify(out).tables}
        for name, have in kept.items():
            cols, rows = filled[name]
            before = sorted([[r[cols.index(c)] for c in have] for r in rows], key=repr)
            now = sorted([[r[cols_after[name].index(c)] for c in have] for r in after.get(name, [])], key=repr)
            assert now == before, (version, name)
            for added in set(cols_after[name]) - set(have):  # a column added since: its default (here: NULL)
                default = {r[cols_after[name].index(added)] for r in after.get(name, [])}
                assert default <= {None, 0, False}, (version, name, added, default)
    finally:
        engine.dispose()
    rt = Runtime.open(db_url, settings=Settings(housekeeping=False))  # and the server restores from it
    try:
        assert rt.allocator.has_pool("p")
        assert rt.tokens.list()
    finally:
        rt.close()


def test_a_store_newer_than_this_code_is_refused_naming_both_versions(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
        with pytest.raises(SchemaMismatch, match=f"0099.*{versions()[-1]}"):
            migrate(engine)
        assert "tokens" in inspect(engine).get_table_names()  # and nothing was changed
    finally:
        engine.dispose()
