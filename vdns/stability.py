"""The dissertation's stability experiment: start orders × α/β, measured per run and per domain.

For each scenario (1–3), start order (1, 2) and α ≤ β of the grid, N runs: the domains'
MSDs start in the order and with the delays of chapter 5 (vdns.startorder), every timer
and delay divided by the time scale; the run ends when no routing table has changed for
a quiet window after the last start. Per domain: hash skew, control bandwidth, route
switches and stabilization time, and the weighted score. The default engine is real
in-process daemons on loopback (vdns.harness.Hierarchy); `engine="sim"` runs the same
tree cores on the virtual network and clock (vdns.netsim), exactly reproducible.
docs/experiments.md defines every figure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from msd.hierarchy import HierarchyConfig, Node
from msd.keyspace import SPACE
from vdns.errors import VdnsError
from vdns.harness import Hierarchy
from vdns.mds import DomainConfig
from vdns.netsim import VirtualNetwork, run_schedule
from vdns.startorder import ORDERS, last_start, numbered, schedule

GRID = tuple(round(0.1 + 0.2 * i, 1) for i in range(10))  # 0.1, 0.3, …, 1.9
SCENARIOS = (1, 2, 3)
WEIGHTS = {"switches": 0.5, "stabilization": 0.3, "skew": 0.2}
STABILIZATION_SCALE_HB = 10  # the score's time unit: ten heartbeats (the quiet period)
QUIET_HB = 40  # a run ends once no table changed for this many heartbeats after the last start
MAX_SETTLE_HB = 200  # … or this long after the last start, settled or not
WIRE_KEY = b"stability-experiment-hierarchy-key"  # sim engine: only sizes are counted
ENGINES = ("daemons", "sim")

FIGURES = """\
figures, per run and per domain (docs/experiments.md has the details):
  route_switches     changes of the domain's routing table (some key's next hop changed),
                     from its start to the end of the run
  stabilization_s    seconds from the last domain's start to this domain's last table
                     change (0 if it changed no more after that start); nominal seconds,
                     i.e. real seconds times --time-scale
  skew               |share - 1/N| of the domain's own range at the end of the run
  control_bytes_per_s  bytes of hierarchy control datagrams the domain sent (heartbeats,
                     count reports, tracers...; not the election's), per nominal second
                     since it started
  score              0.5 * switches/(N-1) + 0.3 * stabilization_s/(10 heartbeats)
                     + 0.2 * skew*N: each term scaled so that 1 means "one switch per
                     later join", "ten heartbeats", "a whole fair share off"; lower is better
"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StabilitySettings:
    scenarios: tuple[int, ...] = SCENARIOS
    orders: tuple[int, ...] = (1, 2)
    alphas: tuple[float, ...] = GRID
    betas: tuple[float, ...] = GRID
    runs: int = 3
    time_scale: float = 20.0
    heartbeat_s: float = 1.0  # nominal: divided by time_scale for the daemons
    seed: int = 0
    engine: str = "daemons"
    configs_dir: Path = Path("configs")

    def cells(self) -> list[tuple[int, int, float, float]]:
        """(scenario, order, α, β) with α ≤ β, in a fixed order."""
        return [(s, o, a, b) for s in self.scenarios for o in self.orders
                for a in self.alphas for b in self.betas if a <= b + 1e-9]

    def check(self) -> None:
        if not set(self.scenarios) <= set(SCENARIOS):
            raise VdnsError(f"--scenario must be among {SCENARIOS}")
        if not set(self.orders) <= set(ORDERS):
            raise VdnsError(f"--order must be among {tuple(ORDERS)}")
        if self.engine not in ENGINES:
            raise VdnsError(f"--engine must be one of {', '.join(ENGINES)}")
        if not 1 <= self.runs <= 100:
            raise VdnsError("--runs must be 1..100")
        if not 1 <= self.time_scale <= 1000:
            raise VdnsError("--time-scale must be 1..1000")
        if any(not 0 < x <= 10 for x in (*self.alphas, *self.betas)):
            raise VdnsError("--alpha and --beta values must be in (0, 10]")
        if not self.cells():
            raise VdnsError("no α ≤ β among the values given")


def score(*, switches: float, stabilization_s: float, skew: float, domains: int,
          heartbeat_s: float) -> float:
    """The dissertation's weighted score, each term scaled as FIGURES says; lower is better."""
    return (WEIGHTS["switches"] * switches / max(1, domains - 1)
            + WEIGHTS["stabilization"] * stabilization_s / (STABILIZATION_SCALE_HB * heartbeat_s)
            + WEIGHTS["skew"] * skew * domains)


def _domain_rows(
    nodes: dict[int, Node | None], *, started: dict[int, float], end: float, last: float,
    bytes_sent: dict[int, int], time_scale: float, heartbeat_s: float,
) -> list[dict[str, Any]]:
    """Per-domain figures from the nodes at the end of a run (times on the run's clock)."""
    n = len(nodes)
    rows: list[dict[str, Any]] = []
    for number, node in sorted(nodes.items()):
        if node is None:
            rows.append({"domain_number": number, "domain": None, "joined": False,
                         "route_switches": None, "stabilization_s": None, "skew": None,
                         "control_bytes_per_s": None, "score": None})
            continue
        share = node.owned.size / SPACE
        skew = abs(share - 1 / n)
        stabilization = max(0.0, node.last_change - last) * time_scale
        alive = max(1e-9, (end - started[number]) * time_scale)
        row: dict[str, Any] = {"domain_number": number, "domain": node.domain,
               "joined": node.parent is not None or node.parent_domain is None,
               "route_switches": node.route_switches,
               "stabilization_s": round(stabilization, 3), "skew": skew,
               "control_bytes_per_s": round(bytes_sent[number] / alive, 1)}
        row["score"] = round(score(switches=node.route_switches, stabilization_s=stabilization,
                                   skew=skew, domains=n, heartbeat_s=heartbeat_s), 4)
        rows.append(row)
    return rows


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the domains of one run (and the worst ones)."""
    live = [r for r in rows if r["route_switches"] is not None]

    def mean(key: str) -> float:
        return round(statistics.fmean(r[key] for r in live), 4) if live else float("nan")

    return {
        "domains_joined": sum(bool(r["joined"]) for r in rows),
        "route_switches_mean": mean("route_switches"),
        "route_switches_max": max((r["route_switches"] for r in live), default=None),
        "stabilization_s_mean": mean("stabilization_s"),
        "stabilization_s_max": max((r["stabilization_s"] for r in live), default=None),
        "skew_max": max((r["skew"] for r in live), default=None),
        "control_bytes_per_s_mean": mean("control_bytes_per_s"),
        "score_mean": mean("score"),
    }


# --- one run on the virtual network -------------------------------------------------------


def run_sim(
    domains: dict[int, DomainConfig], *, order: Sequence[int], delays: Sequence[float],
    alpha: float, beta: float, heartbeat_s: float, seed: str,
) -> list[dict[str, Any]]:
    """One run on the virtual clock (nominal seconds; a little seeded network jitter)."""
    config = HierarchyConfig(heartbeat_s=heartbeat_s, alpha=alpha, beta=beta)
    net = VirtualNetwork(config=config, latency_s=0.002, jitter_s=0.002,
                         seed=random.Random(seed).randrange(2**32), wire_key=WIRE_KEY)
    starts = schedule(domains, order=order, delays=delays)
    last = last_start(starts)
    run_schedule(net, starts, until=last)
    end = _run_quiet(net, last=last, heartbeat_s=heartbeat_s)
    by_name = {c.domain: n for n, c in domains.items()}
    nodes: dict[int, Node | None] = {by_name[name]: sim.node for name, sim in net.domains.items()}
    sent = {by_name[name]: sim.bytes_sent for name, sim in net.domains.items()}
    return _domain_rows(nodes, started={s.number: s.at for s in starts}, end=end, last=last,
                        bytes_sent=sent, time_scale=1.0, heartbeat_s=heartbeat_s)


def _run_quiet(net: VirtualNetwork, *, last: float, heartbeat_s: float) -> float:
    """Run until no table changed for QUIET_HB heartbeats (at most MAX_SETTLE_HB)."""
    while net.now < last + MAX_SETTLE_HB * heartbeat_s:
        net.run(until=net.now + heartbeat_s)
        latest = max(node.last_change for node in net.live_nodes())
        if net.now - max(latest, last) >= QUIET_HB * heartbeat_s:
            break
    return net.now


def settled(rows: list[dict[str, Any]], *, heartbeat_s: float) -> bool:
    """Did the run end quiet (tables unchanged for QUIET_HB heartbeats), every domain in?"""
    return all(r["joined"] for r in rows) and all(
        r["stabilization_s"] is not None
        and r["stabilization_s"] <= (MAX_SETTLE_HB - QUIET_HB) * heartbeat_s for r in rows)


# --- one run with real daemons --------------------------------------------------------------


async def run_daemons(
    domains: dict[int, DomainConfig], *, order: Sequence[int], delays: Sequence[float],
    alpha: float, beta: float, heartbeat_s: float, time_scale: float, data_dir: Path,
) -> list[dict[str, Any]]:
    """One run: every domain's DNS server and URS first, then its MSD (one, in process) at
    its time in the order; ends QUIET_HB heartbeats after the last routing-table change."""
    hb = heartbeat_s / time_scale
    hierarchy = Hierarchy(list(domains.values()), data_dir=data_dir, ephemeral_ports=True,
                          msds=1, msd_in_process=True, heartbeat_s=hb, alpha=alpha, beta=beta,
                          sessions=False)
    starts = schedule(domains, order=order, delays=delays, time_scale=time_scale)
    try:
        await hierarchy.start(msds_now=False)
        await hierarchy.wait_ready(timeout=30, designated=False)
        began = time.monotonic()
        started = await hierarchy.start_in_order(starts)
        last = max(started.values())
        while time.monotonic() < last + MAX_SETTLE_HB * hb:
            await asyncio.sleep(hb)
            nodes = _nodes(hierarchy)
            present = [node for node in nodes.values() if node is not None]
            if len(present) < len(nodes):
                continue
            latest = max(node.last_change for node in present)
            if time.monotonic() - max(latest, last) >= QUIET_HB * hb:
                break
        end = time.monotonic()
        nodes = _nodes(hierarchy)
        numbers = {c.domain: n for n, c in domains.items()}
        sent = {numbers[name]: _tree_bytes(hierarchy, name) for name in hierarchy.domains}
        by_number = {numbers[name]: node for name, node in nodes.items()}
        rows = _domain_rows(by_number, started={numbers[k]: v for k, v in started.items()},
                            end=end, last=last, bytes_sent=sent, time_scale=time_scale,
                            heartbeat_s=heartbeat_s)
        for row in rows:
            row["wall_s"] = round(end - began, 2)
        return rows
    finally:
        await hierarchy.close()


def _nodes(hierarchy: Hierarchy) -> dict[str, Node | None]:
    """Each domain's designated tree node (None while it has none)."""
    found: dict[str, Node | None] = {}
    for name, running in hierarchy.domains.items():
        node = None
        for daemon in running.msds.daemons if running.msds else ():
            if daemon.daemon is not None and daemon.daemon.node is not None:
                node = daemon.daemon.node
        found[name] = node
    return found


def _tree_bytes(hierarchy: Hierarchy, name: str) -> int:
    """Bytes the domain's daemons sent on the tree's channels and unicast (not election)."""
    running = hierarchy.domains[name]
    total = 0
    for daemon in running.msds.daemons if running.msds else ():
        transport = daemon.daemon.transport if daemon.daemon else None
        if transport is not None:
            total += sum(t.bytes_sent for channel, t in transport.counters.traffic.items()
                         if channel != "local")
    return total


# --- the sweep ------------------------------------------------------------------------------


def sweep(
    settings: StabilitySettings, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Every cell × run; {"settings": ..., "runs": [{cell, run, summary, domains}, ...]}."""
    settings.check()
    say = progress or (lambda _text: None)
    cells = settings.cells()
    total = len(cells) * settings.runs
    configs = {s: numbered(settings.configs_dir / f"scenario{s}") for s in settings.scenarios}
    runs: list[dict[str, Any]] = []
    began = time.perf_counter()
    for index, (scenario, order_no, alpha, beta) in enumerate(_repeat(cells, settings.runs)):
        run = index % settings.runs + 1
        order, delays = ORDERS[order_no]
        seed = f"{settings.seed}-{scenario}-{order_no}-{alpha}-{beta}-{run}"
        wall = time.perf_counter()
        if settings.engine == "sim":
            rows = run_sim(configs[scenario], order=order, delays=delays, alpha=alpha,
                           beta=beta, heartbeat_s=settings.heartbeat_s, seed=seed)
        else:
            rows = asyncio.run(_daemon_run(configs[scenario], order=order, delays=delays,
                                           alpha=alpha, beta=beta, settings=settings))
        summary = _summary(rows)
        quiet = settled(rows, heartbeat_s=settings.heartbeat_s)
        runs.append({"scenario": scenario, "order": order_no, "alpha": alpha, "beta": beta,
                     "run": run, "wall_s": round(time.perf_counter() - wall, 2),
                     "settled": quiet, **summary, "domains": rows})
        elapsed = time.perf_counter() - began
        say(f"{index + 1}/{total} scenario {scenario} order {order_no} α={alpha:g} β={beta:g} "
            f"run {run}: switches {summary['route_switches_mean']:.2f}/domain (max "
            f"{summary['route_switches_max']}), stabilization {summary['stabilization_s_mean']:.1f}"
            f" s, skew {summary['skew_max']:.1e}; {elapsed:.0f} s wall, about "
            f"{elapsed / (index + 1) * (total - index - 1):.0f} s to go"
            + ("" if quiet else "; NOT SETTLED (tables still changing at the end)"))
    return {"settings": _settings_json(settings), "figures": FIGURES,
            "wall_s": round(time.perf_counter() - began, 1), "runs": runs}


async def _daemon_run(
    domains: dict[int, DomainConfig], *, order: Sequence[int], delays: Sequence[float],
    alpha: float, beta: float, settings: StabilitySettings,
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="mdns-stability-") as data_dir:
        return await run_daemons(domains, order=order, delays=delays, alpha=alpha, beta=beta,
                                 heartbeat_s=settings.heartbeat_s,
                                 time_scale=settings.time_scale, data_dir=Path(data_dir))


def _repeat(cells: Iterable[tuple[int, int, float, float]], runs: int
            ) -> Iterable[tuple[int, int, float, float]]:
    for cell in cells:
        for _ in range(runs):
            yield cell


def _settings_json(settings: StabilitySettings) -> dict[str, Any]:
    data = dataclasses.asdict(settings)
    data["configs_dir"] = str(settings.configs_dir)
    data["orders_used"] = {o: {"order": list(ORDERS[o][0]), "delays": list(ORDERS[o][1])}
                           for o in settings.orders}
    return data
