"""Real MSD daemons on real UDP multicast (loopback): the tree settles, tiles, heals and elects."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from client.status import designated_status, summary
from vdns.harness import Hierarchy
from vdns.mds import load_hierarchy

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HB = 0.2  # heartbeat interval for these tests (seconds)
SLACK_S = 3.0  # for timing bounds: polling, and a 2-core machine busy with other work
MIDDLE = "dom020.dom02.level0.testdomain.info"
LEAVES = [f"{leaf}.{MIDDLE}" for leaf in ("dom0200", "dom0201", "dom0202")]


async def _statuses(hierarchy: Hierarchy) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        found = []
        for running in hierarchy.domains.values():
            try:
                status = await designated_status(http, running.urs_url)
            except Exception:  # a daemon between lives: not settled yet
                status = None
            if status is not None:
                found.append(status)
        return found


def _settled(statuses: list[dict[str, Any]], *, expected: int) -> bool:
    return (len(statuses) == expected
            and all(s.get("state") in ("root", "joined") for s in statuses)
            and [s.get("count") for s in statuses if s.get("state") == "root"] == [expected]
            and all(s.get("count") == 1 + sum(_count(statuses, c) for c in s["children"])
                    for s in statuses)
            and not summary(statuses, keys=0)["tiling_problems"]
            # Damping (docs/hierarchy.md) lets a fair split trail the counts by a few beats.
            and summary(statuses, keys=0)["skew"] < 1e-6)


def _count(statuses: list[dict[str, Any]], name: str) -> int:
    return next((int(s["count"]) for s in statuses if s["name"] == name), 0)


async def _wait(hierarchy: Hierarchy, check: Any, *, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    statuses: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        statuses = await _statuses(hierarchy)
        if check(statuses):
            return statuses
        await asyncio.sleep(HB / 4)
    states = {s["name"]: (s.get("state"), s.get("parent")) for s in statuses}
    raise AssertionError(f"not settled within {timeout} s: {states}")


async def _start(tmp_path: Path, scenario: str, **options: Any) -> Hierarchy:
    hierarchy = Hierarchy(load_hierarchy(CONFIGS / scenario), data_dir=tmp_path,
                          ephemeral_ports=True, msd_in_process=True, heartbeat_s=HB,
                          **{"msds": 1, **options})
    await hierarchy.start()
    try:
        await hierarchy.wait_ready(timeout=30)  # generous: a 2-core machine busy with others
    except BaseException:
        await hierarchy.close()  # else its sockets leak into the next test's warnings
        raise
    return hierarchy


@pytest.fixture
async def scenario1(tmp_path: Path) -> AsyncIterator[Hierarchy]:
    hierarchy = await _start(tmp_path, "scenario1")
    yield hierarchy
    await hierarchy.close()


@pytest.mark.parametrize("scenario", ["scenario1", "scenario2", "scenario3"])
@pytest.mark.parametrize("mode", ["asm", "none"])
async def test_real_daemons_settle_and_every_key_routes(
    tmp_path: Path, scenario: str, mode: str
) -> None:
    hierarchy = await _start(tmp_path, scenario, multicast_mode=mode)
    try:
        statuses = await _wait(hierarchy, lambda s: _settled(s, expected=10), timeout=30)
        checks = summary(statuses, keys=1_000)
        assert checks["routing_problems"] == []
        assert checks["skew"] < 1e-6
        links = {link for s in statuses for link in s["links"].values()}
        assert links == ({"unicast"} if mode == "none" else {"multicast"})
        dropped = {s["name"]: s["dropped_reasons"] for s in statuses if s["dropped"]}
        assert dropped == {}
    finally:
        await hierarchy.close()


async def test_killing_a_middle_domain_grafts_its_children_and_restart_restores(
    scenario1: Hierarchy,
) -> None:
    statuses = await _wait(scenario1, lambda s: _settled(s, expected=10), timeout=30)
    original = {s["name"]: s["parent"] for s in statuses}
    middle = scenario1.domains[MIDDLE].msds
    assert middle is not None
    await middle.kill()
    killed = time.monotonic()

    def grafted(found: list[dict[str, Any]]) -> bool:
        by_name = {s["name"]: s for s in found}
        return (all(by_name.get(leaf, {}).get("state") == "fostered" for leaf in LEAVES)
                and not summary(found, keys=0)["tiling_problems"])

    statuses = await _wait(scenario1, grafted, timeout=10 * HB + 5)
    took = time.monotonic() - killed
    assert not summary(statuses, keys=200)["routing_problems"]
    # The exact bound (5 heartbeats) is asserted on the virtual clock in
    # tests/unit/test_hierarchy.py; real daemons get slack for polling and a loaded machine.
    assert took < 5 * HB + SLACK_S, f"grafting took {took:.2f} s"

    await middle.restart()
    statuses = await _wait(scenario1, lambda s: _settled(s, expected=10), timeout=30)
    assert {s["name"]: s["parent"] for s in statuses} == original


async def test_backup_is_designated_when_the_designated_dies(tmp_path: Path) -> None:
    hierarchy = await _start(tmp_path, "scenario2", msds=2)
    try:
        await _wait(hierarchy, lambda s: _settled(s, expected=10), timeout=30)
        leaf = "dom0201.level0.testdomain.info"
        msds = hierarchy.domains[leaf].msds
        assert msds is not None
        before = {s["name"]: s for s in await _statuses(hierarchy)}[leaf]
        assert sorted(m["role"] for m in before["msds"]) == ["backup", "designated"]
        assert {m["pid"] for m in before["msds"]} == {os.getpid()}  # in-process daemons
        designated = next(i for i, d in enumerate(msds.daemons)
                          if d.daemon is not None and d.daemon.node is not None)
        await msds.kill(designated)
        killed = time.monotonic()

        def taken_over(found: list[dict[str, Any]]) -> bool:
            by_name = {s["name"]: s for s in found}
            now = by_name.get(leaf)
            return now is not None and now["designated"] != before["designated"]

        statuses = await _wait(hierarchy, taken_over, timeout=10 * HB + 5)
        took = time.monotonic() - killed
        # The exact bound (3 heartbeats) is asserted on the virtual clock in
        # tests/unit/test_election.py; here, slack for polling and a loaded machine.
        assert took < 3 * HB + SLACK_S, f"takeover took {took:.2f} s"
        after = {s["name"]: s for s in statuses}[leaf]
        assert after["term"] > before["term"]
        await _wait(hierarchy, lambda s: _settled(s, expected=10), timeout=30)
    finally:
        await hierarchy.close()


async def test_a_domain_whose_multicast_is_blocked_is_served_by_unicast(tmp_path: Path) -> None:
    leaf = LEAVES[0]
    hierarchy = await _start(tmp_path, "scenario1", multicast_blocked=[leaf])
    try:
        statuses = await _wait(hierarchy, lambda s: _settled(s, expected=10), timeout=30)
        by_name = {s["name"]: s for s in statuses}
        assert by_name[leaf]["links"] == {MIDDLE: "unicast"}
        assert by_name[MIDDLE]["links"][leaf] == "unicast"
        assert by_name[MIDDLE]["links"][LEAVES[1]] == "multicast"
        assert not summary(statuses, keys=1_000)["routing_problems"]
    finally:
        await hierarchy.close()


async def test_hostile_datagrams_are_dropped_counted_and_crash_nothing(tmp_path: Path) -> None:
    hierarchy = await _start(tmp_path, "scenario2")
    try:
        statuses = await _wait(hierarchy, lambda s: _settled(s, expected=10), timeout=30)
        root = hierarchy.root.config
        targets = [(root.cmcast, root.cm_port), (root.local_mcast, root.local_mcast_port)]
        targets += [tuple(s["designated"].rsplit(":", 1)) for s in statuses[:3]]
        rng = random.Random(3)
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                              socket.inet_aton("127.0.0.1"))
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            for i in range(600):
                host, port = targets[i % len(targets)]
                junk = rng.randbytes(rng.randrange(0, 1400))
                if i % 3 == 0:  # a valid-looking header with a bad tag
                    junk = b"MS\x01\x01" + len(junk).to_bytes(2, "big") + junk
                sender.sendto(junk, (host, int(port)))
                sent += 1
        await asyncio.sleep(HB)
        statuses = await _wait(hierarchy, lambda s: _settled(s, expected=10), timeout=10)
        dropped = sum(s["dropped"] for s in statuses)
        async with aiohttp.ClientSession() as http, http.get(
            f"http://{statuses[0]['designated']}/metrics"
        ) as response:
            metrics = await response.text()
        name = statuses[0]["name"]
        line = f'msd_dropped_datagrams_total{{domain="{name}"}} '
        scraped = next(float(row[len(line):]) for row in metrics.splitlines()
                       if row.startswith(line))
        assert scraped >= statuses[0]["dropped"] > 0  # the same counter, read later
        assert dropped >= sent // len(targets)  # every domain that heard them counted them
        reasons = {r for s in statuses for r in s["dropped_reasons"]}
        assert reasons <= {"MalformedMessage", "BadSignature", "UnknownVersion", "UnknownKind",
                           "OversizedMessage"}
        assert not summary(statuses, keys=500)["routing_problems"]
    finally:
        await hierarchy.close()
