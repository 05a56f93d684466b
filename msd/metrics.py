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
        for name, key, help_text in (
            ("msd_dropped_by_reason", "dropped_reasons", "refused datagrams by reason"),
            ("msd_http_rejected", "http_rejected", "HTTP requests refused, by reason "
             "(rate_limited, too_large, slow_body, bad_request, auth_*, overloaded)"),
            ("msd_http_connections_refused", "connections_refused", "HTTP connections "
             "closed by the server, by reason (slow_headers, too_many_connections)"),
        ):
            family = CounterMetricFamily(name, help_text, labels=["domain", "reason"])
            for reason, count in sorted((status.get(key) or {}).items()):
                family.add_metric([*domain, reason], float(count))
            yield family
        keys = status.get("keys") or {}
        levels = GaugeMetricFamily("msd_keys", "public keys held, by source of trust",
                                   labels=["domain", "level"])
        for level, count in sorted((keys.get("by_level") or {}).items()):
            levels.add_metric([*domain, level], float(count))
        yield levels
        learned = CounterMetricFamily("msd_keys_learned", "keys offered to the key ring, by "
                                      "outcome (new, known, replaced, conflict, refused)",
                                      labels=["domain", "outcome"])
        for outcome, count in sorted((keys.get("learned") or {}).items()):
            learned.add_metric([*domain, outcome], float(count))
        yield learned


def metrics_text(status: Callable[[], dict[str, Any]]) -> bytes:
    """The Prometheus text exposition of one status document."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatusCollector(status))
    return generate_latest(registry)
