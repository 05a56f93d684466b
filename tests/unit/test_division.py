"""A node's range divided among itself and its children: exact splits, carves, drift."""

from __future__ import annotations

import itertools

from msd.division import Child, Division, LinkMode
from msd.keyspace import FULL, SPACE, KeyRange
from msd.messages import Peer


def _child(name: str, count: int) -> Child:
    return Child(peer=Peer(domain=name, host="127.0.0.1", port=1), count=count, used=count,
                 heard_at=0.0, link=LinkMode.MULTICAST)


def _tiles(division: Division) -> bool:
    rows = division.rows()
    return (rows[0][0].start == division.range.start and rows[-1][0].end == division.range.end
            and all(a[0].end == b[0].start for a, b in itertools.pairwise(rows)))


def test_divide_gives_each_piece_its_share_of_the_counts() -> None:
    division = Division("r")
    division.children.update({"b.r": _child("b.r", 2), "a.r": _child("a.r", 1)})
    assert division.divide()
    assert division.owned == KeyRange(0, SPACE // 4)
    assert division.pieces["a.r"].size == SPACE // 4  # name order: a.r before b.r
    assert division.pieces["b.r"].end == SPACE
    assert division.fair and not division.stale and _tiles(division)
    generation = division.generation
    assert not division.divide()  # nothing moved: not a change
    assert division.generation == generation


def test_a_carve_moves_no_sibling_and_leaves_the_split_unfair() -> None:
    division = Division("r")
    division.children["a.r"] = _child("a.r", 1)
    division.divide()
    sibling = division.pieces["a.r"]
    assert division.carve("b.r", _child("b.r", 1))
    assert division.pieces["a.r"] == sibling
    assert division.owned.size + division.pieces["b.r"].size == SPACE // 2
    assert not division.fair and division.stale and _tiles(division)
    division.divide()
    assert division.fair and division.owned.size == SPACE // 3


def test_drift_is_the_largest_relative_count_change_since_the_split() -> None:
    division = Division("r")
    division.children.update({"a.r": _child("a.r", 4), "b.r": _child("b.r", 1)})
    division.divide()
    division.children["a.r"].count = 5
    assert division.drift() == 0.25
    division.children["b.r"].count = 3
    assert division.drift() == 2.0
    assert division.count == 9 and division.used_count == 6
    assert division.drop("b.r") and not division.drop("b.r")
    assert "b.r" not in division.pieces


def test_a_range_too_small_to_share_is_kept_whole() -> None:
    division = Division("r")
    division.range = KeyRange(0, 2)
    division.children.update({"a.r": _child("a.r", 1), "b.r": _child("b.r", 1)})
    division.divide()
    assert division.owned == KeyRange(0, 2) and division.pieces == {}
    assert FULL.size == SPACE
