"""The MD5 keyword-hash space: keys, ranges, the proportional split and routing tables."""

from __future__ import annotations

import bisect
import hashlib
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

from msd.errors import MsdError

KEY_BITS = 128
SPACE = 1 << KEY_BITS

_HEX_DIGITS = KEY_BITS // 4
# The one end that does not fit in 32 hex digits; see KeyRange.to_json.
_TOP_HEX = "1" + "0" * _HEX_DIGITS
_HEX = re.compile(r"[0-9a-f]{32}")


class KeyspaceError(MsdError):
    """A key, range, split or routing table broke a rule of the hash space."""


class InvalidKeyError(KeyspaceError):
    """A key is not an integer in [0, 2**128)."""


class InvalidRangeError(KeyspaceError):
    """A key range is empty, reversed, outside [0, 2**128], or its JSON form is malformed."""


class InvalidWeightsError(KeyspaceError):
    """Split weights must be a non-empty sequence of positive integers."""


class RangeTooSmallError(KeyspaceError):
    """The range has too few keys to give every piece of the split at least one."""


class OverlappingRoutesError(KeyspaceError):
    """Two rows of a routing table cover the same key; each key must have one next hop."""


def _check_key(key: object) -> int:
    # bool is an int subclass; a True key is always a bug upstream.
    if not isinstance(key, int) or isinstance(key, bool) or not 0 <= key < SPACE:
        raise InvalidKeyError(f"a key must be an integer in [0, 2**{KEY_BITS}), got {key!r}")
    return key


def key_of(keyword: str) -> int:
    """The 128-bit MD5 of the keyword's UTF-8 bytes, as an int (big-endian)."""
    # MD5 is the design's choice for spreading keys, not a security measure; saying so keeps
    # it available on FIPS-restricted builds of OpenSSL.
    digest = hashlib.md5(keyword.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest, "big")


def shadow_of(key: int) -> int:
    """The bit-inverted key ``~h`` where a record's shadow copy is stored.

    An involution; it never equals ``key`` because ``SPACE - 1`` is odd.
    """
    return SPACE - 1 - _check_key(key)


def _hex_start(value: int) -> str:
    return format(value, f"0{_HEX_DIGITS}x")


def _hex_end(value: int) -> str:
    return _TOP_HEX if value == SPACE else format(value, f"0{_HEX_DIGITS}x")


def _parse_hex(text: object, *, top_allowed: bool) -> int:
    if isinstance(text, str):
        if _HEX.fullmatch(text):
            return int(text, 16)
        if top_allowed and text == _TOP_HEX:
            return SPACE
    what = "32 lower-case hex digits" + (f" or {_TOP_HEX!r}" if top_allowed else "")
    raise InvalidRangeError(f"a range bound must be {what}, got {text!r}")


@dataclass(frozen=True, order=True, slots=True)
class KeyRange:
    """The half-open key interval [start, end), never empty: 0 <= start < end <= SPACE."""

    start: int
    end: int

    def __post_init__(self) -> None:
        # The common case first, cheaply: a tree of 10,000 domains builds millions of ranges.
        if type(self.start) is int and type(self.end) is int and (
            0 <= self.start < self.end <= SPACE
        ):
            return
        for name, value in (("start", self.start), ("end", self.end)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidRangeError(f"range {name} must be an int, got {value!r}")
        if not 0 <= self.start < self.end <= SPACE:
            raise InvalidRangeError(
                f"a range needs 0 <= start < end <= 2**{KEY_BITS}, "
                f"got [{self.start:#x}, {self.end:#x})"
            )

    @property
    def size(self) -> int:
        """The number of keys in the range."""
        return self.end - self.start

    @property
    def share(self) -> float:
        """The fraction of the whole space the range covers (correctly rounded)."""
        return self.size / SPACE

    def share_fraction(self) -> Fraction:
        """The exact fraction of the whole space the range covers."""
        return Fraction(self.size, SPACE)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.start <= key < self.end

    def to_json(self) -> list[str]:
        """``[start, end]`` as hex strings, the end still exclusive.

        Both are 32 lower-case hex digits, except the top end ``2**128``, which needs 33 and
        is written ``"1"`` followed by 32 zeros. Writing ``end - 1`` (inclusive) would keep
        every string at 32 digits but give the wire a second convention besides the code's
        half-open one; a single, recognisable 33-digit value is the smaller surprise.
        """
        return [_hex_start(self.start), _hex_end(self.end)]

    @classmethod
    def from_json(cls, value: object) -> KeyRange:
        """Parse the form ``to_json`` writes; anything else raises InvalidRangeError."""
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise InvalidRangeError(f"a range must be [start_hex, end_hex], got {value!r}")
        start = _parse_hex(value[0], top_allowed=False)
        end = _parse_hex(value[1], top_allowed=True)
        return cls(start, end)

    def __repr__(self) -> str:
        return f"KeyRange({_hex_start(self.start)}, {_hex_end(self.end)})"


FULL = KeyRange(0, SPACE)


def _check_weights(weights: Sequence[int]) -> None:
    if len(weights) == 0:
        raise InvalidWeightsError("a split needs at least one weight")
    for i, weight in enumerate(weights):
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
            raise InvalidWeightsError(f"weight {i} must be a positive integer, got {weight!r}")


def _pieces(rng: KeyRange, bounds: list[int], *, what: str) -> list[KeyRange]:
    # bounds holds every piece's end; the first piece starts at rng.start.
    pieces: list[KeyRange] = []
    start = rng.start
    for end in bounds:
        if end <= start:
            raise RangeTooSmallError(
                f"{what}: range {rng!r} of {rng.size} keys cannot give each of "
                f"{len(bounds)} pieces a key"
            )
        pieces.append(KeyRange(start, end))
        start = end
    return pieces


def split(rng: KeyRange, weights: Sequence[int]) -> list[KeyRange]:
    """Split ``rng`` into consecutive pieces with sizes proportional to ``weights``.

    Exact integer arithmetic: piece ``i`` ends at ``start + size * W_i // total`` where
    ``W_i`` is the sum of the first ``i + 1`` weights, so the pieces tile the range with no
    gap or overlap and each is within one key of its exact proportional size.
    """
    _check_weights(weights)
    return _pieces(rng, split_bounds(rng.start, rng.size, weights), what="split")


def split_bounds(start: int, size: int, weights: Sequence[int]) -> list[int]:
    """The arithmetic of `split` alone: every piece's end, for weights already checked."""
    total = sum(weights)
    bounds: list[int] = []
    cumulative = 0
    for weight in weights:
        cumulative += weight
        bounds.append(start + size * cumulative // total)
    return bounds


def msb_split(rng: KeyRange, weights: Sequence[int]) -> list[KeyRange]:
    """The dissertation's coarse split, kept only to measure how much worse it is.

    Our reading: with ``k`` pieces, take the smallest ``n`` with ``2**n >= k`` and cut the
    range into ``2**n`` equal blocks by the ``n`` most significant bits of the offset (exact
    when the size is a power of two, as for FULL). Each piece gets whole blocks: at least
    one, then in proportion to its weight by largest remainder, ties to the earlier piece.
    """
    _check_weights(weights)
    count = len(weights)
    blocks = 1 << (count - 1).bit_length()
    if rng.size < blocks:
        raise RangeTooSmallError(
            f"msb_split: range {rng!r} of {rng.size} keys has fewer than {blocks} keys"
        )
    total = sum(weights)
    quotas = [Fraction(blocks * weight, total) for weight in weights]
    alloc = [max(1, int(quota)) for quota in quotas]
    # The minimum of one block can overshoot; take back from whoever is most over quota.
    while sum(alloc) > blocks:
        over = max((i for i in range(count) if alloc[i] > 1), key=lambda i: alloc[i] - quotas[i])
        alloc[over] -= 1
    while sum(alloc) < blocks:
        under = max(range(count), key=lambda i: quotas[i] - alloc[i])
        alloc[under] += 1
    bounds: list[int] = []
    used = 0
    for blocks_given in alloc:
        used += blocks_given
        bounds.append(rng.start + rng.size * used // blocks)
    return _pieces(rng, bounds, what="msb_split")


def skew(shares: Iterable[Fraction | float], n: int) -> float:
    """The largest ``|share - 1/n|``: how far the worst domain is from a fair share."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise KeyspaceError(f"skew needs a positive domain count, got {n!r}")
    fair = Fraction(1, n)
    worst: Fraction | float | None = None
    for share in shares:
        # Fractions stay exact; a float share is compared against the float 1/n.
        gap = abs(share - fair) if isinstance(share, Fraction) else abs(share - 1 / n)
        if worst is None or gap > worst:
            worst = gap
    if worst is None:
        raise KeyspaceError("skew needs at least one share")
    return float(worst)


class Route(NamedTuple):
    """One row of a routing table: keys in ``key_range`` go to ``next_hop``."""

    key_range: KeyRange
    next_hop: str


class RoutingTable:
    """Rows ``(range, next hop)`` that do not overlap, and a default route (the parent).

    Immutable and comparable, so a node can count route switches as changes of its table.
    """

    __slots__ = ("_default", "_rows", "_starts")

    def __init__(
        self, rows: Iterable[tuple[KeyRange, str]] = (), *, default: str | None = None
    ) -> None:
        given = [Route(key_range, hop) for key_range, hop in rows]
        for route in given:
            if not isinstance(route.key_range, KeyRange):
                raise KeyspaceError(f"a route needs a KeyRange, got {route.key_range!r}")
            if not isinstance(route.next_hop, str) or not route.next_hop:
                raise KeyspaceError(f"a next hop must be a non-empty string, got {route!r}")
        starts = [route.key_range.start for route in given]
        # Rows usually arrive in key order (a split's pieces); strictly rising starts mean
        # sorting would change nothing, and comparing ints is much cheaper than rows.
        in_order = all(a < b for a, b in itertools.pairwise(starts))
        ordered = given if in_order else sorted(given)
        for before, after in itertools.pairwise(ordered):
            if before.key_range.end > after.key_range.start:
                raise OverlappingRoutesError(
                    f"routes overlap: {before.key_range!r} -> {before.next_hop} "
                    f"and {after.key_range!r} -> {after.next_hop}"
                )
        if default is not None and (not isinstance(default, str) or not default):
            raise KeyspaceError(
                f"the default route must be a non-empty string or None, got {default!r}"
            )
        self._rows = tuple(ordered)
        self._starts = starts if in_order else [route.key_range.start for route in ordered]
        self._default = default

    @classmethod
    def from_split(
        cls,
        rng: KeyRange,
        *,
        self_hop: str,
        children: Sequence[tuple[str, int]],
        default: str | None,
    ) -> RoutingTable:
        """The table of a node owning ``rng``: itself first with weight 1, then each
        ``(child, subtree domain count)`` in the given order; other keys go to ``default``."""
        pieces = split(rng, [1, *(count for _, count in children)])
        hops = [self_hop, *(child for child, _ in children)]
        return cls(zip(pieces, hops, strict=True), default=default)

    @property
    def rows(self) -> tuple[Route, ...]:
        """The rows in key order."""
        return self._rows

    @property
    def default(self) -> str | None:
        """Where keys outside every row go: the parent, or None at a root."""
        return self._default

    def lookup(self, key: int) -> str | None:
        """The next hop for ``key``: its row's, else the default (O(log n))."""
        _check_key(key)
        index = bisect.bisect_right(self._starts, key) - 1
        if index >= 0 and key < self._rows[index].key_range.end:
            return self._rows[index].next_hop
        return self._default

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Route]:
        return iter(self._rows)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RoutingTable):
            return NotImplemented
        return self._rows == other._rows and self._default == other._default

    def __hash__(self) -> int:
        return hash((self._rows, self._default))

    def __repr__(self) -> str:
        rows = ", ".join(f"{r.key_range!r} -> {r.next_hop}" for r in self._rows)
        return f"RoutingTable([{rows}], default={self._default!r})"

    def covering_rows(self) -> list[dict[str, str | None]]:
        """The table as JSON rows covering the whole space: the default route appears as the
        rows outside ours (next hop: the default, or None where nobody is known)."""
        rows: list[dict[str, str | None]] = []
        position = 0
        for route in self._rows:
            if route.key_range.start > position:
                rows.append(_json_row(KeyRange(position, route.key_range.start), self._default))
            rows.append(_json_row(route.key_range, route.next_hop))
            position = route.key_range.end
        if position < SPACE:
            rows.append(_json_row(KeyRange(position, SPACE), self._default))
        return rows

    def to_json(self) -> dict[str, Any]:
        """``{"rows": [{"start", "end", "next"}, ...], "default": hop or null}``."""
        rows = []
        for route in self._rows:
            start, end = route.key_range.to_json()
            rows.append({"start": start, "end": end, "next": route.next_hop})
        return {"rows": rows, "default": self._default}

    @classmethod
    def from_json(cls, value: object) -> RoutingTable:
        """Parse the form ``to_json`` writes; malformed input raises a KeyspaceError."""
        if not isinstance(value, dict) or set(value) != {"rows", "default"}:
            raise KeyspaceError(f"a routing table must be {{'rows', 'default'}}, got {value!r}")
        rows = value["rows"]
        if not isinstance(rows, list):
            raise KeyspaceError(f"routing table rows must be a list, got {rows!r}")
        parsed: list[tuple[KeyRange, str]] = []
        for row in rows:
            if not isinstance(row, dict) or set(row) != {"start", "end", "next"}:
                raise KeyspaceError(f"a route must be {{'start', 'end', 'next'}}, got {row!r}")
            parsed.append((KeyRange.from_json([row["start"], row["end"]]), row["next"]))
        return cls(parsed, default=value["default"])


def _json_row(rng: KeyRange, hop: str | None) -> dict[str, str | None]:
    start, end = rng.to_json()
    return {"start": start, "end": end, "next": hop}
