"""A pure, bounded RFC 8866 SDP reader: the subset a session directory needs, never a crash.

It reads v o s i u c t m and the attributes a=keywds, a=cat, a=tool, a=source-filter
(RFC 4570), a=rtpmap and the rest as (name, value) pairs. Anything malformed that it
needs raises one of the SdpError classes, whose docstrings are the messages; lines of
types it does not use are kept only as far as the limits allow and otherwise ignored.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re

from urs.errors import UrsError

# --- limits (docs/sap.md) -------------------------------------------------------------------

MAX_BYTES = 16 * 1024  # a SAP payload is at most 1 KB by RFC 2974's advice; 16x that is plenty
MAX_LINES = 512
MAX_LINE_CHARS = 4096
MAX_MEDIA = 32
MAX_ATTRIBUTES = 256  # session and media level together
MAX_FORMATS = 64  # per m= line
MAX_SOURCES = 64  # per a=source-filter

_LINE = re.compile(r"([a-z])=(.*)", re.DOTALL)
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 8866's token
_DIGITS = re.compile(r"[0-9]{1,20}")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is allowed


class SdpError(UrsError):
    """The session description is not valid SDP."""

    def __init__(self, detail: str = "") -> None:
        # As in dnspython, the class docstring is the message when there is nothing to add.
        super().__init__(detail or self.__doc__)


class SdpTooLarge(SdpError):
    """The session description is larger than the reader's limits (bytes, lines or items)."""


class SdpSyntaxError(SdpError):
    """A line of the session description is malformed."""


class SdpMissingField(SdpError):
    """A field SDP requires (v=, o=, s=) is missing."""


@dataclasses.dataclass(frozen=True)
class Origin:
    """The o= line: (username, sess_id, nettype, addrtype, address) names a session globally."""

    username: str
    sess_id: str
    sess_version: int
    nettype: str
    addrtype: str
    address: str

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """What identifies the session across versions (RFC 8866 5.2): all but the version."""
        return (self.username, self.sess_id, self.nettype, self.addrtype, self.address)

    def line(self) -> str:
        return (f"o={self.username} {self.sess_id} {self.sess_version} {self.nettype} "
                f"{self.addrtype} {self.address}")


@dataclasses.dataclass(frozen=True)
class Connection:
    """A c= line: the address a session or a medium is sent to, with TTL and count."""

    addrtype: str  # IP4 or IP6
    address: str
    ttl: int | None = None
    count: int = 1

    @property
    def is_multicast(self) -> bool:
        try:
            return ipaddress.ip_address(self.address).is_multicast
        except ValueError:
            return False


@dataclasses.dataclass(frozen=True)
class SourceFilter:
    """a=source-filter (RFC 4570): which sources of a destination to include or exclude."""

    mode: str  # incl or excl
    addrtype: str  # IP4, IP6 or *
    destination: str  # an address or *
    sources: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Media:
    """One m= section: media, port, transport, formats and its own c= and a= lines."""

    kind: str
    port: int
    port_count: int
    proto: str
    formats: tuple[str, ...]
    connection: Connection | None = None
    info: str = ""
    attributes: tuple[tuple[str, str], ...] = ()

    def rtpmap(self, payload: str) -> str | None:
        """The encoding of a payload type from a=rtpmap ("MP2T/90000"), if given."""
        for name, value in self.attributes:
            if name == "rtpmap":
                number, _, encoding = value.partition(" ")
                if number == payload and encoding:
                    return encoding.strip()
        return None


@dataclasses.dataclass(frozen=True)
class SessionDescription:
    """What the reader takes from one SDP document."""

    origin: Origin
    name: str
    info: str = ""
    uri: str = ""
    connection: Connection | None = None
    times: tuple[tuple[int, int], ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    media: tuple[Media, ...] = ()

    def attribute(self, name: str) -> list[str]:
        """The values of a session-level attribute, in order."""
        return [value for key, value in self.attributes if key == name]

    @property
    def keywords(self) -> list[str]:
        """a=keywds, split into words."""
        return [word for value in self.attribute("keywds") for word in value.split()]

    @property
    def categories(self) -> list[str]:
        """a=cat values (dot-separated hierarchies such as "Music.Jazz")."""
        return [value.strip() for value in self.attribute("cat") if value.strip()]

    def source_filters(self, media: Media | None = None) -> list[SourceFilter]:
        """The source filters that apply to a medium (its own, else the session's)."""
        lines = [v for k, v in media.attributes if k == "source-filter"] if media else []
        if not lines:
            lines = self.attribute("source-filter")
        return [_source_filter(line) for line in lines]

    def connection_of(self, media: Media) -> Connection | None:
        """The c= that applies to a medium: its own, else the session's."""
        return media.connection or self.connection


def parse(data: bytes | str) -> SessionDescription:
    """Read one SDP document; raise an SdpError subclass naming the first problem."""
    text = _text(data)
    lines = [line.rstrip("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) > MAX_LINES:
        raise SdpTooLarge(f"more than {MAX_LINES} lines")
    if not lines or lines[0].strip() != "v=0":
        raise SdpMissingField("the first line must be v=0")
    builder = _Builder()
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # stray blank lines are common in hand-written SDP: harmless
        if len(line) > MAX_LINE_CHARS:
            raise SdpTooLarge(f"line {number} is longer than {MAX_LINE_CHARS} characters")
        if _CONTROL.search(line):
            raise SdpSyntaxError(f"line {number} holds a control character (NUL, bare CR ...)")
        match = _LINE.fullmatch(line)
        if match is None:
            raise SdpSyntaxError(f"line {number} is not <type>=<value>: {line[:40]!r}")
        try:
            builder.add(match.group(1), match.group(2))
        except SdpError as exc:
            raise type(exc)(f"line {number}: {exc}") from None
    return builder.build()


def parse_origin(value: str) -> Origin:
    """The value of an o= line (without "o=")."""
    parts = value.split()
    if len(parts) != 6:
        raise SdpSyntaxError("o= needs 6 fields: username sess-id sess-version nettype "
                             "addrtype address")
    username, sess_id, version, nettype, addrtype, address = parts
    if not _DIGITS.fullmatch(sess_id) or not _DIGITS.fullmatch(version):
        raise SdpSyntaxError("o= sess-id and sess-version must be decimal numbers")
    for field in (username, nettype, addrtype, address):
        if len(field) > 255:
            raise SdpSyntaxError("o= field longer than 255 characters")
    return Origin(username=username, sess_id=sess_id, sess_version=int(version),
                  nettype=nettype, addrtype=addrtype, address=address)


@dataclasses.dataclass
class _Builder:
    origin: Origin | None = None
    name: str | None = None
    info: str = ""
    uri: str = ""
    connection: Connection | None = None
    times: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    attributes: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    media: list[Media] = dataclasses.field(default_factory=list)
    attribute_count: int = 0

    def add(self, kind: str, value: str) -> None:
        current = self.media[-1] if self.media else None
        if kind == "m":
            if len(self.media) >= MAX_MEDIA:
                raise SdpTooLarge(f"more than {MAX_MEDIA} m= sections")
            self.media.append(_media(value))
        elif kind == "a":
            self.attribute_count += 1
            if self.attribute_count > MAX_ATTRIBUTES:
                raise SdpTooLarge(f"more than {MAX_ATTRIBUTES} a= lines")
            name, _, attribute_value = value.partition(":")
            if not _TOKEN.fullmatch(name):
                raise SdpSyntaxError(f"a= attribute name {name[:40]!r} is not a token")
            pair = (name, attribute_value.strip())
            if name == "source-filter":
                _source_filter(pair[1])  # checked now, so that using it later cannot fail
            if current is None:
                self.attributes.append(pair)
            else:
                self.media[-1] = dataclasses.replace(
                    current, attributes=(*current.attributes, pair))
        elif kind == "c":
            connection = _connection(value)
            if current is None:
                self.connection = connection
            else:
                self.media[-1] = dataclasses.replace(current, connection=connection)
        elif kind == "i":
            if current is None:
                self.info = value.strip()
            else:
                self.media[-1] = dataclasses.replace(current, info=value.strip())
        elif current is not None:
            return  # b=, k= ... of a medium: not needed
        elif kind == "o":
            self.origin = parse_origin(value)
        elif kind == "s":
            self.name = value.strip()
        elif kind == "u":
            self.uri = value.strip()
        elif kind == "t":
            self.times.append(_time(value))
        # e= p= b= z= k= r=: allowed, not needed

    def build(self) -> SessionDescription:
        if self.origin is None:
            raise SdpMissingField("o= is missing")
        if self.name is None:
            raise SdpMissingField("s= is missing")
        return SessionDescription(
            origin=self.origin, name=self.name, info=self.info, uri=self.uri,
            connection=self.connection, times=tuple(self.times),
            attributes=tuple(self.attributes), media=tuple(self.media))


def _text(data: bytes | str) -> str:
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise SdpTooLarge(f"larger than {MAX_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            # RFC 8866 allows a=charset; old tools sent ISO-8859-1, which decodes any byte.
            text = data.decode("latin-1")
    else:
        text = data
        if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
            raise SdpTooLarge(f"larger than {MAX_BYTES} bytes")
    return text


def _int(text: str, *, what: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(text):
        raise SdpSyntaxError(f"{what} must be a decimal number, got {text[:20]!r}")
    value = int(text)
    if not low <= value <= high:
        raise SdpSyntaxError(f"{what} must be {low}..{high}, got {value}")
    return value


def _connection(value: str) -> Connection:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN":
        raise SdpSyntaxError("c= must be 'IN IP4|IP6 <address>[/ttl][/count]'")
    _, addrtype, spec = parts
    if addrtype not in ("IP4", "IP6"):
        raise SdpSyntaxError(f"c= address type must be IP4 or IP6, got {addrtype[:10]!r}")
    address, *rest = spec.split("/")
    if len(rest) > 2:
        raise SdpSyntaxError("c= address has more than two '/' parts")
    ttl, count = None, 1
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        parsed = None  # a unicast FQDN is allowed; only a literal can be multicast
    if parsed is not None and parsed.version != (4 if addrtype == "IP4" else 6):
        raise SdpSyntaxError(f"c= says {addrtype} but {address} is IPv{parsed.version}")
    if addrtype == "IP4" and parsed is not None and parsed.is_multicast:
        if not rest:
            raise SdpSyntaxError("c= IPv4 multicast address needs a TTL (address/ttl)")
        ttl = _int(rest[0], what="c= TTL", low=0, high=255)
        if len(rest) == 2:
            count = _int(rest[1], what="c= address count", low=1, high=256)
    elif len(rest) == 2:
        raise SdpSyntaxError("c= takes a TTL only for IPv4 multicast")
    elif rest:
        count = _int(rest[0], what="c= address count", low=1, high=256)
    if parsed is not None:
        address = str(parsed)
    return Connection(addrtype=addrtype, address=address, ttl=ttl, count=count)


def _media(value: str) -> Media:
    parts = value.split()
    if len(parts) < 4:
        raise SdpSyntaxError("m= needs <media> <port> <proto> <fmt> ...")
    kind, port_spec, proto, *formats = parts
    if not _TOKEN.fullmatch(kind) or not all(_TOKEN.fullmatch(p) for p in proto.split("/")):
        raise SdpSyntaxError("m= media and proto must be tokens")
    if len(formats) > MAX_FORMATS:
        raise SdpTooLarge(f"m= lists more than {MAX_FORMATS} formats")
    port_text, _, count_text = port_spec.partition("/")
    port = _int(port_text, what="m= port", low=0, high=65535)
    count = _int(count_text, what="m= port count", low=1, high=256) if count_text else 1
    return Media(kind=kind, port=port, port_count=count, proto=proto, formats=tuple(formats))


def _time(value: str) -> tuple[int, int]:
    parts = value.split()
    if len(parts) != 2:
        raise SdpSyntaxError("t= needs <start> <stop>")
    start, stop = (_int(p, what="t= time", low=0, high=2**64 - 1) for p in parts)
    return start, stop


def _source_filter(value: str) -> SourceFilter:
    parts = value.split()
    if len(parts) < 5:
        raise SdpSyntaxError("a=source-filter needs <mode> IN <addrtype> <dest> <source>...")
    mode, nettype, addrtype, destination, *sources = parts
    if mode not in ("incl", "excl") or nettype != "IN" or addrtype not in ("IP4", "IP6", "*"):
        raise SdpSyntaxError("a=source-filter must be 'incl|excl IN IP4|IP6|* <dest> <src>...'")
    if len(sources) > MAX_SOURCES:
        raise SdpTooLarge(f"a=source-filter lists more than {MAX_SOURCES} sources")
    return SourceFilter(mode=mode, addrtype=addrtype, destination=destination,
                        sources=tuple(sources))
