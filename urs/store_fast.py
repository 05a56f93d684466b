"""The URS store's hot operations on SQLite through one synchronous hop each (msd.sqlite_thread).

`FastSessionStore` is a `SessionStore` whose registration (`create`) is group-committed
on a dedicated writer thread with `synchronous=FULL` (answered only once synced, as
before) and whose resolution (`get`) reads on a thread of its own, both with
SQLAlchemy's synchronous driver and the same Core tables as urs.store. Everything else
is the inherited async path. `open_store(url)` gives this class for an SQLite file and
the plain `SessionStore` for anything else.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from msd.database import DatabaseError, Synchronous, open_database
from msd.schema import Session, SessionRecord
from msd.sqlite_thread import SqliteThread, fast_paths
from msd.writebatch import WriteBatcher
from urs.errors import IdTakenError, StoreError
from urs.store import SCHEMA, SessionStore, _record, hash_token, sessions

SYNCHRONOUS: Synchronous = "FULL"  # as SessionStore.open: a commit survives a power cut

# Built once (building a statement costs more than running it on SQLite).
_FREE_EXPIRED = sa.delete(sessions).where(
    sessions.c.domain == sa.bindparam("domain"), sessions.c.id == sa.bindparam("id"),
    sessions.c.expires_at <= sa.bindparam("now"))
_INSERT = sa.insert(sessions)
_GET = sa.select(sessions.c.body, sessions.c.updated_at, sessions.c.expires_at).where(
    sessions.c.domain == sa.bindparam("domain"), sessions.c.id == sa.bindparam("id"),
    sessions.c.expires_at > sa.bindparam("now"))


class FastSessionStore(SessionStore):
    """`SessionStore` with `create` and `get` one hop each (SQLite)."""

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

    async def create(
        self, domain: str, session: Session, *, token: str, now: float
    ) -> SessionRecord:
        body = session.model_dump_json()
        values = {"domain": domain, "id": session.id, "body": body,
                  "token_sha256": hash_token(token), "created_at": now, "updated_at": now,
                  "expires_at": now + session.ttl}

        def write(conn: sa.Connection) -> None:
            # An expired session frees its id; both statements are one savepoint of the
            # writer's transaction, so two creators racing for that id cannot both win.
            conn.execute(_FREE_EXPIRED, {"domain": domain, "id": session.id, "now": now})
            conn.execute(_INSERT, values)

        try:
            async with self._translate("create"):
                await self._sync_writes.write(write)
        except IntegrityError:
            raise IdTakenError(
                f"id {session.id!r} is already taken in {domain}; choose another"
            ) from None
        return _record(domain, body, updated_at=now, expires_at=now + session.ttl)

    async def get(self, domain: str, session_id: str, *, now: float) -> SessionRecord | None:
        params = {"domain": domain, "id": session_id, "now": now}

        def read(conn: sa.Connection) -> Any:  # the row, or None
            return conn.execute(_GET, params).first()

        async with self._translate("get"):
            row = await self._sync_reads.read(read)
        if row is None:
            return None
        return _record(domain, row.body, updated_at=row.updated_at, expires_at=row.expires_at)


async def open_store(url: str) -> SessionStore:
    """The URS's store: `FastSessionStore` for an SQLite file, else the plain `SessionStore`."""
    try:
        engine = await open_database(url, schema=SCHEMA, synchronous=SYNCHRONOUS)
    except DatabaseError as exc:
        raise StoreError(str(exc)) from exc
    paths = fast_paths(engine, synchronous=SYNCHRONOUS, name="urs")
    if paths is None:
        return SessionStore(engine)
    return FastSessionStore(engine, writes=paths.writes, sync_writes=paths.sync_writes,
                  sync_reads=paths.sync_reads)
