"""The vdns zone core: authoritative answers, referrals, forward decisions, error rcodes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from vdns.errors import VdnsError
from vdns.mds import Delegation, DomainConfig, load_hierarchy
from vdns.zone import (
    CLASSIC_UDP_LIMIT,
    MAX_QUERY_BYTES,
    UDP_PAYLOAD,
    Answer,
    Drop,
    Forward,
    MalformedQueryError,
    Route,
    Zone,
    encode_response,
    parse_query,
    udp_size_limit,
)

SCENARIO1 = Path(__file__).resolve().parents[2] / "configs" / "scenario1"
ROOT = "level0.testdomain.info"
MID = "dom02.level0.testdomain.info"  # parent: the root; child: dom020


@pytest.fixture(scope="module")
def configs() -> dict[str, DomainConfig]:
    return {c.domain: c for c in load_hierarchy(SCENARIO1)}


@pytest.fixture
def root(configs: dict[str, DomainConfig]) -> Zone:
    return Zone(configs[ROOT], ns_address="127.0.0.9")


@pytest.fixture
def mid(configs: dict[str, DomainConfig]) -> Zone:
    return Zone(configs[MID])


def query(
    name: str, rdtype: str = "A", *, rd: bool = True, edns: int = -1
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, use_edns=edns)
    if not rd:
        q.flags &= ~dns.flags.RD
    return q


def answer(zone: Zone, q: dns.message.Message, **kw: int) -> dns.message.Message:
    decision = zone.decide(q, **kw)
    assert isinstance(decision, Answer), decision
    return decision.message


def forward(zone: Zone, q: dns.message.Message) -> Forward:
    decision = zone.decide(q)
    assert isinstance(decision, Forward), decision
    return decision


def texts(section: list[dns.rrset.RRset]) -> list[str]:
    return sorted(r.to_text() for r in section)


def aa(msg: dns.message.Message) -> bool:
    return bool(msg.flags & dns.flags.AA)


# -- authoritative data -----------------------------------------------------------------


def test_soa_at_apex_is_authoritative(root: Zone) -> None:
    msg = answer(root, query(ROOT, "SOA"))
    assert msg.rcode() == dns.rcode.NOERROR and aa(msg)
    soa = msg.answer[0][0]
    assert soa.mname == dns.name.from_text(f"ns.{ROOT}")
    assert soa.rname == dns.name.from_text(f"hostmaster.{ROOT}")
    assert 5 <= msg.answer[0].ttl <= 60 and soa.minimum <= 60


def test_ns_at_apex_with_address_of_ns_in_additional(root: Zone) -> None:
    msg = answer(root, query(ROOT, "NS"))
    assert texts(msg.answer) == [f"{ROOT}. 30 IN NS ns.{ROOT}."]
    assert texts(msg.additional) == [f"ns.{ROOT}. 30 IN A 127.0.0.9"]


def test_a_of_ns_is_the_servers_own_address(root: Zone) -> None:
    msg = answer(root, query(f"ns.{ROOT}"))
    assert texts(msg.answer) == [f"ns.{ROOT}. 30 IN A 127.0.0.9"]


def test_a_of_mcast_is_the_urs(root: Zone) -> None:
    msg = answer(root, query(f"mcast.{ROOT}"))
    assert aa(msg) and texts(msg.answer) == [f"mcast.{ROOT}. 30 IN A 127.0.0.1"]


def test_mcast_is_aaaa_when_the_urs_is_ipv6(configs: dict[str, DomainConfig]) -> None:
    zone = Zone(dataclasses.replace(configs[ROOT], urs_ip="::1"))
    assert texts(answer(zone, query(f"mcast.{ROOT}", "AAAA")).answer) == [
        f"mcast.{ROOT}. 30 IN AAAA ::1"
    ]
    nodata = answer(zone, query(f"mcast.{ROOT}", "A"))
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer


def test_srv_points_at_mcast_with_urs_port_and_glue(root: Zone) -> None:
    msg = answer(root, query(f"_mdns-urs._tcp.{ROOT}", "SRV"))
    assert aa(msg)
    assert texts(msg.answer) == [f"_mdns-urs._tcp.{ROOT}. 30 IN SRV 0 0 2003 mcast.{ROOT}."]
    assert texts(msg.additional) == [f"mcast.{ROOT}. 30 IN A 127.0.0.1"]


def test_answer_owner_keeps_the_case_of_the_question(root: Zone) -> None:
    msg = answer(root, query("MCast.Level0.TestDomain.info"))
    assert msg.answer[0].name.to_text() == "MCast.Level0.TestDomain.info."


def test_missing_name_is_nxdomain_with_soa(root: Zone) -> None:
    msg = answer(root, query(f"nothing.{ROOT}"))
    assert msg.rcode() == dns.rcode.NXDOMAIN and aa(msg) and not msg.answer
    assert msg.authority[0].rdtype == dns.rdatatype.SOA


def test_existing_name_other_type_is_nodata_with_soa(root: Zone) -> None:
    msg = answer(root, query(f"mcast.{ROOT}", "TXT"))
    assert msg.rcode() == dns.rcode.NOERROR and aa(msg) and not msg.answer
    assert [r.rdtype for r in msg.authority] == [dns.rdatatype.SOA]


def test_empty_non_terminal_is_nodata_not_nxdomain(root: Zone) -> None:
    msg = answer(root, query(f"_tcp.{ROOT}", "SRV"))
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer


def test_any_returns_every_rrset_at_the_name(root: Zone) -> None:
    msg = answer(root, query(ROOT, "ANY"))
    assert sorted(r.rdtype for r in msg.answer) == [dns.rdatatype.NS, dns.rdatatype.SOA]


def test_edns_is_echoed_and_absent_when_not_asked(root: Zone) -> None:
    assert answer(root, query(f"mcast.{ROOT}", edns=0)).edns == 0
    assert answer(root, query(f"mcast.{ROOT}")).edns == -1


def test_ra_follows_rd(root: Zone) -> None:
    assert answer(root, query(f"mcast.{ROOT}")).flags & dns.flags.RA
    assert not answer(root, query(f"mcast.{ROOT}", rd=False)).flags & dns.flags.RA


# -- delegation -------------------------------------------------------------------------


def test_rd0_below_a_child_is_a_referral_with_glue(root: Zone) -> None:
    msg = answer(root, query(f"mcast.dom00.{ROOT}", rd=False))
    assert msg.rcode() == dns.rcode.NOERROR and not aa(msg) and not msg.answer
    assert texts(msg.authority) == [f"dom00.{ROOT}. 30 IN NS ns.dom00.{ROOT}."]
    assert texts(msg.additional) == [f"ns.dom00.{ROOT}. 30 IN A 127.0.0.1"]


def test_referral_covers_grandchildren(root: Zone) -> None:
    msg = answer(root, query(f"mcast.dom000.dom00.{ROOT}", rd=False))
    assert msg.authority[0].name == dns.name.from_text(f"dom00.{ROOT}")


def test_ds_at_a_cut_is_answered_by_the_parent(root: Zone) -> None:
    msg = answer(root, query(f"dom00.{ROOT}", "DS"))
    assert aa(msg) and msg.rcode() == dns.rcode.NOERROR and not msg.answer


def test_rd1_below_a_child_forwards_down(root: Zone) -> None:
    fwd = forward(root, query(f"MCAST.dom000.Dom00.{ROOT}", "SRV"))
    assert (fwd.ip, fwd.port, fwd.route, fwd.zone) == ("127.0.0.1", 2006, Route.CHILD,
                                                       f"dom00.{ROOT}")
    assert fwd.query.flags & dns.flags.RD and fwd.query.edns == 0
    assert fwd.query.payload == UDP_PAYLOAD
    assert fwd.query.question[0].rdtype == dns.rdatatype.SRV


def test_rd1_outside_the_zone_forwards_up(mid: Zone) -> None:
    fwd = forward(mid, query(f"mcast.dom00.{ROOT}"))
    assert (fwd.ip, fwd.port, fwd.route, fwd.zone) == ("127.0.0.1", 2000, Route.PARENT, ROOT)


def test_rd0_outside_the_zone_is_refused(mid: Zone) -> None:
    msg = answer(mid, query(f"mcast.{ROOT}", rd=False))
    assert msg.rcode() == dns.rcode.REFUSED and not aa(msg)


def test_root_refuses_names_outside_the_hierarchy(root: Zone) -> None:
    assert answer(root, query("example.com")).rcode() == dns.rcode.REFUSED
    assert answer(root, query("testdomain.info", "SOA")).rcode() == dns.rcode.REFUSED


def test_forward_limit_answers_servfail(root: Zone) -> None:
    q = query(f"mcast.dom00.{ROOT}")
    assert isinstance(root.decide(q, forwards_in_flight=root.max_forwards - 1), Forward)
    msg = answer(root, q, forwards_in_flight=root.max_forwards)
    assert msg.rcode() == dns.rcode.SERVFAIL


def test_delegating_an_own_name_is_rejected(configs: dict[str, DomainConfig]) -> None:
    bad = dataclasses.replace(configs[ROOT], delegations=(Delegation("mcast", "127.0.0.1", 9),))
    with pytest.raises(VdnsError, match="mcast"):
        Zone(bad)


# -- relaying ---------------------------------------------------------------------------


def test_relay_copies_sections_and_rcode_but_not_aa(root: Zone) -> None:
    client = query(f"nothing.dom00.{ROOT}", edns=0)
    upstream = dns.message.make_response(forward(root, client).query)
    upstream.flags |= dns.flags.AA
    upstream.set_rcode(dns.rcode.NXDOMAIN)
    upstream.authority.append(
        dns.rrset.from_text(f"dom00.{ROOT}.", 5, "IN", "SOA", "ns. h. 1 60 30 600 5")
    )
    msg = root.relay(client, upstream)
    assert msg.id == client.id and msg.rcode() == dns.rcode.NXDOMAIN
    assert msg.flags & dns.flags.RA and not aa(msg)
    assert msg.authority == upstream.authority and msg.edns == 0


def test_relay_of_extended_rcode_to_a_client_without_edns_is_servfail(root: Zone) -> None:
    client = query(f"mcast.dom00.{ROOT}")
    upstream = dns.message.make_response(forward(root, client).query)
    upstream.set_rcode(dns.rcode.BADVERS)
    assert root.relay(client, upstream).rcode() == dns.rcode.SERVFAIL


# -- what is not a plain IN query -------------------------------------------------------


def test_response_is_dropped(root: Zone) -> None:
    assert isinstance(root.decide(dns.message.make_response(query(ROOT))), Drop)


def test_no_question_is_formerr(root: Zone) -> None:
    q = query(ROOT)
    q.question = []
    assert answer(root, q).rcode() == dns.rcode.FORMERR


def test_two_questions_are_formerr(root: Zone) -> None:
    q = query(ROOT)
    q.question.append(
        dns.rrset.RRset(dns.name.from_text(f"ns.{ROOT}"), dns.rdataclass.IN, dns.rdatatype.A)
    )
    assert answer(root, q).rcode() == dns.rcode.FORMERR


@pytest.mark.parametrize("rdtype", ["OPT", "TSIG", "TKEY"])
def test_meta_type_question_is_formerr(root: Zone, rdtype: str) -> None:
    assert answer(root, query(ROOT, rdtype)).rcode() == dns.rcode.FORMERR


@pytest.mark.parametrize("rdtype", ["AXFR", "IXFR"])
def test_zone_transfer_is_notimp(root: Zone, rdtype: str) -> None:
    assert answer(root, query(ROOT, rdtype)).rcode() == dns.rcode.NOTIMP


def test_class_chaos_is_notimp(root: Zone) -> None:
    q = dns.message.make_query("version.bind", "TXT", dns.rdataclass.CH)
    assert answer(root, q).rcode() == dns.rcode.NOTIMP


def test_opcode_notify_is_notimp(root: Zone) -> None:
    q = query(ROOT, "SOA")
    q.set_opcode(dns.opcode.NOTIFY)
    assert answer(root, q).rcode() == dns.rcode.NOTIMP


def test_edns_version_1_is_badvers(root: Zone) -> None:
    msg = answer(root, query(ROOT, edns=1))
    assert msg.rcode() == dns.rcode.BADVERS and msg.edns == 0


# -- the wire ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [b"", b"\x00\x01\x02", b"garbage bytes that are no DNS", b"\x12\x34\x01\x00\x00\x01"
     b"\x00\x00\x00\x00\x00\x00\x07example"],
    ids=["empty", "short-header", "garbage", "cut-question"],
)
def test_parse_query_names_malformed_input(wire: bytes) -> None:
    with pytest.raises(MalformedQueryError, match="not a DNS message"):
        parse_query(wire)


def test_parse_query_rejects_oversized_input() -> None:
    with pytest.raises(MalformedQueryError, match="more than"):
        parse_query(bytes(MAX_QUERY_BYTES + 1))


def test_udp_limit_is_512_without_edns_and_capped_with() -> None:
    assert udp_size_limit(query(ROOT)) == CLASSIC_UDP_LIMIT
    assert udp_size_limit(dns.message.make_query(ROOT, "A", payload=4096)) == UDP_PAYLOAD
    assert udp_size_limit(dns.message.make_query(ROOT, "A", payload=100)) == CLASSIC_UDP_LIMIT


def test_encode_truncates_and_sets_tc(root: Zone) -> None:
    q = query(f"mcast.{ROOT}")
    msg = answer(root, q)
    msg.answer = [
        dns.rrset.from_text(f"mcast.{ROOT}.", 30, "IN", "A", *(f"10.0.{i // 250}.{i % 250}"
                                                               for i in range(100)))
    ]
    wire = encode_response(msg, limit=udp_size_limit(q))
    assert len(wire) <= CLASSIC_UDP_LIMIT
    assert dns.message.from_wire(wire).flags & dns.flags.TC
