"""Token buckets per client address: how often one address may register or search (pure).

Each address gets a bucket of `burst` tokens that refills at `rate` tokens a second; a
request takes one. An empty bucket refuses, and says how long until a token is back (the
`Retry-After` of a 429). Buckets are kept for at most `max_clients` addresses, the least
recently seen forgotten first (a forgotten address starts again with a full bucket, so
the bound costs some precision under a flood of addresses, never memory). The caller
passes `now` from a monotonic clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

MAX_CLIENTS = 10_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class RateLimit:
    """`rate` requests a second on average, `burst` at once; rate 0 turns the limit off."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not (0 <= self.rate <= 1e6 and math.isfinite(self.rate)):
            raise ValueError(f"rate {self.rate} must be 0 (off) to 1,000,000 a second")
        if not 1 <= self.burst <= 1_000_000:
            raise ValueError(f"burst {self.burst} must be 1 to 1,000,000 requests")

    @property
    def enabled(self) -> bool:
        return self.rate > 0


class TokenBuckets:
    """One token bucket per client address."""

    __slots__ = ("_buckets", "limit", "max_clients", "refused")

    def __init__(self, limit: RateLimit, *, max_clients: int = MAX_CLIENTS) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        self.limit = limit
        self.max_clients = max_clients
        self.refused = 0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def __len__(self) -> int:
        return len(self._buckets)

    def __repr__(self) -> str:
        return (f"<TokenBuckets {self.limit.rate:g}/s burst {self.limit.burst} "
                f"clients={len(self._buckets)} refused={self.refused}>")

    def take(self, client: str, *, now: float) -> float | None:
        """None if `client` may go ahead (a token is taken), else the seconds to wait."""
        limit = self.limit
        if not limit.enabled:
            return None
        tokens, then = self._buckets.pop(client, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + max(0.0, now - then) * limit.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = None
        else:
            wait = (1.0 - tokens) / limit.rate
            self.refused += 1
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


def retry_after(wait_s: float) -> str:
    """A Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s)))
