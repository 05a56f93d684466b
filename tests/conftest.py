"""Fixtures every test folder may use: a temporary PostgreSQL server when one can run, and a
database of each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.databases import BACKENDS, Database
from tests.postgres import TempPostgres, unavailable


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TempPostgres]:
    """One throwaway PostgreSQL for the session (a unix socket in a temp folder), or a skip
    that says why there is none."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = TempPostgres()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: TempPostgres) -> str:
    """The URL of a new, empty database on the session's PostgreSQL."""
    return postgres_server.create_database()


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database: an SQLite file, then (a second run) a PostgreSQL database."""
    if request.param == "sqlite":
        (tmp_path / "db").mkdir()
        url = f"sqlite+aiosqlite:///{tmp_path / 'db' / 'test.sqlite'}"
    else:
        url = request.getfixturevalue("postgres_url")
    opened = Database(url)
    try:
        yield opened
    finally:
        await opened.close()
