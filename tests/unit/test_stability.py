"""The stability experiment on the virtual clock: figures per domain, the score, the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from client.cli import main
from vdns.report import stability_report
from vdns.stability import StabilitySettings, score, sweep

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
                     "stabilization.png", "summary.md", "switches.png"]
    for png in (p for p in written if p.suffix == ".png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size < 200_000
    with (tmp_path / "report" / "domains.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 and rows[0]["scenario"] == "2"
    assert "Best α/β" in (tmp_path / "report" / "summary.md").read_text()


def test_the_same_seed_gives_the_same_figures() -> None:
    first, second = sweep(_settings(betas=(0.5,))), sweep(_settings(betas=(0.5,)))
    assert first["runs"][0]["domains"] == second["runs"][0]["domains"]


def test_the_command_narrows_the_sweep_and_prints_json(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["experiment", "stability", "--engine", "sim", "--scenario", "2", "--order",
                 "2", "--alpha", "0.9", "--beta", "0.9", "--runs", "1", "--json",
                 "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0
    runs = json.loads(out)
    assert len(runs) == 1 and runs[0]["scenario"] == 2 and len(runs[0]["domains"]) == 10
    assert "1/1 scenario 2 order 2" in err
    assert (tmp_path / "switches.png").exists()


def test_alpha_above_every_beta_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["experiment", "stability", "--engine", "sim", "--alpha", "1.9", "--beta",
                 "0.1"])
    assert code == 1
    assert "no α ≤ β" in capsys.readouterr().err
