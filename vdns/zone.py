"""The pure core of a vdns server: one domain's zone and the answer-or-forward decision."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rdtypes.IN.SRV
import dns.rrset

from vdns.errors import VdnsError
from vdns.mds import Delegation, DomainConfig
from vdns.replicas import ReplicaSet

# A query is one question and perhaps an OPT record; anything larger is not one of ours.
MAX_QUERY_BYTES = 4096
# The EDNS payload we advertise and honour: the DNS Flag Day 2020 size, below common MTUs.
UDP_PAYLOAD = 1232
# Without EDNS a UDP message may not exceed 512 bytes (RFC 1035 4.2.1).
CLASSIC_UDP_LIMIT = 512
# The largest message a TCP length prefix can frame.
TCP_LIMIT = 65535
DEFAULT_MAX_FORWARDS = 256

SRV_NAME = "_mdns-urs._tcp"
# With URS replicas, the answers that name them change with health and load: short TTLs.
REPLICA_TTL = 5

IN = dns.rdataclass.IN
# Meta types that cannot be a question at all (RFC 6891 6.1.1, RFC 8945 5.2).
_FORMERR_QTYPES = frozenset({dns.rdatatype.OPT, dns.rdatatype.TSIG, dns.rdatatype.TKEY})


class MalformedQueryError(VdnsError):
    """A datagram or TCP message is not a DNS message; the server drops it and counts it."""


class Route(enum.Enum):
    """Which way a forwarded query travels through the hierarchy."""

    CHILD = "child"
    PARENT = "parent"


@dataclasses.dataclass(frozen=True)
class Answer:
    """Send this complete response to the client."""

    message: dns.message.Message


@dataclasses.dataclass(frozen=True)
class Forward:
    """Ask `ip:port` (the DNS server of `zone`) with `query`, then relay its answer."""

    ip: str
    port: int
    route: Route
    zone: str
    query: dns.message.Message


@dataclasses.dataclass(frozen=True)
class Drop:
    """Send nothing: answering would be wrong (e.g. the message is itself a response)."""

    reason: str


Decision = Answer | Forward | Drop


def parse_query(wire: bytes) -> dns.message.Message:
    """Decode one DNS message within MAX_QUERY_BYTES; raise MalformedQueryError otherwise."""
    if len(wire) > MAX_QUERY_BYTES:
        raise MalformedQueryError(f"{len(wire)} bytes, more than a query's {MAX_QUERY_BYTES}")
    try:
        return dns.message.from_wire(wire)
    except dns.exception.DNSException as exc:
        raise MalformedQueryError(f"not a DNS message ({type(exc).__name__}: {exc})") from exc


def udp_size_limit(query: dns.message.Message) -> int:
    """How large a UDP response to `query` may be: 512, or its EDNS payload up to ours."""
    if query.edns < 0:
        return CLASSIC_UDP_LIMIT
    # RFC 6891 6.2.5: payloads below 512 are treated as 512.
    return max(CLASSIC_UDP_LIMIT, min(query.payload, UDP_PAYLOAD))


def encode_response(response: dns.message.Message, *, limit: int) -> bytes:
    """Wire form within `limit` bytes; dnspython drops what does not fit and sets TC.

    Records keep the zone's order (no shuffle): the replicas' addresses come least loaded
    first."""
    return response.to_wire(max_size=limit, prefer_truncation=True, want_shuffle=False)


class Zone:
    """What the DNS server of one domain knows, and what it does with a query."""

    def __init__(
        self,
        config: DomainConfig,
        *,
        ns_address: str = "127.0.0.1",
        ttl: int = 30,
        negative_ttl: int = 5,
        max_forwards: int = DEFAULT_MAX_FORWARDS,
        replicas: ReplicaSet | None = None,
        replica_ttl: int = REPLICA_TTL,
    ) -> None:
        self.config = config
        self.replicas = replicas
        self._replica_ttl = replica_ttl
        self.origin = dns.name.from_text(config.domain)
        self.max_forwards = max_forwards
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._delegations: dict[bytes, Delegation] = {
            d.label.encode().lower(): d for d in config.delegations
        }
        ns = self._name("ns")
        mcast = self._name("mcast")
        for own in (b"ns", b"mcast"):
            if own in self._delegations:
                raise VdnsError(
                    f"{config.domain} delegates {own.decode()!r}, which would hide the zone's "
                    f"own name {own.decode()}.{config.domain}; rename that child domain"
                )
        # The serial never changes: a .mds file is the whole zone and is read once.
        self._soa = self._rdataset(
            dns.rdatatype.SOA,
            f"{ns} hostmaster.{self.origin} 1 60 30 600 {negative_ttl}",
            ttl=negative_ttl,
        )
        self._nodes: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rdataset.Rdataset]]
        self._nodes = {
            self.origin: {
                dns.rdatatype.SOA: self._soa,
                dns.rdatatype.NS: self._rdataset(dns.rdatatype.NS, str(ns)),
            },
            ns: _address_node(ns_address, ttl=ttl),
            mcast: _address_node(config.urs_ip, ttl=ttl),
            self._name(SRV_NAME): {
                dns.rdatatype.SRV: self._rdataset(
                    dns.rdatatype.SRV, f"0 0 {config.urs_port} {mcast}"
                )
            },
        }
        self._mcast = mcast
        self._srv = self._name(SRV_NAME)
        if replicas is not None:
            # rN.mcast.<domain>: each replica's own name, the target of its SRV record.
            self._replica_names = [dns.name.from_text(f"r{n}", origin=mcast)
                                   for n in range(1, len(replicas.replicas) + 1)]
            for name, replica in zip(self._replica_names, replicas.replicas, strict=True):
                self._nodes[name] = _address_node(replica.address, ttl=replica_ttl)
        # Empty non-terminals (here `_tcp.<domain>`) exist and answer NODATA, not NXDOMAIN.
        self._existing: set[dns.name.Name] = set()
        for name in self._nodes:
            while name != self.origin:
                self._existing.add(name)
                name = name.parent()
        self._existing.add(self.origin)
        # A cut exists in this zone (its NS lives here), so a DS query there is NODATA.
        self._existing.update(self._name(d.label) for d in config.delegations)

    def __repr__(self) -> str:
        return f"Zone({self.config.domain!r}, delegations={len(self._delegations)})"

    def decide(self, query: dns.message.Message, *, forwards_in_flight: int = 0) -> Decision:
        """Answer `query` from the zone, refer it, forward it, refuse it, or drop it."""
        if query.flags & dns.flags.QR:
            # Answering a response invites two servers to bounce a packet forever.
            return Drop("the message is a response, not a query")
        if query.opcode() != dns.opcode.QUERY:
            return Answer(self._error(query, dns.rcode.NOTIMP))
        if len(query.question) != 1:
            return Answer(self._error(query, dns.rcode.FORMERR))
        if query.edns > 0:
            return Answer(self._error(query, dns.rcode.BADVERS))
        question = query.question[0]
        qtype = question.rdtype
        if qtype in _FORMERR_QTYPES:
            return Answer(self._error(query, dns.rcode.FORMERR))
        if question.rdclass != IN or (
            dns.rdatatype.is_metatype(qtype) and qtype != dns.rdatatype.ANY
        ):
            # Other classes and zone transfers are valid DNS that this server does not do.
            return Answer(self._error(query, dns.rcode.NOTIMP))
        qname = question.name
        recursive = bool(query.flags & dns.flags.RD)
        if not qname.is_subdomain(self.origin):
            if recursive and not self.config.is_root:
                return self._forward(
                    query,
                    ip=self.config.parent_dns,
                    port=self.config.parent_dns_port,
                    route=Route.PARENT,
                    zone=self.config.parent_domain or "",
                    forwards_in_flight=forwards_in_flight,
                )
            return Answer(self._error(query, dns.rcode.REFUSED))
        delegation = self._delegation_for(qname)
        if delegation is None:
            return Answer(self._authoritative(query, qname, qtype))
        child = self._name(delegation.label)
        if qname == child and qtype == dns.rdatatype.DS:
            # DS lives on the parent side of a zone cut (RFC 4035 3.1.4.1); we hold none.
            return Answer(self._authoritative(query, qname, qtype))
        if not recursive:
            return Answer(self._referral(query, delegation))
        return self._forward(
            query,
            ip=delegation.ip,
            port=delegation.port,
            route=Route.CHILD,
            zone=str(child).rstrip("."),
            forwards_in_flight=forwards_in_flight,
        )

    def relay(
        self, query: dns.message.Message, upstream: dns.message.Message
    ) -> dns.message.Message:
        """The client's response built from the answer of the server we forwarded to."""
        rcode = upstream.rcode()
        if rcode > 15 and query.edns < 0:
            # An extended rcode cannot be said to a client that spoke no EDNS.
            return self.servfail(query)
        response = self._response(query)
        response.set_rcode(rcode)
        response.answer = list(upstream.answer)
        response.authority = list(upstream.authority)
        response.additional = list(upstream.additional)
        # AA stays clear: this server relays, the data is not its own.
        return response

    def servfail(self, query: dns.message.Message) -> dns.message.Message:
        """SERVFAIL for `query`: the upstream failed, the forward limit is hit, or a bug."""
        return self._error(query, dns.rcode.SERVFAIL)

    # -- building blocks ----------------------------------------------------------------

    def _name(self, relative: str) -> dns.name.Name:
        return dns.name.from_text(relative, origin=self.origin)

    def _rdataset(
        self, rdtype: dns.rdatatype.RdataType, text: str, *, ttl: int | None = None
    ) -> dns.rdataset.Rdataset:
        rdata = dns.rdata.from_text(IN, rdtype, text, origin=self.origin, relativize=False)
        return dns.rdataset.from_rdata_list(self._ttl if ttl is None else ttl, [rdata])

    def _delegation_for(self, qname: dns.name.Name) -> Delegation | None:
        relative = qname.relativize(self.origin)
        if not relative.labels:
            return None
        return self._delegations.get(relative.labels[-1].lower())

    def _response(self, query: dns.message.Message) -> dns.message.Message:
        # Every server recurses within its hierarchy, so RA answers RD; with RD=0 (a real
        # iterative resolver) it stays clear and the server looks purely authoritative.
        return dns.message.make_response(
            query,
            recursion_available=bool(query.flags & dns.flags.RD),
            our_payload=UDP_PAYLOAD,
        )

    def _error(self, query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
        response = self._response(query)
        response.set_rcode(rcode)
        return response

    def _forward(
        self,
        query: dns.message.Message,
        *,
        ip: str,
        port: int,
        route: Route,
        zone: str,
        forwards_in_flight: int,
    ) -> Decision:
        if forwards_in_flight >= self.max_forwards:
            return Answer(self.servfail(query))
        question = query.question[0]
        upstream = dns.message.make_query(
            question.name, question.rdtype, IN, use_edns=0, payload=UDP_PAYLOAD
        )
        return Forward(ip=ip, port=port, route=route, zone=zone, query=upstream)

    def _authoritative(
        self, query: dns.message.Message, qname: dns.name.Name, qtype: dns.rdatatype.RdataType
    ) -> dns.message.Message:
        response = self._response(query)
        response.flags |= dns.flags.AA
        if qname not in self._existing:
            response.set_rcode(dns.rcode.NXDOMAIN)
            self._add(response.authority, self.origin, self._soa)
            return response
        node = self._node(qname)
        if qtype == dns.rdatatype.ANY:
            found = list(node.values())
        else:
            found = [node[qtype]] if qtype in node else []
        if not found:
            self._add(response.authority, self.origin, self._soa)
            return response
        for rdataset in found:
            # The owner is written as asked, so a resolver's 0x20 case pattern survives.
            self._add(response.answer, qname, rdataset)
            for rdata in rdataset:
                target = _target_of(rdata)
                if target is not None:
                    for glue in self._nodes.get(target, {}).values():
                        self._add(response.additional, target, glue)
        return response

    def _node(self, qname: dns.name.Name) -> dict[dns.rdatatype.RdataType, dns.rdataset.Rdataset]:
        """The RRsets at a name; with replicas, `mcast` and the SRV name follow their ranking."""
        if self.replicas is None or qname not in (self._mcast, self._srv):
            return self._nodes.get(qname, {})
        ranked = self.replicas.ranked()
        if qname == self._mcast:
            return _addresses_node([r.address for _, r in ranked], ttl=self._replica_ttl)
        # The priority is the rank: a client tries the least loaded replica first.
        records = [f"{rank} 0 {replica.port} {self._replica_names[index]}"
                   for rank, (index, replica) in enumerate(ranked)]
        rdatas = [dns.rdata.from_text(IN, dns.rdatatype.SRV, text, origin=self.origin,
                                      relativize=False) for text in records]
        return {dns.rdatatype.SRV: dns.rdataset.from_rdata_list(self._replica_ttl, rdatas)}

    def _referral(self, query: dns.message.Message, delegation: Delegation) -> dns.message.Message:
        response = self._response(query)
        child = self._name(delegation.label)
        ns = dns.name.from_text("ns", origin=child)
        self._add(
            response.authority,
            child,
            dns.rdataset.from_text(IN, dns.rdatatype.NS, self._ttl, str(ns)),
        )
        for glue in _address_node(delegation.ip, ttl=self._ttl).values():
            self._add(response.additional, ns, glue)
        return response

    @staticmethod
    def _add(
        section: list[dns.rrset.RRset], name: dns.name.Name, rdataset: dns.rdataset.Rdataset
    ) -> None:
        section.append(dns.rrset.from_rdata_list(name, rdataset.ttl, list(rdataset)))


def _address_node(
    address: str, *, ttl: int
) -> dict[dns.rdatatype.RdataType, dns.rdataset.Rdataset]:
    try:
        version = ipaddress.ip_address(address).version
    except ValueError:
        raise VdnsError(f"{address!r} is not an IP address (needed for an A/AAAA record)") from None
    rdtype = dns.rdatatype.AAAA if version == 6 else dns.rdatatype.A
    return {rdtype: dns.rdataset.from_text(IN, rdtype, ttl, address)}


def _addresses_node(
    addresses: list[str], *, ttl: int
) -> dict[dns.rdatatype.RdataType, dns.rdataset.Rdataset]:
    """A and AAAA RRsets for several addresses, in the order given, each address once."""
    by_type: dict[dns.rdatatype.RdataType, list[dns.rdata.Rdata]] = {}
    for address in dict.fromkeys(addresses):
        rdtype = (dns.rdatatype.AAAA if ipaddress.ip_address(address).version == 6
                  else dns.rdatatype.A)
        by_type.setdefault(rdtype, []).append(dns.rdata.from_text(IN, rdtype, address))
    return {rdtype: dns.rdataset.from_rdata_list(ttl, rdatas)
            for rdtype, rdatas in by_type.items()}


def _target_of(rdata: dns.rdata.Rdata) -> dns.name.Name | None:
    """The host name an NS or SRV record points at, whose address goes in additional."""
    if isinstance(rdata, dns.rdtypes.ANY.NS.NS | dns.rdtypes.IN.SRV.SRV):
        return rdata.target
    return None
