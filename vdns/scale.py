"""The scale experiment: a random tree of up to 10,000 domains on the virtual network, measured.

Every domain's designated MSD is the daemons' own `msd.hierarchy.Node`, run by
`vdns.netsim` on a virtual clock; every datagram is encoded with `msd.codec` to count
its real size. All domains start at once. The run checks the tree once per heartbeat
until it has converged and stayed so for a window of heartbeats, then routes random
keys from random domains. docs/scale.md defines every figure and derives the formulas.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable
from typing import Any

from msd.hierarchy import HierarchyConfig, Node
from msd.keyspace import SPACE, KeyRange, skew
from msd.treeview import Owners, tiling_gaps
from vdns.netsim import TICKS_PER_HEARTBEAT, VirtualNetwork
from vdns.trees import (
    DomainTree,
    dissertation_load,
    log_hops,
    random_tree,
    tree_path_hops,
    uniform_load,
)

# Fair: every share within this of 1/N. The exact split is within ~1e-37; one stale count
# anywhere moves some share by at least ~1/N², 1e-8 at N = 10,000.
FAIR = 1e-12
WIRE_KEY = b"scale-experiment-hierarchy-key"  # any key: only the sizes are counted
PROGRESS_EVERY_S = 2.0  # wall seconds between progress lines
TOLERANCE = 0.10  # beyond this relative gap, the report explains a formula's miss

FIGURES = """\
figures (N domains; docs/scale.md derives the formulas):
  tree             height, mean depth, the root's children, mean children of a parent
  converged        every domain's owned range tiles the key space (no gap, no overlap),
                   shares are fair (max |share - 1/N| < 1e-12) and one random key per
                   domain routes from it to its owner; checked once per heartbeat at
                   mid-interval, and it must hold for --window checks in a row
  virtual_convergence_s  when the tree became so: the virtual time of the last change of
                   any routing table before the first check of that streak
  virtual_run_s    virtual time simulated: until convergence, then the window
  wall_s           wall-clock seconds of the whole run (tree, simulation, lookups);
                   wall_convergence_s: until convergence was detected
  skew_max         max |share - 1/N| over the domains at the end, exact
  control_bytes_per_domain_per_heartbeat  bytes of every control datagram sent (encoded
                   and signed by msd.codec, as the daemons send them; a multicast counts
                   once) during the window after convergence, / N / window heartbeats;
                   control_bytes_by_kind: the same per message kind
  control_bytes_to_converge_per_domain  those bytes from the start to convergence, / N
  route_switches_mean, _max  changes of a domain's routing table, start to end;
                   route_switches_in_window: of all domains, during the window
  lookups, lookup_failures  random keys routed from random domains at the end, and how
                   many did not reach the key's owner
  hops_mean, hops_max  next-hop steps per lookup
  hops_predicted   the tree-path formula: the sum over edges of 2 s (N - s) / N^2, s the
                   domains below the edge (the subtree counts the nodes converged to)
  hops_log_k       log_k(N), k = --fanout: the height of a complete k-ary tree
  root_load        the share of lookups that visit the root (as origin, hop or owner)
  root_load_predicted  the dissertation's routing load (sum_j count_j + 1) / N, j the
                   root's children, count_j the subtree count each reported
  root_load_model  1 - sum_j (count_j / N)^2: the chance that origin and owner are not
                   below the same child of the root
  levels           per tree level: domains; load, load_predicted and load_model as
                   above, averaged over the level's domains (below the root the model
                   also counts the part of the tree outside the domain's subtree);
                   received_per_heartbeat: control datagrams a domain receives
  notes            why a figure misses a formula by more than 10 %
"""


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScaleSettings:
    domains: int = 1000
    fanout: int = 8
    depth: int | None = None  # deepest level allowed; None: vdns.trees.default_depth
    seed: int = 0
    heartbeat_s: float = 1.0
    latency_ms: float = 2.0  # one way, every datagram
    window: int = 20  # heartbeats the tree must stay converged; bytes are measured over them
    lookups: int = 20_000
    max_virtual_s: float = 300.0  # give up converging after this much virtual time
    alpha: float = 0.1
    beta: float = 0.1
    refresh_every: int = 10


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    """Counters at one check."""

    virtual: float
    wall: float
    last_change: float  # of any routing table
    route_switches: int  # of all domains
    bytes_sent: int
    bytes_by_kind: dict[str, int]
    received: list[int]  # per domain, in tree order


def scale(
    settings: ScaleSettings, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run the experiment; one flat dict of figures plus per-level rows and notes."""
    say = progress or (lambda _text: None)
    started = time.perf_counter()
    tree = random_tree(settings.domains, fanout=settings.fanout, depth=settings.depth,
                       seed=settings.seed)
    say(f"a random tree of {len(tree):,} domains: height {tree.height}, "
        f"mean depth {tree.mean_depth:.2f}")
    config = HierarchyConfig(heartbeat_s=settings.heartbeat_s, alpha=settings.alpha,
                             beta=settings.beta, refresh_every=settings.refresh_every)
    net = VirtualNetwork(config=config, latency_s=settings.latency_ms / 1000,
                         seed=settings.seed, wire_key=WIRE_KEY)
    for index, name in enumerate(tree.names):
        parent = tree.parents[index]
        net.add(name, parent=tree.parent_name(index), cmcast=_group(index),
                pmcast=None if parent < 0 else _group(parent))
    nodes = [net.domains[name].node for name in tree.names]
    say(f"started {len(nodes):,} domains at once; the first heartbeat, when they all join, "
        f"takes longest")

    converged, first, last = _converge(net, nodes, settings, started=started, say=say)
    n, window = len(nodes), settings.window
    sent = last.bytes_sent - first.bytes_sent
    root = nodes[0]
    result: dict[str, Any] = {
        "domains": n, "fanout": settings.fanout, "depth": tree.depth_limit,
        "seed": settings.seed, "heartbeat_s": settings.heartbeat_s,
        "latency_ms": settings.latency_ms, "window_heartbeats": window,
        "tree": {"height": tree.height, "mean_depth": round(tree.mean_depth, 3),
                 "root_children": len(root.children),
                 "mean_fanout_of_parents": round(_mean_parent_fanout(tree), 3)},
        "converged": converged,
        "virtual_convergence_s": round(first.last_change, 3) if converged else None,
        "virtual_run_s": round(last.virtual, 3),
        "wall_convergence_s": round(first.wall, 2) if converged else None,
        "skew_max": skew([node.owned.share_fraction() for node in nodes], n),
        "control_bytes_per_domain_per_heartbeat": round(sent / n / window, 1),
        "control_bytes_by_kind": {
            kind: round((size - first.bytes_by_kind.get(kind, 0)) / n / window, 1)
            for kind, size in sorted(last.bytes_by_kind.items())},
        "control_bytes_to_converge_per_domain": round(first.bytes_sent / n, 1),
        "route_switches_mean": round(sum(node.route_switches for node in nodes) / n, 2),
        "route_switches_max": max(node.route_switches for node in nodes),
        "route_switches_in_window": last.route_switches - first.route_switches,
    }
    say(f"routing {settings.lookups:,} lookups")
    result |= _lookups(net, nodes, tree, settings, window=(first, last))
    result["notes"] = _notes(result)
    result["wall_s"] = round(time.perf_counter() - started, 2)
    return result


def _group(index: int) -> str:
    """A distinct multicast group per domain (its CMCAST; its children's PMCAST)."""
    return f"239.{1 + index // 65_536}.{index // 256 % 256}.{index % 256}"


def _mean_parent_fanout(tree: DomainTree) -> float:
    fanouts = [f for f in tree.fanouts() if f]
    return sum(fanouts) / len(fanouts) if fanouts else 0.0


# --- converging ---------------------------------------------------------------------------


def _converge(
    net: VirtualNetwork, nodes: list[Node], settings: ScaleSettings, *, started: float,
    say: Callable[[str], None],
) -> tuple[bool, _Snapshot, _Snapshot]:
    """Run until the tree has been whole for `window` checks in a row (or time runs out):
    (converged, the snapshot at the streak's first check, the one at its end)."""
    hb, window = settings.heartbeat_s, settings.window
    rng = random.Random(f"checks-{settings.seed}")
    first: _Snapshot | None = None
    check, said = 0, time.perf_counter()

    def tell() -> None:
        nonlocal said
        if time.perf_counter() - said < PROGRESS_EVERY_S:
            return
        said = time.perf_counter()
        state = "converging" if first is None else (
            f"converged, watching {net.now - first.virtual:.0f}/{window * hb:.0f} s")
        say(f"{net.now:.3f} s virtual: the root counts {nodes[0].count:,}/{len(nodes):,} "
            f"domains, {state}; {said - started:.0f} s wall")

    # Between ticks, deliver in slices of one latency (ticking nobody), so that even the
    # first tick, when every domain joins at once, shows progress.
    piece = max(settings.latency_ms / 1000, hb / 1000)
    while True:
        check += 1
        # Checks at mid-interval, when what a beat set off has landed.
        while net.now < (check - 0.5) * hb - 1e-9:
            tick = min((check - 0.5) * hb, net.now + hb / TICKS_PER_HEARTBEAT)
            slices = int((tick - net.now) / piece)
            for until in [net.now + i * piece for i in range(1, slices)]:
                net.deliver(until=until)
                tell()
            net.run(until=tick)
            tell()
        if first is None and net.now >= settings.max_virtual_s:
            # Never converged: measure the traffic of one window anyway, as it is.
            first = _snapshot(net, nodes, started=started)
            net.run(until=net.now + window * hb)
            return False, first, _snapshot(net, nodes, started=started)
        if _whole(net, nodes, rng):
            if first is None:
                first = _snapshot(net, nodes, started=started)
            elif net.now - first.virtual >= window * hb - 1e-6:
                return True, first, _snapshot(net, nodes, started=started)
        else:
            first = None


def _whole(net: VirtualNetwork, nodes: list[Node], rng: random.Random) -> bool:
    """Fair shares, ranges that tile the space, and one random key per domain that routes
    from it to its owner. Cheapest test first: while the tree forms, shares are unfair."""
    if skew([node.owned.share for node in nodes], len(nodes)) >= FAIR:
        return False
    owned = _owned(nodes)
    if tiling_gaps(owned):
        return False
    owner = Owners(owned)
    for node in nodes:
        key = rng.randrange(SPACE)
        reached, _ = net.route(key, start=node.domain)
        if reached is None or reached != owner(key):
            return False
    return True


def _owned(nodes: list[Node]) -> list[tuple[KeyRange, str]]:
    """(owned range, domain) pairs in key order."""
    return sorted(((node.owned, node.domain) for node in nodes), key=lambda p: p[0].start)


def _snapshot(net: VirtualNetwork, nodes: list[Node], *, started: float) -> _Snapshot:
    sims = [net.domains[node.domain] for node in nodes]
    return _Snapshot(virtual=net.now, wall=time.perf_counter() - started,
                     last_change=max(node.last_change for node in nodes),
                     route_switches=sum(node.route_switches for node in nodes),
                     bytes_sent=sum(sim.bytes_sent for sim in sims),
                     bytes_by_kind=dict(net.bytes_by_kind),
                     received=[sim.messages_received for sim in sims])


# --- routing ------------------------------------------------------------------------------


def _lookups(
    net: VirtualNetwork, nodes: list[Node], tree: DomainTree, settings: ScaleSettings, *,
    window: tuple[_Snapshot, _Snapshot],
) -> dict[str, Any]:
    """Route random keys from random domains; hops and per-domain visits against the formulas."""
    n = len(nodes)
    index = {node.domain: i for i, node in enumerate(nodes)}
    owner = Owners(_owned(nodes))
    rng = random.Random(f"lookups-{settings.seed}")
    visits = [0] * n
    hops: list[int] = []
    failures = 0
    for _ in range(settings.lookups):
        start, key = nodes[rng.randrange(n)].domain, rng.randrange(SPACE)
        path: list[str] = []
        reached, steps = net.route(key, start=start, path=path)
        if reached is None or reached != owner(key):
            failures += 1
            continue
        hops.append(steps)
        for name in path:
            visits[index[name]] += 1
    routed = max(1, len(hops))
    mean = sum(hops) / routed
    counts = [[child.count for child in node.children.values()] for node in nodes]
    first, last = window
    levels = []
    for level in range(tree.height + 1):
        members = [i for i, depth in enumerate(tree.depths) if depth == level]
        size = len(members)
        levels.append({
            "level": level, "domains": size,
            "load": round(sum(visits[i] for i in members) / routed / size, 5),
            "load_predicted": round(sum(dissertation_load(counts[i], n) for i in members)
                                    / size, 5),
            "load_model": round(sum(uniform_load(counts[i], n) for i in members) / size, 5),
            "received_per_heartbeat": round(
                sum(last.received[i] - first.received[i] for i in members)
                / size / settings.window, 2),
        })
    return {
        "lookups": settings.lookups,
        "lookup_failures": failures,
        "hops_mean": round(mean, 3),
        "hops_sd": round(math.sqrt(sum((h - mean) ** 2 for h in hops) / routed), 3),
        "hops_max": max(hops, default=0),
        "hops_predicted": round(tree_path_hops((c for cs in counts for c in cs), n), 3),
        "hops_log_k": round(log_hops(n, settings.fanout), 3),
        "root_load": levels[0]["load"],
        "root_load_predicted": levels[0]["load_predicted"],
        "root_load_model": levels[0]["load_model"],
        "levels": levels,
    }


def _notes(result: dict[str, Any]) -> list[str]:
    """Why a measured figure misses a formula by more than TOLERANCE."""
    notes: list[str] = []
    if not result["converged"]:
        notes.append("the tree did not converge within the virtual time allowed: the "
                     "figures describe it as it was")
    if result["lookup_failures"]:
        notes.append(f"{result['lookup_failures']} lookups did not reach the owner")
    hops, tree = result["hops_mean"], result["tree"]
    lookups = max(1, result["lookups"] - result["lookup_failures"])
    hops_se = result["hops_sd"] / math.sqrt(lookups)
    if _off(hops, result["hops_predicted"], se=hops_se):
        notes.append(f"hops_mean {hops} misses the tree-path formula "
                     f"{result['hops_predicted']}: routes are not the tree's shortest paths")
    if _off(hops, result["hops_log_k"], se=hops_se):
        notes.append(
            f"hops_mean {hops} vs log_{result['fanout']}(N) = {result['hops_log_k']}: a lookup "
            f"from a random domain climbs to the lowest common ancestor of origin and owner "
            f"and descends to the owner, 2 × (mean depth {tree['mean_depth']} − that "
            f"ancestor's mean depth) hops, where log_k(N) is one way from the root; and a "
            f"random tree is deeper than a complete {result['fanout']}-ary one (height "
            f"{tree['height']}, parents have {tree['mean_fanout_of_parents']} children on "
            f"average, not {result['fanout']})")
    load, predicted = result["root_load"], result["root_load_predicted"]
    if _off(load, predicted, se=_load_se(result["levels"][0], lookups)):
        notes.append(
            f"root_load {load} vs (Σ count_j + 1)/N = {predicted}: the equation counts every "
            f"lookup for a key in the root's subtree, as if lookups entered at the top; one "
            f"whose origin and owner lie below the same child of the root never reaches it, "
            f"which 1 − Σ (count_j/N)² = {result['root_load_model']} accounts for")
    below = [row for row in result["levels"][1:]
             if _off(row["load"], row["load_predicted"], se=_load_se(row, lookups))]
    if below:
        ratios = [row["load"] / row["load_predicted"] for row in below]
        levels = f"{below[0]['level']}–{below[-1]['level']}" if len(below) > 1 else (
            below[0]["level"])
        notes.append(
            f"at level{'s' if len(below) > 1 else ''} {levels} the measured load is "
            f"{min(ratios):.2f}–{max(ratios):.2f} times (Σ count_j + 1)/N: lookups leave a "
            f"subtree through its top domain as often as they enter it, and the equation "
            f"counts those entering; load_model, 1 − Σ (size/N)² over the parts the domain "
            f"separates (its children's subtrees and the rest of the tree), counts both")
    missed = [row["level"] for row in result["levels"]
              if _off(row["load"], row["load_model"], se=_load_se(row, lookups))]
    if missed:
        notes.append(f"the load at levels {missed} misses load_model by more than "
                     f"{TOLERANCE:.0%}: routes are not the tree's shortest paths")
    return notes


def _off(measured: float, predicted: float, *, se: float) -> bool:
    """Further apart than TOLERANCE, and than sampling error could make them (4 σ)."""
    return abs(measured - predicted) > max(TOLERANCE * abs(predicted), 4 * se)


def _load_se(row: dict[str, Any], lookups: int) -> float:
    """The standard error of a level's mean load, were it the model's (each domain's visits
    are binomial over the lookups)."""
    p = row["load_model"]
    return math.sqrt(p * (1 - p) / lookups / row["domains"])


# --- the report ---------------------------------------------------------------------------


def format_report(result: dict[str, Any]) -> str:
    """A table of the figures, one row per tree level, and the notes."""
    tree = result["tree"]
    converged = (f"yes, at {result['virtual_convergence_s']} s virtual, detected after "
                 f"{result['wall_convergence_s']} s wall" if result["converged"] else "no")
    kinds = ", ".join(f"{kind} {size}" for kind, size in result["control_bytes_by_kind"].items()
                      ) or "no datagrams"
    lines = [
        f"scale: {result['domains']:,} domains, random tree of fan-out <= {result['fanout']} "
        f"(height {tree['height']}, mean depth {tree['mean_depth']}, root children "
        f"{tree['root_children']}), seed {result['seed']}, heartbeat {result['heartbeat_s']} s, "
        f"latency {result['latency_ms']} ms",
        f"{'converged':<24}{converged}",
        f"{'wall':<24}{result['wall_s']} s for the whole run ({result['virtual_run_s']} s virtual)",
        f"{'skew max':<24}{result['skew_max']:.3g}",
        f"{'control bytes':<24}{result['control_bytes_per_domain_per_heartbeat']} per domain per "
        f"heartbeat over {result['window_heartbeats']} heartbeats ({kinds}); "
        f"{result['control_bytes_to_converge_per_domain']} per domain until converged",
        f"{'route switches':<24}mean {result['route_switches_mean']}, "
        f"max {result['route_switches_max']}, {result['route_switches_in_window']} in the window",
        f"{'hops per lookup':<24}mean {result['hops_mean']} (tree-path formula "
        f"{result['hops_predicted']}, log_{result['fanout']}(N) {result['hops_log_k']}), "
        f"max {result['hops_max']}, {result['lookups']:,} lookups, "
        f"{result['lookup_failures']} failed",
        f"{'root load':<24}{result['root_load']} measured, "
        f"{result['root_load_predicted']} by (Σ count_j + 1)/N, "
        f"{result['root_load_model']} by 1 − Σ (count_j/N)²",
        "",
        f"{'level':>5}{'domains':>9}{'load':>10}{'(Σc+1)/N':>10}{'model':>10}"
        f"{'received/hb':>13}",
    ]
    for row in result["levels"]:
        lines.append(f"{row['level']:>5}{row['domains']:>9}{row['load']:>10.5f}"
                     f"{row['load_predicted']:>10.5f}{row['load_model']:>10.5f}"
                     f"{row['received_per_heartbeat']:>13}")
    if result["notes"]:
        lines += ["", "notes:", *(f"- {note}" for note in result["notes"])]
    return "\n".join(lines)
