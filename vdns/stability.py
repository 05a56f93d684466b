"""The dissertation's stability experiment: start orders × α/β × quiet period, per run and domain.

For each scenario (1–3), start order (1, 2), α ≤ β of the grid and quiet period
(`refresh_every`), N runs: the domains' MSDs start in the order and with the delays of
chapter 5 (vdns.startorder), every timer and delay divided by the time scale; the run ends
when no routing table has changed for a quiet window after the last start and no split
waits for its quiet period any more. Per domain: hash skew, control bandwidth, route
switches and stabilization time, and the weighted score; per run, the skew check (every
domain joined, every share within SKEW_LIMIT of 1/N). The default engine is real
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
STABILIZATION_SCALE_HB = 10  # the score's time unit: ten heartbeats (the default quiet period)
QUIET_HB = 40  # a run ends once no table changed for this many heartbeats after the last start
MAX_SETTLE_HB = 200  # … or this long after the last start (plus twice the quiet period)
MAX_REFRESH_EVERY = 3600  # heartbeats: the longest quiet period the sweep accepts
SKEW_LIMIT = 1e-6  # issue 5: every domain's share within this of 1/N at the end of a run
WIRE_KEY = b"stability-experiment-hierarchy-key"  # sim engine: only sizes are counted
ENGINES = ("daemons", "sim")

FIGURES = """\
figures, per run and per domain (docs/experiments.md has the details):
  route_switches     changes of the domain's routing table (some key's next hop changed),
                     from its start to the end of the run
  stabilization_s    seconds from the last domain's start to this domain's last table
                     change (0 if it changed no more after that start); nominal seconds,
                     i.e. real seconds times --time-scale
  skew               |share - 1/N| of the domain's own range at the end of the run (a
                     domain with no tree node at the end holds nothing: 1/N)
  control_bytes_per_s  bytes of hierarchy control datagrams the domain sent (heartbeats,
                     count reports, tracers...; not the election's), per nominal second
                     since it started
  score              0.5 * switches/(N-1) + 0.3 * stabilization_s/(10 heartbeats)
                     + 0.2 * skew*N: each term scaled so that 1 means "one switch per
                     later join", "ten heartbeats", "a whole fair share off"; lower is better
  skew check         per run: passes when every domain joined the tree and every skew is
                     at most 1e-6; a failing run is reported with the domains at fault
"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class StabilitySettings:
    scenarios: tuple[int, ...] = SCENARIOS
    orders: tuple[int, ...] = (1, 2)
    alphas: tuple[float, ...] = GRID
    betas: tuple[float, ...] = GRID
    refresh_every: tuple[int, ...] = (HierarchyConfig.refresh_every,)  # quiet periods, hb
    runs: int = 3
    time_scale: float = 20.0
    heartbeat_s: float = 1.0  # nominal: divided by time_scale for the daemons
    seed: int = 0
    engine: str = "daemons"
    configs_dir: Path = Path("configs")

    def cells(self) -> list[tuple[int, int, float, float, int]]:
        """(scenario, order, α, β, quiet period) with α ≤ β, in a fixed order."""
        return [(s, o, a, b, q) for s in self.scenarios for o in self.orders
                for a in self.alphas for b in self.betas if a <= b + 1e-9
                for q in self.refresh_every]

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
        if not self.refresh_every or any(
                not 1 <= q <= MAX_REFRESH_EVERY for q in self.refresh_every):
            raise VdnsError(f"--refresh-every values must be whole heartbeats, "
                            f"1..{MAX_REFRESH_EVERY}")
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
            # No designated MSD, so no tree node: the domain holds no keys at all.
            rows.append({"domain_number": number, "domain": None, "joined": False,
                         "route_switches": None, "stabilization_s": None, "skew": 1 / n,
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


def skew_faults(rows: list[dict[str, Any]]) -> list[str]:
    """What fails the skew check, one phrase per domain at fault (empty: the run passes):
    every domain must have joined the tree, and every share be within SKEW_LIMIT of 1/N."""
    faults = []
    for row in rows:
        if not row["joined"]:
            faults.append(f"domain {row['domain_number']} not joined (skew {row['skew']:.1e})")
        elif row["skew"] > SKEW_LIMIT:
            faults.append(f"domain {row['domain_number']} skew {row['skew']:.1e}")
    return faults


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the domains of one run (and the worst ones); the skew check."""
    live = [r for r in rows if r["route_switches"] is not None]

    def mean(key: str) -> float:
        return round(statistics.fmean(r[key] for r in live), 4) if live else float("nan")

    faults = skew_faults(rows)
    return {
        "domains_joined": sum(bool(r["joined"]) for r in rows),
        "domains_not_joined": [r["domain_number"] for r in rows if not r["joined"]],
        "route_switches_mean": mean("route_switches"),
        "route_switches_max": max((r["route_switches"] for r in live), default=None),
        "stabilization_s_mean": mean("stabilization_s"),
        "stabilization_s_max": max((r["stabilization_s"] for r in live), default=None),
        "skew_max": max(r["skew"] for r in rows),  # every domain, joined or not
        "skew_ok": not faults,
        "skew_faults": faults,
        "control_bytes_per_s_mean": mean("control_bytes_per_s"),
        "score_mean": mean("score"),
    }


def _give_up_hb(refresh_every: int) -> int:
    """Heartbeats after the last start before a run ends unsettled: a stale split may wait
    twice the quiet period below the root (msd.division.Division.due)."""
    return MAX_SETTLE_HB + 2 * refresh_every


def _quiet(nodes: Iterable[Node], *, now: float, last: float, heartbeat_s: float) -> bool:
    """No table changed for QUIET_HB heartbeats and no split waits for its quiet period."""
    present = list(nodes)
    latest = max(node.last_change for node in present)
    return (now - max(latest, last) >= QUIET_HB * heartbeat_s
            and not any(node.division.stale for node in present))


# --- one run on the virtual network -------------------------------------------------------


def run_sim(
    domains: dict[int, DomainConfig], *, order: Sequence[int], delays: Sequence[float],
    config: HierarchyConfig, seed: str,
) -> tuple[list[dict[str, Any]], bool]:
    """One run on the virtual clock (nominal seconds; a little seeded network jitter):
    the per-domain rows, and whether it ended quiet (else it gave up)."""
    net = VirtualNetwork(config=config, latency_s=0.002, jitter_s=0.002,
                         seed=random.Random(seed).randrange(2**32), wire_key=WIRE_KEY)
    starts = schedule(domains, order=order, delays=delays)
    last = last_start(starts)
    run_schedule(net, starts, until=last)
    end, quiet = _run_quiet(net, last=last, config=config)
    by_name = {c.domain: n for n, c in domains.items()}
    nodes: dict[int, Node | None] = {n: None for n in domains}
    nodes.update({by_name[name]: sim.node for name, sim in net.domains.items()})
    sent = {by_name[name]: sim.bytes_sent for name, sim in net.domains.items()}
    rows = _domain_rows(nodes, started={s.number: s.at for s in starts}, end=end, last=last,
                        bytes_sent=sent, time_scale=1.0, heartbeat_s=config.heartbeat_s)
    return rows, quiet


def _run_quiet(net: VirtualNetwork, *, last: float, config: HierarchyConfig
               ) -> tuple[float, bool]:
    """Run until quiet (`_quiet`), or give up; (the time, whether it was quiet)."""
    hb = config.heartbeat_s
    while net.now < last + _give_up_hb(config.refresh_every) * hb:
        net.run(until=net.now + hb)
        if _quiet(net.live_nodes(), now=net.now, last=last, heartbeat_s=hb):
            return net.now, True
    return net.now, False


# --- one run with real daemons --------------------------------------------------------------


async def run_daemons(
    domains: dict[int, DomainConfig], *, order: Sequence[int], delays: Sequence[float],
    config: HierarchyConfig, time_scale: float, data_dir: Path,
) -> tuple[list[dict[str, Any]], bool]:
    """One run: every domain's DNS server and URS first, then its MSD (one, in process) at
    its time in the order; ends QUIET_HB heartbeats after the last routing-table change once
    no split waits for its quiet period (`_quiet`). `config` is nominal (heartbeat before
    the time scale). The per-domain rows, and whether it ended quiet."""
    hb = config.heartbeat_s / time_scale
    hierarchy = Hierarchy(list(domains.values()), data_dir=data_dir, ephemeral_ports=True,
                          msds=1, msd_in_process=True, heartbeat_s=hb, alpha=config.alpha,
                          beta=config.beta, refresh_every=config.refresh_every,
                          sessions=False)
    starts = schedule(domains, order=order, delays=delays, time_scale=time_scale)
    try:
        await hierarchy.start(msds_now=False)
        await hierarchy.wait_ready(timeout=30, designated=False)
        began = time.monotonic()
        started = await hierarchy.start_in_order(starts)
        last = max(started.values())
        quiet = False
        while time.monotonic() < last + _give_up_hb(config.refresh_every) * hb:
            await asyncio.sleep(hb)
            present = [node for node in _nodes(hierarchy).values() if node is not None]
            if len(present) == len(domains) and _quiet(
                    present, now=time.monotonic(), last=last, heartbeat_s=hb):
                quiet = True
                break
        end = time.monotonic()
        nodes = _nodes(hierarchy)
        numbers = {c.domain: n for n, c in domains.items()}
        sent = {numbers[name]: _tree_bytes(hierarchy, name) for name in hierarchy.domains}
        by_number = {numbers[name]: node for name, node in nodes.items()}
        rows = _domain_rows(by_number, started={numbers[k]: v for k, v in started.items()},
                            end=end, last=last, bytes_sent=sent, time_scale=time_scale,
                            heartbeat_s=config.heartbeat_s)
        for row in rows:
            row["wall_s"] = round(end - began, 2)
        return rows, quiet
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
    for index, (scenario, order_no, alpha, beta, quiet_hb) in enumerate(
            _repeat(cells, settings.runs)):
        run = index % settings.runs + 1
        order, delays = ORDERS[order_no]
        seed = f"{settings.seed}-{scenario}-{order_no}-{alpha}-{beta}-{quiet_hb}-{run}"
        config = HierarchyConfig(heartbeat_s=settings.heartbeat_s, alpha=alpha, beta=beta,
                                 refresh_every=quiet_hb)
        wall = time.perf_counter()
        if settings.engine == "sim":
            rows, quiet = run_sim(configs[scenario], order=order, delays=delays,
                                  config=config, seed=seed)
        else:
            rows, quiet = asyncio.run(_daemon_run(configs[scenario], order=order,
                                                  delays=delays, config=config,
                                                  settings=settings))
        summary = _summary(rows)
        runs.append({"scenario": scenario, "order": order_no, "alpha": alpha, "beta": beta,
                     "refresh_every": quiet_hb, "run": run,
                     "wall_s": round(time.perf_counter() - wall, 2),
                     "settled": quiet and summary["domains_joined"] == len(rows),
                     **summary, "domains": rows})
        elapsed = time.perf_counter() - began
        say(f"{index + 1}/{total} scenario {scenario} order {order_no} α={alpha:g} β={beta:g} "
            f"quiet {quiet_hb} hb run {run}: switches {summary['route_switches_mean']:.2f}/"
            f"domain (max {summary['route_switches_max']}), stabilization "
            f"{summary['stabilization_s_mean']:.1f} s, skew {summary['skew_max']:.1e}; "
            f"{elapsed:.0f} s wall, about "
            f"{elapsed / (index + 1) * (total - index - 1):.0f} s to go"
            + ("" if runs[-1]["settled"] else "; NOT SETTLED (tables still changing or a "
               "split still waiting at the end)")
            + ("" if summary["skew_ok"] else
               "; SKEW CHECK FAILED: " + ", ".join(summary["skew_faults"])))
    return {"settings": _settings_json(settings), "figures": FIGURES,
            "wall_s": round(time.perf_counter() - began, 1), "runs": runs}


async def _daemon_run(
    domains: dict[int, DomainConfig], *, order: Sequence[int], delays: Sequence[float],
    config: HierarchyConfig, settings: StabilitySettings,
) -> tuple[list[dict[str, Any]], bool]:
    with tempfile.TemporaryDirectory(prefix="mdns-stability-") as data_dir:
        return await run_daemons(domains, order=order, delays=delays, config=config,
                                 time_scale=settings.time_scale, data_dir=Path(data_dir))


def _repeat(cells: Iterable[tuple[int, int, float, float, int]], runs: int
            ) -> Iterable[tuple[int, int, float, float, int]]:
    for cell in cells:
        for _ in range(runs):
            yield cell


def _settings_json(settings: StabilitySettings) -> dict[str, Any]:
    data = dataclasses.asdict(settings)
    data["configs_dir"] = str(settings.configs_dir)
    data["orders_used"] = {o: {"order": list(ORDERS[o][0]), "delays": list(ORDERS[o][1])}
                           for o in settings.orders}
    return data
