"""A latency histogram with log-spaced buckets: bounded memory, mergeable, quantiles to ~1 %.

`mdns bench load` records every request's latency in one of these per worker process and
merges them in the parent (a histogram pickles as it is). Bucket i holds latencies in
[GROWTH**i, GROWTH**(i+1)) microseconds, so a quantile is off by at most one bucket's
width (1 %) whatever the range, and ten minutes at 5,000 requests per second cost a few
hundred buckets, not three million floats.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

GROWTH = 1.01  # each bucket is 1 % wider than the one below
_LOG_GROWTH = math.log(GROWTH)
MIN_US = 1.0  # latencies below 1 µs share bucket 0
MAX_BUCKETS = 4096  # 1.01**4096 µs is far beyond any deadline; larger values share the top


class Histogram:
    """Counts of latencies (in milliseconds at the interface) by log-spaced bucket."""

    __slots__ = ("_counts", "count", "max_ms", "min_ms", "total_ms")

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}
        self.count = 0
        self.total_ms = 0.0
        self.min_ms = math.inf
        self.max_ms = 0.0

    def __repr__(self) -> str:
        return f"<Histogram n={self.count} buckets={len(self._counts)}>"

    def add(self, latency_ms: float) -> None:
        """Record one latency; negative or NaN values are a caller's bug."""
        if not latency_ms >= 0:
            raise ValueError(f"a latency must be a number >= 0 ms, got {latency_ms!r}")
        bucket = _bucket(latency_ms)
        self._counts[bucket] = self._counts.get(bucket, 0) + 1
        self.count += 1
        self.total_ms += latency_ms
        self.min_ms = min(self.min_ms, latency_ms)
        self.max_ms = max(self.max_ms, latency_ms)

    def merge(self, other: Histogram) -> None:
        """Add another histogram's counts to this one."""
        for bucket, n in other._counts.items():
            self._counts[bucket] = self._counts.get(bucket, 0) + n
        self.count += other.count
        self.total_ms += other.total_ms
        self.min_ms = min(self.min_ms, other.min_ms)
        self.max_ms = max(self.max_ms, other.max_ms)

    def quantile(self, q: float) -> float:
        """The latency (ms) below which a fraction `q` of the samples lie; 0 when empty.

        The answer is the upper edge of the bucket holding the sample of rank ceil(q·n),
        clamped to the largest sample seen: never below the true value, at most 1 % above.
        """
        if not 0 <= q <= 1:
            raise ValueError(f"a quantile is between 0 and 1, got {q!r}")
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for bucket in sorted(self._counts):
            seen += self._counts[bucket]
            if seen >= rank:
                return min(_upper_ms(bucket), self.max_ms)
        return self.max_ms

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.count if self.count else 0.0


def merged(histograms: Iterable[Histogram]) -> Histogram:
    """One histogram holding the samples of all."""
    total = Histogram()
    for histogram in histograms:
        total.merge(histogram)
    return total


def _bucket(latency_ms: float) -> int:
    micros = latency_ms * 1000.0
    if micros < MIN_US:
        return 0
    return min(int(math.log(micros) / _LOG_GROWTH), MAX_BUCKETS - 1)


def _upper_ms(bucket: int) -> float:
    return GROWTH ** (bucket + 1) / 1000.0
