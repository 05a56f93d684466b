"""How busy one URS replica is: requests in flight and the recent request rate.

`GET /health` reports it, and the domain's DNS server (vdns.health) ranks the replicas by
it, least loaded first (docs/vdns.md, "Replicated URS"). `LoadMeter` is a pure core: it
is told the time (the loop's monotonic clock) and reads none.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

WINDOW_S = 10.0  # the rate is requests per second over this many seconds
BUCKET_S = 1.0
# Requests that only observe the replica: the DNS server's own polls must not count as load.
UNCOUNTED_PATHS = frozenset({"/health", "/metrics"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LoadMeter:
    """Requests in flight now, and requests started per second over the last `window_s`."""

    def __init__(self, *, window_s: float = WINDOW_S, bucket_s: float = BUCKET_S) -> None:
        if not 0 < bucket_s <= window_s:
            raise ValueError("need 0 < bucket_s <= window_s")
        self.window_s = window_s
        self.bucket_s = bucket_s
        self.in_flight = 0
        self.total = 0
        # (bucket number, requests started in it), oldest first; at most window/bucket + 1.
        self._buckets: collections.deque[list[int]] = collections.deque()

    def __repr__(self) -> str:
        return f"<LoadMeter in_flight={self.in_flight} total={self.total}>"

    def started(self, now: float) -> None:
        self.in_flight += 1
        self.total += 1
        bucket = int(now // self.bucket_s)
        if self._buckets and self._buckets[-1][0] == bucket:
            self._buckets[-1][1] += 1
        else:
            self._buckets.append([bucket, 1])
        self._expire(now)

    def finished(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def rate(self, now: float) -> float:
        """Requests per second over the window that ends at `now`."""
        self._expire(now)
        return sum(count for _, count in self._buckets) / self.window_s

    def report(self, now: float) -> dict[str, Any]:
        return {"in_flight": self.in_flight, "rate": round(self.rate(now), 3),
                "window_s": self.window_s}

    def _expire(self, now: float) -> None:
        oldest = int((now - self.window_s) // self.bucket_s) + 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()


def load_middleware(meter: LoadMeter, *, clock: Callable[[], float]) -> Any:
    """An aiohttp middleware that counts every request but the uncounted paths in `meter`."""

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in UNCOUNTED_PATHS:
            return await handler(request)
        meter.started(clock())
        try:
            return await handler(request)
        finally:
            meter.finished()

    return count
