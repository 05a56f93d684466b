"""Restoring a designated MSD's range from its mirror: how a dead domain's records come back.

Every global record is held twice: at the owner of its keyword's hash h, and, as a shadow,
at the owner of ~h. So the records of any piece P of the key space are also held by the
owners of its mirror ~P = {~k : k in P} (and P's shadows there as records). When a
domain dies its range goes to live domains, which have none of its records; they copy
them in from the mirror (`Mirror.restore`, a routed `POST /msd/mirror` per mirror owner,
paged), and until they have, they answer for those keys with `"complete": false`, so
that a client asks the shadow as well (client/search.py).

The MSD tracks `held`: the part of its range whose records it holds for certain. It
shrinks with the range at once (a range that moves away and comes back is restored
again) and grows to the whole range when a restore pass, run while the range stayed put,
found every mirror owner complete for what it answered (its own `held` covered it). A
mirror owner that is not complete there may still be receiving what a live domain
migrates to it after the same re-split, or be restoring that very part from us: the pass
is repeated at doubling intervals (1, 2, 4, 8 heartbeats after the range last moved, in
the daemon), and after `patience_s` (10 heartbeats) its result is taken as it is, which
ends such a wait on each other. A stand-in root (a node waiting for its parent, or an
orphan) never restores: its whole space is no real range.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from msd.errors import MsdError
from msd.hierarchy import NodeState
from msd.keyspace import SPACE, KeyRange
from msd.schema import SessionRecord
from msd.store import HeldRecord, MirrorCursor, key_hex

if TYPE_CHECKING:
    from msd.sessions import SessionService

# Where a node's range is its own share of the hierarchy's space (not a stand-in root's).
PLACED = frozenset({NodeState.ROOT, NodeState.JOINED, NodeState.FOSTERED})
PAGE_ROWS = 200  # records one mirror answer carries at most ...
PAGE_BYTES = 128 * 1024  # ... and bytes of records (a routed answer is at most 256 KiB)


class Mirror:
    """One MSD's `held` range, its restores, and its answers to others' mirror requests."""

    def __init__(
        self, service: SessionService, *, settle_s: float, patience_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._service = service
        self._settle_s = settle_s
        self._patience_s = patience_s
        self._monotonic = monotonic
        self._held: KeyRange | None = None
        self._range: KeyRange | None = None
        self._range_since = monotonic()
        self._next_pass = settle_s  # how long the range must have stayed put for a pass
        self.restored = 0  # records copied in from the mirror (again, by a repeated pass)

    def __repr__(self) -> str:
        return f"<Mirror held={self._held} restored={self.restored}>"

    def complete(self, key: int) -> bool:
        """Whether we hold every record of `key`, which must be in our range."""
        held = self._held
        return held is not None and key in held

    def covers(self, start: int, end: int) -> bool:
        """Whether we hold every record with a key in [start, end)."""
        held = self._held
        return held is not None and held.start <= start and end <= held.end

    def observe_range(self, owned: KeyRange | None) -> None:
        """After every step of the tree node (None: no longer designated)."""
        if owned != self._range:
            self._range, self._range_since = owned, self._monotonic()
            self._next_pass = self._settle_s
        held = self._held
        if owned is None or held is None:
            self._held = None
            return
        start, end = max(held.start, owned.start), min(held.end, owned.end)
        self._held = KeyRange(start, end) if start < end else None

    @property
    def records_complete(self) -> bool:
        """Whether we hold every record of our whole range (nothing left to restore)."""
        node = self._service.current_node()
        return node is not None and self._held == node.owned

    async def restore(self) -> int:
        """Copy in the records of the parts of our range we do not hold for certain; how
        many. Raises RoutingFailed if a mirror owner cannot be reached (housekeeping tries
        again a heartbeat later)."""
        node = self._service.node()
        if node.state not in PLACED:
            return 0  # a stand-in root's whole space is no real range: its mirror is itself
        stable_for = self._monotonic() - self._range_since
        if stable_for < self._next_pass:
            return 0  # the range is still moving, or the last pass was a moment ago
        owned, generation, held = node.owned, node.generation, self._held
        restored, complete = 0, True
        for piece in minus(owned, held):
            count, answered_complete = await self._restore_piece(piece)
            restored += count
            complete = complete and answered_complete
        self.restored += restored
        moved = self._service.current_node() is not node or node.generation != generation
        if not moved and (complete or stable_for >= self._patience_s):
            self._held = owned
        elif not moved:
            self._next_pass = min(2 * max(stable_for, self._settle_s), self._patience_s)
        return restored

    async def _restore_piece(self, piece: KeyRange) -> tuple[int, bool]:
        """Copy in one piece's records; whether every mirror owner was complete there."""
        mirror = KeyRange(SPACE - piece.end, SPACE - piece.start)  # ~k for every k in piece
        start, after, restored, complete = mirror.start, None, 0, True
        service = self._service
        while start < mirror.end:
            page = await self.fetch(start, mirror.end, after=after)
            complete = complete and page.get("complete") is True
            # Their shadows are our records, their records our shadows.
            rows = [HeldRecord(r["keyword"], not r["shadow"], _record(r["record"]),
                               str(r["origin"])[:253]) for r in page["rows"]]
            await service.store.put_global_many(rows, now=service.now(), keep_newer=True)
            restored += len(rows)
            if page.get("after"):
                after = MirrorCursor(*page["after"])
            else:
                start, after = int(page["end"], 16), None
        return restored, complete

    async def fetch(
        self, start: int, end: int, *, after: MirrorCursor | None
    ) -> dict[str, Any]:
        """One page of the records held by the owner of `start` with keys in [start, end):
        here if we own it, else through a routed request."""
        body: dict[str, Any] = {"start": key_hex(start), "end": f"{end:x}",
                                "after": list(after) if after else None,
                                "hops": [self._service.domain]}
        answer = await self._service.originate(start, "/msd/mirror", body)
        if answer is None:
            return await self._answer(start, end, after=after)
        return answer

    def relay(
        self, start: int, end: int, *, after: MirrorCursor | None, body: dict[str, Any],
        hops: tuple[str, ...],
    ) -> None:
        """A routed mirror request reached us: answer its origin if we own `start`."""

        async def answer() -> dict[str, Any]:
            return await self._answer(start, end, after=after)

        self._service.pass_or_answer(start, "/msd/mirror", body=body, hops=hops,
                                     at_owner=answer)

    async def _answer(
        self, start: int, end: int, *, after: MirrorCursor | None
    ) -> dict[str, Any]:
        """Our records in [start, min(end, our end)), a page at a time; `after` continues."""
        service = self._service
        stop = min(end, service.node().owned.end)
        found = await service.store.global_within(start, stop, after=after, now=service.now(),
                                                  limit=PAGE_ROWS)
        rows: list[dict[str, Any]] = []
        size, last = 0, None
        for cursor, (keyword, shadow, record, origin) in found:
            size += len(record.model_dump_json())
            if rows and size > PAGE_BYTES:
                break
            rows.append({"keyword": keyword, "shadow": shadow, "origin": origin,
                         "record": record.model_dump(mode="json")})
            last = cursor
        more = len(rows) < len(found) or len(found) == PAGE_ROWS
        return {"owner": service.domain, "end": f"{stop:x}", "rows": rows,
                "after": list(last) if more and last is not None else None,
                "complete": self.covers(start, stop)}


def minus(whole: KeyRange, part: KeyRange | None) -> list[KeyRange]:
    """`whole` less `part`: at most two pieces, as both are intervals."""
    if part is None or part.end <= whole.start or whole.end <= part.start:
        return [whole]
    pieces = []
    if whole.start < part.start:
        pieces.append(KeyRange(whole.start, part.start))
    if part.end < whole.end:
        pieces.append(KeyRange(part.end, whole.end))
    return pieces


def _record(data: Any) -> SessionRecord:
    try:
        return SessionRecord.model_validate(data)
    except ValidationError:
        raise MsdError("a mirror answer carried an invalid session record") from None
