"""A whole dissertation hierarchy on loopback: register, resolve through the root, move, restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from client.errors import ClientError
from client.resolve import resolve, resolve_sdp
from client.uri import parse_uri
from vdns.harness import Hierarchy
from vdns.mds import load_hierarchy

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LEAF = "dom0200.dom020.dom02.level0.testdomain.info"
SESSION = {"id": "gators", "title": "Gators", "keywords": ["football", "Gators"],
           "group": "239.255.0.150", "port": 5004}


async def _start(data_dir: Path, scenario: str = "scenario1") -> Hierarchy:
    hierarchy = Hierarchy(load_hierarchy(CONFIGS / scenario), data_dir=data_dir,
                          ephemeral_ports=True)
    await hierarchy.start()
    await hierarchy.wait_ready(timeout=10)
    return hierarchy


@pytest.fixture
async def scenario1(tmp_path: Path) -> AsyncIterator[Hierarchy]:
    hierarchy = await _start(tmp_path)
    yield hierarchy
    await hierarchy.close()


def _root_dns(hierarchy: Hierarchy) -> tuple[str, int]:
    return hierarchy.root.dns_address


async def test_ephemeral_ports_replace_every_fixed_port(scenario1: Hierarchy) -> None:
    ports = {d.config.self_port for d in scenario1.domains.values()}
    ports |= {d.config.urs_port for d in scenario1.domains.values()}
    assert len(ports) == 20
    assert not ports & set(range(2000, 2051))
    # Delegations follow the rewritten ports, so DNS still finds every child.
    for running in scenario1.domains.values():
        for delegation in running.config.delegations:
            child = scenario1.domains[running.config.child_domain(delegation)]
            assert delegation.port == child.config.self_port


async def test_register_resolve_move_and_survive_restart(tmp_path: Path) -> None:
    hierarchy = await _start(tmp_path)
    try:
        leaf = hierarchy.domains[LEAF]
        async with aiohttp.ClientSession() as http, http.post(
            f"{leaf.urs_url}/sessions", json=SESSION
        ) as response:
            assert response.status == 201
            created = await response.json()
        uri = parse_uri(created["uri"])
        assert str(uri) == f"mcast.{LEAF}/gators"

        found = await resolve(uri, dns_server=_root_dns(hierarchy))
        assert found.record.group == "239.255.0.150"
        assert found.record.keywords == ["football", "gators"]
        assert found.urs.port == leaf.config.urs_port and found.urs.port_from_srv

        moved = {k: v for k, v in SESSION.items() if k != "id"} | {"group": "239.255.0.151"}
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {created['token']}"}
            async with http.put(f"{leaf.urs_url}/gators", json=moved, headers=headers) as resp:
                assert resp.status == 200
        found = await resolve(uri, dns_server=_root_dns(hierarchy))
        assert found.record.group == "239.255.0.151"
        assert "c=IN IP4 239.255.0.151" in await resolve_sdp(uri, dns_server=_root_dns(hierarchy))
    finally:
        await hierarchy.close()

    # A new run on the same data directory (and, here, new ports) still knows the session.
    hierarchy = await _start(tmp_path)
    try:
        found = await resolve(uri, dns_server=_root_dns(hierarchy))
        assert found.record.group == "239.255.0.151"
    finally:
        await hierarchy.close()


@pytest.mark.parametrize("scenario", ["scenario1", "scenario2", "scenario3"])
async def test_every_urs_is_found_from_the_root(tmp_path: Path, scenario: str) -> None:
    hierarchy = await _start(tmp_path, scenario)
    try:
        async with aiohttp.ClientSession() as http:
            for running in hierarchy.domains.values():
                async with http.post(f"{running.urs_url}/sessions",
                                     json=SESSION | {"id": "probe"}) as response:
                    assert response.status == 201
        for name, running in hierarchy.domains.items():
            found = await resolve(parse_uri(f"mcast.{name}/probe"), dns_server=_root_dns(hierarchy))
            assert found.urs.port == running.config.urs_port
            assert found.record.domain == name
    finally:
        await hierarchy.close()


async def test_resolve_errors_are_one_clear_line(scenario1: Hierarchy) -> None:
    root = _root_dns(scenario1)
    with pytest.raises(ClientError, match=r"no session 'nobody' at mcast\.level0"):
        await resolve(parse_uri("mcast.level0.testdomain.info/nobody"), dns_server=root)
    with pytest.raises(ClientError, match="no such domain"):
        await resolve(parse_uri("mcast.nowhere.level0.testdomain.info/x"), dns_server=root)
    leaf = scenario1.domains[LEAF]
    await leaf.urs.cleanup()  # the URS goes down; its DNS name still resolves
    with pytest.raises(ClientError, match="is not reachable"):
        await resolve(parse_uri(f"mcast.{LEAF}/gators"), dns_server=root)


async def test_a_port_in_use_is_reported_and_nothing_is_left_running(
    scenario1: Hierarchy, tmp_path: Path
) -> None:
    from vdns.errors import VdnsError
    from vdns.sockets import remap_ports

    # A second hierarchy on the very ports the first one holds must fail cleanly.
    taken = [running.config for running in scenario1.domains.values()]
    clash = Hierarchy(remap_ports(taken, {}), data_dir=tmp_path / "other")
    with pytest.raises(VdnsError, match="already in use"):
        await clash.start()
    assert clash.domains == {}
