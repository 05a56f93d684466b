"""Group commit for SQLite: concurrent write transactions share one transaction and one sync.

SQLite admits one writer at a time. With a pool of connections, concurrent writers wait
for its lock in the busy handler's sleeps (milliseconds each, growing), and every
transaction pays its own commit (an fsync with `synchronous=FULL`). Under load that
costs far more than the writes: the URS made 6 registrations/s at 32 in flight.

A `WriteBatcher` owns one connection for writes and a writer task that lends it to one
caller at a time. `async with batcher.begin() as conn:` is a SAVEPOINT inside the
current batch's transaction (BEGIN IMMEDIATE: the lock is taken first, so it waits in
`busy_timeout` for other processes instead of failing); the block's statements run on
the lent connection in the caller's own task. When the block ends the writer releases
its savepoint (or rolls it back if the block raised: that block alone is undone, its
exception goes to its caller), then lends the connection to the next waiting caller,
and commits when nobody is waiting, or after `MAX_BATCH` blocks or `MAX_BATCH_S`.
`begin()` returns only once the batch has committed, so durability is unchanged: a
request answered after a write had its write synced, now together with its neighbours'.
If the commit fails, every block of the batch gets the error.

Only for SQLite (the stores use a plain `engine.begin()` elsewhere: PostgreSQL has row
locks and its own group commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from msd.database import Synchronous, open_engine

if TYPE_CHECKING:
    from msd.sqlite_thread import WriterTurns

log = logging.getLogger(__name__)

MAX_BATCH = 256  # blocks per transaction
MAX_BATCH_S = 0.02  # a batch commits once it has been open this long (bounds the wait)
MAX_WAITING = 10_000  # blocks waiting for the connection; more wait to get in the queue


class _Abandoned(Exception):
    """The caller left before it was lent the connection (cancelled)."""


@dataclasses.dataclass(eq=False)
class _Block:
    """One caller's `begin()`: lent the connection, done with it, then committed."""

    lent: asyncio.Future[AsyncConnection]
    done: asyncio.Future[BaseException | None]
    committed: asyncio.Future[None]


class WriteBatcher:
    """One writer connection; concurrent write blocks share its transactions (group commit)."""

    def __init__(self, engine: AsyncEngine, *, turns: WriterTurns | None = None) -> None:
        self._engine = engine  # transactions are begun explicitly: see `open`
        self._turns = turns  # shared with the store's other writer in this process, if any
        self._queue: asyncio.Queue[_Block] = asyncio.Queue(MAX_WAITING)
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0
        self.blocks = 0
        self.largest = 0

    def __repr__(self) -> str:
        state = "running" if self._writer is not None and not self._writer.done() else "idle"
        return (f"<WriteBatcher {state} batches={self.batches} blocks={self.blocks} "
                f"largest={self.largest} waiting={self._queue.qsize()}>")

    @classmethod
    def open(
        cls, url: str, *, synchronous: Synchronous, turns: WriterTurns | None = None
    ) -> WriteBatcher:
        """A batcher on its own engine for `url` (an SQLite file, already created)."""
        engine = open_engine(url, synchronous=synchronous)

        def autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
            # The sqlite3 driver's own BEGIN/COMMIT would fight the SAVEPOINTs; the
            # transactions are ours (SQLAlchemy's documented recipe for pysqlite/aiosqlite).
            dbapi_connection.isolation_level = None

        def begin_immediate(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        sa.event.listen(engine.sync_engine, "connect", autocommit_driver)
        sa.event.listen(engine.sync_engine, "begin", begin_immediate)
        return cls(engine, turns=turns)

    async def close(self) -> None:
        """Stop the writer (blocks still waiting get an error) and close the connection."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        while not self._queue.empty():
            block = self._queue.get_nowait()
            if not block.lent.done():
                block.lent.set_exception(sa.exc.InvalidRequestError("the store is closed"))
        await self._engine.dispose()

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction (a savepoint in the shared one); returns once committed."""
        loop = asyncio.get_running_loop()
        block = _Block(lent=loop.create_future(), done=loop.create_future(),
                       committed=loop.create_future())
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="sqlite group commit")
        try:
            await self._queue.put(block)
            conn = await block.lent
        except BaseException as exc:
            # Cancelled while waiting: the writer skips this block, or (if it lent the
            # connection just now) rolls its empty savepoint back.
            if not block.done.done():
                block.done.set_result(_Abandoned() if isinstance(exc, Exception) else exc)
            raise
        try:
            yield conn
        except BaseException as exc:
            block.done.set_result(exc)
            raise
        block.done.set_result(None)
        await block.committed

    async def _write(self) -> None:
        try:
            async with self._engine.connect() as conn:
                while True:
                    first = await self._queue.get()
                    await self._batch(conn, first)
        except Exception as exc:
            # No connection: fail whoever waits; the next begin() starts a new writer.
            log.error("the SQLite writer stopped: %s", exc)
            while not self._queue.empty():
                block = self._queue.get_nowait()
                if not block.lent.done():
                    block.lent.set_exception(exc)

    async def _batch(self, conn: AsyncConnection, first: _Block) -> None:
        taken = [first]
        kept: list[_Block] = []
        opened = time.monotonic()
        try:
            async with self._turn():
                await conn.begin()
                for block in _drain(taken, self._queue, opened=opened):
                    if await self._lend(conn, block):
                        kept.append(block)
                await conn.commit()
        except Exception as exc:
            log.warning("group commit of %d write(s) failed: %s", len(kept), exc)
            with contextlib.suppress(Exception):
                await conn.rollback()
            for block in taken:
                if not block.lent.done():
                    block.lent.set_exception(exc)
                elif block.done.done() and block.done.result() is None \
                        and not block.committed.done():
                    block.committed.set_exception(exc)
            return
        self.batches += 1
        self.blocks += len(kept)
        self.largest = max(self.largest, len(taken))
        for block in kept:
            block.committed.set_result(None)

    def _turn(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext() if self._turns is None else self._turns.async_turn()

    async def _lend(self, conn: AsyncConnection, block: _Block) -> bool:
        """Run one caller's block in a savepoint; True if it is kept (to be committed)."""
        if block.done.done():
            return False  # its caller left before its turn
        savepoint = await conn.begin_nested()
        if block.lent.done() or block.done.done():  # cancelled while the savepoint began
            await savepoint.rollback()
            return False
        block.lent.set_result(conn)
        error = await block.done
        if error is None:
            await savepoint.commit()  # RELEASE: part of the batch now
            return True
        await savepoint.rollback()  # ROLLBACK TO: as if the block never ran
        return False


def _drain(
    taken: list[_Block], queue: asyncio.Queue[_Block], *, opened: float
) -> Iterator[_Block]:
    """The batch's blocks: the first, then whoever is waiting, within the batch's bounds."""
    yield taken[0]
    while (len(taken) < MAX_BATCH and time.monotonic() - opened < MAX_BATCH_S
           and not queue.empty()):
        block = queue.get_nowait()
        taken.append(block)
        yield block


def batcher_for(
    engine: AsyncEngine, *, synchronous: Synchronous, turns: WriterTurns | None = None
) -> WriteBatcher | None:
    """A group-commit writer for an SQLite file database; None for anything else."""
    url = engine.url
    if engine.dialect.name != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return WriteBatcher.open(url.render_as_string(hide_password=False), synchronous=synchronous,
                             turns=turns)
