"""The stores' fast SQLite path (msd.store_fast, urs.store_fast) behaves as the async one.

The MSD store's own tests run again here, collected with this module's `store` fixture
(a FastMsdStore), so every write and search they check goes through the one-hop path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from msd.schema import Session
from msd.store import MsdStore, sqlite_url
from msd.store_fast import FastMsdStore, open_store
from tests.databases import Database
from tests.unit.test_msd_store import (
    DOMAIN,
    clock,
    test_a_corrupt_stored_body_is_a_store_error,
    test_an_upsert_that_fails_midway_leaves_the_old_version,
    test_delete_local_takes_its_keyword_and_geo_rows,
    test_expiry_hides_and_the_collector_deletes_every_row,
    test_global_and_shadow_records_are_kept_apart,
    test_global_outside_at_the_range_boundaries,
    test_global_within_pages_a_range_in_key_order,
    test_keep_newer_leaves_a_later_copy_alone,
    test_limits_are_explicit_and_checked,
    test_migration_deletes_records_and_their_last_geo_row,
    test_near_finds_sessions_by_cell_and_kind,
    test_put_global_refuses_a_keyword_the_session_does_not_carry,
    test_put_local_twice_is_one_row,
    test_search_local_filters_by_scope,
    test_the_collector_works_in_batches,
    test_two_stores_on_one_database_see_each_others_writes,
    test_update_replaces_the_keyword_set_and_moves_the_cell,
)
from urs.errors import IdTakenError
from urs.store_fast import FastSessionStore
from urs.store_fast import open_store as open_urs_store

__all__ = [  # collected here, against the fixtures below
    "clock",
    "test_a_corrupt_stored_body_is_a_store_error",
    "test_an_upsert_that_fails_midway_leaves_the_old_version",
    "test_delete_local_takes_its_keyword_and_geo_rows",
    "test_expiry_hides_and_the_collector_deletes_every_row",
    "test_global_and_shadow_records_are_kept_apart",
    "test_global_outside_at_the_range_boundaries",
    "test_global_within_pages_a_range_in_key_order",
    "test_keep_newer_leaves_a_later_copy_alone",
    "test_limits_are_explicit_and_checked",
    "test_migration_deletes_records_and_their_last_geo_row",
    "test_near_finds_sessions_by_cell_and_kind",
    "test_put_global_refuses_a_keyword_the_session_does_not_carry",
    "test_put_local_twice_is_one_row",
    "test_search_local_filters_by_scope",
    "test_the_collector_works_in_batches",
    "test_two_stores_on_one_database_see_each_others_writes",
    "test_update_replaces_the_keyword_set_and_moves_the_cell",
]


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    """An SQLite file only: the fast path exists for nothing else."""
    opened = Database(sqlite_url(tmp_path, DOMAIN))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def store(database: Database) -> AsyncIterator[MsdStore]:
    opened = await open_store(database.url)
    assert isinstance(opened, FastMsdStore)
    try:
        yield opened
    finally:
        await opened.close()


async def test_other_databases_get_the_plain_store() -> None:
    opened = await open_store("sqlite+aiosqlite://")
    assert type(opened) is MsdStore
    await opened.close()


def _session(number: int) -> Session:
    return Session(id=f"s{number}", title="t", keywords=["k"], group="239.1.2.3", port=5004)


async def test_urs_create_is_group_committed_and_one_id_wins(tmp_path: Path) -> None:
    store = await open_urs_store(f"sqlite+aiosqlite:///{tmp_path / 'urs.sqlite'}")
    assert isinstance(store, FastSessionStore)
    try:
        created = await asyncio.gather(
            *(store.create("x.org", _session(n), token=f"t{n}", now=100.0) for n in range(50)))
        assert [r.uri for r in created] == [f"mcast.x.org/s{n}" for n in range(50)]
        racing = await asyncio.gather(
            *(store.create("x.org", _session(99), token=f"r{n}", now=100.0) for n in range(5)),
            return_exceptions=True)
        assert sum(isinstance(r, IdTakenError) for r in racing) == 4
        assert (await store.get("x.org", "s7", now=100.0)) == created[7]
        assert await store.get("x.org", "s7", now=100.0 + 3600) is None  # expired
        # An expired session frees its id at once.
        again = await store.create("x.org", _session(7), token="new", now=100.0 + 3600)
        assert again.expires_at == 100.0 + 7200
        assert await store.count_active("x.org", now=100.0) == 51
    finally:
        await store.close()
