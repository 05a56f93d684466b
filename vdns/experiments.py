"""The dissertation's discovery-latency experiment, on real daemons with injected network delay.

On scenario 3's chain (domains 10, 1, 4, 5, 2, the first N of them), for each keyword
of the dissertation's list: register a session at a random domain, then search for it
from an independently chosen random domain, retrying at once on a miss. Latency is the
time from the start of the registration call until the search returns the session.
Every inter-domain message (MSD to MSD, client to a remote domain) is delayed
uniformly at random in the given range; traffic inside a domain is not. Cold: the
searching client's redirect cache is emptied before every search, so each search
probes for the owner. Warm: each domain's client has already probed every keyword once.

The clients are long-running, as a content host's registering process or a user's
search client would be: each knows its home domain's designated MSD after the first
lookup and keeps DNS answers for their TTL (urs.locate). The registration call returns
once the home domain's URS stored the session and its designated MSD indexed it; the
keyword records then travel to their owners while the search is already under way, so
that routing time is part of every figure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from dns.resolver import Cache as DnsCache

from client.register import register_everywhere
from client.search import SearchClient
from vdns.harness import Hierarchy, ServerLimits
from vdns.mds import DomainConfig, load_mds

CHAIN = (10, 1, 4, 5, 2)  # the dissertation's scenario-3 domains, root first
MAX_DOMAINS = len(CHAIN)
SEARCH_GIVE_UP_S = 30.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatencySettings:
    domains: int = 5
    delay_ms: tuple[float, float] = (25.0, 100.0)
    seed: int = 0
    heartbeat_s: float = 0.5
    keywords: tuple[str, ...] = ()
    scenario_dir: Path = Path("configs/scenario3")


def chain_configs(scenario_dir: Path, count: int) -> list[DomainConfig]:
    """The first `count` domains of the chain, without delegations to the ones left out."""
    if not 1 <= count <= MAX_DOMAINS:
        raise ValueError(f"--domains must be 1..{MAX_DOMAINS}")
    by_number = {int(p.name[6:8]): p for p in scenario_dir.glob("domain*.mds")}
    configs = [load_mds(by_number[n]) for n in CHAIN[:count]]
    names = {c.domain for c in configs}
    return [dataclasses.replace(c, delegations=tuple(
        d for d in c.delegations if c.child_domain(d) in names)) for c in configs]


def summarize(samples_ms: list[float]) -> dict[str, float | int]:
    """min, median, mean, p95, max, std-dev (ms) and n."""
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(ordered), "min_ms": round(ordered[0], 1),
            "median_ms": round(statistics.median(ordered), 1),
            "mean_ms": round(statistics.fmean(ordered), 1), "p95_ms": round(p95, 1),
            "max_ms": round(ordered[-1], 1),
            "std_ms": round(statistics.pstdev(ordered), 1) if len(ordered) > 1 else 0.0}


async def latency(
    settings: LatencySettings, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the experiment; {"cold": {...}, "warm": {...}} plus what was run."""
    rng = random.Random(settings.seed)
    low, high = settings.delay_ms

    async def delay(_domain: str) -> None:
        await asyncio.sleep(rng.uniform(low, high) / 1000)

    configs = chain_configs(settings.scenario_dir, settings.domains)
    with tempfile.TemporaryDirectory(prefix="mdns-latency-") as data_dir:
        # One client registers and searches as fast as it can: the per-address rate limits
        # (a defence against abuse, docs/threat-model.md) would measure themselves.
        hierarchy = Hierarchy(configs, data_dir=Path(data_dir), ephemeral_ports=True, msds=1,
                              msd_in_process=True, heartbeat_s=settings.heartbeat_s,
                              inter_domain_delay=delay, limits=ServerLimits.unlimited())
        try:
            await hierarchy.start()
            await hierarchy.wait_ready(timeout=30)
            await hierarchy.wait_settled(timeout=60)
            dns = hierarchy.root.dns_address
            domains = sorted(hierarchy.domains)
            async with aiohttp.ClientSession() as http:
                cold = await _pass(http, settings, rng=rng, dns=dns, domains=domains,
                                   delay=delay, warm=False, progress=progress)
                warm = await _pass(http, settings, rng=rng, dns=dns, domains=domains,
                                   delay=delay, warm=True, progress=progress)
        finally:
            await hierarchy.close()
    return {"domains": settings.domains, "delay_ms": list(settings.delay_ms),
            "keywords": len(settings.keywords), "seed": settings.seed,
            "cold": summarize(cold), "warm": summarize(warm),
            "samples_ms": {"cold": cold, "warm": warm}}


async def _pass(
    http: aiohttp.ClientSession, settings: LatencySettings, *, rng: random.Random,
    dns: tuple[str, int], domains: list[str], delay: Callable[[str], Any], warm: bool,
    progress: Callable[[str], None] | None,
) -> list[float]:
    label = "warm" if warm else "cold"
    dns_cache = DnsCache()
    clients = {d: SearchClient(home=d, dns_server=dns, http=http, delay=delay) for d in domains}
    for client in clients.values():
        await client.home_msd()  # a running client knows its home MSD
    if warm:
        for client in clients.values():  # every domain has probed every keyword once
            for keyword in dict.fromkeys(settings.keywords):
                await client.prime(keyword)
    samples: list[float] = []
    for number, keyword in enumerate(settings.keywords):
        home, searcher = rng.choice(domains), rng.choice(domains)
        session = {"id": f"{label}-{number}", "title": f"{keyword} ({label})",
                   "keywords": [keyword], "group": f"239.255.{number // 250}.{number % 250 + 1}",
                   "port": 5004, "ttl": 600}
        client = clients[searcher]
        if not warm:
            client.cache.clear()
        started = time.perf_counter()
        registration, _ = await register_everywhere(http, domain=home, session=session,
                                                    dns_server=dns, dns_cache=dns_cache)
        while True:
            hits = await client.search(keyword)
            if any(hit.session.uri == registration.uri for hit in hits):
                break
            if time.perf_counter() - started > SEARCH_GIVE_UP_S:
                raise TimeoutError(f"{registration.uri} not found within {SEARCH_GIVE_UP_S} s")
        samples.append((time.perf_counter() - started) * 1000)
        if progress is not None and (number + 1) % 25 == 0:
            progress(f"{label}: {number + 1}/{len(settings.keywords)} keywords")
    return samples


def format_report(result: dict[str, Any]) -> str:
    """The dissertation's table: one row per pass."""
    low, high = result["delay_ms"]
    lines = [f"discovery latency, {result['domains']} domain(s) of scenario 3's chain, "
             f"inter-domain delay {low:g}-{high:g} ms, {result['keywords']} keywords, "
             f"seed {result['seed']}",
             f"{'':6}{'min':>9}{'median':>9}{'mean':>9}{'p95':>9}{'max':>9}{'std':>9}  (ms)"]
    for name in ("cold", "warm"):
        s = result[name]
        lines.append(f"{name:6}{s['min_ms']:>9}{s['median_ms']:>9}{s['mean_ms']:>9}"
                     f"{s['p95_ms']:>9}{s['max_ms']:>9}{s['std_ms']:>9}")
    return "\n".join(lines)
