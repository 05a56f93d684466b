"""The discovery-latency experiment at small scale: it runs, counts, and its delays are real."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdns.experiments import LatencySettings, chain_configs, format_report, latency, summarize

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_the_chain_is_the_dissertations_first_domains() -> None:
    names = [c.domain for c in chain_configs(CONFIGS / "scenario3", 3)]
    assert names == ["level0.testdomain.info", "dom00.level0.testdomain.info",
                     "dom01.dom00.level0.testdomain.info"]
    last = chain_configs(CONFIGS / "scenario3", 3)[-1]
    assert last.delegations == ()  # its child (domain 5) is not in a 3-domain run
    with pytest.raises(ValueError, match=r"1\.\.5"):
        chain_configs(CONFIGS / "scenario3", 6)


def test_summary_statistics() -> None:
    stats = summarize([10.0, 20.0, 30.0, 40.0, 1000.0])
    assert stats == {"n": 5, "min_ms": 10.0, "median_ms": 30.0, "mean_ms": 220.0,
                     "p95_ms": 1000.0, "max_ms": 1000.0, "std_ms": 390.1}


async def test_a_small_run_measures_the_injected_delay() -> None:
    words = ("jazz", "opera", "gator", "robot", "hindi", "salsa", "tango", "polka")
    result = await latency(LatencySettings(domains=2, delay_ms=(30.0, 30.0), seed=1,
                                           heartbeat_s=0.2, keywords=words,
                                           scenario_dir=CONFIGS / "scenario3"))
    for name in ("cold", "warm"):
        assert result[name]["n"] == len(words)
        assert result[name]["min_ms"] > 0
    # With two domains some keyword's owner, or its registration, is across the link:
    # each crossing costs a 30 ms request and a 30 ms answer.
    assert result["cold"]["max_ms"] >= 60
    assert "median" in format_report(result)
