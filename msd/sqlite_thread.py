"""SQLite on a thread of its own through SQLAlchemy's synchronous API: one hop per operation.

The async stack (SQLAlchemy asyncio + aiosqlite) pays a greenlet switch and a thread hop
for every cursor, execute, fetch and close: on this project's machine a registration's
dozen statements cost ~6 ms of CPU at the MSD, where the same statements through the
synchronous driver cost ~0.15 ms (docs/bench.md). A `SqliteThread` owns one sqlite3
connection on one thread; callers hand it a synchronous function of an
`sqlalchemy.Connection` and await its result, so an operation costs one hop in all.

- `read(fn)`: runs `fn` and returns what it returns.
- `write(fn)`: group commit. Writes queue up; the thread takes all that are waiting (at
  most `MAX_BATCH`), runs each in a SAVEPOINT inside one `BEGIN IMMEDIATE` transaction,
  commits once, then answers each caller. A write whose function raised is rolled back
  alone and its caller gets the exception; if the commit fails every caller of the
  batch gets that error. A caller is answered only after its batch committed, with the
  connection's `synchronous` setting, so durability is what it was.

The stores use it for their hot operations on SQLite files (msd.store_fast,
urs.store_fast); every statement is still SQLAlchemy Core, shared with the async path.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from msd.database import SQLITE_BUSY_TIMEOUT_MS, Synchronous
from msd.writebatch import WriteBatcher, batcher_for

log = logging.getLogger(__name__)

MAX_BATCH = 256  # writes per transaction
MAX_WAITING = 10_000  # writes queued; beyond that a write waits for room (backpressure)

T = TypeVar("T")
Job = Callable[[sa.Connection], Any]


class WriterTurns:
    """The two writers of one SQLite file in a process take turns, one transaction at a time.

    A store's fast path writes on its thread (`SqliteThread`) and its other writes (the
    collector, deletes) through the async group commit (msd.writebatch). Left to SQLite's
    lock, one waits in `busy_timeout` and fails after 5 s when the other is slow (a busy
    machine); here the thread waits for its turn instead, and lets a waiting async writer
    go first between two of its batches, so neither starves."""

    POLL_S = 0.0005

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._async_waiting = 0  # changed on the event loop's thread only

    @contextlib.contextmanager
    def thread_turn(self) -> Iterator[None]:
        while self._async_waiting:
            time.sleep(self.POLL_S)
        with self._lock:
            yield

    @contextlib.asynccontextmanager
    async def async_turn(self) -> AsyncIterator[None]:
        self._async_waiting += 1
        try:
            # A threading lock (the other side is a thread): no event to await. Polling,
            # unlike a blocked executor thread, leaves nothing behind when cancelled.
            while not self._lock.acquire(blocking=False):  # noqa: ASYNC110
                await asyncio.sleep(self.POLL_S)
        finally:
            self._async_waiting -= 1
        try:
            yield
        finally:
            self._lock.release()


class SqliteThread:
    """One SQLite file connection on a dedicated thread; `writer` connections group-commit."""

    def __init__(
        self, url: str, *, synchronous: Synchronous, writer: bool, name: str,
        turns: WriterTurns | None = None,
    ) -> None:
        parsed = sa.make_url(url)
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
            raise ValueError(f"{url!r} is not an SQLite file database")
        self._engine = sa.create_engine(parsed.set(drivername="sqlite+pysqlite"),
                                        poolclass=sa.pool.NullPool)
        pragmas = ("journal_mode=WAL", f"synchronous={synchronous}",
                   f"busy_timeout={SQLITE_BUSY_TIMEOUT_MS}", "foreign_keys=ON")

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            if writer:
                # Transactions are ours (BEGIN IMMEDIATE below, SAVEPOINTs per write): the
                # driver must not open or close any (SQLAlchemy's documented pysqlite recipe).
                dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                for pragma in pragmas:
                    cursor.execute(f"PRAGMA {pragma}")
            finally:
                cursor.close()

        def begin_immediate(conn: sa.Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock first: wait, not fail

        sa.event.listen(self._engine, "connect", on_connect)
        if writer:
            sa.event.listen(self._engine, "begin", begin_immediate)
        self._turns = turns
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self._conn: sa.Connection | None = None  # made and used on the thread only
        self._lock = threading.Lock()
        self._pending: list[tuple[Job, asyncio.Future[Any]]] = []
        self._draining = False
        self._room = asyncio.Semaphore(MAX_WAITING)
        self.batches = 0
        self.writes = 0
        self.largest = 0

    def __repr__(self) -> str:
        return (f"<SqliteThread {self._engine.url.database} batches={self.batches} "
                f"writes={self.writes} largest={self.largest} waiting={len(self._pending)}>")

    async def read(self, fn: Callable[[sa.Connection], T]) -> T:
        """`fn(conn)` on the thread; its result."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._read, fn)

    async def write(self, fn: Callable[[sa.Connection], T]) -> T:
        """`fn(conn)` in a savepoint of the next group commit; its result, once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        async with self._room:
            with self._lock:
                self._pending.append((fn, future))
                start = not self._draining
                self._draining = True
            if start:
                self._executor.submit(self._drain, loop)
            return await future

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=False)
        self._engine.dispose()

    # --- on the thread --------------------------------------------------------------------

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            self._conn = self._engine.connect()
        return self._conn

    def _read(self, fn: Callable[[sa.Connection], T]) -> T:
        conn = self._connection()
        try:
            return fn(conn)
        finally:
            conn.rollback()  # ends the read: WAL keeps no snapshot open between reads

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
                if not batch:
                    self._draining = False
                    return
            outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
            try:
                conn = self._connection()
                with self._turn(), conn.begin():
                    for fn, future in batch:
                        try:
                            with conn.begin_nested():
                                outcomes.append((future, True, fn(conn)))
                        except Exception as exc:
                            outcomes.append((future, False, exc))
            except Exception as exc:
                log.warning("group commit of %d write(s) failed: %s", len(batch), exc)
                self._reset()
                outcomes = [(future, False, exc) for _, future in batch]
            else:
                self.batches += 1
                self.writes += len(batch)
                self.largest = max(self.largest, len(batch))
            loop.call_soon_threadsafe(_settle, outcomes)

    def _turn(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if self._turns is None else self._turns.thread_turn()

    def _reset(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception as exc:  # a broken connection: a new one next time
                log.debug("closing a failed SQLite connection: %s", exc)
            self._conn = None

    def _close(self) -> None:
        self._reset()


@dataclasses.dataclass(frozen=True)
class FastPaths:
    """A store's one-hop SQLite paths: group-committed async writes, and a writer and a
    reader thread on the synchronous driver (the writers take turns)."""

    writes: WriteBatcher
    sync_writes: SqliteThread
    sync_reads: SqliteThread


def fast_paths(engine: AsyncEngine, *, synchronous: Synchronous, name: str) -> FastPaths | None:
    """The fast paths of an SQLite file database (threads named `name`-sqlite-...); None
    for any other database, which keeps to the async path."""
    turns = WriterTurns()  # the fast writer and the async one take turns, never fight
    writes = batcher_for(engine, synchronous=synchronous, turns=turns)
    if writes is None:
        return None
    database = engine.url.render_as_string(hide_password=False)
    return FastPaths(
        writes,
        SqliteThread(database, synchronous=synchronous, writer=True,
                     name=f"{name}-sqlite-write", turns=turns),
        SqliteThread(database, synchronous=synchronous, writer=False,
                     name=f"{name}-sqlite-read"))


def _settle(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.done():
            continue  # its caller was cancelled; the write stands (it was committed)
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
