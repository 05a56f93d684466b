"""An MSD's search answers as calls, for the search client running in its own process.

GET /search runs the client's protocol (client.search.SearchClient) at the MSD, whose
home MSD is the MSD itself and which often owns the keywords asked for. Asking itself
over HTTP handled three requests per search; `InProcessSearch` (the client's
`InProcessMsd`) answers the same questions by call, from the same store queries as the
HTTP routes (msd.api), with records instead of JSON.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from msd.keyspace import key_of, shadow_of
from msd.schema import SessionRecord
from msd.sessions import Search, parse_record

if TYPE_CHECKING:
    from msd.sessions import SessionService


@dataclasses.dataclass(frozen=True)
class OwnerRecords:
    """An owner's records for one keyword; not `complete` while it restores its range from
    the mirror (msd.mirror), when a client asks the shadow as well."""

    records: list[SessionRecord]
    complete: bool = True


class InProcessSearch:
    """One MSD's msd-probe, ext-search and local-search, called in its process. Errors are
    MsdErrors, as its HTTP routes would have answered them."""

    def __init__(self, service: SessionService) -> None:
        self._service = service

    def __repr__(self) -> str:
        return f"InProcessSearch({self._service.domain!r})"

    def answers_at(self, base_url: str) -> bool:
        """Whether `http://host:port` is this MSD (while it is designated)."""
        node = self._service.current_node()
        return (node is not None
                and base_url == f"http://{node.address.host}:{node.address.port}")

    async def local_records(self, search: Search) -> list[SessionRecord]:
        """GET /msd/local-search: this domain's sessions (any scope)."""
        store, now = self._service.store, self._service.now()
        if search.near is None:
            return await store.search_local(search.keyword, now=now)
        near = await store.search_local_near(search.keyword, near=search.near,
                                             within_km=search.within_km, now=now)
        return [found.record for found in near]

    async def ext_records(self, search: Search) -> OwnerRecords | None:
        """POST /msd/ext-search; None (ext-search-invalid) when the key is not ours."""
        service = self._service
        key = key_of(search.keyword)
        if search.shadow:
            key = shadow_of(key)
        if key not in service.node().owned:
            return None
        if search.near is None:
            records = await service.store.search_global(search.keyword, shadow=search.shadow,
                                                        now=service.now())
        else:
            near = await service.store.search_global_near(
                search.keyword, shadow=search.shadow, near=search.near,
                within_km=search.within_km, now=service.now())
            records = [found.record for found in near]
        return OwnerRecords(records, complete=service.mirror.complete(key))

    async def probe_records(
        self, key: int, *, search: Search | None
    ) -> tuple[dict[str, Any], OwnerRecords | None]:
        """POST /msd/probe: the owner's redirect, and its records when `search` was given."""
        service = self._service
        if service.next_peer(key, hops=()) is None:  # ours: the records by call as well
            answer = await service.probe(key)
            return answer, None if search is None else await self.ext_records(search)
        answer = await service.probe(key, search=search)  # routed: the owner answered JSON
        sessions = answer.pop("sessions", None)
        if sessions is None:
            return answer, None
        records = [parse_record({k: v for k, v in s.items() if k != "distance_km"})
                   for s in sessions]
        return answer, OwnerRecords(records, complete=answer.get("complete") is not False)
