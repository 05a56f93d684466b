"""`mdns status`: the whole tree of designated MSDs, reached from any domain, as JSON or a tree."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import aiohttp

from client.errors import ClientError
from msd.keyspace import KeyRange
from msd.treeview import routing_problems, skew, tiling_problems
from urs.locate import LocateError, UrsEndpoint, locate_urs

MAX_DOMAINS = 100_000


async def designated_status(http: aiohttp.ClientSession, urs_url: str) -> dict[str, Any] | None:
    """A domain's designated MSD's /status, found through its URS; None when it has none."""
    bootstrap = await _get_json(http, f"{urs_url}/bootstrap")
    designated = bootstrap.get("designated")
    if not designated:
        return None
    return await _get_json(http, f"http://{designated['address']}:{designated['port']}/status")


async def collect(
    *, domain: str, dns_server: tuple[str, int] | None, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Start at `domain`, climb to its root, then walk down every child: one status each."""
    deadline = time.monotonic() + timeout
    try:
        location = await locate_urs(domain, dns_server=dns_server, timeout=timeout)
    except LocateError as exc:
        raise ClientError(str(exc)) from None
    client_timeout = aiohttp.ClientTimeout(total=max(1.0, deadline - time.monotonic()))
    async with aiohttp.ClientSession(timeout=client_timeout) as http:
        start = await _first_replica(http, location.endpoints)
        if start is None:
            raise ClientError(f"{domain} has no designated MSD yet (is `mdns up --msds` running?)")
        root = start
        if start.get("ancestors"):
            root = await _get_json(http, f"http://{_address(start['ancestors'][0])}/status")
        return await _walk(http, root)


async def _first_replica(
    http: aiohttp.ClientSession, endpoints: tuple[UrsEndpoint, ...]
) -> dict[str, Any] | None:
    """`designated_status` through the first URS replica that answers (a read: any may)."""
    for number, endpoint in enumerate(endpoints):
        try:
            return await designated_status(http, endpoint.base_url)
        except ClientError:
            if number == len(endpoints) - 1:
                raise
    raise AssertionError("unreachable: DNS gave at least one replica")


async def _walk(http: aiohttp.ClientSession, root: dict[str, Any]) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {root["name"]: root}
    queue: deque[dict[str, Any]] = deque([root])
    while queue and len(found) < MAX_DOMAINS:
        status = queue.popleft()
        for name, address in sorted(status.get("child_addresses", {}).items()):
            if name in found:
                continue
            try:
                child = await _get_json(http, f"http://{address}/status")
            except ClientError as exc:
                found[name] = {"name": name, "error": str(exc)}
                continue
            found[name] = child
            queue.append(child)
    return list(found.values())


def summary(domains: list[dict[str, Any]], *, keys: int) -> dict[str, Any]:
    """The whole-tree checks: tiling, routing of random keys, skew."""
    live = [d for d in domains if "error" not in d]
    return {
        "domains": len(domains),
        "tiling_problems": tiling_problems(live),
        "routing_problems": routing_problems(live, keys=keys) if keys else [],
        "keys_routed_per_domain": keys,
        "skew": skew(live),
        "control_bytes": sum(int(d.get("control_bytes", 0)) for d in live),
        "control_bytes_per_s_per_domain": (
            sum(float(d.get("control_bytes_per_s", 0)) for d in live) / len(live) if live else 0),
        "route_switches": sum(int(d.get("route_switches", 0)) for d in live),
    }


def format_tree(domains: list[dict[str, Any]], checks: dict[str, Any]) -> str:
    """An indented tree, one line per domain, then the checks."""
    by_name = {d["name"]: d for d in domains}
    roots = [d for d in domains if not d.get("parent") or d["parent"] not in by_name]
    lines: list[str] = []

    def visit(domain: dict[str, Any], depth: int) -> None:
        lines.append("  " * depth + _line(domain))
        for child in domain.get("children", []):
            if child in by_name:
                visit(by_name[child], depth + 1)

    for root in roots:
        visit(root, 0)
    tiles = "yes" if not checks["tiling_problems"] else "; ".join(checks["tiling_problems"][:3])
    routes = ("yes" if not checks["routing_problems"]
              else "; ".join(checks["routing_problems"][:3]))
    lines += ["", f"domains: {checks['domains']}   ranges tile the space: {tiles}",
              f"{checks['keys_routed_per_domain']} random keys route from every domain to their "
              f"owner: {routes}", f"hash skew: {checks['skew']:.3g}   control bandwidth: "
              f"{checks['control_bytes_per_s_per_domain']:.0f} bytes/s per domain   "
              f"route switches: {checks['route_switches']}"]
    return "\n".join(lines)


def _line(domain: dict[str, Any]) -> str:
    if "error" in domain:
        return f"{domain['name']}  (unreachable: {domain['error']})"
    share = sum(KeyRange.from_json(r).share for r in domain.get("ranges", []))
    parent = domain.get("parent")
    link = domain.get("links", {}).get(parent, "") if parent else "root"
    return (f"{domain['name']}  {domain.get('state', '?')}  {domain.get('designated')} "
            f"term {domain.get('term')}  count {domain.get('count')}  owns {share:.2%}  "
            f"{link}  switches {domain.get('route_switches')}  dropped {domain.get('dropped')}")


def _address(ancestor: str) -> str:
    return ancestor.rsplit("@", 1)[1]


async def _get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    try:
        async with http.get(url) as response:
            if response.status != 200:
                raise ClientError(f"{url} answered {response.status}")
            body: dict[str, Any] = await response.json()
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ClientError(f"{url}: {exc or type(exc).__name__}") from None

