"""The stability experiment on the virtual clock: figures per domain, the score, the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from client.cli import main
from vdns.report import stability_report
from vdns.stability import SKEW_LIMIT, StabilitySettings, score, sweep

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _settings(**changes: object) -> StabilitySettings:
    base: dict[str, object] = {"scenarios": (2,), "orders": (2,), "alphas": (0.5,),
                               "betas": (0.5, 1.5), "runs": 1, "engine": "sim",
                               "configs_dir": CONFIGS}
    return StabilitySettings(**{**base, **changes})  # type: ignore[arg-type]


def test_the_score_scales_each_term_as_documented() -> None:
    assert score(switches=9, stabilization_s=0, skew=0, domains=10, heartbeat_s=1) == 0.5
    assert score(switches=0, stabilization_s=10, skew=0, domains=10, heartbeat_s=1) == 0.3
    assert score(switches=0, stabilization_s=0, skew=0.1, domains=10,
                 heartbeat_s=1) == pytest.approx(0.2)


def test_a_small_sweep_measures_every_domain_and_writes_a_report(tmp_path: Path) -> None:
    result = sweep(_settings())
    assert [(r["alpha"], r["beta"]) for r in result["runs"]] == [(0.5, 0.5), (0.5, 1.5)]
    for run in result["runs"]:
        assert run["settled"] and run["domains_joined"] == 10
        assert run["skew_max"] <= 1e-6
        assert 1 <= run["route_switches_mean"] <= 6
        assert run["control_bytes_per_s_mean"] > 0
        assert len(run["domains"]) == 10
    written = stability_report(result, tmp_path / "report")
    names = sorted(p.name for p in written)
    assert names == ["bandwidth.png", "cells.csv", "domains.csv", "score.png",
                     "stabilization.png", "summary.md", "switches.png", "tradeoff.png"]
    for png in (p for p in written if p.suffix == ".png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size < 200_000
    with (tmp_path / "report" / "domains.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 and rows[0]["scenario"] == "2" and rows[0]["refresh_every"] == "10"
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "Best setting" in summary and "2 of 2 runs pass" in summary


def test_the_same_seed_gives_the_same_figures() -> None:
    first, second = sweep(_settings(betas=(0.5,))), sweep(_settings(betas=(0.5,)))
    assert first["runs"][0]["domains"] == second["runs"][0]["domains"]


def test_the_command_narrows_the_sweep_and_prints_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["experiment", "stability", "--engine", "sim", "--scenario", "2", "--order",
                 "2", "--alpha", "0.9", "--beta", "0.9", "--refresh-every", "20", "--runs",
                 "1", "--json", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0
    runs = json.loads(out)
    assert len(runs) == 1 and runs[0]["scenario"] == 2 and len(runs[0]["domains"]) == 10
    assert runs[0]["refresh_every"] == 20 and runs[0]["skew_ok"]
    assert "1/1 scenario 2 order 2 α=0.9 β=0.9 quiet 20 hb" in err
    assert (tmp_path / "switches.png").exists()


def test_alpha_above_every_beta_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["experiment", "stability", "--engine", "sim", "--alpha", "1.9", "--beta",
                 "0.1"])
    assert code == 1
    assert "no α ≤ β" in capsys.readouterr().err


def test_a_long_quiet_period_is_waited_out_before_the_run_ends() -> None:
    """Thresholds too large for any count change: newcomers are carved and only the quiet
    period divides afresh. The run must not end on quiet tables while a split still waits
    (it would end with an uneven split); it ends fair, after the quiet period. Start order 2
    pauses 540 s between its two bursts: a quiet period longer than that divides once, at
    the end, instead of after each burst."""
    result = sweep(_settings(alphas=(10.0,), betas=(10.0,), refresh_every=(600, 10)))
    assert [r["refresh_every"] for r in result["runs"]] == [600, 10]
    slow, quick = result["runs"]
    for run in (slow, quick):
        assert run["settled"] and run["skew_ok"] and run["skew_max"] <= SKEW_LIMIT
    assert slow["stabilization_s_max"] >= 600 > quick["stabilization_s_max"]
    assert slow["route_switches_mean"] < quick["route_switches_mean"]


def test_a_domain_that_never_joined_fails_the_skew_check_visibly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Domain 9 never starts: it holds no keys (skew 1/N), the run is not settled, fails the
    skew check, and the table, the summary and the exit status say so."""
    from vdns import stability

    real = stability.schedule

    def without_nine(*args: object, **kwargs: object) -> list[object]:
        return [s for s in real(*args, **kwargs) if s.number != 9]  # type: ignore[arg-type]

    monkeypatch.setattr(stability, "schedule", without_nine)
    code = main(["experiment", "stability", "--engine", "sim", "--scenario", "2", "--order",
                 "2", "--alpha", "0.5", "--beta", "0.5", "--runs", "1",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "SKEW CHECK FAILED" in out and "domain 9 not joined (skew 1.0e-01)" in out
    assert "failed the skew check" in err
    summary = (tmp_path / "summary.md").read_text()
    assert "0 of 1 runs pass" in summary and "domain 9 not joined" in summary
    with (tmp_path / "cells.csv").open() as handle:
        cell = next(csv.DictReader(handle))
    assert cell["skew_check_failed"] == "1" and float(cell["skew_max"]) == pytest.approx(0.1)


@pytest.mark.parametrize(("value", "message"), [("0", "1..3600"), ("2.5", "whole numbers")])
def test_a_bad_quiet_period_is_refused(capsys: pytest.CaptureFixture[str], value: str,
                                       message: str) -> None:
    code = main(["experiment", "stability", "--engine", "sim", "--refresh-every", value])
    assert code == 1
    assert message in capsys.readouterr().err
