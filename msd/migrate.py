"""Schema migrations for both stores (Alembic): upgrade to the newest revision, under a lock.

Every store brings its database to `head` when it opens, so a new release upgrades the
schema on its first start; `mdns db upgrade` does the same by hand and `mdns db current`
shows where a database is (docs/deploy.md). Several processes may open one database at
once (a domain's MSDs, replicated URSes): the first takes a lock and migrates, the
others wait for it and then find nothing to do. On PostgreSQL the lock is an advisory
lock held by the migration's own transaction (DDL is transactional there); on SQLite,
whose users all live on one host, an exclusive `flock` on a file beside the database, and
the migration runs inside `BEGIN IMMEDIATE` so that it too commits whole or not at all.
Alembic itself is loaded only for a real upgrade: a database at the head revision costs
one query, and an empty one gets the models' tables and the head revision directly.

The URS and the MSD schemas are separate Alembic trees with their own version tables
(`mdns_urs_version`, `mdns_msd_version`), so both may live in one PostgreSQL database.
A database made before Alembic (tables, no version table) is stamped with the baseline
revision, whose tables are exactly what was created then, and upgraded from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import time
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:  # Alembic is imported when a migration runs: `mdns resolve` never needs it
    from alembic.config import Config

MIGRATION_LOCK = 0x6D646E73  # "mdns": the PostgreSQL advisory lock key migrations hold
LOCK_WAIT_S = 60.0  # how long an opener waits for another process's migration to finish
LOCK_POLL_S = 0.05
SQLITE_LOCK_SUFFIX = ".migrate-lock"


class MigrationError(Exception):
    """The schema could not be migrated; the message says why and what to do."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Schema:
    """One store's tables and the Alembic tree that makes them."""

    name: str  # "msd" or "urs"
    metadata: sa.MetaData
    migrations: Path  # the folder with env.py and versions/
    baseline: str  # the revision equal to the tables made before Alembic
    marker_table: str  # a baseline table: present without a version table → stamp baseline
    head: str  # the newest revision, which the models equal (a test checks both)

    @property
    def version_table(self) -> str:
        return f"mdns_{self.name}_version"

    def config(self, connection: sa.Connection | None = None) -> Config:
        """An Alembic config for this tree (no ini file), handing over `connection`."""
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(self.migrations))
        config.attributes["schema"] = self
        config.attributes["connection"] = connection
        return config

    def heads(self) -> list[str]:
        from alembic.script import ScriptDirectory

        return list(ScriptDirectory.from_config(self.config()).get_heads())


async def upgrade(
    engine: AsyncEngine, schema: Schema, *, revision: str = "head", from_scratch: bool = True
) -> str | None:
    """Bring the database to `revision` (stamping a pre-Alembic one first); the new revision."""
    _, after = await migrate(engine, schema, revision=revision, from_scratch=from_scratch)
    return after


async def migrate(
    engine: AsyncEngine, schema: Schema, *, revision: str = "head", from_scratch: bool = True
) -> tuple[str | None, str | None]:
    """`upgrade`, answering (the revision before, read under the lock; the revision after).

    Fast paths, which do not load Alembic (a daemon's start-up is what they save): a
    database at `schema.head` is left alone, and an empty one (with `from_scratch`) gets the
    models' tables and the head revision at once, as Alembic's "build from scratch" recipe
    does; a test holds the revisions and the models equal."""
    if revision in ("head", schema.head):
        async with engine.connect() as conn:  # unlocked: the version only moves forward
            if await conn.run_sync(_version, schema) == schema.head:
                return schema.head, schema.head
    # Alembic's `context` and `op` are module globals: two migrations interleaving in one
    # process (in-process MSDs of several domains) would trample each other's.
    async with _process_lock(), _migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Held until this transaction ends, i.e. until the migration is committed.
            await conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
        elif conn.dialect.name == "sqlite":
            # SQLite's DDL is transactional once a transaction is open, but its Python driver
            # opens none before CREATE: open one, so a failed migration leaves nothing behind.
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        found = await conn.run_sync(_version, schema)
        if revision in ("head", schema.head) and found == schema.head:
            return found, found  # another process did it while this one waited
        if (from_scratch and revision in ("head", schema.head) and found is None
                and not await conn.run_sync(_has_table, schema.marker_table)):
            await conn.run_sync(_create_from_scratch, schema)
            return found, schema.head
        from alembic.util.exc import CommandError

        try:
            return found, await conn.run_sync(_upgrade, schema, revision)
        except CommandError as exc:
            raise MigrationError(f"{schema.name} schema: {exc}") from None


async def current(engine: AsyncEngine, schema: Schema) -> str | None:
    """The database's revision of `schema`, or None when it has none (new, or pre-Alembic)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_version, schema)


def run_environment() -> None:
    """The body of each tree's env.py: migrate on the connection `upgrade` handed over."""
    from alembic import context

    schema: Schema = context.config.attributes["schema"]
    connection: sa.Connection | None = context.config.attributes.get("connection")
    if connection is None:
        raise MigrationError(
            f"the {schema.name} migrations run through `mdns db upgrade` (or a store's open), "
            "which hands them a connection; the bare alembic command is not set up")
    context.configure(
        connection=connection, target_metadata=schema.metadata,
        version_table=schema.version_table,
        # SQLite alters a table by copying it; batch mode writes migrations that way.
        render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def _upgrade(connection: sa.Connection, schema: Schema, revision: str) -> str | None:
    from alembic import command

    config = schema.config(connection)
    if _current(connection, schema) is None and sa.inspect(connection).has_table(
            schema.marker_table):
        command.stamp(config, schema.baseline)
    command.upgrade(config, revision)
    return _current(connection, schema)


def _current(connection: sa.Connection, schema: Schema) -> str | None:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection,
                                         opts={"version_table": schema.version_table})
    return context.get_current_revision()


def _version_table(schema: Schema) -> sa.Table:
    # As Alembic makes it: one VARCHAR(32) column, its primary key named <table>_pkc.
    return sa.Table(schema.version_table, sa.MetaData(),
                    sa.Column("version_num", sa.String(32), nullable=False),
                    sa.PrimaryKeyConstraint("version_num", name=f"{schema.version_table}_pkc"))


def _has_table(connection: sa.Connection, name: str) -> bool:
    return sa.inspect(connection).has_table(name)


def _version(connection: sa.Connection, schema: Schema) -> str | None:
    """The revision in the version table, read without Alembic; None without one."""
    if not _has_table(connection, schema.version_table):
        return None
    table = _version_table(schema)
    versions = connection.execute(sa.select(table.c.version_num)).scalars().all()
    if len(versions) > 1:
        raise MigrationError(f"{schema.version_table} holds several revisions {versions}; "
                             "the schema has no branches")
    return versions[0] if versions else None


def _create_from_scratch(connection: sa.Connection, schema: Schema) -> None:
    schema.metadata.create_all(connection)
    table = _version_table(schema)
    table.create(connection)
    connection.execute(sa.insert(table).values(version_num=schema.head))


_PROCESS_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary())


@contextlib.asynccontextmanager
async def _process_lock() -> AsyncIterator[None]:
    """One migration at a time in this process (per event loop)."""
    loop = asyncio.get_running_loop()
    lock = _PROCESS_LOCKS.setdefault(loop, asyncio.Lock())
    async with lock:
        yield


@contextlib.asynccontextmanager
async def _migration_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Across processes on this host, for an SQLite file; PostgreSQL locks in the transaction."""
    path = engine.url.database if engine.dialect.name == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    lock_path = Path(path + SQLITE_LOCK_SUFFIX)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MigrationError(
                        f"another process has held {lock_path} for over {LOCK_WAIT_S:g} s; "
                        "is a migration stuck?") from None
                await asyncio.sleep(LOCK_POLL_S)
        yield
    finally:
        os.close(fd)  # closing releases the lock
