"""The testbed's plan, without root: names, addresses, commands, the domains on the hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdns.mds import load_hierarchy
from vdns.netns import (
    Impairment,
    NetnsError,
    NetworkPlan,
    block_multicast_commands,
    create_commands,
    netem_commands,
    nft_loss_commands,
)
from vdns.testbed import DNS_PORT, URS_PORT, place, select_domains

SCENARIO1 = Path(__file__).resolve().parents[2] / "configs" / "scenario1"


def test_the_plan_names_every_namespace_with_the_runs_prefix() -> None:
    plan = NetworkPlan.make("mtbabc123", 3)
    assert [h.namespace for h in plan.hosts] == ["mtbabc123-h1", "mtbabc123-h2", "mtbabc123-h3"]
    assert [h.address for h in plan.hosts] == ["10.250.0.1", "10.250.0.2", "10.250.0.3"]
    assert plan.observer.address == "10.250.0.254"
    assert all(n.startswith("mtbabc123-") for n in plan.namespaces)
    assert plan.host("10.250.0.2").name == "h2" and plan.host("mtbabc123-h3").name == "h3"
    commands = create_commands(plan)
    # Addresses are set only inside the hosts' namespaces; every host routes 224/4 on eth0.
    assert all(c[:2] == ["ip", "-n"] or c[:3] == ["ip", "netns", "add"] for c in commands)
    routes = [c for c in commands if "route" in c]
    assert len(routes) == 4 and all(c[-3:] == ["224.0.0.0/4", "dev", "eth0"] for c in routes)
    for bad in ("MTB", "a", "m-tb", "x" * 13):
        with pytest.raises(NetnsError, match="prefix"):
            NetworkPlan.make(bad, 3)
    with pytest.raises(NetnsError, match="hosts"):
        NetworkPlan.make("mtbabc", 0)


@pytest.mark.parametrize(("spec", "expected"), [
    ("loss 10%", Impairment(loss_pct=10)),
    ("delay 20ms", Impairment(delay_ms=20)),
    ("delay 50ms 25ms loss 1%", Impairment(delay_ms=50, jitter_ms=25, loss_pct=1)),
    ("delay 0.1s loss 0.5%", Impairment(delay_ms=100, loss_pct=0.5)),
])
def test_impairments_parse_netem_specs(spec: str, expected: Impairment) -> None:
    assert Impairment.parse(spec) == expected


@pytest.mark.parametrize("spec", ["loss", "loss 10", "delay fast", "jitter 5ms", "loss 101%"])
def test_bad_impairments_are_refused(spec: str) -> None:
    with pytest.raises(NetnsError, match="impairment"):
        Impairment.parse(spec)


def test_impairment_commands() -> None:
    host = NetworkPlan.make("mtbabc", 1).hosts[0]
    both = Impairment(delay_ms=20, loss_pct=1)
    assert netem_commands(host, both)[0][-6:] == ["root", "netem", "delay", "20ms", "loss", "1%"]
    udp = netem_commands(host, Impairment(loss_pct=10, udp_only=True))
    assert any("u32" in c and "17" in c for c in udp)  # a filter sends UDP to the netem band
    rule = nft_loss_commands(host, Impairment(loss_pct=10, udp_only=True))[-1]
    assert rule[-11:] == ["meta", "l4proto", "udp", "numgen", "random", "mod", "10000", "<",
                          "1000", "counter", "drop"]
    assert "egress device eth0" in nft_loss_commands(host, both)[1][-1]
    assert block_multicast_commands(host)[-1][-4:] == ["daddr", "224.0.0.0/4", "counter", "drop"]


def test_the_first_domains_breadth_first_form_a_tree_on_the_hosts() -> None:
    configs = load_hierarchy(SCENARIO1)
    chosen = select_domains(configs, 5)
    assert [c.domain.split(".")[0] for c in chosen] == ["level0", "dom00", "dom01", "dom02",
                                                        "dom000"]
    plan = NetworkPlan.make("mtbabc", 5)
    placed = place(chosen, plan.hosts)
    by_name = {p.domain: p for p in placed}
    for parent in placed:  # every delegation names the child's host, port 53, and back
        for delegation in parent.config.delegations:
            child = by_name[parent.config.child_domain(delegation)]
            assert (delegation.ip, delegation.port) == (child.host.address, DNS_PORT)
            assert (child.config.parent_dns, child.config.parent_dns_port) == (
                parent.host.address, DNS_PORT)
    middle = by_name["dom00.level0.testdomain.info"]
    assert middle.config.urs_ip == "10.250.0.2" and middle.config.urs_port == URS_PORT
    assert (middle.config.parent_dns, middle.config.parent_dns_port) == ("10.250.0.1", DNS_PORT)
    # dom001 is not on the testbed: its delegation is gone; dom000's points at host 5.
    assert [(d.label, d.ip, d.port) for d in middle.config.delegations] == [
        ("dom000", "10.250.0.5", DNS_PORT)]
    root = by_name["level0.testdomain.info"].config
    assert root.is_root and len(root.delegations) == 3
    with pytest.raises(Exception, match="--hosts"):
        select_domains(configs, 11)
