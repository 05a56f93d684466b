"""The URS's Prometheus metrics, in a registry of its own so two apps in one process never mix."""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector


class UrsMetrics:
    """Counters of one URS app; label values are bounded (route templates, fixed reasons)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "urs_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "urs_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ["route"],
            registry=self.registry,
        )
        self.registrations = Counter(
            "urs_registrations", "Sessions registered", registry=self.registry
        )
        self.updates = Counter(
            "urs_updates", "Sessions whose parameters were replaced", registry=self.registry
        )
        self.rejected = Counter(
            "urs_rejected",
            "Requests refused, by reason (invalid, bad_json, too_large, taken, auth, "
            "rate_limited, slow_body, ...)",
            ["reason"],
            registry=self.registry,
        )
        self.purged = Counter(
            "urs_purged", "Expired sessions deleted by the purge task", registry=self.registry
        )
        self.purge_failures = Counter(
            "urs_purge_failures", "Purge runs that failed (database errors)", registry=self.registry
        )
        self.active_sessions = Gauge(
            "urs_active_sessions", "Unexpired sessions of this domain", registry=self.registry
        )
        self.designated_updates = Counter(
            "urs_designated_updates",
            "Designated-MSD soft state updates accepted",
            registry=self.registry,
        )
        self.parent_lookups = Counter(
            "urs_parent_lookups",
            "Lookups of the parent URS's designated MSD, by outcome (ok, error)",
            ["outcome"],
            registry=self.registry,
        )

        self.searches = Counter(
            "urs_searches",
            "Searches from the search page, by where (domain, all) and outcome "
            "(ok, bad_query, unavailable)",
            ["where", "outcome"],
            registry=self.registry,
        )
    def watch_connections(self, counts: Tally[str]) -> None:
        """Expose a ConnectionGuard's counts as `urs_connections_refused_total{reason}`."""
        self.registry.register(_Refused(counts))

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class _Refused(Collector):
    def __init__(self, counts: Tally[str]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "urs_connections_refused",
            "HTTP connections closed by the server, by reason (slow_headers, "
            "too_many_connections)", labels=["reason"])
        for reason in ("slow_headers", "too_many_connections"):
            family.add_metric([reason], float(self._counts[reason]))
        yield family
