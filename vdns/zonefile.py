"""Zone files for real DNS servers (nsd, knot, BIND) from `.mds` files: what `vdns` serves.

`mdns zone export DIR` writes one RFC 1035 master file per domain, `<domain>.zone`, with
the records a vdns server answers (docs/vdns.md): SOA and NS at the apex, `ns.<domain>`,
`mcast.<domain>` (A/AAAA of the URS) and `_mdns-urs._tcp.<domain>` SRV (its port), and
for each `@` line a delegation (NS plus glue). It also writes `nsd-zones.conf`, the
`zone:` clauses that load them into nsd. dnspython writes every record.

A zone file cannot say which port a child's DNS server listens on; a hierarchy on one
host therefore needs a resolver told where each zone is (unbound: one stub-zone per
domain, all pointing at the one nsd that loads every zone), while a deployment with
every DNS server on port 53 follows the delegations as they are (docs/deploy.md).

With URS replicas given, each gets `rN.mcast.<domain>` and an SRV record of equal
priority (a static file cannot rank by load; vdns does, docs/vdns.md).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path

import dns.name
import dns.rdata
import dns.rdataclass
import dns.zone

from vdns.errors import VdnsError
from vdns.mds import DomainConfig
from vdns.replicas import Replica
from vdns.zone import SRV_NAME

DEFAULT_TTL = 30
NEGATIVE_TTL = 5
NSD_CONF = "nsd-zones.conf"
IN = dns.rdataclass.IN


def zone_text(
    config: DomainConfig, *, ns_address: str, ttl: int = DEFAULT_TTL, serial: int = 1,
    replicas: Sequence[Replica] = (),
) -> str:
    """The master file of one domain; `ns_address` is where its own DNS server listens."""
    origin = dns.name.from_text(config.domain)
    zone = dns.zone.Zone(origin, relativize=True)

    def add(name: str, rdtype: str, text: str, *, record_ttl: int = ttl) -> None:
        rdata = dns.rdata.from_text(IN, rdtype, text, origin=origin, relativize=True)
        zone.find_rdataset(name, rdata.rdtype, create=True).add(rdata, record_ttl)

    add("@", "SOA", f"ns hostmaster {serial} 60 30 600 {NEGATIVE_TTL}",
        record_ttl=NEGATIVE_TTL)
    add("@", "NS", "ns")
    add("ns", _address_type(ns_address), ns_address)
    if not replicas:
        add("mcast", _address_type(config.urs_ip), config.urs_ip)
        add(SRV_NAME, "SRV", f"0 0 {config.urs_port} mcast")
    for number, replica in enumerate(replicas, start=1):
        add("mcast", _address_type(replica.address), replica.address)
        add(f"r{number}.mcast", _address_type(replica.address), replica.address)
        add(SRV_NAME, "SRV", f"0 1 {replica.port} r{number}.mcast")
    for delegation in config.delegations:
        add(delegation.label, "NS", f"ns.{delegation.label}")
        add(f"ns.{delegation.label}", _address_type(delegation.ip), delegation.ip)
    text: str = zone.to_text(sorted=True, relativize=True, want_origin=True)
    return text


def export_zones(
    configs: Sequence[DomainConfig], directory: Path, *, root_ns_address: str = "127.0.0.1",
    replicas: Mapping[str, Sequence[Replica]] | None = None, ttl: int = DEFAULT_TTL,
) -> list[Path]:
    """Write `<domain>.zone` for every domain and `nsd-zones.conf`; the files written.

    A domain's own name server address is the IP its parent's `@` line gives; the root's
    is `root_ns_address`."""
    replicas = replicas or {}
    unknown = set(replicas) - {c.domain for c in configs}
    if unknown:
        raise VdnsError(f"URS replicas given for domains not in the hierarchy: "
                        f"{', '.join(sorted(unknown))}")
    ns_of = {config.child_domain(d): d.ip for config in configs for d in config.delegations}
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    clauses: list[str] = []
    for config in sorted(configs, key=lambda c: (c.domain.count("."), c.domain)):
        path = directory / f"{config.domain}.zone"
        path.write_text(zone_text(config, ns_address=ns_of.get(config.domain, root_ns_address),
                                  ttl=ttl, replicas=replicas.get(config.domain, ())))
        written.append(path)
        clauses.append(f'zone:\n  name: "{config.domain}."\n  zonefile: "{path.name}"\n')
    conf = directory / NSD_CONF
    conf.write_text("# nsd.conf zone clauses written by `mdns zone export`; set zonesdir to "
                    "this folder.\n" + "".join(clauses))
    written.append(conf)
    return written


def _address_type(address: str) -> str:
    try:
        return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
    except ValueError:
        raise VdnsError(f"{address!r} is not an IP address (needed for an A/AAAA record)") \
            from None

