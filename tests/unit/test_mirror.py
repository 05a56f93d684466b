"""What an MSD holds for certain of its range: it shrinks with the range, grows by restores."""

from __future__ import annotations

from typing import Any

import pytest

from msd.keyspace import SPACE, KeyRange
from msd.mirror import Mirror, minus


@pytest.mark.parametrize(("whole", "part", "pieces"), [
    ((10, 20), None, [(10, 20)]),
    ((10, 20), (10, 20), []),
    ((10, 20), (12, 15), [(10, 12), (15, 20)]),
    ((10, 20), (0, 15), [(15, 20)]),
    ((10, 20), (15, 30), [(10, 15)]),
    ((10, 20), (20, 30), [(10, 20)]),  # touching, not overlapping
    ((0, SPACE), (0, 1), [(1, SPACE)]),
])
def test_minus(whole: tuple[int, int], part: tuple[int, int] | None,
               pieces: list[tuple[int, int]]) -> None:
    held = KeyRange(*part) if part else None
    assert minus(KeyRange(*whole), held) == [KeyRange(*p) for p in pieces]


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_held_shrinks_with_the_range_and_a_range_that_returns_is_incomplete() -> None:
    clock = _Clock()
    service: Any = object()  # the pure part never touches the service
    mirror = Mirror(service, settle_s=1.5, patience_s=10, monotonic=clock)
    assert not mirror.complete(5)  # nothing is held before a first restore
    mirror._held = KeyRange(0, 100)  # as a finished restore leaves it
    mirror.observe_range(KeyRange(0, 100))
    assert mirror.complete(99)
    mirror.observe_range(KeyRange(0, 50))  # a re-split gave keys 50..99 away
    assert mirror.complete(49) and not mirror.complete(50)
    mirror.observe_range(KeyRange(0, 100))  # and they came back: restored again first
    assert not mirror.complete(50)
    mirror.observe_range(None)  # stepped down: nothing is ours
    assert not mirror.complete(0)


class _Node:
    def __init__(self) -> None:
        from msd.hierarchy import NodeState

        self.state = NodeState.JOINED
        self.owned = KeyRange(0, SPACE // 4)
        self.generation = 1


class _Store:
    async def put_global_many(self, rows: list[Any], *, now: float, keep_newer: bool) -> int:
        return len(rows)


class _Service:
    def __init__(self) -> None:
        self.node_ = _Node()
        self.store = _Store()

    def node(self) -> _Node:
        return self.node_

    def current_node(self) -> _Node:
        return self.node_

    def now(self) -> float:
        return 0.0


async def test_an_incomplete_mirror_is_asked_again_at_doubling_intervals_then_trusted() -> None:
    clock, service = _Clock(), _Service()
    fake: Any = service  # stands in for a SessionService
    mirror = Mirror(fake, settle_s=1.0, patience_s=10.0, monotonic=clock)
    asked: list[float] = []

    async def fetch(start: int, end: int, *, after: Any) -> dict[str, Any]:
        asked.append(clock.now - 100.0)
        return {"rows": [], "end": f"{end:x}", "after": None, "complete": False}

    vars(mirror)["fetch"] = fetch  # the mirror owners, all answering "not complete"
    mirror.observe_range(service.node_.owned)  # the range arrives at t = 0
    for tenth in range(0, 121):
        clock.now = 100.0 + tenth / 10
        await mirror.restore()
    assert asked == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert mirror.records_complete  # taken as it is after the patience
