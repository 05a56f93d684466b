"""The tree core on a virtual network: the dissertation's hierarchies settle, tile and heal."""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import random
from pathlib import Path

import pytest

from msd.hierarchy import HierarchyConfig, LinkMode, NodeState
from msd.keyspace import SPACE
from msd.messages import Peer
from vdns.mds import DomainConfig, load_hierarchy, load_mds
from vdns.netsim import VirtualNetwork

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
HB = 1.0
_RANDOM = random.Random(7)
KEYS = [_RANDOM.randrange(SPACE) for _ in range(10_000)]


def _configs(scenario: str) -> dict[str, DomainConfig]:
    return {c.domain: c for c in load_hierarchy(CONFIGS / scenario)}


def _add(net: VirtualNetwork, config: DomainConfig) -> None:
    net.add(config.domain, parent=config.parent_domain, cmcast=config.cmcast,
            pmcast=None if config.is_root else config.pmcast)


def _network(scenario: str, **config: bool) -> VirtualNetwork:
    net = VirtualNetwork(config=dataclasses.replace(HierarchyConfig(heartbeat_s=HB), **config))
    for domain in _configs(scenario).values():
        _add(net, domain)
    return net


def _assert_whole(net: VirtualNetwork, *, keys: int = 300) -> None:
    """Owned ranges tile the space; every key routes from every live domain to its owner.

    What is in flight is delivered first (50 ms, 5 % of a heartbeat): a re-split reaches
    the children one network delay after the parent made it.
    """
    net.settle(within=0.05 * HB)
    owned = sorted((n.owned, n.domain) for n in net.live_nodes())
    assert owned[0][0].start == 0 and owned[-1][0].end == SPACE
    for (before, _), (after, _) in itertools.pairwise(owned):
        assert before.end == after.start, f"gap or overlap between {before} and {after}"
    starts = [rng.start for rng, _ in owned]
    for key in KEYS[:keys]:
        expected = owned[bisect.bisect_right(starts, key) - 1][1]
        for node in net.live_nodes():
            owner, _ = net.route(key, start=node.domain)
            assert owner == expected, f"{key:032x} from {node.domain}: {owner} != {expected}"


def _shares(net: VirtualNetwork) -> list[float]:
    return [float(n.owned.share_fraction()) for n in net.live_nodes()]


@pytest.mark.parametrize("scenario", ["scenario1", "scenario2", "scenario3"])
def test_dissertation_hierarchy_settles_and_tiles(scenario: str) -> None:
    net = _network(scenario)
    net.run(until=20 * HB)
    nodes = net.live_nodes()
    assert sum(n.state is NodeState.ROOT for n in nodes) == 1
    assert all(n.state in (NodeState.ROOT, NodeState.JOINED) for n in nodes)
    root = next(n for n in nodes if n.state is NodeState.ROOT)
    assert root.count == 10
    assert max(abs(share - 0.1) for share in _shares(net)) < 1e-6
    _assert_whole(net, keys=10_000)  # 10,000 keys from every domain: one owner each


def test_multicast_off_runs_the_whole_tree_on_unicast() -> None:
    net = _network("scenario1", multicast=False)
    net.run(until=20 * HB)
    nodes = net.live_nodes()
    assert all(n.state in (NodeState.ROOT, NodeState.JOINED) for n in nodes)
    assert all(n.parent_link is LinkMode.UNICAST for n in nodes if n.parent)
    _assert_whole(net)


def test_a_link_with_multicast_blocked_falls_back_to_unicast() -> None:
    net = _network("scenario1")
    net.run(until=5 * HB)
    leaf = "dom0200.dom020.dom02.level0.testdomain.info"
    net.block_multicast(leaf)
    net.run(until=15 * HB)
    node = net.domains[leaf].node
    assert node.state is NodeState.JOINED and node.parent_link is LinkMode.UNICAST
    parent = net.domains["dom020.dom02.level0.testdomain.info"].node
    assert parent.children[leaf].link is LinkMode.UNICAST
    _assert_whole(net)


def test_a_domain_that_never_heard_its_parent_asks_for_unicast() -> None:
    """Its multicast blocked from the start (a host behind a firewall), restarted after its
    parent already counts it: no unicast heartbeat greets the new daemon, and none comes
    until it asks for unicast, which it does after `unicast_after` heartbeats of waiting."""
    net = _network("scenario1")
    leaf = "dom0200.dom020.dom02.level0.testdomain.info"
    net.block_multicast(leaf)
    net.run(until=1 * HB)  # the parent counts the leaf, and greeted it with one unicast beat
    config = _configs("scenario1")[leaf]
    net.add(leaf, parent=config.parent_domain, cmcast=config.cmcast, pmcast=config.pmcast, term=2)
    net.block_multicast(leaf)  # the host is still behind its firewall
    net.run(until=net.now + 8 * HB)  # 2 waiting, 1 joined, 2 retrying multicast, then steady
    node = net.domains[leaf].node
    assert node.state is NodeState.JOINED and node.parent_link is LinkMode.UNICAST
    parent = net.domains["dom020.dom02.level0.testdomain.info"].node
    assert parent.children[leaf].link is LinkMode.UNICAST
    _assert_whole(net)


def test_killing_a_middle_domain_grafts_its_children_within_five_heartbeats() -> None:
    net = _network("scenario1")
    net.run(until=15 * HB)
    middle = "dom020.dom02.level0.testdomain.info"
    before = {n.domain: (n.parent.domain if n.parent else None) for n in net.live_nodes()}
    net.kill(middle)
    killed_at = net.now
    net.run(until=killed_at + 5 * HB)
    for leaf in ("dom0200", "dom0201", "dom0202"):
        node = net.domains[f"{leaf}.{middle}"].node
        assert node.state is NodeState.FOSTERED
        assert node.parent is not None and node.parent.domain == "dom02.level0.testdomain.info"
    _assert_whole(net)

    net.add(middle, parent="dom02.level0.testdomain.info", cmcast="239.0.0.113",
            pmcast="239.0.0.107")
    net.run(until=net.now + 10 * HB)
    after = {n.domain: (n.parent.domain if n.parent else None) for n in net.live_nodes()}
    assert after == before
    assert all(n.state in (NodeState.ROOT, NodeState.JOINED) for n in net.live_nodes())
    _assert_whole(net)


def test_an_orphan_whose_tracer_was_lost_traces_again() -> None:
    """Under loss the one tracer (or the graft) may be lost: the orphan, standing in as the
    root of its subtree meanwhile, traces again every `retrace_every` heartbeats."""
    net = _network("scenario1")
    net.run(until=15 * HB)
    middle = "dom020.dom02.level0.testdomain.info"
    net.kill(middle)
    killed = net.now
    net.run(until=killed + 2.95 * HB)
    net.loss = 1.0  # every datagram of the first round (the root, then dom02) is lost
    net.run(until=killed + 5.2 * HB)
    leaves = [net.domains[f"{leaf}.{middle}"].node for leaf in ("dom0200", "dom0201", "dom0202")]
    assert all(node.state is NodeState.WAITING for node in leaves)  # a forest, for now
    net.loss = 0.0
    net.run(until=killed + 9.5 * HB)
    for node in leaves:
        assert node.state is NodeState.FOSTERED
        assert node.parent is not None and node.parent.domain == "dom02.level0.testdomain.info"
    _assert_whole(net)


def test_root_loss_leaves_a_forest_that_heals_when_the_root_returns() -> None:
    configs = _configs("scenario1")
    net = _network("scenario1")
    net.run(until=15 * HB)
    root = "level0.testdomain.info"
    net.kill(root)
    net.run(until=net.now + 6 * HB)
    tops = [n for n in net.live_nodes() if n.parent is None]
    assert sorted(n.domain for n in tops) == sorted(
        d for d, c in configs.items() if c.parent_domain == root
    )
    _add(net, configs[root])
    net.run(until=net.now + 10 * HB)
    assert all(n.state in (NodeState.ROOT, NodeState.JOINED) for n in net.live_nodes())
    _assert_whole(net)


def test_domains_started_before_their_parents_join_when_they_can() -> None:
    """The dissertation's start order and delays (1 s of its controller = 0.1 heartbeat)."""
    by_number = {int(path.name[6:8]): load_mds(path)
                 for path in (CONFIGS / "scenario3").glob("domain*.mds")}
    order = [10, 4, 5, 6, 1, 2, 7, 8, 9, 3]
    delays = [5, 5, 5, 10, 30, 600, 5, 5, 300, 30]
    net = VirtualNetwork(config=HierarchyConfig(heartbeat_s=HB))
    for number in order:
        _add(net, by_number[number])
        net.run(until=net.now + delays[number - 1] * 0.1 * HB)
    net.run(until=net.now + 20 * HB)
    assert all(n.state in (NodeState.ROOT, NodeState.JOINED) for n in net.live_nodes())
    _assert_whole(net)


def test_a_resplit_travels_down_one_network_latency_per_level() -> None:
    """The virtual clock stands at each delivery, so what a node sends in answer pays the
    latency again: news from the root reaches a grandchild two latencies after the root."""
    latency = 0.01
    net = VirtualNetwork(config=HierarchyConfig(heartbeat_s=HB), latency_s=latency)
    for name, parent in (("r.test", None), ("c.r.test", "r.test"), ("g.c.r.test", "c.r.test")):
        net.add(name, parent=parent, cmcast=f"239.0.0.{name.count('.')}",
                pmcast=None if parent is None else f"239.0.0.{parent.count('.')}")
    net.run(until=5 * HB)
    net.add("s.r.test", parent="r.test", cmcast="239.0.1.1", pmcast="239.0.0.1")  # a sibling
    net.run(until=net.now + 0.5 * HB)
    changed = {name: net.domains[name].node.last_change
               for name in ("r.test", "c.r.test", "g.c.r.test")}
    assert changed["c.r.test"] - changed["r.test"] == pytest.approx(latency)
    assert changed["g.c.r.test"] - changed["r.test"] == pytest.approx(2 * latency)


def test_a_stalled_process_does_not_count_its_stall_as_everyone_elses_silence() -> None:
    """A node that did not run for 4 heartbeats (a blocked event loop) keeps its parent and
    children: their datagrams were queued, not missing. Silence while it runs still counts."""
    net = _network("scenario1")
    net.run(until=10 * HB)
    middle = net.domains["dom020.dom02.level0.testdomain.info"].node
    switches = middle.route_switches
    stalled_at = net.now
    net.deliver(until=stalled_at + 4 * HB)  # the network runs on, nobody ticks
    net.run(until=net.now + 0.1 * HB)
    assert middle.state is NodeState.JOINED and len(middle.children) == 3
    assert middle.route_switches == switches
    net.kill("dom02.level0.testdomain.info")  # its parent: silent while the middle runs
    net.run(until=net.now + 4 * HB)
    assert middle.state is NodeState.FOSTERED


def test_an_orphan_adopted_by_its_own_parent_is_home_not_fostered() -> None:
    """After losing an adopter, an orphan's tracer can reach its own parent, back again:
    the graft then brings it home (JOINED), where a fostered state would stick, since
    the parent's heartbeats would never differ from the adopter's."""
    from msd.hierarchy import Node
    from msd.messages import Assignment, Graft, Heartbeat, Peer, Tracer

    config = HierarchyConfig(heartbeat_s=HB)
    parent_peer = Peer(domain="p.edu", host="10.0.0.1", port=1)
    child = Node(address=Peer(domain="x.p.edu", host="10.0.0.2", port=2), parent_domain="p.edu",
                 msd_id="x", term=1, config=config, now=0.0)
    child.set_parent_address(parent_peer, 0.0)
    root_peer = Peer(domain="edu", host="10.0.0.9", port=9)
    child.receive(Heartbeat(sender="p.edu", msd_id="p", term=1,
                            ancestors=(root_peer, parent_peer),
                            generation=1, assignments=(Assignment(child="x.p.edu", start=0,
                                                                  end=SPACE // 2),)),
                  0.0, multicast=True)
    assert child.state is NodeState.JOINED
    now = 0.0
    while child.state is not NodeState.ORPHAN:  # the parent falls silent while we run: trace
        now += HB / 10
        assert now < 10 * HB
        child.tick(now)
    child.receive(Graft(sender="p.edu", msd_id="p2", term=2, adopter=parent_peer,
                        orphan="x.p.edu"), now, multicast=False)
    assert child.state is NodeState.JOINED and child.parent == parent_peer

    parent = Node(address=parent_peer, parent_domain=None, msd_id="p2", term=2, config=config,
                  now=0.0)
    parent.receive(Tracer(sender="edu", msd_id="r", term=1, dead="q.edu",
                          orphan=Peer(domain="x.p.edu", host="10.0.0.2", port=2)),
                   0.0, multicast=False)
    assert parent.children["x.p.edu"].foster is False  # its own child: not a foster child
    parent.receive(Tracer(sender="edu", msd_id="r", term=1, dead="q.edu",
                          orphan=Peer(domain="y.w.p.edu", host="10.0.0.3", port=3)),
                   0.0, multicast=False)
    assert parent.children["y.w.p.edu"].foster is True  # a grandchild is fostered


def _chain(net: VirtualNetwork, name: str, parent: str | None) -> None:
    net.add(name, parent=parent, cmcast=f"239.0.0.{name.count('.')}",
            pmcast=None if parent is None else f"239.0.0.{parent.count('.')}")


def test_a_node_about_to_join_places_a_waiting_child_once_its_own_range_arrives() -> None:
    """The grandchild started first and knocks as soon as its parent starts: its report
    arrives one latency before the grandparent's heartbeat. The parent counts it and places
    it in the range that heartbeat brings: one table change each, not two for the parent.
    (Thresholds and quiet period too large to divide again within the test.)"""
    config = HierarchyConfig(heartbeat_s=HB, alpha=10, beta=10, refresh_every=1000)
    net = VirtualNetwork(config=config, latency_s=0.01)
    _chain(net, "r.test", None)
    net.run(until=3 * HB)
    _chain(net, "g.c.r.test", "c.r.test")
    net.run(until=6 * HB)
    _chain(net, "c.r.test", "r.test")
    net.run(until=net.now + 30 * HB)
    nodes = {name: sim.node for name, sim in net.domains.items()}
    assert all(n.state in (NodeState.ROOT, NodeState.JOINED) for n in nodes.values())
    assert nodes["c.r.test"].route_switches == 1
    assert nodes["g.c.r.test"].route_switches == 1
    assert nodes["r.test"].route_switches == 1
    _assert_whole(net)


def test_a_child_counted_while_joining_gets_its_piece_on_the_beat_if_the_parent_is_silent(
) -> None:
    """A parent address known (from the URS) but nobody answering there: the newcomer is
    placed on the next beat, as it would have been without the wait."""
    net = VirtualNetwork(config=HierarchyConfig(heartbeat_s=HB), latency_s=0.01)
    _chain(net, "g.c.r.test", "c.r.test")
    _chain(net, "c.r.test", "r.test")
    parent = net.domains["c.r.test"].node
    parent.set_parent_address(Peer(domain="r.test", host="127.0.0.1", port=9), net.now)
    net.deliver(until=net.now + 0.05 * HB)
    assert parent.division.unplaced() == ["g.c.r.test"] and parent.count == 2
    assert parent.route_switches == 0
    net.run(until=net.now + 1.5 * HB)
    child = net.domains["g.c.r.test"].node
    assert parent.division.unplaced() == [] and child.state is NodeState.JOINED
    assert parent.owned.size + child.owned.size == SPACE


def test_a_domain_divides_once_on_its_first_beat_for_every_child_heard_meanwhile() -> None:
    """Children that waited for their parent knock once a heartbeat, so they reach it at
    any time within its first heartbeat, some after its own parent answered. It reports at
    once (its parent counts it), records its range and the children, and divides on its
    first beat: one table change for it and for each child."""
    config = HierarchyConfig(heartbeat_s=HB, alpha=10, beta=10, refresh_every=1000)
    net = VirtualNetwork(config=config, latency_s=0.01)
    _chain(net, "r.test", None)
    net.run(until=3 * HB)
    _chain(net, "a.c.r.test", "c.r.test")
    net.run(until=6 * HB)
    _chain(net, "c.r.test", "r.test")
    net.run(until=net.now + 0.2 * HB)
    parent = net.domains["c.r.test"].node
    assert "c.r.test" in net.domains["r.test"].node.children
    assert parent.state is NodeState.JOINED and parent.route_switches == 0
    _chain(net, "b.c.r.test", "c.r.test")  # heard after the parent's heartbeat came
    net.run(until=net.now + 0.5 * HB)
    assert parent.division.unplaced() == ["a.c.r.test", "b.c.r.test"]
    net.run(until=net.now + 30 * HB)
    switches = {name: sim.node.route_switches for name, sim in net.domains.items()}
    assert switches == {"r.test": 1, "c.r.test": 1, "a.c.r.test": 1, "b.c.r.test": 1}
    _assert_whole(net)
