"""A node's range divided among itself and its children: exact splits, carves, drift."""

from __future__ import annotations

import itertools

import pytest

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


def _stale_after_a_carve(*, beat: int) -> Division:
    division = Division("r")
    division.children["a.r"] = _child("a.r", 1)
    division.divide()
    division.changed(beat)
    division.carve("b.r", _child("b.r", 1))
    return division


def test_a_carved_split_waits_the_quiet_period_at_the_root_and_twice_it_below() -> None:
    """θ too large for the drift to act: only the quiet period divides again. At the root
    after `quiet` beats; at depth 2 after 2·quiet + 2·2 + 1, so that the root, which hears
    every change of the tree, divides first and its new ranges divide us once."""
    root = _stale_after_a_carve(beat=100)
    assert not root.due(beat=109, threshold=5.0, depth=0, quiet=10)
    assert root.due(beat=110, threshold=5.0, depth=0, quiet=10)
    below = _stale_after_a_carve(beat=100)
    assert not below.due(beat=124, threshold=5.0, depth=2, quiet=10)
    assert below.due(beat=125, threshold=5.0, depth=2, quiet=10)
    below.divide()
    assert not below.due(beat=200, threshold=5.0, depth=2, quiet=10)


def test_a_count_that_moved_by_theta_divides_before_the_quiet_period() -> None:
    division = Division("r")
    division.children["a.r"] = _child("a.r", 2)
    division.divide()
    division.changed(50)
    division.children["a.r"].count = 3  # drift 0.5
    assert not division.due(beat=50, threshold=0.6, depth=0, quiet=10)
    assert division.due(beat=50, threshold=0.5, depth=0, quiet=10)
    assert not division.due(beat=52, threshold=0.5, depth=1, quiet=10)  # 2·1 + 1 beats later
    assert division.due(beat=53, threshold=0.5, depth=1, quiet=10)


def test_join_carves_a_small_newcomer_and_divides_for_a_large_one() -> None:
    division = Division("r")
    division.children["a.r"] = _child("a.r", 1)
    division.divide()  # used count 2
    sibling = division.pieces["a.r"]
    assert division.join("b.r", _child("b.r", 1), threshold=0.6)  # 1 < 0.6 · 2: carve
    assert division.pieces["a.r"] == sibling and not division.fair
    assert division.join("c.r", _child("c.r", 3), threshold=0.6)  # 3 ≥ 0.6 · 3: divide
    assert division.fair and division.pieces["a.r"] != sibling and _tiles(division)


def test_an_admitted_newcomer_is_counted_but_placed_only_by_the_next_division() -> None:
    division = Division("r")
    division.children["a.r"] = _child("a.r", 1)
    division.divide()
    owned, generation = division.owned, division.generation
    division.admit("b.r", _child("b.r", 4))
    assert division.count == 6 and division.unplaced() == ["b.r"]
    assert division.stale and division.owned == owned and division.generation == generation
    assert "b.r" not in dict((name, piece) for piece, name in division.rows())
    division.range = KeyRange(0, SPACE // 2)  # the parent's range for us arrives
    division.divide()
    assert division.unplaced() == [] and division.fair and _tiles(division)
    assert division.pieces["b.r"].size == pytest.approx(SPACE // 2 * 4 / 6, rel=1e-9)


def test_an_admitted_newcomer_can_be_placed_by_the_join_rule() -> None:
    division = Division("r")
    division.divide()
    division.admit("b.r", _child("b.r", 1))
    assert division.join("b.r", division.children["b.r"], threshold=5.0)  # judged without it
    assert division.unplaced() == [] and not division.fair  # carved: the split stays stale
    assert division.owned.size + division.pieces["b.r"].size == SPACE
