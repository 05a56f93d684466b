"""Checks over the whole tree's status documents: do the owned ranges tile, does every key route?

Pure functions over the JSON that each designated MSD serves at /status (and that
`mdns status --json` prints), so the same checks run in tests, in `mdns status` and in
the experiments.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Mapping, Sequence
from typing import Any

from msd.keyspace import SPACE, KeyRange

MAX_ROUTE_HOPS = 256


def owned_ranges(domains: Sequence[Mapping[str, Any]]) -> list[tuple[KeyRange, str]]:
    """Every (range, domain) the domains claim to own, in key order."""
    owned = [(KeyRange.from_json(pair), d["name"]) for d in domains for pair in d.get("ranges", [])]
    return sorted(owned)


def tiling_problems(domains: Sequence[Mapping[str, Any]]) -> list[str]:
    """Gaps and overlaps in the owned ranges (an empty list: they tile the space)."""
    return tiling_gaps(owned_ranges(domains))


def tiling_gaps(owned: Sequence[tuple[KeyRange, str]]) -> list[str]:
    """Gaps and overlaps in (range, domain) pairs sorted by range: the core of tiling_problems,
    for callers that hold the ranges already (the simulator's nodes)."""
    if not owned:
        return ["no domain owns any range"]
    problems: list[str] = []
    position = 0
    for rng, name in owned:
        if rng.start > position:
            problems.append(f"gap [{position:032x}, {rng.start:032x}) before {name}")
        elif rng.start < position:
            problems.append(f"{name} overlaps the range before it at {rng.start:032x}")
        position = max(position, rng.end)
    if position < SPACE:
        problems.append(f"gap [{position:032x}, end of space)")
    return problems


def route(domains: Mapping[str, Mapping[str, Any]], key: int, *, start: str) -> str | None:
    """Follow each domain's routing table from `start`; the owner, or None on a dead end."""
    current = start
    seen: set[str] = set()
    for _ in range(MAX_ROUTE_HOPS):
        domain = domains.get(current)
        if domain is None or current in seen:
            return None
        seen.add(current)
        hop = _lookup(domain.get("routes", []), key)
        if hop is None or hop == current:
            owns = any(key in KeyRange.from_json(pair) for pair in domain.get("ranges", []))
            return current if owns else None
        current = hop
    return None


class Owners:
    """Who owns a key, by binary search over (range, domain) pairs sorted by range."""

    def __init__(self, owned: Sequence[tuple[KeyRange, str]]) -> None:
        self._owned = owned
        self._starts = [rng.start for rng, _ in owned]

    def __call__(self, key: int) -> str | None:
        index = bisect.bisect_right(self._starts, key) - 1
        if index >= 0 and key in self._owned[index][0]:
            return self._owned[index][1]
        return None


def routing_problems(
    domains: Sequence[Mapping[str, Any]], *, keys: int = 10_000, seed: int = 0
) -> list[str]:
    """Route `keys` random keys from every domain; each must reach the one owner."""
    by_name = {d["name"]: d for d in domains}
    owner = Owners(owned_ranges(domains))
    rng_keys = random.Random(seed)
    problems: list[str] = []
    for _ in range(keys):
        key = rng_keys.randrange(SPACE)
        expected = owner(key)
        for name in by_name:
            got = route(by_name, key, start=name)
            if got != expected or got is None:
                problems.append(f"key {key:032x} from {name}: reached {got}, owner {expected}")
                if len(problems) >= 10:
                    return problems
    return problems


def skew(domains: Sequence[Mapping[str, Any]]) -> float:
    """max |share − 1/N| over the domains, N being how many there are."""
    n = len(domains)
    if n == 0:
        return 0.0
    shares: dict[str, int] = {}
    for rng, name in owned_ranges(domains):
        shares[name] = shares.get(name, 0) + rng.size
    return max(abs(shares.get(d["name"], 0) / SPACE - 1 / n) for d in domains)


def _lookup(rows: Sequence[Mapping[str, Any]], key: int) -> str | None:
    """The next hop of the row that holds `key` (rows cover the space; None: no next hop)."""
    for row in rows:
        if int(row["start"], 16) <= key < int(row["end"], 16):
            return str(row["next"]) if row["next"] else None
    return None
