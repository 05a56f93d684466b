"""The URS store on SQLite and PostgreSQL: ids, owners, expiry, the designated MSD, members,
and two replicas (two stores) on one database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from msd.schema import Session
from tests.databases import Database
from urs.errors import IdTakenError, SessionNotFoundError, TermConflictError, TokenRejectedError
from urs.store import Designated, Member, SessionStore

DOMAIN = "ufl.edu"
T0 = 1_700_000_000.0


def session(session_id: str = "gators", **changes: object) -> Session:
    return Session.model_validate({"id": session_id, "title": "Gators", "keywords": ["football"],
                                   "group": "239.255.0.150", "port": 5004, "ttl": 60} | changes)


@pytest.fixture
async def store(database: Database) -> AsyncIterator[SessionStore]:
    opened = await SessionStore.open(database.url)
    try:
        yield opened
    finally:
        await opened.close()


async def test_create_get_replace_and_expire(store: SessionStore, database: Database) -> None:
    record = await store.create(DOMAIN, session(), token="secret-token", now=T0)
    assert record.uri == "mcast.ufl.edu/gators"
    assert await store.get(DOMAIN, "gators", now=T0) == record
    with pytest.raises(IdTakenError):
        await store.create(DOMAIN, session(), token="other", now=T0 + 1)
    with pytest.raises(TokenRejectedError):
        await store.replace(DOMAIN, session(port=6000), token="wrong", now=T0 + 1)
    moved = await store.replace(DOMAIN, session(port=6000), token="secret-token", now=T0 + 30)
    assert moved.port == 6000 and moved.expires_at == T0 + 90
    assert [r.id for r in await store.list_active(DOMAIN, now=T0 + 30)] == ["gators"]
    assert await store.count_active(DOMAIN, now=T0 + 89) == 1
    assert await store.get(DOMAIN, "gators", now=T0 + 90) is None  # expired: invisible at once
    with pytest.raises(SessionNotFoundError):
        await store.check_owner(DOMAIN, "gators", token="secret-token", now=T0 + 90)
    assert await store.purge_expired(now=T0 + 90) == 1
    assert await database.rows("sessions") == []
    again = await store.create(DOMAIN, session(), token="new-owner", now=T0 + 91)
    assert again.expires_at == T0 + 151  # an expired id is free again


async def test_replicas_on_one_database_race_for_one_id(database: Database) -> None:
    replicas = [await SessionStore.open(database.url) for _ in range(3)]
    try:
        outcomes = await asyncio.gather(
            *(r.create(DOMAIN, session(), token=f"t{n}", now=T0) for n, r in enumerate(replicas)),
            return_exceptions=True)
        assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
        assert all(isinstance(o, IdTakenError) for o in outcomes if isinstance(o, BaseException))
        for replica in replicas:  # every replica answers for the one winner
            assert (await replica.get(DOMAIN, "gators", now=T0)) is not None
    finally:
        for replica in replicas:
            await replica.close()


async def test_designated_terms_and_members(store: SessionStore) -> None:
    first = Designated(address="127.0.0.1", port=7000, term=3, expires_at=T0 + 30)
    assert await store.set_designated(DOMAIN, first, now=T0) == first
    with pytest.raises(TermConflictError) as conflict:
        await store.set_designated(DOMAIN, Designated(address="127.0.0.1", port=7001, term=2,
                                                      expires_at=T0 + 30), now=T0 + 1)
    assert conflict.value.current_term == 3
    later = Designated(address="127.0.0.1", port=7001, term=2, expires_at=T0 + 90)
    assert await store.set_designated(DOMAIN, later, now=T0 + 30) == later  # expired: any term
    assert await store.get_designated(DOMAIN, now=T0 + 31) == later
    assert await store.last_term(DOMAIN) == 2
    member = Member(msd_id="abc", address="127.0.0.1", port=7001, pid=42, role="designated",
                    expires_at=T0 + 3)
    await store.set_member(DOMAIN, member)
    await store.set_member(DOMAIN, member)  # a refresh, not a second row
    assert await store.members(DOMAIN, now=T0) == [member]
    await store.purge_expired(now=T0 + 3)
    assert await store.members(DOMAIN, now=T0) == []
