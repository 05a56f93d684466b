"""The SQLAlchemy engine both stores (the URS's and the MSD's) open: SQLite WAL by default.

One place for what every store needs: the SQLite file's folder made, WAL and a busy
timeout on every connection, any other SQLAlchemy async URL (PostgreSQL) accepted, and
the schema brought to the newest Alembic revision (msd.migrate) so that processes
starting together do not race.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from msd.migrate import MigrationError, Schema, upgrade

SQLITE_BUSY_TIMEOUT_MS = 5000  # a writer waits this long for SQLite's lock

Synchronous = Literal["FULL", "NORMAL"]


class DatabaseError(ValueError):
    """The database cannot be opened or its tables made; the message says why."""


def open_engine(url: str, *, synchronous: Synchronous) -> AsyncEngine:
    """An async engine for `url`; for SQLite, its folder made and pragmas on every connection.

    `synchronous` is SQLite's durability in WAL mode: FULL survives a power cut, NORMAL a
    killed process.
    """
    try:
        parsed = sa.make_url(url)
        path = parsed.database if parsed.get_backend_name() == "sqlite" else None
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _check_sqlite_file(Path(path))
        engine = create_async_engine(parsed)
    except (SQLAlchemyError, ImportError, OSError, ValueError) as exc:
        raise DatabaseError(f"cannot use database URL {url!r}: {exc}") from exc
    if engine.dialect.name == "sqlite":
        pragmas = ("journal_mode=WAL", f"synchronous={synchronous}",
                   f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}", "foreign_keys=ON")

        def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # Per connection: SQLite forgets all but journal_mode when a connection closes.
            cursor = dbapi_connection.cursor()
            try:
                for pragma in pragmas:
                    cursor.execute(f"PRAGMA {pragma}")
            finally:
                cursor.close()

        sa.event.listen(engine.sync_engine, "connect", set_pragmas)
    return engine


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_file(path: Path) -> None:
    """Refuse an existing file that is not an SQLite database before any driver opens it
    (the driver's failure would leave its worker thread behind)."""
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise DatabaseError(f"{path} is a directory, not an SQLite database file") from None
    if header and header != SQLITE_HEADER:
        raise DatabaseError(f"{path} exists but is not an SQLite database (file is not a "
                            "database); move it away or give another path")


async def open_database(url: str, *, schema: Schema, synchronous: Synchronous) -> AsyncEngine:
    """`open_engine`, then `upgrade` to the newest revision; nothing left open when either fails."""
    engine = open_engine(url, synchronous=synchronous)
    try:
        await upgrade(engine, schema)
    except (SQLAlchemyError, OSError, MigrationError) as exc:
        await engine.dispose()
        raise DatabaseError(
            f"database upgrade of the {schema.name} schema failed: {type(exc).__name__}: {exc}"
        ) from exc
    except BaseException:
        await engine.dispose()
        raise
    return engine
