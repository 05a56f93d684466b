"""A pure RFC 2974 SAP codec: announcement and deletion packets to and from bytes.

```
 V=1 (3 bits) | A | R | T | E | C |  auth len (u8, 32-bit words)  |  msg id hash (u16)
 originating source (4 bytes IPv4, A=0; 16 bytes IPv6, A=1)
 authentication data (auth len * 4 bytes)
 [payload type, e.g. "application/sdp", NUL]   payload (SDP)   <- zlib-compressed if C=1
```
The payload type is absent when the payload itself starts with "v=0". Encrypted
packets (E=1) cannot be read without keys the directory does not have: refused.
Decoding is bounded (datagram size, inflated size) and every problem is a SapError.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import struct
import zlib

from msd.errors import MsdError

# --- the format and its limits (docs/sap.md) ------------------------------------------------

VERSION = 1
PORT = 9875  # the well-known SAP port
MAX_PACKET_BYTES = 8192  # RFC 2974 advises announcements of at most 1 KB
MAX_PAYLOAD_BYTES = 16 * 1024  # after inflating: a zlib bomb stops here
MAX_PAYLOAD_TYPE_BYTES = 128
SDP = "application/sdp"
_HEADER = struct.Struct("!BBH")
_FLAG_IPV6, _FLAG_RESERVED, _FLAG_DELETE, _FLAG_ENCRYPTED, _FLAG_COMPRESSED = (
    0x10, 0x08, 0x04, 0x02, 0x01)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class SapError(MsdError):
    """A SAP packet breaks RFC 2974 or this reader's limits."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.__doc__)


class Truncated(SapError):
    """The SAP packet ends before its header, source or authentication data do."""


class BadVersion(SapError):
    """The SAP version is not 1."""


class Encrypted(SapError):
    """The SAP packet is encrypted (E=1); its payload cannot be read."""


class TooLarge(SapError):
    """The SAP packet or its inflated payload is larger than the limits allow."""


class BadCompression(SapError):
    """The compressed (C=1) payload is not a valid zlib stream."""


class BadPayloadType(SapError):
    """The payload type is missing, unterminated, or not application/sdp."""


class MessageType(enum.IntEnum):
    """The T bit: announce a session, or delete it."""

    ANNOUNCE = 0
    DELETE = 1


@dataclasses.dataclass(frozen=True)
class SapPacket:
    """One SAP message; `payload` is the (inflated) SDP text as bytes."""

    message_type: MessageType
    origin: Address
    msg_id_hash: int
    payload: bytes
    payload_type: str = SDP
    auth: bytes = b""
    compressed: bool = False

    def __repr__(self) -> str:
        return (f"<SapPacket {self.message_type.name} from {self.origin} "
                f"hash={self.msg_id_hash:#06x} {len(self.payload)} bytes>")

    @property
    def cache_key(self) -> tuple[str, int]:
        """(originating source, msg id hash): identifies one version of one announcement."""
        return (str(self.origin), self.msg_id_hash)


def decode(data: bytes) -> SapPacket:
    """Read one SAP datagram; raise a SapError subclass naming what is wrong."""
    if len(data) > MAX_PACKET_BYTES:
        raise TooLarge(f"packet of {len(data)} bytes; the limit is {MAX_PACKET_BYTES}")
    if len(data) < _HEADER.size + 4:
        raise Truncated()
    flags, auth_words, msg_id_hash = _HEADER.unpack_from(data)
    version = flags >> 5
    if version != VERSION:
        raise BadVersion(f"SAP version {version}; only version 1 is read")
    if flags & _FLAG_ENCRYPTED:
        raise Encrypted()
    # R (reserved) is ignored on receipt, as RFC 2974 asks.
    address_bytes = 16 if flags & _FLAG_IPV6 else 4
    offset = _HEADER.size + address_bytes
    auth_end = offset + 4 * auth_words
    if len(data) < auth_end:
        raise Truncated()
    origin = ipaddress.ip_address(data[_HEADER.size:offset])
    auth = data[offset:auth_end]
    body = data[auth_end:]
    compressed = bool(flags & _FLAG_COMPRESSED)
    if compressed:
        body = _inflate(body)
    payload_type, payload = _split_payload(body)
    message_type = MessageType.DELETE if flags & _FLAG_DELETE else MessageType.ANNOUNCE
    return SapPacket(message_type=message_type, origin=origin, msg_id_hash=msg_id_hash,
                     payload=payload, payload_type=payload_type, auth=auth,
                     compressed=compressed)


def encode(packet: SapPacket) -> bytes:
    """The datagram of a packet; the payload is compressed if `packet.compressed`."""
    if len(packet.auth) % 4 or len(packet.auth) > 255 * 4:
        raise SapError("authentication data must be whole 32-bit words, at most 255 of them")
    if not 0 <= packet.msg_id_hash <= 0xFFFF:
        raise SapError("msg id hash must fit 16 bits")
    flags = VERSION << 5
    if packet.origin.version == 6:
        flags |= _FLAG_IPV6
    if packet.message_type is MessageType.DELETE:
        flags |= _FLAG_DELETE
    body = packet.payload_type.encode("ascii") + b"\0" + packet.payload
    if packet.compressed:
        flags |= _FLAG_COMPRESSED
        body = zlib.compress(body)
    data = (_HEADER.pack(flags, len(packet.auth) // 4, packet.msg_id_hash)
            + packet.origin.packed + packet.auth + body)
    if len(data) > MAX_PACKET_BYTES:
        raise TooLarge(f"packet of {len(data)} bytes; the limit is {MAX_PACKET_BYTES}")
    return data


def announcement(payload: bytes, *, origin: Address, delete: bool = False,
                 compressed: bool = False) -> SapPacket:
    """An unauthenticated SAP packet for an SDP payload, with a hash of its content."""
    return SapPacket(
        message_type=MessageType.DELETE if delete else MessageType.ANNOUNCE,
        origin=origin, msg_id_hash=msg_id_hash(payload), payload=payload,
        compressed=compressed)


def msg_id_hash(payload: bytes) -> int:
    """A 16-bit hash of the payload, never 0: a changed description gets a new hash.

    RFC 2974 leaves the function open; 0 is avoided because some receivers treat a zero
    hash as "do not cache"."""
    return (zlib.crc32(payload) & 0xFFFF) or 1


def _inflate(body: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(body, MAX_PAYLOAD_BYTES + 1)
    except zlib.error as exc:
        raise BadCompression(f"the compressed payload is not zlib: {exc}") from None
    if len(out) > MAX_PAYLOAD_BYTES or inflater.unconsumed_tail:
        raise TooLarge(f"the payload inflates past {MAX_PAYLOAD_BYTES} bytes")
    if not inflater.eof:
        raise BadCompression("the compressed payload is cut short")
    if inflater.unused_data:
        raise BadCompression("bytes follow the end of the compressed payload")
    return out


def _split_payload(body: bytes) -> tuple[str, bytes]:
    if len(body) > MAX_PAYLOAD_BYTES:
        raise TooLarge(f"payload of {len(body)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    if body.startswith(b"v=0"):
        return SDP, body  # no payload type: the SDP starts at once
    end = body.find(b"\0", 0, MAX_PAYLOAD_TYPE_BYTES + 1)
    if end < 0:
        raise BadPayloadType("no payload type (NUL-terminated) and the payload is not SDP")
    try:
        payload_type = body[:end].decode("ascii").strip().lower()
    except UnicodeDecodeError:
        raise BadPayloadType("the payload type is not ASCII") from None
    if payload_type != SDP:
        raise BadPayloadType(f"payload type {payload_type[:40]!r}; only {SDP} is read")
    return payload_type, body[end + 1:]
