"""The SAP listener's pure core: SDP to a session, and the table of heard announcements.

`SapTable.heard(packet, now=...)` decides what one SAP packet means: register a new
session, update a changed one, refresh one whose record is getting old, expire one
that its announcer deleted, or nothing (a repeat, or a packet it refuses, counted by
reason). It takes the monotonic clock as an argument and never does I/O; the shell in
client.sap_bridge carries the decisions out. Policy in docs/sap.md.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import ipaddress
import re
from typing import Any

from pydantic import ValidationError

from client.errors import ClientError
from msd.sap import MessageType, SapPacket
from msd.schema import (
    DESCRIPTION_MAX,
    KEYWORD_MAX,
    KEYWORDS_MAX,
    TITLE_MAX,
    TTL_MAX,
    TTL_MIN,
    Session,
    field_errors,
)
from urs.sdp_parse import Media, Origin, SdpError, SessionDescription, parse, parse_origin

ID_PREFIX = "sap-"
# Ids the listener makes: the announcer recognises them and does not echo them back.
INGESTED_ID = re.compile(r"sap-[a-z2-7]{16}")
# An announcement that carries this attribute came from an mDNS announcer: not ingested.
MDNS_URI_ATTRIBUTE = "x-mdns-uri"
SAP_KEYWORD = "sap"
TIMEOUT_FLOOR_S = 3600.0  # RFC 2974: gone after 10 intervals or one hour, the greater
TIMEOUT_INTERVALS = 10
INTERVAL_GUESS_S = 300.0  # before a second announcement: RFC 2974's minimum interval
MIN_GAP_S = 0.1  # closer repeats (one announcement heard on two groups) do not time anything
RETRY_AFTER_S = 30.0  # a failed registration is tried again on an announcement after this
_STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "into", "is", "it",
    "its", "of", "on", "or", "the", "this", "to", "with"})
_WORD = re.compile(r"[^\W_](?:[\w+&'.-]*[^\W_])?")
_STATIC_MIME = {"0": "audio/PCMU", "3": "audio/GSM", "8": "audio/PCMA", "9": "audio/G722",
                "10": "audio/L16", "11": "audio/L16", "14": "audio/MPA", "26": "video/JPEG",
                "31": "video/H261", "32": "video/MPV", "33": "video/MP2T", "34": "video/H263"}
_MEDIA_TYPES = frozenset({"audio", "video", "text", "application", "message"})


class IngestError(ClientError):
    """A SAP announcement that cannot become a directory session (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Every bound of the listener, with its unit."""

    max_sessions: int = 10_000  # sessions tracked at once; more are refused and counted
    new_per_s: float = 5.0  # new sessions accepted per second, on average
    new_burst: int = 50  # ... and at once


# --- SDP to session ------------------------------------------------------------------------

def session_id(origin: Origin) -> str:
    """A stable id from the o= fields that name the session (not its version)."""
    digest = hashlib.sha256("\0".join(origin.key).encode()).digest()
    return ID_PREFIX + base64.b32encode(digest[:10]).decode().lower()


def keywords_of(description: SessionDescription) -> list[str]:
    """a=keywds, a=cat, then the words of s= and i=; at most KEYWORDS_MAX with "sap" last."""
    words: list[str] = []
    sources = [*description.keywords,
               *(part for cat in description.categories for part in cat.split(".")),
               description.name, description.info]
    for text in sources:
        for match in _WORD.finditer(text):
            word = match.group().casefold()
            if len(word) < 2 or len(word) > KEYWORD_MAX or word in _STOPWORDS or word in words:
                continue
            words.append(word)
    return [*words[: KEYWORDS_MAX - 1], SAP_KEYWORD]


def session_from_sdp(
    description: SessionDescription, *, scope: str = "auto", ttl: int
) -> dict[str, Any]:
    """The session (as schema JSON) that a SAP announcement describes; IngestError if none.

    The first medium with a multicast address is the one listed: a session has one group
    and port. `scope` "auto" keeps administratively scoped groups (IPv4 239/8 and 224.0.0/24,
    IPv6 below global scope) to the home domain, and lists the rest globally."""
    media, group = _multicast_medium(description)
    stream_type, mime = _transport(media)
    session: dict[str, Any] = {
        "id": session_id(description.origin),
        "title": _one_line(description.name)[:TITLE_MAX].strip()
        or f"SAP session {description.origin.sess_id}"[:TITLE_MAX],
        "description": description.info[:DESCRIPTION_MAX],
        "keywords": keywords_of(description),
        "group": group, "port": media.port, "stream_type": stream_type, "mime": mime,
        "scope": _scope(group) if scope == "auto" else scope,
        "ttl": max(TTL_MIN, min(TTL_MAX, ttl)),
    }
    source = _ssm_source(description, media, group)
    if source is not None:
        session |= {"network": "ssm", "source": source}
    try:
        Session.model_validate(session)
    except ValidationError as exc:
        problems = "; ".join(f"{e.field}: {e.message}" for e in field_errors(exc))
        raise IngestError(f"not a valid session: {problems}") from None
    return session


def _multicast_medium(description: SessionDescription) -> tuple[Media, str]:
    for media in description.media:
        connection = description.connection_of(media)
        if connection is not None and connection.is_multicast and media.port > 0:
            return media, connection.address
    raise IngestError("no medium is sent to a multicast group")


def _transport(media: Media) -> tuple[str, str]:
    kind = media.kind.lower() if media.kind.lower() in _MEDIA_TYPES else "application"
    fmt = media.formats[0]
    proto = media.proto.upper()
    if proto.startswith("RTP/"):
        encoding = media.rtpmap(fmt)
        if encoding is not None:
            return "rtp", _mime(kind, encoding.partition("/")[0])
        return "rtp", _STATIC_MIME.get(fmt, "application/octet-stream")
    if proto == "UDP":
        if fmt in ("33", "MP2T", "mp2t"):
            return "udp", "video/MP2T"
        return "udp", _mime(kind, fmt)
    raise IngestError(f"transport {media.proto[:20]!r} is neither RTP nor raw UDP")


def _mime(kind: str, subtype: str) -> str:
    candidate = f"{kind}/{subtype}"
    try:
        Session.model_validate({"id": "x", "title": "x", "keywords": ["x"],
                                "group": "239.0.0.1", "port": 1, "mime": candidate})
    except ValidationError:
        return "application/octet-stream"
    return candidate


def _ssm_source(description: SessionDescription, media: Media, group: str) -> str | None:
    for source_filter in description.source_filters(media):
        if source_filter.mode != "incl" or source_filter.destination not in (group, "*"):
            continue
        for source in source_filter.sources:
            try:
                address = ipaddress.ip_address(source)
            except ValueError:
                continue
            if address.version == ipaddress.ip_address(group).version:
                return str(address)
    return None


def _scope(group: str) -> str:
    address = ipaddress.ip_address(group)
    if address.version == 4:
        local = address in ipaddress.ip_network("239.0.0.0/8") or address in \
            ipaddress.ip_network("224.0.0.0/24")
    else:
        local = (address.packed[1] & 0x0F) < 0x0E
    return "local" if local else "global"


def _one_line(text: str) -> str:
    return text.replace("\t", " ")


# --- the table of heard announcements ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Register:
    """Register or update this session with the home domain (reason: new, changed, refresh)."""

    key: tuple[str, ...]
    session: dict[str, Any]
    reason: str


@dataclasses.dataclass(frozen=True)
class Expire:
    """The announcer deleted the session: let its record expire now."""

    key: tuple[str, ...]
    session: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Ignore:
    """Nothing to do; `reason` is counted (repeat, bad-sdp, rate-limited ...)."""

    reason: str
    detail: str = ""


Action = Register | Expire | Ignore


@dataclasses.dataclass
class _Entry:
    session: dict[str, Any]
    sap_origin: str
    authenticated: bool
    version: int
    digest: bytes
    last_heard: float
    interval: float = INTERVAL_GUESS_S
    measured: bool = False
    expires_at: float | None = None  # of the record as last registered (monotonic clock)
    failed_at: float | None = None
    pending: bool = False

    @property
    def timeout(self) -> float:
        return max(TIMEOUT_FLOOR_S, TIMEOUT_INTERVALS * self.interval)


class SapTable:
    """Heard SAP sessions by o= identity: de-duplication, timing, refresh and deletes."""

    def __init__(self, *, limits: Limits = Limits(), scope: str = "auto") -> None:
        if scope not in ("auto", "global", "local"):
            raise ClientError("scope must be auto, global or local")
        self.limits = limits
        self.scope = scope
        self.counters: collections.Counter[str] = collections.Counter()
        self._entries: dict[tuple[str, ...], _Entry] = {}
        self._tokens = float(limits.new_burst)
        self._tokens_at: float | None = None

    def __repr__(self) -> str:
        return f"<SapTable sessions={len(self._entries)} {dict(self.counters)}>"

    def __len__(self) -> int:
        return len(self._entries)

    def heard(self, packet: SapPacket, *, now: float) -> Action:
        """What one decoded SAP packet asks for."""
        if packet.message_type is MessageType.DELETE:
            return self._count(self._delete(packet))
        return self._count(self._announce(packet, now=now))

    def registered(self, key: tuple[str, ...], *, now: float) -> None:
        """The shell registered (or refreshed) the session."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.pending, entry.failed_at = False, None
            entry.expires_at = now + float(entry.session["ttl"])

    def failed(self, key: tuple[str, ...], *, now: float) -> None:
        """The shell could not register it: a later announcement tries again."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.pending, entry.failed_at = False, now

    def forget_silent(self, *, now: float) -> list[str]:
        """Drop sessions not heard for their timeout; their ids (records expire by ttl)."""
        gone = [key for key, e in self._entries.items() if now - e.last_heard > e.timeout]
        ids = [str(self._entries.pop(key).session["id"]) for key in gone]
        self.counters["timed-out"] += len(ids)
        return ids

    def _announce(self, packet: SapPacket, *, now: float) -> Action:
        try:
            description = parse(packet.payload)
        except SdpError as exc:
            return Ignore("bad-sdp", str(exc))
        if description.attribute(MDNS_URI_ATTRIBUTE):
            return Ignore("mdns-announcement")  # already in a directory: not echoed back
        key = description.origin.key
        digest = hashlib.sha256(packet.payload).digest()
        entry = self._entries.get(key)
        if entry is None:
            return self._new(key, description, packet, digest=digest, now=now)
        if description.origin.sess_version < entry.version:
            return Ignore("stale-version")
        gap = now - entry.last_heard
        if gap >= MIN_GAP_S:
            # The first gap replaces the guess; later ones are averaged in.
            entry.interval = (entry.interval + gap) / 2 if entry.measured else gap
            entry.measured = True
        entry.last_heard = now
        if digest != entry.digest:
            try:
                session = session_from_sdp(description, scope=self.scope,
                                           ttl=self._ttl(entry))
            except IngestError as exc:
                return Ignore("unusable", str(exc))
            entry.digest, entry.version = digest, description.origin.sess_version
            entry.sap_origin, entry.authenticated = str(packet.origin), bool(packet.auth)
            if session != entry.session:
                entry.session, entry.pending = session, True
                return Register(key, session, "changed")
        return self._maybe_refresh(key, entry, now=now)

    def _new(self, key: tuple[str, ...], description: SessionDescription, packet: SapPacket,
             *, digest: bytes, now: float) -> Action:
        if len(self._entries) >= self.limits.max_sessions:
            return Ignore("table-full")
        try:
            session = session_from_sdp(description, scope=self.scope,
                                       ttl=_ttl_for(INTERVAL_GUESS_S))
        except IngestError as exc:
            return Ignore("unusable", str(exc))
        if not self._take_token(now):
            return Ignore("rate-limited")
        self._entries[key] = _Entry(
            session=session, sap_origin=str(packet.origin), authenticated=bool(packet.auth),
            version=description.origin.sess_version, digest=digest, last_heard=now,
            pending=True)
        return Register(key, session, "new")

    def _maybe_refresh(self, key: tuple[str, ...], entry: _Entry, *, now: float) -> Action:
        if entry.pending:
            return Ignore("repeat")
        if entry.expires_at is None:
            if entry.failed_at is not None and now - entry.failed_at < RETRY_AFTER_S:
                return Ignore("repeat")
        elif entry.expires_at >= now + entry.timeout:
            return Ignore("repeat")  # the record outlives the RFC 2974 timeout from now
        # The ttl follows the interval seen so far: a slow announcer's sessions live longer.
        entry.session = entry.session | {"ttl": self._ttl(entry)}
        entry.pending = True
        return Register(key, entry.session, "refresh")

    def _delete(self, packet: SapPacket) -> Action:
        origin = _origin_line(packet.payload)
        if origin is None:
            return Ignore("bad-delete")
        entry = self._entries.get(origin.key)
        if entry is None:
            return Ignore("delete-unknown")
        if entry.authenticated or packet.auth:
            # We cannot check SAP authentication: a delete could come from anyone.
            return Ignore("delete-unverifiable")
        if str(packet.origin) != entry.sap_origin:
            return Ignore("delete-wrong-source")
        del self._entries[origin.key]
        return Expire(origin.key, entry.session | {"ttl": TTL_MIN})

    def _ttl(self, entry: _Entry) -> int:
        return _ttl_for(entry.interval)

    def _take_token(self, now: float) -> bool:
        if self._tokens_at is not None:
            refill = (now - self._tokens_at) * self.limits.new_per_s
            self._tokens = min(float(self.limits.new_burst), self._tokens + refill)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _count(self, action: Action) -> Action:
        if isinstance(action, Register):
            self.counters[action.reason] += 1
        elif isinstance(action, Expire):
            self.counters["deleted"] += 1
        else:
            self.counters[action.reason] += 1
        return action


def _ttl_for(interval: float) -> int:
    """Record ttl: the RFC 2974 timeout plus a quarter, the refresh period (docs/sap.md)."""
    timeout = max(TIMEOUT_FLOOR_S, TIMEOUT_INTERVALS * interval)
    return int(max(TTL_MIN, min(TTL_MAX, timeout * 1.25)))


def _origin_line(payload: bytes) -> Origin | None:
    """The o= of a deletion: a whole SDP, or (as RFC 2974 allows) the o= line alone."""
    try:
        text = payload[:4096].decode("utf-8", "replace")
    except ValueError:
        return None
    for line in text.splitlines():
        if line.startswith("o="):
            try:
                return parse_origin(line[2:])
            except SdpError:
                return None
    return None
