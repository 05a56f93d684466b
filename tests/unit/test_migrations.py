"""Schema migrations (Alembic) on SQLite and PostgreSQL: head on open, equal to the models,
pre-Alembic databases adopted, concurrent openers safe, and `mdns db`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from msd.migrate import Schema, current, upgrade
from msd.store import SCHEMA as MSD_SCHEMA
from msd.store import MsdStore
from tests.databases import Database
from urs.store import SCHEMA as URS_SCHEMA
from urs.store import SessionStore

STORES: dict[str, tuple[Schema, Any]] = {"msd": (MSD_SCHEMA, MsdStore),
                                         "urs": (URS_SCHEMA, SessionStore)}


async def _differences(url: str, schema: Schema) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda sync: compare_metadata(
                MigrationContext.configure(sync, opts={"compare_type": True,
                                                 "version_table": schema.version_table}),
                schema.metadata))
    finally:
        await engine.dispose()


async def _revision(url: str, schema: Schema) -> str | None:
    engine = create_async_engine(url)
    try:
        return await current(engine, schema)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("name", list(STORES))
async def test_a_new_database_is_at_head_and_equals_the_models(
    database: Database, name: str
) -> None:
    schema, store_class = STORES[name]
    store = await store_class.open(database.url)
    await store.close()
    assert await _revision(database.url, schema) == schema.heads()[0]
    assert await _differences(database.url, schema) == []


@pytest.mark.parametrize("name", list(STORES))
async def test_the_revisions_make_exactly_the_models(database: Database, name: str) -> None:
    # A new database gets the models' tables directly (the fast path); this is the other
    # way, every revision in turn, as an old database goes: both must give one schema.
    schema, _ = STORES[name]
    assert schema.head == schema.heads()[0], "a new revision: set the Schema's head to it"
    engine = create_async_engine(database.url)
    try:
        assert await upgrade(engine, schema, from_scratch=False) == schema.head
        assert await upgrade(engine, schema) == schema.head  # at head: nothing to do
    finally:
        await engine.dispose()
    assert await _differences(database.url, schema) == []


async def test_both_schemas_share_one_database(database: Database) -> None:
    urs = await SessionStore.open(database.url)
    msd = await MsdStore.open(database.url)
    await urs.close()
    await msd.close()
    for schema in (URS_SCHEMA, MSD_SCHEMA):
        assert await _revision(database.url, schema) == schema.heads()[0]
    version_tables = {name for (name, *_rest) in await _tables(database)
                      if name.startswith("mdns_")}
    assert version_tables == {"mdns_urs_version", "mdns_msd_version"}


async def _tables(database: Database) -> list[tuple[str]]:
    engine = create_async_engine(database.url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        return [(n,) for n in names]
    finally:
        await engine.dispose()


async def test_a_database_made_before_alembic_is_adopted_with_its_rows(
    database: Database,
) -> None:
    # Before Alembic, each store ran CREATE TABLE IF NOT EXISTS from its models at open.
    engine = create_async_engine(database.url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(MSD_SCHEMA.metadata.create_all)
    finally:
        await engine.dispose()
    await database.execute(
        "INSERT INTO local_sessions VALUES ('d.example', 'mcast.d.example/x', '{}', 'global', "
        "9e9, 0)")
    store = await MsdStore.open(database.url)
    await store.close()
    assert await _revision(database.url, MSD_SCHEMA) == MSD_SCHEMA.heads()[0]
    assert len(await database.rows("local_sessions")) == 1


async def test_many_openers_of_one_new_database_all_succeed(database: Database) -> None:
    opened = await asyncio.gather(*(cls.open(database.url)
                                    for cls in (MsdStore, SessionStore) * 4))
    for store in opened:
        await store.ping()
        await store.close()
    assert await _revision(database.url, MSD_SCHEMA) == MSD_SCHEMA.heads()[0]


def _mdns(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", *argv], capture_output=True,
                          text=True, timeout=60, check=False)


async def test_mdns_db_upgrade_in_parallel_processes_then_current(database: Database) -> None:
    before = await asyncio.to_thread(_mdns, "db", "current", "--database", database.url)
    assert before.returncode == 0, before.stderr
    assert before.stdout.splitlines() == ["urs: none (head is 0001)", "msd: none (head is 0002)"]

    def upgrade() -> subprocess.CompletedProcess[str]:
        return _mdns("db", "upgrade", "--database", database.url)

    results = await asyncio.gather(*(asyncio.to_thread(upgrade) for _ in range(4)))
    assert [r.returncode for r in results] == [0] * 4, [r.stderr for r in results]
    changed = [line for r in results for line in r.stdout.splitlines() if "from nothing" in line]
    assert sorted(changed) == ["msd: 0002 (from nothing; head 0002)",
                               "urs: 0001 (from nothing; head 0001)"]  # each exactly once
    after = await asyncio.to_thread(_mdns, "db", "current", "--database", database.url,
                                    "--schema", "msd")
    assert after.stdout.splitlines() == ["msd: 0002 (head)"]


def test_mdns_db_names_a_bad_url_in_one_line() -> None:
    result = _mdns("db", "current", "--database", "nosuchdb+nodriver://host/db")
    assert result.returncode == 1
    assert result.stderr.startswith("mdns: cannot use database URL 'nosuchdb+nodriver://")
    assert "Traceback" not in result.stderr


async def test_several_databases_migrate_at_once_in_one_process(tmp_path: Path) -> None:
    # In-process MSDs of many domains open their stores together; Alembic's module-global
    # context must not be shared by two migrations at once.
    urls = [f"sqlite+aiosqlite:///{tmp_path / f'd{n}.sqlite'}" for n in range(6)]
    opened = await asyncio.gather(*(cls.open(url) for url in urls
                                    for cls in (MsdStore, SessionStore)))
    for store in opened:
        await store.close()
    for url in urls:
        assert await _revision(url, MSD_SCHEMA) == MSD_SCHEMA.heads()[0]


BROKEN_REVISION = '''
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table("half_done", sa.Column("id", sa.Integer, primary_key=True))
    raise RuntimeError("a migration that fails half-way")
'''


async def test_a_migration_that_fails_half_way_leaves_nothing(
    database: Database, tmp_path: Path
) -> None:
    tree = tmp_path / "broken"
    (tree / "versions").mkdir(parents=True)
    (tree / "env.py").write_text("from msd.migrate import run_environment\n\nrun_environment()\n")
    (tree / "versions" / "v0001_broken.py").write_text(BROKEN_REVISION)
    schema = Schema(name="broken", metadata=sa.MetaData(), migrations=tree, baseline="0001",
                    marker_table="half_done", head="0001")
    engine = create_async_engine(database.url)
    try:
        with pytest.raises(RuntimeError, match="half-way"):
            await upgrade(engine, schema, from_scratch=False)
        assert await current(engine, schema) is None
    finally:
        await engine.dispose()
    assert [name for (name,) in await _tables(database)] == []  # no table, no version table
