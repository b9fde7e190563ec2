"""``tenure backup``, ``tenure backup verify`` and ``tenure restore`` (docs/operations.md, sections 1 to 3).

``tenure backup --out FILE`` asks the running server (``GET /v1/admin/backup``): the server reads its own snapshot,
so writers go on. With ``--db URL`` or ``--data-dir DIR`` it opens a stopped store itself (and refuses one a server
holds). ``--out`` may be a directory: the file is then named by the backup's revision. Either way the file appears
under its name only once it is complete, on disk and verified.

``tenure restore FILE`` (or ``--from-dir DIR``: the newest backup that verifies, by the revision in its header)
loads it into an empty store, SQLite or PostgreSQL alike: the same two commands move a store between backends.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from tenure.cli.common import fail, fields, say, session, table, warn
from tenure.client import TenureClientError, locate
from tenure.clock import utcnow
from tenure.config import ADMIN_TOKEN_FILE, default_data_dir, default_db_url

app = typer.Typer(help="Back the store up (a running server's, or a stopped one's), and check backups.")

DbOption = Annotated[str | None, typer.Option("--db", help="A stopped store's database URL (sqlite:///PATH or "
                                                           "postgresql://...).")]


def _store_url(db: str | None, data_dir: Path | None) -> str | None:
    if db is not None and data_dir is not None:
        raise typer.BadParameter("give --db or --data-dir, not both", param_hint="--db")
    return db if db is not None else default_db_url(data_dir) if data_dir is not None else None


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@app.callback(invoke_without_command=True)
def backup(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write it: a file, or a directory (the file is "
                                             "then named tenure-REVISION-TIME.tbk).")] = None,
    db: DbOption = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="A stopped server's data dir (its SQLite "
                                                  "store).")] = None,
) -> None:
    """Take a backup of the store at one revision: from the running server, or with --db/--data-dir from a stopped
    store."""
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise typer.BadParameter("where to write the backup", param_hint="--out")
    from tenure.domain.errors import TenureError
    from tenure.services import backups
    from tenure.store.backup import BackupError

    url = _store_url(db, data_dir)
    started = time.monotonic()
    try:
        if url is not None:
            header, path = backups.write_file(lambda f: backups.from_stopped_store(url, f, utcnow()), out)
        else:
            s = session(ctx)
            target = locate(s.url, s.token, s.data_dir)
            with s.client(target.url, target.token) as client:
                header, path = backups.write_file(client.backup, out)
    except TenureClientError as exc:
        fail(exc.code, exc.message)
    except BackupError as exc:
        fail("backup_failed", str(exc))
    except TenureError as exc:  # a stopped store of another schema version, say
        fail(exc.code, exc.message)
    except OSError as exc:
        fail("backup_failed", f"cannot write {out}: {exc.strerror or exc}")
    rows = sum(header.counts().values())
    say(f"backup of revision {header.revision} ({rows} rows, {_size(path.stat().st_size)}) written to {path} "
        f"in {time.monotonic() - started:.1f} s")


@app.command("verify")
def verify(files: Annotated[list[Path], typer.Argument(help="Backup files to check.")]) -> None:
    """Check backups end to end (format, every line, the row counts, the checksum); exit 1 if any fails."""
    from tenure.store import backup as fmt

    bad = 0
    for path in files:
        try:
            header = fmt.verify(path)
        except fmt.BackupError as exc:
            warn(f"{path}: FAILED: {exc}")
            bad += 1
            continue
        say(f"{path}: ok")
        fields([("revision", header.revision), ("taken", header.created_at), ("schema", header.schema),
                ("rows", sum(header.counts().values()))])
        table(("table", "rows"), ((n, c) for n, _, c in header.tables if c))
    if bad:
        fail("backup_invalid", f"{bad} of {len(files)} backups failed verification")


def restore(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Argument(help="The backup to restore.")] = None,
    from_dir: Annotated[Path | None, typer.Option("--from-dir", help="Restore the newest backup in this directory "
                                                  "that verifies (newest by the revision it holds).")] = None,
    db: Annotated[str | None, typer.Option("--db", help="The store to restore into (sqlite:///PATH or "
                                           "postgresql://...); default: the data dir's SQLite store.")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="The data dir whose SQLite store to restore "
                                                  "into; default: the root --data-dir, else "
                                                  "~/.local/share/tenure.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace everything in a store that is not empty.")] = False,
) -> None:
    """Restore a backup into an empty store (SQLite or PostgreSQL), upgrading its schema; no server may run on it."""
    from tenure.domain.errors import TenureError
    from tenure.services import backups
    from tenure.store.backup import BackupError, NotEmpty
    from tenure.store.engine import StoreLocked

    if (file is None) == (from_dir is None):
        raise typer.BadParameter("give a backup FILE or --from-dir DIR (one of them)", param_hint="FILE")
    where = data_dir or session(ctx).data_dir or default_data_dir()
    url = _store_url(db, None) or default_db_url(where)
    started = time.monotonic()
    try:
        header = None
        if from_dir is not None:
            file, header, skipped = backups.newest(from_dir)
            for path, why in skipped:
                warn(f"skipped {path.name}: {why}")
        assert file is not None
        done = backups.restore(url, file, force=force, verified=header)
    except NotEmpty as exc:
        fail("store_not_empty", str(exc))
    except StoreLocked as exc:
        fail("store_locked", f"{exc.message}: stop the server first")
    except BackupError as exc:
        fail("backup_invalid", str(exc))
    except TenureError as exc:
        fail(exc.code, exc.message)
    upgraded = f", upgraded to schema {done.schema_to}" if done.schema_to != done.schema_from else ""
    say(f"restored {file} (revision {done.header.revision}, {done.rows} rows, schema {done.schema_from}{upgraded}) "
        f"in {time.monotonic() - started:.1f} s")
    say(f"the store goes on from revision {done.revision}: watchers that saw a revision after "
        f"{done.header.revision} get 410 and list again")
    if db is None and not (where / ADMIN_TOKEN_FILE).exists():
        warn(f"the tokens are the backup's: no {ADMIN_TOKEN_FILE} is in {where}; use the admin token of the store "
             "the backup came from")
