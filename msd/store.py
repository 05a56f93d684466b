"""An MSD's session databases: local sessions, held keyword records, geo cells (SQLAlchemy 2)."""

# One SQLite (WAL) file per domain by default, any async URL works; see docs/msd-store.md.

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from msd.database import DatabaseError, open_database
from msd.errors import MsdError
from msd.geo import Circle, GeoError, parse_cell_key, subcell_key
from msd.keyspace import SPACE, key_of, shadow_of
from msd.migrate import Schema
from msd.schema import SessionRecord
from msd.writebatch import WriteBatcher, batcher_for

SEARCH_MAX = 1000  # records one keyword search returns at most
NEAR_MAX = 1000  # sessions one geo lookup returns at most
CELLS_PER_QUERY = 500  # cell keys per IN list (SQLite caps bound parameters per statement)
RANGES_PER_QUERY = 200  # key ranges per statement: two bound parameters each
COLLECT_BATCH = 500  # URIs the collector deletes per transaction, so writers never wait long
BULK_BATCH = 500  # records put_global_many writes per transaction
# The geo rows' sub-cell tree (msd.geo): fixed per store, since keys of two trees do not mix.
GEO_K = 2
GEO_DEPTH = 5  # 1/32° ≈ 3.5 km at the equator, the dissertation's figure
SQLITE_FILE = "msd.sqlite"
PARSED_CACHE = 4096  # stored bodies kept parsed (a few MB): the records searches return

_DOMAIN = re.compile(r"[a-z0-9_-][a-z0-9_.-]{0,252}")
# 32 lower-case hex digits keep string order equal to numeric order; PostgreSQL must then
# compare bytewise, not by a locale's collation.
_KEY = sa.String(32).with_variant(sa.String(32, collation="C"), "postgresql")
_URI = sa.String(330)  # mcast.<253-character domain>/<63-character id>

metadata = sa.MetaData()

local_sessions = sa.Table(
    "local_sessions", metadata,
    sa.Column("domain", sa.String(253), primary_key=True),
    # Indexed on its own: keyword and geo rows join by URI alone, which the primary key
    # (domain first) cannot serve; without it every local search scanned all sessions.
    sa.Column("uri", _URI, primary_key=True, index=True),
    sa.Column("body", sa.Text, nullable=False),  # the SessionRecord as JSON
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)
local_keywords = sa.Table(
    "local_keywords", metadata,
    sa.Column("uri", _URI, primary_key=True),
    sa.Column("keyword", sa.String(64), primary_key=True, index=True),
)
global_records = sa.Table(
    "global_records", metadata,
    sa.Column("keyword", sa.String(64), primary_key=True),
    sa.Column("uri", _URI, primary_key=True, index=True),
    sa.Column("shadow", sa.Boolean, primary_key=True),
    sa.Column("key", _KEY, nullable=False, index=True),  # h, or ~h for a shadow
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("origin", sa.String(253), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
    sa.Column("updated_at", sa.Float, nullable=False),
)
# 'row,col/path': a sub-cell key, so a 1° cell or any coarser sub-cell is a key range (bytewise
# order on PostgreSQL too). Rows written before sub-cells hold the bare 1° key 'row,col'.
_CELL = sa.String(24).with_variant(sa.String(24, collation="C"), "postgresql")
geo_cells = sa.Table(
    "geo_cells", metadata,
    sa.Column("cell", _CELL, primary_key=True),
    sa.Column("uri", _URI, primary_key=True, index=True),
    sa.Column("kind", sa.String(8), primary_key=True),
)
LS, LK, GR, GC = local_sessions.c, local_keywords.c, global_records.c, geo_cells.c
# Made by the Alembic revisions in msd/migrations/versions/ (docs/deploy.md, "Upgrades").
SCHEMA = Schema(name="msd", metadata=metadata, migrations=Path(__file__).with_name("migrations"),
                baseline="0001", marker_table="local_sessions", head="0002")


class StoreError(MsdError):
    """The MSD database could not be reached or refused the operation."""


class GeoKind(StrEnum):
    """Which table a geo cell row points into."""

    LOCAL = "local"
    GLOBAL = "global"
    SHADOW = "shadow"


class HeldRecord(NamedTuple):
    """A keyword record this MSD holds for the hierarchy."""

    keyword: str
    shadow: bool
    record: SessionRecord
    origin: str


class MirrorCursor(NamedTuple):
    """Where a paged read of held records stopped: the last row's (key, keyword, uri, shadow)."""

    key: str
    keyword: str
    uri: str
    shadow: bool


class NearRecord(NamedTuple):
    """A record found by a proximity search, with its geodesic distance from the centre."""

    record: SessionRecord
    distance_km: float


def geo_key(lat: float, lon: float) -> str:
    """The geo row key of a point: its sub-cell 'row,col/path' (msd.geo, k = 2, depth 5)."""
    return subcell_key(lat, lon, k=GEO_K, depth=GEO_DEPTH)


def key_hex(key: int) -> str:
    """A key as 32 lower-case hex digits, so that string order is numeric order."""
    return format(key, "032x")


def sqlite_url(data_dir: Path | str, domain: str) -> str:
    """The default database of a domain: `<data_dir>/<domain>/msd.sqlite`."""
    if not _DOMAIN.fullmatch(domain) or ".." in domain:
        raise StoreError(f"domain {domain!r} is not a lower-case DNS name usable as a directory")
    return f"sqlite+aiosqlite:///{Path(data_dir) / domain / SQLITE_FILE}"


class MsdStore:
    """The domain's sessions and held records behind one SQLAlchemy async engine."""

    def __init__(self, engine: AsyncEngine, *, writes: WriteBatcher | None = None) -> None:
        self._engine = engine
        self._writes = writes  # group commit on SQLite (msd.writebatch); None: engine.begin()

    def __repr__(self) -> str:
        return f"MsdStore({self._engine.url.render_as_string(hide_password=True)!r})"

    @classmethod
    async def open(cls, url: str) -> MsdStore:
        """Connect (SQLite: WAL, synchronous=NORMAL) and upgrade the schema to the newest revision.

        NORMAL, not FULL: a commit survives a killed process but not a power cut. These
        records are soft state that originators refresh and the URS can re-create; three
        fsyncs per registration would double its latency. (The URS keeps FULL.)
        """
        try:
            engine = await open_database(url, schema=SCHEMA, synchronous="NORMAL")
        except DatabaseError as exc:
            raise StoreError(str(exc)) from exc
        return cls(engine, writes=batcher_for(engine, synchronous="NORMAL"))

    async def close(self) -> None:
        if self._writes is not None:
            await self._writes.close()
        await self._engine.dispose()

    def _begin(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        """A write transaction; on SQLite one savepoint of a group commit (msd.writebatch)."""
        return self._engine.begin() if self._writes is None else self._writes.begin()

    @property
    def one_writer(self) -> bool:
        """Whether the database runs one write transaction at a time (SQLite), so that two
        writes of the same rows cannot interleave; PostgreSQL runs them concurrently."""
        return self._engine.dialect.name == "sqlite"

    async def ping(self) -> None:
        """Raise StoreError unless the database answers."""
        async with self._translate("ping"), self._engine.connect() as conn:
            await conn.execute(sa.select(1))

    async def put_local(self, record: SessionRecord, *, now: float) -> None:
        """Insert or replace a session of this domain with its keyword set and geo cell."""
        values = {"domain": record.domain, "uri": record.uri, "body": record.model_dump_json(),
                  "scope": str(record.scope), "expires_at": record.expires_at, "updated_at": now}
        keywords = [{"uri": record.uri, "keyword": keyword} for keyword in record.keywords]
        # One transaction, opened by the first write: a failure anywhere leaves the old version.
        async with self._translate("put local"), self._begin() as conn:
            await _upsert(conn, local_sessions, values, keys=("domain", "uri"))
            await conn.execute(_UNKEY, {"uri": record.uri})
            if keywords:
                await conn.execute(_KEY_ROWS, keywords)
            await _place(conn, record, kind=GeoKind.LOCAL)

    async def get_local(self, uri: str, *, now: float) -> SessionRecord | None:
        """The session registered here under `uri`, or None if there is none or it expired."""
        query = sa.select(LS.body).where(LS.uri == uri, LS.expires_at > now)
        async with self._translate("get local"), self._engine.connect() as conn:
            body = (await conn.execute(query)).scalar_one_or_none()
        return None if body is None else _parse(body)

    async def delete_local(self, uri: str) -> bool:
        """Remove a session with its keyword and geo rows; False if there was none."""
        async with self._translate("delete local"), self._begin() as conn:
            result = await conn.execute(sa.delete(local_sessions).where(LS.uri == uri))
            await conn.execute(sa.delete(local_keywords).where(LK.uri == uri))
            await conn.execute(sa.delete(geo_cells).where(GC.uri == uri, GC.kind == GeoKind.LOCAL))
        return bool(result.rowcount)

    async def search_local(
        self, keyword: str, *, now: float, scope: str | None = None, limit: int = SEARCH_MAX
    ) -> list[SessionRecord]:
        """Unexpired sessions of this domain carrying `keyword`, optionally of one scope."""
        params = {"keyword": keyword, "now": now, "limit": _check_limit(limit)}
        if scope is None:
            return await self._bodies("search local", _SEARCH_LOCAL, params)
        return await self._bodies("search local", _SEARCH_LOCAL_SCOPE, params | {"scope": scope})

    async def search_local_near(
        self, keyword: str, *, near: tuple[float, float], within_km: float, now: float,
        scope: str | None = None, limit: int = SEARCH_MAX,
    ) -> list[NearRecord]:
        """`search_local` within `within_km` (inclusive, geodesic) of `near`, nearest first.

        Candidates come from the geo rows in the circle's sub-cell cover, then each is kept
        only if its exact distance is within; sessions without coordinates are left out.
        """
        circle = _circle(near, within_km)
        query = (sa.select(LS.body).join(local_keywords, LK.uri == LS.uri)
                 .join(geo_cells, sa.and_(GC.uri == LS.uri, GC.kind == GeoKind.LOCAL))
                 .where(LK.keyword == keyword, LS.expires_at > now))
        if scope is not None:
            query = query.where(LS.scope == scope)
        return await self._nearest("search local near", query, circle, limit=limit)

    async def put_global(
        self, keyword: str, record: SessionRecord, *, shadow: bool, origin: str, now: float
    ) -> None:
        """Insert or refresh the record held for `keyword` (a shadow is stored under ~h)."""
        if keyword not in record.keywords:
            raise StoreError(f"record {record.uri} does not carry keyword {keyword!r}")
        key = key_of(keyword)
        values = {"keyword": keyword, "uri": record.uri, "shadow": shadow,
                  "key": key_hex(shadow_of(key) if shadow else key),
                  "body": record.model_dump_json(), "origin": origin,
                  "expires_at": record.expires_at, "updated_at": now}
        async with self._translate("put global"), self._begin() as conn:
            await _upsert(conn, global_records, values, keys=("keyword", "uri", "shadow"))
            await _place(conn, record, kind=GeoKind.SHADOW if shadow else GeoKind.GLOBAL)

    async def put_global_many(
        self, held: Iterable[HeldRecord], *, now: float, keep_newer: bool = False
    ) -> int:
        """`put_global` for many records: BULK_BATCH per transaction; the number given.

        Every record is checked before anything is written; each batch is atomic, and a
        record given twice is written as its last version. With `keep_newer`, a record
        already held with a later expiry is left as it is (copies restored from the mirror
        may be older than what an originator has sent since).
        """
        items = list(held)
        for keyword, _shadow, record, _origin in items:
            if keyword not in record.keywords:
                raise StoreError(f"record {record.uri} does not carry keyword {keyword!r}")
        for i in range(0, len(items), BULK_BATCH):
            rows: dict[tuple[str, str, bool], dict[str, Any]] = {}
            placed: dict[tuple[str, GeoKind], SessionRecord] = {}
            for keyword, shadow, record, origin in items[i:i + BULK_BATCH]:
                key = key_of(keyword)
                rows[(keyword, record.uri, shadow)] = {
                    "keyword": keyword, "uri": record.uri, "shadow": shadow,
                    "key": key_hex(shadow_of(key) if shadow else key),
                    "body": record.model_dump_json(), "origin": origin,
                    "expires_at": record.expires_at, "updated_at": now}
                placed[(record.uri, GeoKind.SHADOW if shadow else GeoKind.GLOBAL)] = record
            async with self._translate("put global many"), self._begin() as conn:
                if keep_newer:
                    await _drop_older(conn, rows, placed)
                await _upsert_many(conn, global_records, list(rows.values()),
                                   keys=("keyword", "uri", "shadow"))
                await _place_many(conn, placed)
        return len(items)

    async def search_global(
        self, keyword: str, *, shadow: bool, now: float, limit: int = SEARCH_MAX
    ) -> list[SessionRecord]:
        """Unexpired records held for `keyword`: primaries, or shadows."""
        params = {"keyword": keyword, "shadow": shadow, "now": now, "limit": _check_limit(limit)}
        return await self._bodies("search global", _SEARCH_GLOBAL, params)

    async def search_global_near(
        self, keyword: str, *, shadow: bool, near: tuple[float, float], within_km: float,
        now: float, limit: int = SEARCH_MAX,
    ) -> list[NearRecord]:
        """`search_global` within `within_km` (inclusive, geodesic) of `near`, nearest first.

        Candidates come from the geo rows (kind global or shadow) in the circle's sub-cell
        cover, then each is kept only if its exact distance is within; records without
        coordinates are left out. At most `limit`: the nearest, ties by URI.
        """
        circle = _circle(near, within_km)
        kind = GeoKind.SHADOW if shadow else GeoKind.GLOBAL
        query = (sa.select(GR.body)
                 .join(geo_cells, sa.and_(GC.uri == GR.uri, GC.kind == kind))
                 .where(GR.keyword == keyword, GR.shadow == shadow, GR.expires_at > now))
        return await self._nearest("search global near", query, circle, limit=limit)

    async def global_outside(
        self, start: int, end: int, *, now: float, limit: int
    ) -> list[HeldRecord]:
        """Unexpired held records whose key is not in [start, end): those to migrate."""
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= SPACE):
            raise StoreError(f"need 0 <= start < end <= 2**128, got {start!r}, {end!r}")
        outside = [GR.key < key_hex(start)]
        if end < SPACE:  # the top end needs 33 hex digits, and no key lies at or above it
            outside.append(GR.key >= key_hex(end))
        query = (sa.select(GR.keyword, GR.shadow, GR.body, GR.origin)
                 .where(sa.or_(*outside), GR.expires_at > now)
                 .order_by(GR.key, GR.keyword, GR.uri, GR.shadow).limit(_check_limit(limit)))
        async with self._translate("list records outside a range"), self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [HeldRecord(r.keyword, bool(r.shadow), _parse(r.body), r.origin) for r in rows]

    async def global_within(
        self, start: int, end: int, *, after: MirrorCursor | None, now: float, limit: int
    ) -> list[tuple[MirrorCursor, HeldRecord]]:
        """Unexpired held records whose key is in [start, end), in key order, from just
        after `after`: one page of what a domain restores from the mirror of its range."""
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= SPACE):
            raise StoreError(f"need 0 <= start < end <= 2**128, got {start!r}, {end!r}")
        where = [GR.key >= key_hex(start), GR.expires_at > now]
        if end < SPACE:
            where.append(GR.key < key_hex(end))
        if after is not None:
            where.append(sa.tuple_(GR.key, GR.keyword, GR.uri, GR.shadow)
                         > sa.tuple_(sa.literal(after.key), sa.literal(after.keyword),
                                     sa.literal(after.uri), sa.literal(after.shadow)))
        query = (sa.select(GR.key, GR.keyword, GR.shadow, GR.uri, GR.body, GR.origin)
                 .where(*where)
                 .order_by(GR.key, GR.keyword, GR.uri, GR.shadow).limit(_check_limit(limit)))
        async with self._translate("list records within a range"), self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(MirrorCursor(r.key, r.keyword, r.uri, bool(r.shadow)),
                 HeldRecord(r.keyword, bool(r.shadow), _parse(r.body), r.origin)) for r in rows]

    async def delete_global(self, keyword: str, uri: str, *, shadow: bool) -> bool:
        """Remove one held record (and its geo row if it was the session's last); False if none."""
        match = (GR.keyword == keyword, GR.uri == uri, GR.shadow == shadow)
        async with self._translate("delete global"), self._begin() as conn:
            result = await conn.execute(sa.delete(global_records).where(*match))
            await _drop_orphan_cells(conn, [uri], shadow=shadow)
        return bool(result.rowcount)

    async def near(
        self, cell_keys: Iterable[str], *, kinds: Iterable[GeoKind | str], now: float,
        limit: int = NEAR_MAX,
    ) -> list[SessionRecord]:
        """Unexpired sessions with a geo row of one of `kinds` in one of the 1° cells
        ('row,col'), each once."""
        try:
            cells = sorted({parse_cell_key(key).key for key in cell_keys})
        except GeoError as exc:
            raise StoreError(f"near: {exc}") from None
        try:
            wanted = [GeoKind(kind) for kind in dict.fromkeys(kinds)]
        except ValueError as exc:
            raise StoreError(f"geo kinds are {[k.value for k in GeoKind]}: {exc}") from None
        _check_limit(limit)
        ranges = _key_ranges(f"{cell}/" for cell in cells)
        found: dict[str, SessionRecord] = {}  # by URI: a session may be both local and held
        async with self._translate("near"), self._engine.connect() as conn:
            for kind in wanted:
                for i in range(0, len(ranges), RANGES_PER_QUERY):
                    chunk = ranges[i:i + RANGES_PER_QUERY]
                    query = _near_query(_in_ranges(chunk), kind, now=now, limit=limit)
                    for uri, body in (await conn.execute(query)).all():
                        if uri not in found and len(found) < limit:
                            found[uri] = _parse(body)
        return list(found.values())

    async def collect_expired(self, *, now: float) -> int:
        """Delete expired sessions and records with their keyword and geo rows; count rows."""
        gone = 0
        for step in (_collect_local, _collect_global):
            while True:
                async with self._translate("collect expired"), self._begin() as conn:
                    rows, batch = await step(conn, now=now)
                gone += rows
                if batch < COLLECT_BATCH:
                    break
        return gone

    async def counts(self, *, now: float) -> dict[str, int]:
        """Unexpired local sessions, global records and shadow records."""
        local = sa.select(sa.func.count()).where(LS.expires_at > now)
        held = sa.select(GR.shadow, sa.func.count()).where(GR.expires_at > now).group_by(GR.shadow)
        async with self._translate("count"), self._engine.connect() as conn:
            sessions = int((await conn.execute(local)).scalar_one())
            by_kind = {bool(shadow): int(n) for shadow, n in (await conn.execute(held)).all()}
        return {"local_sessions": sessions, "global_records": by_kind.get(False, 0),
                "shadow_records": by_kind.get(True, 0)}

    async def _nearest(
        self, operation: str, query: sa.Select[Any], circle: Circle, *, limit: int
    ) -> list[NearRecord]:
        # The body is the truth: its own lat/lon decide, the geo rows only choose candidates.
        _check_limit(limit)
        prefixes = circle.prefixes(k=GEO_K, depth=GEO_DEPTH)
        if prefixes is None:
            statements = [query]  # the circle reaches everywhere: every row with a geo row
        else:
            ranges = _key_ranges(prefixes)
            statements = [query.where(_in_ranges(ranges[i:i + RANGES_PER_QUERY]))
                          for i in range(0, len(ranges), RANGES_PER_QUERY)]
        kept: list[tuple[float, str, str]] = []  # (km, uri, body), at most 2 × limit
        async with self._translate(operation), self._engine.connect() as conn:
            for statement in statements:
                async with conn.stream(statement) as rows:
                    async for (body,) in rows:
                        uri, lat, lon = _where(body)
                        if lat is None or lon is None:
                            continue
                        km = circle.distance(lat, lon)
                        if km is not None:
                            kept.append((km, uri, body))
                            if len(kept) >= 2 * limit:
                                kept = sorted(kept)[:limit]
        return [NearRecord(_parse(body), km) for km, _uri, body in sorted(kept)[:limit]]

    async def _bodies(
        self, operation: str, query: sa.Select[Any], params: dict[str, Any] | None = None
    ) -> list[SessionRecord]:
        async with self._translate(operation), self._engine.connect() as conn:
            bodies = (await conn.execute(query, params)).scalars().all()
        return [_parse(body) for body in bodies]

    @contextlib.asynccontextmanager
    async def _translate(self, operation: str) -> AsyncIterator[None]:
        # Library and OS errors stop here, as StoreError; the transaction has rolled back.
        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"database {operation} failed: {type(exc).__name__}: {exc}") from exc


async def _upsert(
    conn: AsyncConnection, table: sa.Table, values: dict[str, Any], *, keys: Sequence[str]
) -> None:
    changes = {name: value for name, value in values.items() if name not in keys}
    if conn.dialect.name in ("sqlite", "postgresql"):
        # One statement: two processes re-registering at once cannot both miss and both insert.
        await conn.execute(_upsert_statement(conn.dialect.name, table, tuple(values),
                                             keys=tuple(keys)), values)
        return
    match = [table.c[key] == values[key] for key in keys]
    if (await conn.execute(sa.update(table).where(*match).values(**changes))).rowcount == 0:
        await conn.execute(sa.insert(table).values(**values))


async def _upsert_many(
    conn: AsyncConnection, table: sa.Table, rows: list[dict[str, Any]], *, keys: Sequence[str]
) -> None:
    # Rows must be distinct by key: PostgreSQL refuses to update one row twice in a statement.
    if not rows:
        return
    if conn.dialect.name not in ("sqlite", "postgresql"):
        for values in rows:
            await _upsert(conn, table, values, keys=keys)
        return
    await conn.execute(_upsert_statement(conn.dialect.name, table, tuple(rows[0]),
                                         keys=tuple(keys)), rows)


_UPSERTS: dict[tuple[str, str, tuple[str, ...], tuple[str, ...]], Any] = {}


def _upsert_statement(
    dialect: str, table: sa.Table, columns: tuple[str, ...], *, keys: tuple[str, ...]
) -> Any:
    """INSERT … ON CONFLICT DO UPDATE of `columns`, built once per shape and reused: building
    it (and its cache key) anew cost more than running it."""
    shape = (dialect, table.name, columns, keys)
    statement = _UPSERTS.get(shape)
    if statement is None:
        insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(table)
        statement = insert.on_conflict_do_update(
            index_elements=[table.c[key] for key in keys],
            set_={column: insert.excluded[column] for column in columns if column not in keys})
        _UPSERTS[shape] = statement
    return statement


async def _drop_older(
    conn: AsyncConnection, rows: dict[tuple[str, str, bool], dict[str, Any]],
    placed: dict[tuple[str, GeoKind], SessionRecord],
) -> None:
    """Leave out of `rows` (and `placed`) the records held already with a later expiry."""
    uris = sorted({uri for _, uri, _ in rows})
    for i in range(0, len(uris), CELLS_PER_QUERY):
        query = (sa.select(GR.keyword, GR.uri, GR.shadow, GR.expires_at)
                 .where(GR.uri.in_(uris[i:i + CELLS_PER_QUERY])))
        for keyword, uri, shadow, expires_at in (await conn.execute(query)).all():
            row = rows.get((keyword, uri, bool(shadow)))
            if row is not None and expires_at > row["expires_at"]:
                del rows[(keyword, uri, bool(shadow))]
    kept = {(uri, GeoKind.SHADOW if shadow else GeoKind.GLOBAL) for _, uri, shadow in rows}
    for placement in [p for p in placed if p not in kept]:
        del placed[placement]


async def _collect_local(conn: AsyncConnection, *, now: float) -> tuple[int, int]:
    batch = sa.select(LS.uri).where(LS.expires_at <= now).order_by(LS.uri).limit(COLLECT_BATCH)
    uris = list((await conn.execute(batch)).scalars())
    if not uris:
        return 0, 0
    # Expiry is checked again (a refresh may have come in), and rows go only with their session.
    sessions = sa.delete(local_sessions).where(LS.uri.in_(uris), LS.expires_at <= now)
    rows = (await conn.execute(sessions)).rowcount
    for table, uri, *more in ((local_keywords, LK.uri), (geo_cells, GC.uri, GC.kind == "local")):
        orphan = ~sa.exists().where(LS.uri == uri)
        rows += (await conn.execute(sa.delete(table).where(uri.in_(uris), orphan, *more))).rowcount
    return rows, len(uris)


async def _collect_global(conn: AsyncConnection, *, now: float) -> tuple[int, int]:
    batch = (sa.select(GR.uri).where(GR.expires_at <= now).group_by(GR.uri).order_by(GR.uri)
             .limit(COLLECT_BATCH))
    uris = list((await conn.execute(batch)).scalars())
    if not uris:
        return 0, 0
    records = sa.delete(global_records).where(GR.uri.in_(uris), GR.expires_at <= now)
    rows = (await conn.execute(records)).rowcount
    for shadow in (False, True):
        rows += await _drop_orphan_cells(conn, uris, shadow=shadow)
    return rows, len(uris)


async def _place(conn: AsyncConnection, record: SessionRecord, *, kind: GeoKind) -> None:
    # A session has at most one cell per kind: moving it replaces the row.
    await conn.execute(_UNPLACE, {"uri": record.uri, "kind": kind.value})
    if record.lat is not None and record.lon is not None:
        cell = geo_key(record.lat, record.lon)
        await conn.execute(_PLACE, {"cell": cell, "uri": record.uri, "kind": kind.value})


# Built once: the hot writes' statements (constructing one costs more than running it).
_UNPLACE = sa.delete(geo_cells).where(GC.uri == sa.bindparam("uri"),
                                      GC.kind == sa.bindparam("kind"))
_PLACE = sa.insert(geo_cells)
_SEARCH_LOCAL = (sa.select(LS.body).join(local_keywords, LK.uri == LS.uri)
                 .where(LK.keyword == sa.bindparam("keyword"), LS.expires_at > sa.bindparam("now"))
                 .order_by(LS.uri).limit(sa.bindparam("limit")))
_SEARCH_LOCAL_SCOPE = _SEARCH_LOCAL.where(LS.scope == sa.bindparam("scope"))
_SEARCH_GLOBAL = (sa.select(GR.body)
                  .where(GR.keyword == sa.bindparam("keyword"), GR.shadow == sa.bindparam("shadow"),
                         GR.expires_at > sa.bindparam("now"))
                  .order_by(GR.uri).limit(sa.bindparam("limit")))
_UNKEY = sa.delete(local_keywords).where(LK.uri == sa.bindparam("uri"))
_KEY_ROWS = sa.insert(local_keywords)


async def _place_many(
    conn: AsyncConnection, placed: dict[tuple[str, GeoKind], SessionRecord]
) -> None:
    by_kind: dict[GeoKind, list[str]] = {}
    for uri, kind in placed:
        by_kind.setdefault(kind, []).append(uri)
    for kind, uris in by_kind.items():
        for i in range(0, len(uris), CELLS_PER_QUERY):
            chunk = uris[i:i + CELLS_PER_QUERY]
            await conn.execute(sa.delete(geo_cells).where(GC.uri.in_(chunk), GC.kind == kind))
    rows = [{"cell": geo_key(r.lat, r.lon), "uri": uri, "kind": kind}
            for (uri, kind), r in placed.items() if r.lat is not None and r.lon is not None]
    if rows:
        await conn.execute(sa.insert(geo_cells), rows)


def _key_ranges(prefixes: Iterable[str]) -> list[tuple[str, str]]:
    """Disjoint [low, high) key ranges for msd.geo prefixes ('row,', 'row,col/', sub-cell).

    Keys use only 0-9, a-z, ',' and '/', all below '~', so prefix p spans [p, p + '~'). A row
    or a whole 1° cell starts at its bare 'row,col' as well, and a split cell gets that one
    key as its own range: rows written before sub-cells keep being found.
    """
    ranges: list[tuple[str, str]] = []
    split: dict[str, None] = {}
    for prefix in prefixes:
        cell, slash, path = prefix.partition("/")
        if slash and not path:
            ranges.append((cell, prefix + "~"))
        else:
            ranges.append((prefix, prefix + "~"))
            if slash:
                split[cell] = None
    ranges += [(cell, cell + "/") for cell in split]
    return ranges


def _in_ranges(ranges: Sequence[tuple[str, str]]) -> sa.ColumnElement[bool]:
    # Up to RANGES_PER_QUERY ranges, padded with repeats of the last to exactly that many: one
    # statement shape, which SQLAlchemy compiles once and caches (a fresh 200-term OR costs
    # ~50 ms to compile). The overall bounds come first, a cheap test that most rows fail.
    padded = [*ranges, *[ranges[-1]] * (RANGES_PER_QUERY - len(ranges))]
    low, high = min(low for low, _ in ranges), max(high for _, high in ranges)
    return sa.and_(GC.cell >= low, GC.cell < high,
                   sa.or_(*(sa.and_(GC.cell >= lo, GC.cell < hi) for lo, hi in padded)))


def _circle(near: tuple[float, float], within_km: float) -> Circle:
    try:
        lat, lon = near
    except (TypeError, ValueError):
        raise StoreError(f"near must be (lat, lon), got {near!r}") from None
    return Circle(lat, lon, within_km)


def _where(body: str) -> tuple[str, float | None, float | None]:
    # json, not the model: most candidates are out of the circle, and need only three fields.
    try:
        data = json.loads(body)
        return str(data["uri"]), data.get("lat"), data.get("lon")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise StoreError("a stored record is not a valid session: unreadable JSON body") \
            from None


async def _drop_orphan_cells(conn: AsyncConnection, uris: list[str], *, shadow: bool) -> int:
    # A held session keeps its geo row while any of its keyword records of that kind remains.
    kind = GeoKind.SHADOW if shadow else GeoKind.GLOBAL
    orphan = ~sa.exists().where(GR.uri == GC.uri, GR.shadow == shadow)
    statement = sa.delete(geo_cells).where(GC.uri.in_(uris), GC.kind == kind, orphan)
    return int((await conn.execute(statement)).rowcount)


def _near_query(
    cells: sa.ColumnElement[bool], kind: GeoKind, *, now: float, limit: int
) -> sa.Select[Any]:
    if kind is GeoKind.LOCAL:
        return (sa.select(LS.uri, LS.body)
                .join(geo_cells, sa.and_(GC.uri == LS.uri, GC.kind == kind))
                .where(cells, LS.expires_at > now).order_by(LS.uri).limit(limit))
    # A held session has a record per keyword; the latest unexpired one gives its body.
    live = (GR.uri == GC.uri, GR.shadow == (kind is GeoKind.SHADOW), GR.expires_at > now)
    body = sa.select(GR.body).where(*live).order_by(GR.updated_at.desc()).limit(1)
    return (sa.select(GC.uri, body.scalar_subquery())
            .where(GC.kind == kind, cells, sa.exists().where(*live))
            .order_by(GC.uri).limit(limit))


def _check_limit(limit: int) -> int:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise StoreError(f"limit must be a positive integer, got {limit!r}")
    return limit


def _parse(body: str) -> SessionRecord:
    try:
        return _decoded(body)
    except ValidationError as exc:
        raise StoreError(f"a stored record is not a valid session: {exc}") from None


@functools.lru_cache(maxsize=PARSED_CACHE)
def _decoded(body: str) -> SessionRecord:
    # A body is the whole record (its expiry and update time included), so equal text is an
    # equal record: searches answer the same sessions again and again without re-validating.
    # Records are frozen models; nobody changes a cached one.
    return SessionRecord.model_validate_json(body)
