"""The MSD store on real databases (SQLite files, and PostgreSQL when it can run): upserts,
expiry and collection, key ranges, geo cells."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from msd.errors import MsdError
from msd.geo import cell_key
from msd.keyspace import SPACE, key_of, shadow_of
from msd.schema import SessionRecord
from msd.store import (
    COLLECT_BATCH,
    GeoKind,
    HeldRecord,
    MirrorCursor,
    MsdStore,
    StoreError,
    geo_key,
    key_hex,
    sqlite_url,
)
from tests.databases import Database

DOMAIN = "dom01.level0.testdomain.info"
T0 = 1_700_000_000.0
TTL = 600.0
GAINESVILLE = (29.65, -82.32)
LONDON = (51.5, -0.12)


class Clock:
    """A fake clock: the store is told the time, so tests move it by hand."""

    def __init__(self) -> None:
        self.now = T0

    def advance(self, seconds: float) -> None:
        self.now += seconds


def record(
    session_id: str = "jazz",
    *,
    keywords: tuple[str, ...] = ("jazz", "live"),
    scope: str = "global",
    at: tuple[float, float] | None = None,
    expires_at: float = T0 + TTL,
    title: str = "Jazz night",
) -> SessionRecord:
    lat, lon = at if at is not None else (None, None)
    return SessionRecord(
        id=session_id, title=title, keywords=list(keywords), group="233.252.0.1", port=5004,
        scope=scope, lat=lat, lon=lon, uri=f"mcast.{DOMAIN}/{session_id}", domain=DOMAIN,
        expires_at=expires_at, updated_at=T0,
    )


def db_path(tmp_path: Path) -> Path:
    return tmp_path / DOMAIN / "msd.sqlite"


def uris(records: list[SessionRecord]) -> list[str]:
    return sorted(r.uri for r in records)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(database: Database) -> AsyncIterator[MsdStore]:
    opened = await MsdStore.open(database.url)
    try:
        yield opened
    finally:
        await opened.close()


async def test_open_creates_the_domain_file_in_wal_mode(tmp_path: Path) -> None:
    store = await MsdStore.open(sqlite_url(tmp_path, DOMAIN))
    try:
        await store.ping()
        assert db_path(tmp_path).is_file()
        with sqlite3.connect(db_path(tmp_path)) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert DOMAIN in repr(store)
    finally:
        await store.close()


def test_sqlite_url_refuses_a_domain_that_is_not_a_directory_name(tmp_path: Path) -> None:
    assert sqlite_url(tmp_path, DOMAIN).endswith(f"/{DOMAIN}/msd.sqlite")
    for bad in ("../etc", "a/b", "", "Upper.example", ".hidden"):
        with pytest.raises(StoreError):
            sqlite_url(tmp_path, bad)


def test_geo_key_is_the_depth_5_subcell_of_the_one_degree_cell() -> None:
    assert geo_key(*GAINESVILLE) == "119,97/30301"
    assert geo_key(-90, -180) == "0,0/00000"
    assert geo_key(90, 180) == "179,0/22222"  # the pole joins the top row; 180° is −180°
    assert geo_key(-0.5, 179.5) == "89,359/30000"  # the NE quarter, then its SW corner


async def test_put_local_twice_is_one_row(
    store: MsdStore, clock: Clock, database: Database
) -> None:
    session = record(at=GAINESVILLE)
    for _ in range(3):
        await store.put_local(session, now=clock.now)
    assert await store.get_local(session.uri, now=clock.now) == session
    assert len(await database.rows("local_sessions")) == 1
    assert await database.rows("local_keywords") == [(session.uri, "jazz"), (session.uri, "live")]
    assert await database.rows("geo_cells") == [(geo_key(*GAINESVILLE), session.uri, "local")]
    assert await store.counts(now=clock.now) == {
        "local_sessions": 1, "global_records": 0, "shadow_records": 0}


async def test_update_replaces_the_keyword_set_and_moves_the_cell(
    store: MsdStore, clock: Clock, database: Database
) -> None:
    await store.put_local(record(keywords=("jazz", "live"), at=GAINESVILLE), now=clock.now)
    clock.advance(10)
    newer = record(keywords=("live", "blues"), at=LONDON, title="Blues night")
    await store.put_local(newer, now=clock.now)
    assert await store.search_local("jazz", now=clock.now) == []
    assert await store.search_local("live", now=clock.now) == [newer]
    assert await store.search_local("blues", now=clock.now) == [newer]
    assert [kw for _, kw in await database.rows("local_keywords")] == ["blues", "live"]
    assert await database.rows("geo_cells") == [(geo_key(*LONDON), newer.uri, "local")]


async def test_search_local_filters_by_scope(store: MsdStore, clock: Clock) -> None:
    wide = record("wide", scope="global")
    here = record("here", scope="local")
    for session in (wide, here):
        await store.put_local(session, now=clock.now)
    assert uris(await store.search_local("jazz", now=clock.now)) == [here.uri, wide.uri]
    assert await store.search_local("jazz", now=clock.now, scope="local") == [here]
    assert await store.search_local("jazz", now=clock.now, scope="global") == [wide]
    assert await store.search_local("nothing", now=clock.now) == []


async def test_limits_are_explicit_and_checked(store: MsdStore, clock: Clock) -> None:
    for n in range(5):
        await store.put_local(record(f"s{n}"), now=clock.now)
    assert len(await store.search_local("jazz", now=clock.now, limit=3)) == 3
    for bad in (0, -1, True):
        with pytest.raises(StoreError, match="limit"):
            await store.search_local("jazz", now=clock.now, limit=bad)
        with pytest.raises(StoreError, match="limit"):
            await store.global_outside(0, 1, now=clock.now, limit=bad)


async def test_expiry_hides_and_the_collector_deletes_every_row(
    store: MsdStore, clock: Clock, database: Database
) -> None:
    short = record("short", at=GAINESVILLE, expires_at=T0 + 60)
    long = record("long", at=LONDON, expires_at=T0 + 3600)
    for session in (short, long):
        await store.put_local(session, now=clock.now)
        for keyword in session.keywords:
            for shadow in (False, True):
                await store.put_global(keyword, session, shadow=shadow, origin=DOMAIN, now=T0)
    clock.advance(60)  # `short` expires exactly now: expires_at <= now is expired
    assert await store.get_local(short.uri, now=clock.now) is None
    assert await store.search_local("jazz", now=clock.now) == [long]
    assert await store.search_global("jazz", shadow=True, now=clock.now) == [long]
    every_cell = [cell_key(*GAINESVILLE), cell_key(*LONDON)]
    assert await store.near(every_cell, kinds=list(GeoKind), now=clock.now) == [long]
    assert await store.counts(now=clock.now) == {
        "local_sessions": 1, "global_records": 2, "shadow_records": 2}
    assert len(await database.rows("local_sessions")) == 2  # hidden, not yet gone

    # 1 session + 2 keywords + 1 local cell; 4 held records + a global and a shadow cell.
    assert await store.collect_expired(now=clock.now) == 4 + 6
    assert await store.collect_expired(now=clock.now) == 0
    for table in ("local_sessions", "local_keywords", "global_records", "geo_cells"):
        assert short.uri not in str(await database.rows(table))
        assert long.uri in str(await database.rows(table))
    clock.advance(3600)
    assert await store.collect_expired(now=clock.now) == 10
    for table in ("local_sessions", "local_keywords", "global_records", "geo_cells"):
        assert await database.rows(table) == []


async def test_the_collector_works_in_batches(store: MsdStore, clock: Clock) -> None:
    count = COLLECT_BATCH + 7
    for n in range(count):
        await store.put_local(record(f"s{n}", keywords=("jazz",)), now=clock.now)
    clock.advance(TTL)
    assert await store.collect_expired(now=clock.now) == 2 * count
    assert (await store.counts(now=T0))["local_sessions"] == 0


async def test_delete_local_takes_its_keyword_and_geo_rows(
    store: MsdStore, clock: Clock, database: Database
) -> None:
    session = record(at=GAINESVILLE)
    await store.put_local(session, now=clock.now)
    await store.put_global("jazz", session, shadow=False, origin=DOMAIN, now=clock.now)
    assert await store.delete_local(session.uri)
    assert not await store.delete_local(session.uri)
    assert await database.rows("local_keywords") == []
    assert await database.rows("geo_cells") == [(geo_key(*GAINESVILLE), session.uri, "global")]


async def test_global_and_shadow_records_are_kept_apart(
    store: MsdStore, clock: Clock, database: Database
) -> None:
    primary = record("p")
    shadowed = record("s")
    for _ in range(2):  # idempotent
        await store.put_global("jazz", primary, shadow=False, origin="a.example", now=clock.now)
        await store.put_global("jazz", shadowed, shadow=True, origin="b.example", now=clock.now)
    assert await store.search_global("jazz", shadow=False, now=clock.now) == [primary]
    assert await store.search_global("jazz", shadow=True, now=clock.now) == [shadowed]
    assert await store.search_global("live", shadow=False, now=clock.now) == []
    key = key_of("jazz")
    stored = {(r[2], r[3]) for r in await database.rows("global_records")}
    assert stored == {(0, key_hex(key)), (1, key_hex(shadow_of(key)))}
    assert await store.counts(now=clock.now) == {
        "local_sessions": 0, "global_records": 1, "shadow_records": 1}


async def test_put_global_refuses_a_keyword_the_session_does_not_carry(
    store: MsdStore, clock: Clock, database: Database
) -> None:
    with pytest.raises(StoreError, match="does not carry keyword 'rock'"):
        await store.put_global("rock", record(), shadow=False, origin=DOMAIN, now=clock.now)
    assert await database.rows("global_records") == []


async def test_global_outside_at_the_range_boundaries(store: MsdStore, clock: Clock) -> None:
    session = record(keywords=("jazz",))
    await store.put_global("jazz", session, shadow=False, origin="o.example", now=clock.now)
    k = key_of("jazz")
    held = HeldRecord("jazz", False, session, "o.example")

    async def outside(start: int, end: int) -> list[HeldRecord]:
        return await store.global_outside(start, end, now=clock.now, limit=10)

    assert await outside(k, k + 1) == []  # start is inclusive
    assert await outside(0, k) == [held]  # end is exclusive
    assert await outside(k + 1, SPACE) == [held]  # below the start
    assert await outside(k, SPACE) == []  # the top end 2**128
    assert await outside(0, SPACE) == []
    assert await outside(0, 1) == [held]

    # The shadow lives at ~h, and migrates by ~h.
    await store.put_global("jazz", session, shadow=True, origin="o.example", now=clock.now)
    s = shadow_of(k)
    assert await outside(s, s + 1) == [held]
    lo, hi = min(k, s), max(k, s)
    assert await outside(lo, hi + 1) == []
    assert [h.shadow for h in await outside(lo + 1, hi + 1)] == [lo == s]
    assert len(await store.global_outside(hi + 1, SPACE, now=clock.now, limit=1)) == 1
    assert await store.global_outside(hi + 1, SPACE, now=T0 + TTL, limit=10) == []  # expired
    for start, end in ((5, 5), (6, 5), (-1, 5), (0, SPACE + 1)):
        with pytest.raises(StoreError, match="start < end"):
            await outside(start, end)


async def test_global_within_pages_a_range_in_key_order(store: MsdStore, clock: Clock) -> None:
    words = [f"w{i}" for i in range(12)]
    for i, word in enumerate(words):
        session = record(f"s{i}", keywords=(word,))
        await store.put_global(word, session, shadow=bool(i % 2), origin=DOMAIN, now=clock.now)
    keys = sorted(shadow_of(key_of(w)) if i % 2 else key_of(w) for i, w in enumerate(words))
    lo, hi = keys[2], keys[9]  # [lo, hi): the 3rd to the 9th key
    pages, after = [], None
    while True:
        page = await store.global_within(lo, hi, after=after, now=clock.now, limit=3)
        pages.append([cursor.key for cursor, _ in page])
        if len(page) < 3:
            break
        after = page[-1][0]
    assert [k for page in pages for k in page] == [key_hex(k) for k in keys[2:9]]
    assert [len(page) for page in pages] == [3, 3, 1]
    held = (await store.global_within(0, SPACE, after=None, now=clock.now, limit=100))
    assert {(h.keyword, h.shadow) for _, h in held} == {(w, bool(i % 2))
                                                        for i, w in enumerate(words)}
    last = MirrorCursor(key_hex(keys[-1]), "~", "~", True)  # past every row
    assert await store.global_within(0, SPACE, after=last, now=clock.now, limit=5) == []
    assert await store.global_within(0, SPACE, after=None, now=T0 + TTL, limit=5) == []
    with pytest.raises(StoreError, match="start < end"):
        await store.global_within(5, 5, after=None, now=clock.now, limit=5)


async def test_keep_newer_leaves_a_later_copy_alone(store: MsdStore, clock: Clock) -> None:
    newer = record(keywords=("jazz",), expires_at=T0 + 2 * TTL, title="newer", at=LONDON)
    older = record(keywords=("jazz",), title="older", at=GAINESVILLE)
    await store.put_global("jazz", newer, shadow=False, origin=DOMAIN, now=clock.now)
    held = [HeldRecord("jazz", False, older, DOMAIN), HeldRecord("jazz", True, older, DOMAIN)]
    assert await store.put_global_many(held, now=clock.now, keep_newer=True) == 2
    assert await store.search_global("jazz", shadow=False, now=clock.now) == [newer]
    assert await store.search_global("jazz", shadow=True, now=clock.now) == [older]  # was absent
    # The geo row stays the newer copy's.
    assert await store.near([cell_key(*GAINESVILLE)], kinds=[GeoKind.GLOBAL],
                            now=clock.now) == []
    await store.put_global_many(held, now=clock.now)  # without keep_newer: the last word wins
    assert await store.search_global("jazz", shadow=False, now=clock.now) == [older]


async def test_migration_deletes_records_and_their_last_geo_row(
    store: MsdStore, clock: Clock, database: Database
) -> None:
    session = record(at=LONDON)
    for keyword in session.keywords:
        await store.put_global(keyword, session, shadow=False, origin=DOMAIN, now=clock.now)
    cell = geo_key(*LONDON)
    moving = await store.global_outside(0, 1, now=clock.now, limit=100)
    assert sorted(h.keyword for h in moving) == ["jazz", "live"]
    assert await store.delete_global("jazz", session.uri, shadow=False)
    assert await database.rows("geo_cells") == [(cell, session.uri, "global")]  # "live" remains
    assert not await store.delete_global("jazz", session.uri, shadow=False)
    assert not await store.delete_global("live", session.uri, shadow=True)
    assert await store.delete_global("live", session.uri, shadow=False)
    assert await database.rows("geo_cells") == []
    assert await store.near([cell_key(*LONDON)], kinds=[GeoKind.GLOBAL], now=clock.now) == []


async def test_near_finds_sessions_by_cell_and_kind(store: MsdStore, clock: Clock) -> None:
    here = record("here", at=GAINESVILLE)
    there = record("there", at=LONDON)
    nowhere = record("nowhere")
    for session in (here, there, nowhere):
        await store.put_local(session, now=clock.now)
    await store.put_global("jazz", there, shadow=True, origin=DOMAIN, now=clock.now)
    gnv, lon = cell_key(*GAINESVILLE), cell_key(*LONDON)
    assert await store.near([gnv], kinds=["local"], now=clock.now) == [here]
    both = await store.near([gnv, lon, gnv], kinds=["local"], now=clock.now)
    assert uris(both) == [here.uri, there.uri]
    assert await store.near([lon], kinds=[GeoKind.GLOBAL], now=clock.now) == []
    assert await store.near([lon], kinds=[GeoKind.SHADOW], now=clock.now) == [there]
    assert await store.near([lon], kinds=list(GeoKind), now=clock.now) == [there]  # once
    assert await store.near(["0,0"], kinds=list(GeoKind), now=clock.now) == []
    assert len(await store.near([gnv, lon], kinds=["local"], now=clock.now, limit=1)) == 1
    with pytest.raises(StoreError, match="geo kinds"):
        await store.near([gnv], kinds=["elsewhere"], now=clock.now)
    for bad in ("119", "119,97/3", "180,0"):  # 1° keys only: a prefix like '119' spans rows
        with pytest.raises(StoreError, match="cell key"):
            await store.near([bad], kinds=["local"], now=clock.now)


async def test_near_with_more_cells_than_one_query_takes(store: MsdStore, clock: Clock) -> None:
    await store.put_local(record(at=(89.5, 179.5)), now=clock.now)
    every_cell = [f"{row},{col}" for row in range(180) for col in range(0, 360, 4)]
    every_cell.append(cell_key(89.5, 179.5))
    assert len(await store.near(every_cell, kinds=["local"], now=clock.now)) == 1


async def test_two_stores_on_one_database_see_each_others_writes(
    store: MsdStore, clock: Clock, database: Database
) -> None:
    other = await MsdStore.open(database.url)
    try:
        await store.put_local(record("a"), now=clock.now)
        assert uris(await other.search_local("jazz", now=clock.now)) == [record("a").uri]
        await other.put_global("live", record("b"), shadow=False, origin=DOMAIN, now=clock.now)
        assert await store.search_global("live", shadow=False, now=clock.now) == [record("b")]
        # Both write at once: the busy timeout makes the loser wait instead of fail.
        await asyncio.gather(*(
            db.put_local(record(f"{name}{n}"), now=clock.now)
            for n in range(20) for name, db in (("x", store), ("y", other))))
        assert (await other.counts(now=clock.now))["local_sessions"] == 41
        clock.advance(TTL)
        assert await other.collect_expired(now=clock.now) > 0
        assert await store.counts(now=T0) == {
            "local_sessions": 0, "global_records": 0, "shadow_records": 0}
    finally:
        await other.close()


async def test_a_restart_keeps_everything(database: Database, clock: Clock) -> None:
    url = database.url
    session = record(at=GAINESVILLE)
    first = await MsdStore.open(url)
    await first.put_local(session, now=clock.now)
    await first.put_global("jazz", session, shadow=True, origin="x.example", now=clock.now)
    await first.close()
    second = await MsdStore.open(url)
    try:
        assert await second.get_local(session.uri, now=clock.now) == session
        assert await second.search_global("jazz", shadow=True, now=clock.now) == [session]
        assert await second.near(["119,97"], kinds=["local"], now=clock.now) == [session]
    finally:
        await second.close()


async def test_an_upsert_that_fails_midway_leaves_the_old_version(
    store: MsdStore, clock: Clock, database: Database
) -> None:
    old = record(at=GAINESVILLE)
    await store.put_local(old, now=clock.now)
    before = {t: await database.rows(t) for t in ("local_sessions", "local_keywords", "geo_cells")}
    # model_construct skips validation: the duplicate keyword fails the keyword insert, after
    # the session row was replaced and the old keywords deleted.
    broken = SessionRecord.model_construct(
        **(record(at=LONDON, title="Broken").model_dump() | {"keywords": ["rock", "rock"]}))
    with pytest.raises(StoreError, match="put local failed: IntegrityError"):
        await store.put_local(broken, now=clock.now + 1)
    assert {t: await database.rows(t) for t in before} == before
    assert await store.get_local(old.uri, now=clock.now) == old
    new = SessionRecord.model_construct(**(broken.model_dump() | {"uri": "mcast.x/new"}))
    with pytest.raises(StoreError):
        await store.put_local(new, now=clock.now)
    assert await store.get_local("mcast.x/new", now=clock.now) is None


@pytest.mark.parametrize("case", ["file-as-directory", "directory-as-file", "not-a-database",
                                  "unknown-dialect", "sync-driver", "malformed"])
async def test_an_unusable_url_or_path_is_a_store_error(tmp_path: Path, case: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not an SQLite database, " * 100)
    url = {
        "file-as-directory": f"sqlite+aiosqlite:///{blocker}/{DOMAIN}/msd.sqlite",
        "directory-as-file": f"sqlite+aiosqlite:///{tmp_path}",
        "not-a-database": f"sqlite+aiosqlite:///{garbage}",
        "unknown-dialect": "nosuchdb+nodriver://host/db",
        "sync-driver": f"sqlite:///{tmp_path}/sync.sqlite",
        "malformed": "not a url",
    }[case]
    with pytest.raises(StoreError) as raised:
        await MsdStore.open(url)
    assert isinstance(raised.value, MsdError)


async def test_a_corrupt_stored_body_is_a_store_error(
    store: MsdStore, clock: Clock, database: Database
) -> None:
    await store.put_local(record(), now=clock.now)
    await database.execute("UPDATE local_sessions SET body = '{\"id\": 1}'")
    with pytest.raises(StoreError, match="not a valid session"):
        await store.search_local("jazz", now=clock.now)


async def test_one_writer_only_on_sqlite(store: MsdStore, database: Database) -> None:
    # The session service serializes held-record writes only where transactions run
    # concurrently; on SQLite that would undo the group commit.
    assert store.one_writer == (database.backend == "sqlite")
