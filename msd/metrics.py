"""Prometheus metrics of an MSD daemon: the same counters its /status shows, read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class _StatusCollector(Collector):
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        status = self._status()
        labels = ["domain"]
        domain = [status.get("name") or ""]
        designated = GaugeMetricFamily("msd_designated", "1 while this daemon is designated",
                                       labels=labels)
        designated.add_metric(domain, 1.0 if status.get("designated") else 0.0)
        yield designated
        for name, key, help_text in (
            ("msd_term", "term", "the daemon's election term"),
            ("msd_subtree_domains", "count", "domains in this subtree (designated only)"),
            ("msd_children", "children", "child domains (designated only)"),
        ):
            gauge = GaugeMetricFamily(name, help_text, labels=labels)
            value = status.get(key)
            if isinstance(value, list):
                value = len(value)
            gauge.add_metric(domain, float(value or 0))
            yield gauge
        for name, key, help_text in (
            ("msd_control_bytes", "control_bytes", "control-plane bytes sent and received"),
            ("msd_route_switches", "route_switches", "routing-table changes"),
            ("msd_dropped_datagrams", "dropped", "datagrams refused (malformed, "
             "oversized, unauthenticated or replayed)"),
        ):
            counter = CounterMetricFamily(name, help_text, labels=labels)
            counter.add_metric(domain, float(status.get(key) or 0))
            yield counter
        reasons = CounterMetricFamily("msd_dropped_by_reason", "refused datagrams by reason",
                                      labels=["domain", "reason"])
        for reason, count in sorted((status.get("dropped_reasons") or {}).items()):
            reasons.add_metric([*domain, reason], float(count))
        yield reasons


def metrics_text(status: Callable[[], dict[str, Any]]) -> bytes:
    """The Prometheus text exposition of one status document."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status))
    return generate_latest(registry)
