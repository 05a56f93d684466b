"""The redirection cache: which domain owns a keyword, kept by the dissertation's hybrid score."""

from __future__ import annotations

import dataclasses
import heapq
import math
from collections import OrderedDict
from collections.abc import Iterator

from msd.errors import MsdError
from msd.keyspace import SPACE

DEFAULT_TIMEOUT_MS = 3_600_000
DEFAULT_LAMBDA = 0.4
MS_PER_MINUTE = 60_000
# Stale heap items (left by invalidations and expiries) are swept out when the heap passes
# this many times the live entries, so memory stays O(capacity).
_HEAP_SLACK = 2


class CacheError(MsdError):
    """The redirection cache was configured or driven wrongly."""


class InvalidCacheConfigError(CacheError):
    """Capacity must be an int ≥ 1, timeout_ms an int ≥ 1 and λ a number in [0, 1]."""


class InvalidRedirectError(CacheError):
    """A redirect needs a domain, a host, a port in 1..65535, 0 ≤ start < end ≤ 2**128, term ≥ 0."""


class ClockWentBackwardsError(CacheError):
    """now_ms went below a time the cache has already seen: pass a monotonic clock."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def score(
    freq: int, idle_ms: int, *, timeout_ms: int = DEFAULT_TIMEOUT_MS, lam: float = DEFAULT_LAMBDA
) -> float:
    """λ·freq + (1−λ)·(timeout − idle) / 60 000: the entry with the lowest score is evicted."""
    return lam * freq + (1.0 - lam) * (timeout_ms - idle_ms) / MS_PER_MINUTE


@dataclasses.dataclass(frozen=True, kw_only=True)
class Redirect:
    """Where a keyword's owner was: its domain, MSD address, key range [start, end) and term."""

    domain: str
    host: str
    port: int
    start: int
    end: int
    term: int

    def __post_init__(self) -> None:
        if not isinstance(self.domain, str) or not self.domain:
            raise InvalidRedirectError(f"a redirect needs an owner domain, got {self.domain!r}")
        if not isinstance(self.host, str) or not self.host:
            raise InvalidRedirectError(f"a redirect needs the MSD's host, got {self.host!r}")
        if not _is_int(self.port) or not 1 <= self.port <= 65_535:
            raise InvalidRedirectError(f"port must be an int in 1..65535, got {self.port!r}")
        if not (_is_int(self.start) and _is_int(self.end) and 0 <= self.start < self.end <= SPACE):
            raise InvalidRedirectError(
                f"key range must satisfy 0 <= start < end <= 2**128, got [{self.start!r}, "
                f"{self.end!r})"
            )
        if not _is_int(self.term) or self.term < 0:
            raise InvalidRedirectError(f"term must be an int >= 0, got {self.term!r}")

    def covers(self, key: int) -> bool:
        """Whether the key lies in the range this redirect was valid for."""
        return self.start <= key < self.end


@dataclasses.dataclass(slots=True, eq=False)
class _Entry:
    keyword: str
    redirect: Redirect
    freq: int
    last_access: int


class RedirectCache:
    """A bounded map keyword → Redirect, evicting the lowest-scored entry when full.

    Why a heap is exact here: score(now) = π + (1−λ)·(timeout − now)/60 000 with
    π = λ·freq + (1−λ)·last_access/60 000, and the second term is the same for every entry.
    So the ranking never changes with time alone, only when an entry is touched, and a
    touch only raises π. The heap keeps one item per entry, pushed with a π that is at most
    the current one; a popped item whose entry has since been touched is pushed again with
    its current π (lazy re-keying). A hit is O(1); an eviction is O(log n) amortised.

    Before evicting by score, an entry idle past the timeout is dropped if there is one
    (it is dead anyway: a get would miss); the oldest such entry is found in O(1) because
    entries are kept in access order.
    """

    def __init__(
        self,
        capacity: int,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        lam: float = DEFAULT_LAMBDA,
    ) -> None:
        if not _is_int(capacity) or capacity < 1:
            raise InvalidCacheConfigError(f"capacity must be an int >= 1, got {capacity!r}")
        if not _is_int(timeout_ms) or timeout_ms < 1:
            raise InvalidCacheConfigError(f"timeout_ms must be an int >= 1, got {timeout_ms!r}")
        if (
            isinstance(lam, bool)
            or not isinstance(lam, int | float)
            or not math.isfinite(lam)
            or not 0.0 <= lam <= 1.0
        ):
            raise InvalidCacheConfigError(f"λ must be a number in [0, 1], got {lam!r}")
        self.capacity = capacity
        self.timeout_ms = timeout_ms
        self.lam = float(lam)
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0
        self.invalidations = 0
        # Access order: the first entry is always the longest idle.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._heap: list[tuple[float, int, _Entry]] = []
        self._ticket = 0  # tie-break for equal priorities; never lets the heap compare entries
        self._now = -math.inf

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, keyword: object) -> bool:
        """Whether an entry is held (expired or not), without counting or touching it."""
        return keyword in self._entries

    def __iter__(self) -> Iterator[str]:
        """The held keywords, longest idle first (expired ones included until swept)."""
        return iter(list(self._entries))

    def __repr__(self) -> str:
        return (
            f"RedirectCache(size={len(self._entries)}/{self.capacity}, hits={self.hits}, "
            f"misses={self.misses}, evictions={self.evictions}, "
            f"expirations={self.expirations}, invalidations={self.invalidations})"
        )

    def stats(self) -> dict[str, int]:
        """The counters and the size, for /status and /metrics."""
        return {
            "size": len(self._entries),
            "capacity": self.capacity,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "expirations": self.expirations,
            "invalidations": self.invalidations,
        }

    def _tick(self, now_ms: int) -> int:
        if not _is_int(now_ms):
            raise CacheError(f"now_ms must be an int (milliseconds), got {now_ms!r}")
        if now_ms < self._now:
            raise ClockWentBackwardsError(
                f"now_ms {now_ms} is before {self._now}, already seen: pass a monotonic clock"
            )
        self._now = now_ms
        return now_ms

    def _priority(self, entry: _Entry) -> float:
        return self.lam * entry.freq + (1.0 - self.lam) * entry.last_access / MS_PER_MINUTE

    def _push(self, entry: _Entry) -> None:
        self._ticket += 1
        heapq.heappush(self._heap, (self._priority(entry), self._ticket, entry))

    def _expired(self, entry: _Entry, now_ms: int) -> bool:
        return now_ms - entry.last_access > self.timeout_ms

    def _drop(self, entry: _Entry) -> None:
        del self._entries[entry.keyword]
        # Its heap item turns stale; sweep once stale items outnumber live ones.
        if len(self._heap) > _HEAP_SLACK * len(self._entries) + 64:
            self._heap = [item for item in self._heap if self._live(item[2])]
            heapq.heapify(self._heap)

    def _live(self, entry: _Entry) -> bool:
        return self._entries.get(entry.keyword) is entry

    def score_of(self, keyword: str, now_ms: int) -> float | None:
        """The entry's current score (None if absent), without counting or touching it."""
        entry = self._entries.get(keyword)
        if entry is None:
            return None
        idle = self._tick(now_ms) - entry.last_access
        return score(entry.freq, idle, timeout_ms=self.timeout_ms, lam=self.lam)

    def get(self, keyword: str, now_ms: int) -> Redirect | None:
        """The cached redirect (a hit: freq + 1, last access = now), or None on a miss."""
        now_ms = self._tick(now_ms)
        entry = self._entries.get(keyword)
        if entry is None:
            self.misses += 1
            return None
        if self._expired(entry, now_ms):
            self._drop(entry)
            self.expirations += 1
            self.misses += 1
            return None
        entry.freq += 1
        entry.last_access = now_ms
        self._entries.move_to_end(keyword)
        self.hits += 1
        return entry.redirect

    def put(self, keyword: str, redirect: Redirect, now_ms: int) -> None:
        """Remember the redirect (freq 1 if new); replacing one keeps its freq, evicts nothing."""
        if not isinstance(redirect, Redirect):
            raise InvalidRedirectError(f"expected a Redirect, got {type(redirect).__name__}")
        now_ms = self._tick(now_ms)
        entry = self._entries.get(keyword)
        if entry is not None:
            # The keyword's popularity is unchanged; only where its owner lives is news.
            entry.redirect = redirect
            entry.last_access = now_ms
            self._entries.move_to_end(keyword)
            return
        if len(self._entries) >= self.capacity:
            self._make_room(now_ms)
        entry = _Entry(keyword, redirect, 1, now_ms)
        self._entries[keyword] = entry
        self._push(entry)

    def invalidate(self, keyword: str) -> bool:
        """Forget the keyword's redirect (after ext-search-invalid); False if none was held."""
        entry = self._entries.get(keyword)
        if entry is None:
            return False
        self._drop(entry)
        self.invalidations += 1
        return True

    def clear(self) -> None:
        """Forget every redirect (a cold cache); the counters stay."""
        self._entries.clear()
        self._heap.clear()

    def _make_room(self, now_ms: int) -> None:
        oldest = next(iter(self._entries.values()))
        if self._expired(oldest, now_ms):
            self._drop(oldest)
            self.expirations += 1
            return
        while True:
            pushed, _, entry = heapq.heappop(self._heap)
            if not self._live(entry):
                continue
            # Each live entry has exactly one item, pushed with a priority ≤ its current one.
            if self._priority(entry) != pushed:
                self._push(entry)  # touched since it was pushed: re-key and look again
                continue
            self._drop(entry)
            self.evictions += 1
            return
