"""The MSD store's hot operations on SQLite through one synchronous hop each (msd.sqlite_thread).

`FastMsdStore` is an `MsdStore` whose registration writes (`put_local`, `put_global`,
`put_global_many`) and keyword searches (`search_local`, `search_global`) run on
dedicated threads with SQLAlchemy's synchronous driver: the same Core statements as
msd.store (imported from it, so one schema and one SQL), the writes group-committed.
Everything else (near searches, the collector, migration, deletes, restores from the
mirror) is the inherited async path. `open_store(url)` gives this class for an SQLite
file and the plain `MsdStore` for anything else: PostgreSQL keeps the async path (its
own drivers, row locks and group commit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from msd.database import DatabaseError, Synchronous, open_database
from msd.keyspace import key_of, shadow_of
from msd.schema import SessionRecord
from msd.sqlite_thread import SqliteThread, fast_paths
from msd.store import (
    _KEY_ROWS,
    _PLACE,
    _SEARCH_GLOBAL,
    _SEARCH_LOCAL,
    _SEARCH_LOCAL_SCOPE,
    _UNKEY,
    _UNPLACE,
    BULK_BATCH,
    CELLS_PER_QUERY,
    GC,
    SCHEMA,
    SEARCH_MAX,
    GeoKind,
    HeldRecord,
    MsdStore,
    StoreError,
    _check_limit,
    _parse,
    _upsert_statement,
    geo_cells,
    geo_key,
    global_records,
    key_hex,
    local_sessions,
)
from msd.writebatch import WriteBatcher

SYNCHRONOUS: Synchronous = "NORMAL"  # as MsdStore.open: a commit survives a killed process


class FastMsdStore(MsdStore):
    """`MsdStore` with its registration writes and keyword searches one hop each (SQLite)."""

    def __init__(
        self, engine: AsyncEngine, *, writes: WriteBatcher | None, sync_writes: SqliteThread,
        sync_reads: SqliteThread,
    ) -> None:
        super().__init__(engine, writes=writes)
        self._sync_writes = sync_writes
        self._sync_reads = sync_reads

    async def close(self) -> None:
        # The async writer first: stopping it gives up its turn, which the thread may await.
        await super().close()
        await self._sync_writes.close()
        await self._sync_reads.close()

    async def put_local(self, record: SessionRecord, *, now: float) -> None:
        values = {"domain": record.domain, "uri": record.uri, "body": record.model_dump_json(),
                  "scope": str(record.scope), "expires_at": record.expires_at, "updated_at": now}
        keywords = [{"uri": record.uri, "keyword": keyword} for keyword in record.keywords]
        upsert = _upsert_statement("sqlite", local_sessions, tuple(values), keys=("domain", "uri"))
        place = _place_row(record, GeoKind.LOCAL)

        def write(conn: sa.Connection) -> None:
            conn.execute(upsert, values)
            conn.execute(_UNKEY, {"uri": record.uri})
            if keywords:
                conn.execute(_KEY_ROWS, keywords)
            conn.execute(_UNPLACE, {"uri": record.uri, "kind": GeoKind.LOCAL.value})
            if place is not None:
                conn.execute(_PLACE, place)

        async with self._translate("put local"):
            await self._sync_writes.write(write)

    async def put_global(
        self, keyword: str, record: SessionRecord, *, shadow: bool, origin: str, now: float
    ) -> None:
        await self.put_global_many([HeldRecord(keyword, shadow, record, origin)], now=now)

    async def put_global_many(
        self, held: Iterable[HeldRecord], *, now: float, keep_newer: bool = False
    ) -> int:
        if keep_newer:
            # A restore from the mirror (rare, in pages): it compares with what is held
            # inside its transaction, which the inherited path does.
            return await super().put_global_many(held, now=now, keep_newer=True)
        items = list(held)
        for keyword, _shadow, record, _origin in items:
            if keyword not in record.keywords:
                raise StoreError(f"record {record.uri} does not carry keyword {keyword!r}")
        for i in range(0, len(items), BULK_BATCH):
            write = _held_writer(items[i:i + BULK_BATCH], now=now)
            async with self._translate("put global many"):
                await self._sync_writes.write(write)
        return len(items)

    async def search_local(
        self, keyword: str, *, now: float, scope: str | None = None, limit: int = SEARCH_MAX
    ) -> list[SessionRecord]:
        params: dict[str, Any] = {"keyword": keyword, "now": now, "limit": _check_limit(limit)}
        query = _SEARCH_LOCAL if scope is None else _SEARCH_LOCAL_SCOPE
        if scope is not None:
            params["scope"] = scope
        return await self._records("search local", query, params)

    async def search_global(
        self, keyword: str, *, shadow: bool, now: float, limit: int = SEARCH_MAX
    ) -> list[SessionRecord]:
        params = {"keyword": keyword, "shadow": shadow, "now": now, "limit": _check_limit(limit)}
        return await self._records("search global", _SEARCH_GLOBAL, params)

    async def _records(
        self, operation: str, query: sa.Select[Any], params: dict[str, Any]
    ) -> list[SessionRecord]:
        def read(conn: sa.Connection) -> list[str]:
            return list(conn.execute(query, params).scalars())

        async with self._translate(operation):
            bodies = await self._sync_reads.read(read)
        return [_parse(body) for body in bodies]


async def open_store(url: str) -> MsdStore:
    """The domain's store: `FastMsdStore` for an SQLite file, else the plain `MsdStore`."""
    try:
        engine = await open_database(url, schema=SCHEMA, synchronous=SYNCHRONOUS)
    except DatabaseError as exc:
        raise StoreError(str(exc)) from exc
    paths = fast_paths(engine, synchronous=SYNCHRONOUS, name="msd")
    if paths is None:
        return MsdStore(engine)
    return FastMsdStore(engine, writes=paths.writes, sync_writes=paths.sync_writes,
                  sync_reads=paths.sync_reads)


def _place_row(record: SessionRecord, kind: GeoKind) -> dict[str, str] | None:
    if record.lat is None or record.lon is None:
        return None
    return {"cell": geo_key(record.lat, record.lon), "uri": record.uri, "kind": kind.value}


def _held_writer(items: list[HeldRecord], *, now: float) -> Callable[[sa.Connection], None]:
    """One transaction's worth of held records: a multi-row upsert, then their geo rows."""
    rows: dict[tuple[str, str, bool], dict[str, Any]] = {}
    placed: dict[tuple[str, GeoKind], SessionRecord] = {}
    bodies: dict[int, str] = {}  # a record held under several keywords is dumped once
    for keyword, shadow, record, origin in items:
        key = key_of(keyword)
        body = bodies.get(id(record))
        if body is None:
            body = bodies[id(record)] = record.model_dump_json()
        rows[(keyword, record.uri, shadow)] = {
            "keyword": keyword, "uri": record.uri, "shadow": shadow,
            "key": key_hex(shadow_of(key) if shadow else key), "body": body,
            "origin": origin, "expires_at": record.expires_at, "updated_at": now}
        placed[(record.uri, GeoKind.SHADOW if shadow else GeoKind.GLOBAL)] = record
    values = list(rows.values())
    upsert = _upsert_statement("sqlite", global_records, tuple(values[0]),
                               keys=("keyword", "uri", "shadow"))
    moved = [(kind, [uri for uri, k in placed if k is kind]) for kind in GeoKind]
    places = [row for (_uri, kind), record in placed.items()
              if (row := _place_row(record, kind)) is not None]

    def write(conn: sa.Connection) -> None:
        conn.execute(upsert, values)
        for kind, uris in moved:  # a session has at most one cell per kind: replace it
            for j in range(0, len(uris), CELLS_PER_QUERY):
                conn.execute(sa.delete(geo_cells).where(
                    GC.uri.in_(uris[j:j + CELLS_PER_QUERY]), GC.kind == kind.value))
        if places:
            conn.execute(_PLACE, places)

    return write
