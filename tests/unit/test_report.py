"""The latency report: CSV of samples, a markdown table and a plot against the domains."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from client.cli import _domain_counts
from client.errors import ClientError
from vdns.experiments import summarize
from vdns.report import latency_report


def _result(domains: int, base: float) -> dict[str, Any]:
    cold = [base + i for i in range(5)]
    warm = [base / 2 + i for i in range(5)]
    return {"domains": domains, "delay_ms": [25.0, 100.0], "keywords": 5, "seed": 0,
            "cold": summarize(cold), "warm": summarize(warm),
            "samples_ms": {"cold": cold, "warm": warm}}


def test_a_report_over_domain_counts(tmp_path: Path) -> None:
    written = latency_report([_result(1, 100.0), _result(2, 300.0)], tmp_path)
    assert sorted(p.name for p in written) == ["latency.png", "samples.csv", "summary.csv",
                                               "summary.md"]
    with (tmp_path / "samples.csv").open() as handle:
        samples = list(csv.DictReader(handle))
    assert len(samples) == 20 and samples[0] == {"domains": "1", "pass": "cold", "index": "0",
                                                 "latency_ms": "100.0"}
    table = (tmp_path / "summary.md").read_text()
    assert "| 2 | cold | 5 | 300.0 | 302.0 |" in table
    png = (tmp_path / "latency.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000


def test_domain_counts_take_a_number_or_a_range() -> None:
    assert _domain_counts("3", most=5) == [3]
    assert _domain_counts("1-5", most=5) == [1, 2, 3, 4, 5]
    for bad in ("0", "2-1", "1-6", "x"):
        with pytest.raises(ClientError):
            _domain_counts(bad, most=5)
