"""Group commit (msd.writebatch): shared transactions, one block undone alone, durable on return."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from msd.database import open_engine
from msd.sqlite_thread import WriterTurns
from msd.writebatch import MAX_BATCH, WriteBatcher, batcher_for

metadata = sa.MetaData()
items = sa.Table("items", metadata, sa.Column("name", sa.String(32), primary_key=True),
                 sa.Column("n", sa.Integer, nullable=False))


@pytest.fixture
async def batcher(tmp_path: Path) -> AsyncIterator[tuple[WriteBatcher, Path]]:
    path = tmp_path / "t.sqlite"
    engine = open_engine(f"sqlite+aiosqlite:///{path}", synchronous="FULL")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    await engine.dispose()
    writes = WriteBatcher.open(f"sqlite+aiosqlite:///{path}", synchronous="FULL")
    yield writes, path
    await writes.close()


def _rows(path: Path) -> dict[str, int]:
    # Another connection, as another process would read: only committed rows show.
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT name, n FROM items").fetchall())


async def _insert(writes: WriteBatcher, name: str, n: int = 1) -> None:
    async with writes.begin() as conn:
        await conn.execute(sa.insert(items).values(name=name, n=n))


async def test_concurrent_writes_share_transactions_and_are_committed_on_return(
    batcher: tuple[WriteBatcher, Path],
) -> None:
    writes, path = batcher
    await asyncio.gather(*(_insert(writes, f"k{i}") for i in range(300)))
    assert len(_rows(path)) == 300
    assert writes.blocks == 300
    assert writes.batches < 300  # some were grouped
    assert writes.largest <= MAX_BATCH


async def test_a_failing_block_is_undone_alone(batcher: tuple[WriteBatcher, Path]) -> None:
    writes, path = batcher
    await _insert(writes, "taken")

    async def half_then_fail() -> None:
        async with writes.begin() as conn:
            await conn.execute(sa.insert(items).values(name="half", n=1))
            await conn.execute(sa.insert(items).values(name="taken", n=2))  # key clash

    results = await asyncio.gather(_insert(writes, "a"), half_then_fail(), _insert(writes, "b"),
                                   return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], sa.exc.IntegrityError)
    assert _rows(path) == {"taken": 1, "a": 1, "b": 1}  # 'half' went with its block


async def test_an_exception_in_the_block_rolls_it_back(batcher: tuple[WriteBatcher, Path]) -> None:
    writes, path = batcher
    with pytest.raises(ValueError, match="changed my mind"):
        async with writes.begin() as conn:
            await conn.execute(sa.insert(items).values(name="x", n=1))
            raise ValueError("changed my mind")
    await _insert(writes, "y")
    assert _rows(path) == {"y": 1}


async def test_a_caller_cancelled_while_waiting_leaves_no_trace(
    batcher: tuple[WriteBatcher, Path],
) -> None:
    writes, path = batcher
    holding = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> None:
        async with writes.begin() as conn:
            await conn.execute(sa.insert(items).values(name="slow", n=1))
            holding.set()
            await release.wait()

    first = asyncio.create_task(slow())
    await holding.wait()
    waiting = asyncio.create_task(_insert(writes, "never"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await first
    await _insert(writes, "after")
    assert _rows(path) == {"slow": 1, "after": 1}


async def test_reads_after_return_see_the_write(batcher: tuple[WriteBatcher, Path]) -> None:
    writes, path = batcher
    for i in range(5):
        await _insert(writes, f"seq{i}", n=i)
        assert _rows(path)[f"seq{i}"] == i


async def test_only_sqlite_files_get_a_batcher(tmp_path: Path) -> None:
    memory = open_engine("sqlite+aiosqlite://", synchronous="FULL")
    assert batcher_for(memory, synchronous="FULL") is None
    await memory.dispose()
    url = f"sqlite+aiosqlite:///{tmp_path / 'f.sqlite'}"
    engine = open_engine(url, synchronous="NORMAL")
    writes = batcher_for(engine, synchronous="NORMAL")
    assert isinstance(writes, WriteBatcher)
    assert "idle" in repr(writes)
    await writes.close()
    await engine.dispose()


async def test_the_thread_writer_waits_its_turn_and_lets_a_waiting_async_writer_first() -> None:
    turns = WriterTurns()
    order: list[str] = []

    def thread_write(name: str) -> None:
        with turns.thread_turn():
            order.append(name)

    async with turns.async_turn():
        job = asyncio.create_task(asyncio.to_thread(thread_write, "thread"))
        await asyncio.sleep(0.05)
        order.append("async")
    await job
    assert order == ["async", "thread"]
