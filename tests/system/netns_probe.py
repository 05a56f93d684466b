"""A client that runs as one testbed host and takes its orders on stdin, one JSON line each.

`ip netns exec <host> python -m tests.system.netns_probe` (the system tests start one per
host they act from): addresses exist only inside the namespaces, so the test process
itself cannot reach them. Each order gets one JSON line back on stdout:
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`.

    {"op": "statuses", "urs": {domain: url}}   every domain's designated MSD's /status
                                               (or {"error": ...})
    {"op": "msd_status", "address": "host:port"}     one MSD's /status
    {"op": "register", "domain", "dns", "session"}   register_everywhere, waiting for routes
    {"op": "search", "home", "dns", "query"}         a fresh SearchClient's search
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp

from client.register import register_everywhere
from client.search import SearchClient
from urs.locate import parse_dns_server

TIMEOUT_S = 3.0


async def _status(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    # /bootstrap/designated, not /bootstrap: the full document waits for the parent's URS,
    # which may be the one a test has just killed.
    try:
        async with http.get(f"{url}/bootstrap/designated") as response:
            designated = (await response.json()).get("designated")
        if not designated:
            return {"error": "no designated MSD"}
        address = f"{designated['address']}:{designated['port']}"
        async with http.get(f"http://{address}/status") as response:
            status: dict[str, Any] = await response.json()
        return status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


async def _order(http: aiohttp.ClientSession, order: dict[str, Any]) -> Any:
    op = order["op"]
    if op == "statuses":
        names = list(order["urs"])
        found = await asyncio.gather(*(_status(http, order["urs"][n]) for n in names))
        return dict(zip(names, found, strict=True))
    if op == "msd_status":  # one MSD directly, its URS aside (a test may have killed it)
        try:
            async with http.get(f"http://{order['address']}/status") as response:
                status: dict[str, Any] = await response.json()
                return status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
    dns = parse_dns_server(order["dns"])
    if op == "register":
        registration, answer = await register_everywhere(
            http, domain=order["domain"], session=order["session"], dns_server=dns, wait=True)
        return {"uri": registration.uri, "routed": answer.get("routed")}
    if op == "search":
        client = SearchClient(home=order["home"], dns_server=dns, http=http)
        hits = await client.search(order["query"])
        return {"uris": sorted(h.session.uri for h in hits),
                "shadow_used": client.stats.shadow_used}
    raise ValueError(f"unknown op {op!r}")


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        print(json.dumps({"ok": True, "result": "ready"}), flush=True)
        while line := await reader.readline():
            try:
                reply = {"ok": True, "result": await _order(http, json.loads(line))}
            except Exception as exc:  # every failure is an answer the test reads
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
