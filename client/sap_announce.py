"""The SAP announcer's pure core: which SAP group, what packet, and when (RFC 2974 timing).

RFC 2974 3.1: the base interval between announcements in a SAP group is
max(300 s, 8 * total announcement bytes / 4000 bit/s), and each announcement is sent
after that interval times a random factor in [2/3, 4/3]. `interval_s` replaces the
base interval for lab use. No sockets and no clock here: `now` is passed in.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
from collections.abc import Iterable

from client.sap_ingest import MDNS_URI_ATTRIBUTE
from msd.sap import Address, MessageType, announcement, encode
from msd.schema import Scope, SessionRecord
from urs.sdp import TTL_GLOBAL, TTL_LOCAL, session_sdp

SAP_GLOBAL_V4 = "224.2.127.254"
SAP_LOCAL_V4 = "239.255.255.255"  # the top of the IPv4 local scope 239.255.0.0/16
SAP_ORG_V4 = "239.195.255.255"  # the top of the organisation-local scope 239.192.0.0/14
SAP_LINK_V4 = "224.0.0.255"
IPV6_SAP_SCOPES = (0x2, 0x5, 0x8, 0xE)  # link, site, organisation, global: ff0X::2:7ffe
DEFAULT_LISTEN_GROUPS = (SAP_GLOBAL_V4, SAP_LOCAL_V4, SAP_ORG_V4,
                         *(f"ff0{scope:x}::2:7ffe" for scope in IPV6_SAP_SCOPES))
INTERVAL_FLOOR_S = 300.0
BANDWIDTH_BPS = 4000.0
JITTER = (2 / 3, 4 / 3)


def sap_group_for(group: str) -> str:
    """The SAP group announcing a session on `group`: the one of the same scope (RFC 2974 3)."""
    address = ipaddress.ip_address(group)
    if address.version == 6:
        return f"ff0{address.packed[1] & 0x0F:x}::2:7ffe"
    if address in ipaddress.ip_network("224.0.0.0/24"):
        return SAP_LINK_V4
    if address in ipaddress.ip_network("239.192.0.0/14"):
        return SAP_ORG_V4
    if address in ipaddress.ip_network("239.0.0.0/8"):
        return SAP_LOCAL_V4  # other administrative scopes: the local one is the safe guess
    return SAP_GLOBAL_V4


@dataclasses.dataclass(frozen=True)
class Ad:
    """One session's announcement: where it goes, its datagram, the hop limit to send with."""

    uri: str
    sap_group: str
    datagram: bytes
    hops: int
    delete_datagram: bytes

    def __repr__(self) -> str:
        return f"<Ad {self.uri} → {self.sap_group} {len(self.datagram)} bytes>"

    @property
    def key(self) -> tuple[str, str]:
        """One session announced in one SAP group."""
        return (self.uri, self.sap_group)


def build_ad(
    record: SessionRecord, *, origin: Address, sap_group: str | None = None,
    hops: int | None = None,
) -> Ad:
    """The announcement of a registered session: its SDP (RFC 8866) in a SAP packet."""
    sdp = session_sdp(record, extra_attributes=((MDNS_URI_ATTRIBUTE, record.uri),))
    payload = sdp.encode("utf-8")
    origin_line = next(line for line in sdp.split("\r\n") if line.startswith("o="))
    # A deletion carries the o= line of what it deletes (RFC 2974 3), with the same hash.
    packet = announcement(payload, origin=origin)
    deletion = dataclasses.replace(packet, message_type=MessageType.DELETE,
                                   payload=(origin_line + "\r\n").encode())
    if hops is None:
        hops = TTL_GLOBAL if record.scope is Scope.GLOBAL else TTL_LOCAL
    return Ad(uri=record.uri, sap_group=sap_group or sap_group_for(record.group),
              datagram=encode(packet), hops=hops, delete_datagram=encode(deletion))


def base_interval(total_bytes: int, *, interval_s: float | None = None) -> float:
    """RFC 2974's base interval for a SAP group carrying `total_bytes` of announcements."""
    if interval_s is not None:
        return interval_s
    return max(INTERVAL_FLOOR_S, 8 * total_bytes / BANDWIDTH_BPS)


class AnnounceSchedule:
    """The announcements in force and when each is next due."""

    def __init__(self, *, interval_s: float | None = None,
                 rng: random.Random | None = None) -> None:
        self.interval_s = interval_s
        self._rng = rng or random.Random()
        self.ads: dict[tuple[str, str], Ad] = {}
        self._due: dict[tuple[str, str], float] = {}

    def __repr__(self) -> str:
        return f"<AnnounceSchedule ads={len(self.ads)} interval={self.interval_s}>"

    def update(self, ads: Iterable[Ad], *, now: float) -> list[Ad]:
        """Make `ads` the set in force; new or changed ones are due now. Returns the ads that
        went away (their sessions expired or were removed), whose deletions should be sent."""
        fresh = {ad.key: ad for ad in ads}
        gone = [ad for key, ad in self.ads.items() if key not in fresh]
        for ad in gone:
            del self.ads[ad.key]
            self._due.pop(ad.key, None)
        for key, ad in fresh.items():
            if self.ads.get(key) != ad:
                self._due[key] = now
            self.ads[key] = ad
        return gone

    def interval(self, sap_group: str) -> float:
        """The base interval of one SAP group, from the bytes announced in it."""
        total = sum(len(ad.datagram) for ad in self.ads.values() if ad.sap_group == sap_group)
        return base_interval(total, interval_s=self.interval_s)

    def due(self, *, now: float) -> list[Ad]:
        """The announcements to send now, each rescheduled with RFC 2974's jitter."""
        ready = [self.ads[key] for key, at in self._due.items() if at <= now]
        for ad in ready:
            self._due[ad.key] = now + self.interval(ad.sap_group) * self._rng.uniform(*JITTER)
        return ready

    def next_at(self) -> float | None:
        """When the next announcement is due (None: nothing to announce)."""
        return min(self._due.values(), default=None)
