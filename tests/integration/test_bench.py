"""`mdns bench load` from the command line against a running one-domain hierarchy: a tiny load."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from vdns.harness import Hierarchy
from vdns.mds import load_hierarchy

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("registrations_per_s", "searches_per_s", "p50_ms", "p99_ms", "errors", "rss_mb_start",
        "rss_mb_end")


@pytest.fixture
async def single(tmp_path: Path) -> AsyncIterator[Hierarchy]:
    hierarchy = Hierarchy(load_hierarchy(ROOT / "configs" / "single"), data_dir=tmp_path,
                          ephemeral_ports=True, msds=1, msd_in_process=True, heartbeat_s=0.5)
    await hierarchy.start()
    try:
        await hierarchy.wait_ready(timeout=30)
        yield hierarchy
    finally:
        await hierarchy.close()


async def _bench(hierarchy: Hierarchy, *args: str) -> dict[str, Any]:
    host, port = hierarchy.root.dns_address
    # A subprocess of our own loop: the hierarchy under load runs in this very process.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.cli", "bench", "load", "--target", "example.org",
        "--dns", f"{host}:{port}", "--json", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=100)
    assert process.returncode == 0, err.decode()
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


@pytest.mark.timeout(120)
async def test_every_path_reports_its_figures_with_no_errors(
    single: Hierarchy, tmp_path: Path
) -> None:
    key_file = tmp_path / "example.org" / "msd.key"
    result = await _bench(single, "--ops", "register,index,search,client-search",
                          "--seconds", "0.3", "--warmup", "0.1", "--concurrency", "4",
                          "--corpus", "20", "--vocabulary", "10", "--msd-key-file", str(key_file))
    assert all(key in result for key in KEYS), result.keys()
    assert result["errors"] == 0, result["phases"]
    phases = {phase["op"]: phase for phase in result["phases"]}
    assert list(phases) == ["register", "index", "search", "client-search"]
    for phase in phases.values():
        assert phase["ok"] > 0 and phase["errors"] == 0, phase
        assert 0 < phase["p50_ms"] <= phase["p99_ms"] <= phase["max_ms"]
    assert phases["search"]["empty"] == 0  # every corpus keyword found its sessions
    assert isinstance(result["registrations_per_s"], float)
    assert isinstance(result["searches_per_s"], float)
    assert result["rss_mb_end"] > 0  # this process: the URS and the in-process MSD
