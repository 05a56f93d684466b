"""A test database of either backend, with a side door to its rows (beside the store)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

BACKENDS = ("sqlite", "postgresql")


class Database:
    """One empty database for one test: its URL, and raw reads and writes of its tables."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.backend = sa.make_url(url).get_backend_name()
        self._engine = create_async_engine(url)

    def __repr__(self) -> str:
        return f"Database({self.backend})"

    async def rows(self, table: str) -> list[tuple[Any, ...]]:
        """What is really in `table`, expired or not, in a stable order."""
        async with self._engine.connect() as conn:
            result = await conn.execute(sa.text(f"SELECT * FROM {table}"))
            return sorted((tuple(row) for row in result.all()), key=repr)

    async def execute(self, statement: str, **params: Any) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(sa.text(statement), params)

    async def close(self) -> None:
        await self._engine.dispose()
