"""An MSD's search answers by call (GET /search in its own process): the same records as
its HTTP routes, ext-search-invalid outside its range, and the mirror's `complete`."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from msd.inprocess import InProcessSearch, OwnerRecords
from msd.keyspace import SPACE, KeyRange, key_of
from msd.messages import Peer
from msd.sessions import Search
from msd.store import MsdStore
from msd.store_fast import open_store
from tests.unit.test_msd_store import DOMAIN, GAINESVILLE, T0, record

ADDRESS = Peer(domain=DOMAIN, host="127.0.0.1", port=4321)


@dataclasses.dataclass
class _Node:
    owned: KeyRange
    address: Peer = ADDRESS


class _Mirror:
    def __init__(self) -> None:
        self.restored = True

    def complete(self, key: int) -> bool:
        return self.restored


class _Service:
    """What InProcessSearch uses of a SessionService; this MSD owns the lower half."""

    def __init__(self, store: MsdStore) -> None:
        self.domain = DOMAIN
        self.store = store
        self.node_: _Node | None = _Node(KeyRange(0, SPACE // 2))
        self.mirror = _Mirror()

    def current_node(self) -> _Node | None:
        return self.node_

    def node(self) -> _Node:
        assert self.node_ is not None
        return self.node_

    def now(self) -> float:
        return T0

    def next_peer(self, key: int, *, hops: tuple[str, ...]) -> Peer | None:
        return None if key in self.node().owned else Peer(domain="x", host="h", port=1)

    async def probe(self, key: int, *, search: Search | None = None) -> dict[str, Any]:
        return {"owner": DOMAIN, "address": "127.0.0.1:4321", "start": "0", "end": "8" + "0" * 31}


def _ours(owned: KeyRange, *, inside: bool) -> str:
    return next(w for w in (f"k{n}" for n in range(1000)) if (key_of(w) in owned) == inside)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MsdStore]:
    opened = await open_store(f"sqlite+aiosqlite:///{tmp_path / 'msd.sqlite'}")
    try:
        yield opened
    finally:
        await opened.close()


async def test_records_by_call_and_the_mirrors_complete_flag(store: MsdStore) -> None:
    service = _Service(store)
    fake: Any = service  # stands in for a SessionService
    calls = InProcessSearch(fake)
    ours, theirs = (_ours(service.node().owned, inside=inside) for inside in (True, False))
    session = record(keywords=(ours, theirs), at=GAINESVILLE)
    await store.put_local(session, now=T0)
    await store.put_global(ours, session, shadow=False, origin=DOMAIN, now=T0)

    assert calls.answers_at("http://127.0.0.1:4321")
    assert not calls.answers_at("http://127.0.0.1:4322")
    assert await calls.local_records(Search(theirs)) == [session]
    near = Search(ours, near=GAINESVILLE, within_km=5.0)
    assert await calls.ext_records(near) == OwnerRecords([session], complete=True)
    assert await calls.ext_records(Search(theirs)) is None  # ext-search-invalid
    service.mirror.restored = False  # a range gained lately, not yet restored
    answer, found = await calls.probe_records(key_of(ours), search=Search(ours))
    assert answer["owner"] == DOMAIN
    assert found == OwnerRecords([session], complete=False)
    service.node_ = None  # stepped down
    assert not calls.answers_at("http://127.0.0.1:4321")
