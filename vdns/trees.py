"""Random trees of domains for the scale experiment, and what the formulas predict for them.

Pure: a seed in, names and parents out. The predictions take subtree domain counts, so
they can be fed the counts the protocol itself converged to (docs/scale.md derives them).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Iterable

from msd.codec import DOMAIN_MAX_BYTES
from vdns.errors import VdnsError

ROOT_NAME = "level0.testdomain.info"  # the dissertation's root
# A heartbeat carries every child's range: at 64 children of names near the 253-byte limit
# it stays far below the codec's 65,000-byte datagram (ancestors included).
MAX_FANOUT = 64
MAX_DOMAINS = 100_000


class TreeError(VdnsError):
    """A random tree cannot be built with these settings."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DomainTree:
    """Domains by index: 0 is the root, and every parent comes before its children."""

    names: tuple[str, ...]
    parents: tuple[int, ...]  # the parent's index; -1 for the root
    depths: tuple[int, ...]  # 0 at the root
    depth_limit: int  # the deepest level that was allowed

    def __len__(self) -> int:
        return len(self.names)

    def parent_name(self, index: int) -> str | None:
        parent = self.parents[index]
        return None if parent < 0 else self.names[parent]

    @property
    def height(self) -> int:
        return max(self.depths)

    @property
    def mean_depth(self) -> float:
        return sum(self.depths) / len(self.depths)

    def fanouts(self) -> list[int]:
        """Every domain's number of children."""
        children = [0] * len(self.names)
        for parent in self.parents[1:]:
            children[parent] += 1
        return children


def name_depth_limit(fanout: int, *, root: str = ROOT_NAME) -> int:
    """The deepest level whose names (labels d0 … d<fanout-1> above the root) fit in a DNS name."""
    label = len(f"d{fanout - 1}") + 1  # with its dot
    return (DOMAIN_MAX_BYTES - len(root)) // label


def default_depth(domains: int, fanout: int) -> int:
    """⌈log_k N⌉ + 1: one level more than a complete k-ary tree of N domains needs, so the
    tree is random yet as shallow and bushy as DNS trees are."""
    levels = 0
    while fanout**levels < domains:  # exact, where math.log would round
        levels += 1
    return levels + 1


def random_tree(
    domains: int, *, fanout: int, depth: int | None = None, seed: int = 0, root: str = ROOT_NAME
) -> DomainTree:
    """A random tree of `domains` domains: each one after the root joins a parent drawn
    uniformly from the domains that still have room: fewer than `fanout` children, and above
    `depth`, the deepest level allowed (default: `default_depth`; never deeper than DNS
    names allow).

    A child is named `d<i>.<parent>`, i its rank among its parent's children.
    """
    if not 1 <= domains <= MAX_DOMAINS:
        raise TreeError(f"--domains {domains}: need 1..{MAX_DOMAINS:,}")
    if not 2 <= fanout <= MAX_FANOUT:
        raise TreeError(
            f"--fanout {fanout}: need 2..{MAX_FANOUT}; a heartbeat carries every child's range "
            f"in one datagram, and more than {MAX_FANOUT} children would not be sure to fit"
        )
    limit = name_depth_limit(fanout, root=root)
    if depth is not None and depth < 1:
        raise TreeError(f"--depth {depth}: need at least 1")
    deepest = min(default_depth(domains, fanout) if depth is None else depth, limit)
    capacity = sum(fanout**level for level in range(deepest + 1))
    if domains > capacity:
        raise TreeError(
            f"{domains:,} domains do not fit a tree of fan-out {fanout} and depth {deepest} "
            f"(at most {capacity:,}); raise --fanout or --depth"
        )
    rng = random.Random(f"tree-{seed}")
    names, parents, depths, children = [root], [-1], [0], [0]
    open_ = [0] if deepest > 0 else []  # domains that may take another child
    for index in range(1, domains):
        slot = rng.randrange(len(open_))
        parent = open_[slot]
        names.append(f"d{children[parent]}.{names[parent]}")
        parents.append(parent)
        depths.append(depths[parent] + 1)
        children.append(0)
        children[parent] += 1
        if children[parent] == fanout:  # full: swap it out of the open list in O(1)
            open_[slot] = open_[-1]
            open_.pop()
        if depths[index] < deepest:
            open_.append(index)
    return DomainTree(names=tuple(names), parents=tuple(parents), depths=tuple(depths),
                      depth_limit=deepest)


# --- predictions (docs/scale.md) ------------------------------------------------------------


def tree_path_hops(edge_counts: Iterable[int], domains: int) -> float:
    """Expected hops of a lookup from a uniformly random domain for a uniformly random key.

    With the exact split every domain owns 1/N of the space, so the owner is uniform too,
    and the route is the tree path: it crosses the edge above a subtree of s domains when
    exactly one end lies inside, with probability 2·(s/N)·(1 − s/N). Sum over the edges
    (`edge_counts`: every non-root domain's subtree count)."""
    n = domains
    return sum(2 * s * (n - s) for s in edge_counts) / (n * n)


def log_hops(domains: int, fanout: int) -> float:
    """log_k(N): the height of a complete k-ary tree of N domains, the issue's yardstick."""
    return math.log(domains, fanout)


def dissertation_load(child_counts: Iterable[int], domains: int) -> float:
    """The dissertation's routing load of a domain: (Σ count_j + 1) / N over its children j."""
    return (sum(child_counts) + 1) / domains


def uniform_load(child_counts: Iterable[int], domains: int) -> float:
    """The chance that a lookup from a uniformly random domain for a uniformly random key
    visits this domain (as origin, on the way, or as owner).

    It misses the domain exactly when origin and owner lie in the same part of the tree
    without it: below one child j (count_j domains), or outside its subtree."""
    counts = list(child_counts)
    outside = domains - 1 - sum(counts)
    return 1 - (sum(c * c for c in counts) + outside * outside) / (domains * domains)
