"""Replicated URSes behind load-aware DNS: the DNS server answers with the healthy replicas,
least loaded first; a killed replica costs `mdns resolve` no error and leaves the answer
within a few seconds; the MSDs move to a live replica."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.message
import dns.rdatatype

from vdns.harness import Hierarchy
from vdns.mds import load_hierarchy

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CHECK_S = 0.5  # the DNS servers' health-check interval here
SLACK_S = 3.0  # polling, process start-up and a 2-core machine busy with other work
DOMAIN = "ufl.edu"
SESSION = {"id": "gators", "title": "Gators", "keywords": ["football"],
           "group": "239.255.0.150", "port": 5004}


async def _srv(dns_address: tuple[str, int]) -> list[tuple[int, int, int]]:
    """(priority, port, ttl) of the URS's SRV records, asked of the root's DNS server."""
    query = dns.message.make_query(f"_mdns-urs._tcp.{DOMAIN}", dns.rdatatype.SRV)
    reply = await dns.asyncquery.udp(query, dns_address[0], port=dns_address[1], timeout=2)
    return sorted((r.priority, r.port, rrset.ttl) for rrset in reply.answer for r in rrset)


def _resolve(dns_address: tuple[str, int]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", "resolve", f"mcast.{DOMAIN}/gators", "--dns",
         f"{dns_address[0]}:{dns_address[1]}"], capture_output=True, text=True, timeout=60,
        check=False)


async def test_killing_one_of_two_replicas_costs_resolve_no_error(tmp_path: Path) -> None:
    hierarchy = Hierarchy(load_hierarchy(CONFIGS / "demo"), data_dir=tmp_path,
                          ephemeral_ports=True, urs_replicas=2, health_interval_s=CHECK_S)
    await hierarchy.start()
    try:
        await hierarchy.wait_ready(timeout=20)
        root = hierarchy.root.dns_address
        first, second = hierarchy.domains[DOMAIN].replicas
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{first.url}/sessions", json=SESSION) as response:
                assert response.status == 201
            async with http.get(f"{second.url}/gators") as response:  # one database
                assert response.status == 200
            # Load the first replica; within two checks the second is ranked first.
            for _ in range(60):
                async with http.get(f"{first.url}/gators") as response:
                    assert response.status == 200
        await asyncio.sleep(2.5 * CHECK_S)
        ranked = await _srv(root)
        assert ranked == [(0, second.port, 5), (1, first.port, 5)]

        await second.kill()  # the least loaded one: the one every client tries first
        killed = time.monotonic()

        async def dropped() -> float:
            while True:
                if [port for _, port, _ in await _srv(root)] == [first.port]:
                    return time.monotonic() - killed
                await asyncio.sleep(CHECK_S / 5)

        watch = asyncio.create_task(dropped())
        right_after = await asyncio.to_thread(_resolve, root)  # DNS still names the dead one
        assert right_after.returncode == 0, right_after.stderr
        assert right_after.stderr == ""  # no user-visible error
        assert f"127.0.0.1:{first.port}" in right_after.stdout  # the live replica answered
        took = await asyncio.wait_for(watch, timeout=4 * CHECK_S + SLACK_S + 5)
        assert took < 4 * CHECK_S + SLACK_S, f"the dead replica was answered for {took:.1f} s"
        print(f"the dead replica left the DNS answer after {took:.2f} s")
        later = await asyncio.to_thread(_resolve, root)
        assert later.returncode == 0 and later.stderr == "", later.stderr
    finally:
        await hierarchy.close()


async def test_msds_move_to_a_live_urs_replica(tmp_path: Path) -> None:
    root = next(c for c in load_hierarchy(CONFIGS / "demo") if c.is_root)
    heartbeat = 0.3
    hierarchy = Hierarchy([dataclasses.replace(root, delegations=())], data_dir=tmp_path,
                          ephemeral_ports=True, urs_replicas=2, msds=1, msd_in_process=True,
                          heartbeat_s=heartbeat, health_interval_s=CHECK_S)
    await hierarchy.start()
    try:
        await hierarchy.wait_ready(timeout=20)
        first, second = hierarchy.domains[root.domain].replicas
        await first.kill()
        async with aiohttp.ClientSession() as http:
            async def designated() -> dict[str, float] | None:
                async with http.get(f"{second.url}/bootstrap/designated") as response:
                    found: dict[str, float] | None = (await response.json())["designated"]
                    return found

            before = await designated()
            assert before is not None
            deadline = time.monotonic() + 10 * heartbeat + SLACK_S
            while True:  # the designated MSD keeps its lease through the live replica
                now = await designated()
                if now is not None and now["expires_at"] > before["expires_at"]:
                    break
                assert time.monotonic() < deadline, "the MSD did not move to the live replica"
                await asyncio.sleep(heartbeat)
            async with http.get(f"{second.url}/bootstrap") as response:
                members = (await response.json())["msds"]
            assert [m["role"] for m in members] == ["designated"]
    finally:
        await hierarchy.close()
