"""URS replicas, the pure parts: the load meter, the health and load ranking, the zone's answers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dns.flags
import dns.message
import dns.rdatatype
import pytest

from urs.load import LoadMeter
from vdns.mds import load_hierarchy
from vdns.replicas import Health, Replica, ReplicaSet
from vdns.zone import Answer, Zone, encode_response, parse_query

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
A, B, C = Replica("127.0.0.1", 8001), Replica("127.0.0.1", 8002), Replica("10.0.0.3", 80)


def test_the_load_meter_counts_in_flight_and_a_sliding_rate() -> None:
    meter = LoadMeter(window_s=10.0, bucket_s=1.0)
    for t in (0.1, 0.2, 0.3, 5.5):
        meter.started(t)
    meter.finished()
    assert meter.in_flight == 3 and meter.total == 4
    assert meter.rate(6.0) == 0.4
    assert meter.rate(9.99) == 0.4  # the window is the last 10 buckets: [0, 1) to [9, 10)
    assert meter.rate(10.0) == 0.1  # [0, 1) left it: only the request at 5.5 remains
    assert meter.rate(100.0) == 0.0
    assert meter.report(100.0) == {"in_flight": 3, "rate": 0.0, "window_s": 10.0}
    for _ in range(5):
        meter.finished()
    assert meter.in_flight == 0  # never negative
    with pytest.raises(ValueError):
        LoadMeter(window_s=1.0, bucket_s=2.0)


def test_least_loaded_first_and_equal_loads_take_turns() -> None:
    replicas = ReplicaSet([A, B, C])
    firsts = {replicas.ranked()[0][1] for _ in range(3)}
    assert firsts == {A, B, C}  # all idle (and never checked): each leads in turn
    replicas.observe(0, ok=True, now=1.0, in_flight=0, rate=5.0)
    replicas.observe(1, ok=True, now=1.0, in_flight=0, rate=0.2)
    replicas.observe(2, ok=True, now=1.0, in_flight=2, rate=0.0)
    for _ in range(3):
        assert [r for _, r in replicas.ranked()] == [B, A, C]  # in flight, then the rate


def test_a_refused_replica_is_down_at_once_and_a_slow_one_after_two_failures() -> None:
    replicas = ReplicaSet([A, B, C], fail_after=2)
    replicas.observe(0, ok=False, now=1.0, refused=True, error="refused")
    replicas.observe(1, ok=False, now=1.0, error="timeout")
    assert [s.health for s in replicas.states] == [Health.DOWN, Health.UNKNOWN, Health.UNKNOWN]
    assert {r for _, r in replicas.ranked()} == {B, C}
    replicas.observe(1, ok=False, now=2.0, error="timeout")
    assert [r for _, r in replicas.ranked()] == [C]
    replicas.observe(0, ok=True, now=3.0)  # one good check brings it back
    assert {r for _, r in replicas.ranked()} == {A, C}
    assert replicas.states[0].to_json()["health"] == "up"


def test_no_replica_up_publishes_them_all() -> None:
    replicas = ReplicaSet([A, B])
    for index in (0, 1):
        replicas.observe(index, ok=False, now=1.0, refused=True)
    assert {r for _, r in replicas.ranked()} == {A, B}


def test_a_replica_set_refuses_nonsense() -> None:
    for bad in ([], [A, A]):
        with pytest.raises(ValueError):
            ReplicaSet(bad)
    with pytest.raises(ValueError):
        ReplicaSet([A], fail_after=0)


def _zone(replicas: ReplicaSet) -> Zone:
    config = next(c for c in load_hierarchy(CONFIGS / "demo") if c.domain == "ufl.edu")
    return Zone(dataclasses.replace(config, urs_ip="127.0.0.1"), replicas=replicas)


def _ask(zone: Zone, name: str, rdtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    query.flags &= ~dns.flags.RD
    decision = zone.decide(query)
    assert isinstance(decision, Answer)
    # Through the wire: the order the zone chose must survive encoding.
    return dns.message.from_wire(encode_response(decision.message, limit=65535))


def test_the_zone_answers_with_live_replicas_least_loaded_first() -> None:
    replicas = ReplicaSet([A, B, C])
    replicas.observe(0, ok=True, now=1.0, rate=9.0)
    replicas.observe(1, ok=True, now=1.0, rate=0.0)
    replicas.observe(2, ok=True, now=1.0, rate=3.0)
    zone = _zone(replicas)
    srv = _ask(zone, "_mdns-urs._tcp.ufl.edu", "SRV")
    (rrset,) = srv.answer
    assert rrset.ttl == 5
    assert [(r.priority, r.port, r.target.to_text()) for r in rrset] == [
        (0, 8002, "r2.mcast.ufl.edu."), (1, 80, "r3.mcast.ufl.edu."),
        (2, 8001, "r1.mcast.ufl.edu.")]
    glue = {rr.name.to_text(): [r.address for r in rr] for rr in srv.additional}
    assert glue == {"r2.mcast.ufl.edu.": ["127.0.0.1"], "r3.mcast.ufl.edu.": ["10.0.0.3"],
                    "r1.mcast.ufl.edu.": ["127.0.0.1"]}
    (addresses,) = _ask(zone, "mcast.ufl.edu", "A").answer
    assert [r.address for r in addresses] == ["127.0.0.1", "10.0.0.3"]  # B's, C's; once each
    assert addresses.ttl == 5

    replicas.observe(1, ok=False, now=2.0, refused=True)  # B dies
    (rrset,) = _ask(zone, "_mdns-urs._tcp.ufl.edu", "SRV").answer
    assert [(r.priority, r.port) for r in rrset] == [(0, 80), (1, 8001)]
    (one,) = _ask(zone, "r2.mcast.ufl.edu", "A").answer  # its own name stays
    assert [r.address for r in one] == ["127.0.0.1"]
    assert _ask(zone, "r9.mcast.ufl.edu", "A").rcode() == dns.rcode.NXDOMAIN


def test_without_replicas_the_zone_is_as_the_mds_file_says() -> None:
    config = next(c for c in load_hierarchy(CONFIGS / "demo") if c.domain == "ufl.edu")
    zone = Zone(config)
    (rrset,) = _ask(zone, "_mdns-urs._tcp.ufl.edu", "SRV").answer
    assert rrset.ttl == 30
    assert [(r.priority, r.port, r.target.to_text()) for r in rrset] == [
        (0, config.urs_port, "mcast.ufl.edu.")]
    assert _ask(zone, "r1.mcast.ufl.edu", "A").rcode() == dns.rcode.NXDOMAIN


def test_a_query_is_parsed_within_bounds() -> None:
    wire = dns.message.make_query("mcast.ufl.edu", dns.rdatatype.A).to_wire()
    assert parse_query(wire).question[0].name.to_text() == "mcast.ufl.edu."
