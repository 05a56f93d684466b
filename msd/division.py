"""One node's key range divided among itself and its children, and when to divide it again.

Pure bookkeeping beside the tree state machine (msd.hierarchy.Node): the children and the
counts they report, the pieces of the range, and the damping rule of docs/hierarchy.md
(α below the root, β at the root, a quiet period before a stale split is refreshed).
"""

from __future__ import annotations

import dataclasses
import enum

from msd.keyspace import FULL, KeyRange, split
from msd.messages import Peer


class LinkMode(enum.StrEnum):
    """How a parent–child link carries heartbeats."""

    MULTICAST = "multicast"
    UNICAST = "unicast"


@dataclasses.dataclass
class Child:
    """What a node knows of one child (its own, or a foster child it adopted)."""

    peer: Peer
    count: int  # the last count it reported
    used: int  # the count the current split is based on
    heard_at: float
    link: LinkMode
    foster: bool = False


class Division:
    """A range split into a piece for this domain (first) and one per child (in name order).

    Holds the children and the counts they report. `fair` is False after a carve (a
    newcomer's piece cut from our own piece only): the pieces then no longer follow the
    counts, and the next full division fixes that.
    """

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.children: dict[str, Child] = {}
        self.range: KeyRange = FULL
        self.owned: KeyRange = FULL
        self.pieces: dict[str, KeyRange] = {}  # child → its piece
        self.fair = True
        self.generation = 0  # grows with every change of the pieces
        self.changed_at = 0  # the beat at which a child's count or the children last changed
        self.stale_since: int | None = None  # the beat at which the split was found stale

    def __repr__(self) -> str:
        return (f"<Division {self.domain} range={self.range} owned={self.owned} "
                f"children={len(self.children)} fair={self.fair}>")

    @property
    def count(self) -> int:
        """Domains in this subtree, this one included, as the children last reported."""
        return 1 + sum(child.count for child in self.children.values())

    @property
    def used_count(self) -> int:
        """The subtree count the current split is based on."""
        return 1 + sum(child.used for child in self.children.values())

    def rows(self) -> list[tuple[KeyRange, str]]:
        """(piece, holder) in key order: our own piece and every child's."""
        return sorted([(self.owned, self.domain), *((p, n) for n, p in self.pieces.items())],
                      key=lambda row: row[0].start)

    def drift(self) -> float:
        """The largest relative change of a child's count since the split used it."""
        return max((abs(c.count - c.used) / c.used for c in self.children.values()),
                   default=0.0)

    @property
    def stale(self) -> bool:
        """Does the split differ from what the current counts ask for?"""
        return not self.fair or any(c.count != c.used for c in self.children.values())

    def changed(self, beat: int) -> None:
        """A child joined, left or reported another count at this beat."""
        self.changed_at = beat

    def due(self, *, beat: int, threshold: float, depth: int, quiet: int) -> bool:
        """Is a stale split to be divided again at this beat? When some count moved by
        `threshold` (θ: β at a root, α below) of what the split used, or when the counts
        have been quiet for `quiet` beats (twice that below the root).

        At depth d > 0 both wait 2d + 1 beats longer: a count that changed below reached
        us d beats before it reaches the root, and an ancestor at depth a < d acts
        2a + 1 beats after it saw the change, so before us. An ancestor that divides
        again for the same change therefore comes first, its new range for us arrives
        within network delays, and we divide once, by the current counts, instead of
        twice (docs/hierarchy.md, "Damping").

        The quiet period below the root is 2·quiet: the root hears every count change of
        the tree, so its own quiet period starts no earlier than ours (d beats later) but
        may start much later, when a join elsewhere restarted it. Either the root was
        quiet for `quiet` beats after our last change and divided, which divides us too,
        or a change restarted it within that time and it divides within 2·quiet of our
        change. Only a stale split the root does not see (counts that moved within our
        subtree and cancelled out above us) waits the longer period."""
        if not self.stale:
            self.stale_since = None
            return False
        if self.stale_since is None:
            self.stale_since = beat
        wait = 2 * depth + 1 if depth else 0
        if self.drift() >= threshold and beat - self.stale_since >= wait:
            return True
        return beat - self.changed_at >= (2 * quiet if depth else quiet) + wait

    def divide(self) -> bool:
        """Split the range by the children's current counts (ours: one); True if a piece
        moved. Every child's `used` becomes its count."""
        names = sorted(self.children)
        for name in names:
            self.children[name].used = self.children[name].count
        weights = [1] + [self.children[name].count for name in names]
        if self.range.size < len(weights):
            names, weights = [], [1]  # a range too small to share: keep it all
        pieces = split(self.range, weights)
        self.fair = True
        self.stale_since = None
        return self._set(pieces[0], dict(zip(names, pieces[1:], strict=True)))

    def join(self, name: str, child: Child, *, threshold: float) -> bool:
        """Place a newcomer (or a child admitted without a piece): a fresh division of the
        whole range when its subtree count is at least `threshold` (θ) times the count the
        split used without it, else a carve. True if a piece moved."""
        self.children.pop(name, None)
        if child.count >= threshold * self.used_count:
            self.children[name] = child
            return self.divide()
        return self.carve(name, child)

    def admit(self, name: str, child: Child) -> None:
        """Count a newcomer without giving it a piece yet: our own range is about to change,
        and the division that follows places it (`join` places it sooner if need be)."""
        child.used = child.count
        self.children[name] = child
        self.fair = False

    def unplaced(self) -> list[str]:
        """Children admitted without a piece, in name order."""
        return sorted(name for name in self.children if name not in self.pieces)

    def carve(self, name: str, child: Child) -> bool:
        """Add a newcomer with a piece of our own piece only, in proportion to its count
        against our one: no other child's piece moves. Divides afresh instead when our
        piece is too small to share."""
        self.children[name] = child
        if self.owned.size < 1 + child.count:
            return self.divide()
        ours, theirs = split(self.owned, [1, child.count])
        child.used = child.count
        self.fair = False
        return self._set(ours, {**self.pieces, name: theirs})

    def drop(self, name: str) -> bool:
        """Forget a child (True if it was one); the caller divides again."""
        self.pieces.pop(name, None)
        return self.children.pop(name, None) is not None

    def _set(self, owned: KeyRange, pieces: dict[str, KeyRange]) -> bool:
        changed = owned != self.owned or pieces != self.pieces
        self.owned, self.pieces = owned, pieces
        if changed:
            self.generation += 1
        return changed
