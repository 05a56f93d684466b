"""The RFC 2974 SAP codec: hand-built packets bit by bit, compression, and hostile input by name."""

from __future__ import annotations

import contextlib
import ipaddress
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msd.errors import MsdError
from msd.sap import (
    MAX_PACKET_BYTES,
    MAX_PAYLOAD_BYTES,
    BadCompression,
    BadPayloadType,
    BadVersion,
    Encrypted,
    MessageType,
    SapError,
    SapPacket,
    TooLarge,
    Truncated,
    announcement,
    decode,
    encode,
    msg_id_hash,
)

SDP = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=Test\r\nc=IN IP4 239.255.1.1/1\r\nt=0 0\r\n" \
      b"m=video 5004 RTP/AVP 33\r\n"
V4 = ipaddress.ip_address("192.0.2.1")
V6 = ipaddress.ip_address("2001:db8::1")


def hand_built(*, flags: int = 0x20, auth: bytes = b"", origin: bytes = V4.packed,
               body: bytes = b"application/sdp\0" + SDP, msg_hash: int = 0x1234) -> bytes:
    """A SAP packet built from RFC 2974's figure, not from the codec."""
    return struct.pack("!BBH", flags, len(auth) // 4, msg_hash) + origin + auth + body


def test_a_hand_built_announcement() -> None:
    packet = decode(hand_built())
    assert packet.message_type is MessageType.ANNOUNCE
    assert packet.origin == V4 and packet.msg_id_hash == 0x1234
    assert packet.payload == SDP and packet.payload_type == "application/sdp"
    assert packet.auth == b"" and not packet.compressed


def test_payload_type_may_be_absent_and_reserved_bit_is_ignored() -> None:
    assert decode(hand_built(flags=0x28, body=SDP)).payload == SDP


def test_ipv6_origin_delete_auth_and_compression() -> None:
    body = zlib.compress(b"application/sdp\0" + SDP)
    packet = decode(hand_built(flags=0x20 | 0x10 | 0x04 | 0x01, origin=V6.packed,
                               auth=b"\x01\x02\x03\x04" * 2, body=body))
    assert packet.message_type is MessageType.DELETE
    assert packet.origin == V6 and packet.auth == b"\x01\x02\x03\x04" * 2
    assert packet.compressed and packet.payload == SDP


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("origin", [V4, V6])
def test_round_trip(compressed: bool, origin: ipaddress.IPv4Address | ipaddress.IPv6Address,
                    ) -> None:
    packet = announcement(SDP, origin=origin, compressed=compressed)
    data = encode(packet)
    assert data[0] >> 5 == 1 and bool(data[0] & 0x10) == (origin.version == 6)
    assert decode(data) == packet


def test_msg_id_hash_follows_the_content_and_is_never_zero() -> None:
    assert msg_id_hash(SDP) == msg_id_hash(SDP) != msg_id_hash(SDP + b"a=x\r\n")
    assert all(msg_id_hash(bytes([i])) != 0 for i in range(256))


@pytest.mark.parametrize(("data", "error"), [
    (b"", Truncated),
    (b"\x20\x00\x12", Truncated),
    (hand_built(origin=b"\x01\x02", body=b""), Truncated),
    (hand_built(flags=0x30, body=b"v=0"), Truncated),  # says IPv6, carries a 4-byte source
    (hand_built(auth=b"\0" * 8)[:14], Truncated),
    (hand_built(flags=0x00), BadVersion),
    (hand_built(flags=0x40), BadVersion),
    (hand_built(flags=0x22), Encrypted),
    (hand_built(flags=0x21), BadCompression),  # says compressed, is not
    (hand_built(flags=0x21, body=zlib.compress(SDP)[:-6]), BadCompression),
    (hand_built(flags=0x21, body=zlib.compress(SDP) + b"x"), BadCompression),
    (hand_built(body=b"text/plain\0hello"), BadPayloadType),
    (hand_built(body=b"no type and no sdp"), BadPayloadType),
    (hand_built(body=b"\xff\xfe\0v=0"), BadPayloadType),
    (hand_built(body=b"x" * MAX_PACKET_BYTES), TooLarge),
    (hand_built(flags=0x21, body=zlib.compress(b"v=0" + b" " * MAX_PAYLOAD_BYTES)), TooLarge),
])
def test_hostile_packets_are_named(data: bytes, error: type[SapError]) -> None:
    with pytest.raises(error):
        decode(data)


def test_a_zlib_bomb_stops_at_the_limit() -> None:
    bomb = zlib.compress(b"application/sdp\0v=0" + b"\0" * 7_000_000, 9)
    assert len(bomb) < MAX_PACKET_BYTES
    with pytest.raises(TooLarge, match="inflates"):
        decode(hand_built(flags=0x21, body=bomb))


def test_encode_refuses_what_the_format_cannot_carry() -> None:
    packet = announcement(SDP, origin=V4)
    with pytest.raises(SapError, match="32-bit"):
        encode(SapPacket(**{**packet.__dict__, "auth": b"abc"}))
    with pytest.raises(TooLarge):
        encode(announcement(b"v=0" + b"x" * MAX_PACKET_BYTES, origin=V4))
    assert issubclass(SapError, MsdError)
    assert str(Truncated()) == Truncated.__doc__


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_never_crashes(data: bytes) -> None:
    with contextlib.suppress(SapError):
        decode(b"\x20" + data)
