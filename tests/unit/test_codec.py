"""The control-message wire format and the replay guard: round trips, every limit, bad bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
import re
import struct
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from msd.codec import (
    KIND_CODES,
    BadSignature,
    CodecError,
    ForgedSignature,
    MalformedMessage,
    OversizedMessage,
    UnknownKind,
    UnknownSender,
    UnknownVersion,
    decode,
    encode,
    unseal,
)
from msd.errors import MsdError
from msd.messages import (
    MESSAGE_TYPES,
    Announce,
    Assignment,
    Claim,
    CountReport,
    Graft,
    Heartbeat,
    Leave,
    Message,
    Peer,
    Ping,
    Pong,
    Tracer,
)
from msd.replay import Refusal, ReplayGuard

KEY = bytes(range(32))  # the hierarchy's HMAC key
OTHER_KEY = bytes(range(1, 33))
SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))  # every sender's, here
PUBLIC = SIGNER.public_key().public_bytes_raw()
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))
SPACE = 2**128
U64 = 2**64 - 1
NOW = 1_760_000_000_000
# Database off: property tests must leave no .hypothesis directory behind.
FAST = settings(max_examples=150, database=None, deadline=None)

# --- realistic and extreme messages -----------------------------------------------------------

LONG_DOMAIN = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
LONG_HOST = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"  # 45 characters
LONG_ID = "é" * 32  # 64 UTF-8 bytes


def peer(domain: str, host: str = "10.0.0.1", port: int = 9000, key: bytes = PUBLIC) -> Peer:
    return Peer(domain=domain, host=host, port=port, key=key)


def every_sender(message: Message) -> Ed25519PublicKey | None:
    """The tests' key ring: every domain speaks with SIGNER's key."""
    return SIGNER.public_key()


def enc(message: Message, *, key: bytes = KEY) -> bytes:
    return encode(message, key=key, signer=SIGNER)


def dec(datagram: bytes, *, key: bytes = KEY) -> Message:
    return decode(datagram, key=key, verifier=every_sender)


def stamps(sender: str = "cise.ufl.edu", **extra: Any) -> dict[str, Any]:
    return {"sender": sender, "msd_id": "msd-1", "term": 3, "seq": 1234, "sent_at_ms": NOW} | extra


# A depth-3 node (edu > ufl.edu > cise.ufl.edu) with three children.
HEARTBEAT = Heartbeat(
    **stamps(),
    ancestors=(peer("edu", "10.0.1.1"), peer("ufl.edu", "10.0.2.1"),
               peer("cise.ufl.edu", "10.0.3.1")),
    generation=7,
    assignments=tuple(
        Assignment(child=f"lab{i}.cise.ufl.edu", start=SPACE * i // 4, end=SPACE * (i + 1) // 4)
        for i in range(1, 4)
    ),
)
COUNT_REPORT = CountReport(**stamps("lab1.cise.ufl.edu"), parent="cise.ufl.edu", count=12,
                           address=peer("lab1.cise.ufl.edu", "10.0.4.1"))
ANNOUNCE = Announce(**stamps(), priority=100, address=peer("cise.ufl.edu", "10.0.3.1"))

REALISTIC: list[Message] = [
    HEARTBEAT,
    COUNT_REPORT,
    dataclasses.replace(COUNT_REPORT, unicast=True),
    Tracer(**stamps("lab1.cise.ufl.edu"), orphan=peer("lab1.cise.ufl.edu", "2001:db8::4"),
           dead="cise.ufl.edu", hops=("ufl.edu",)),
    Graft(**stamps("ufl.edu"), adopter=peer("ufl.edu", "10.0.2.1"), orphan="lab1.cise.ufl.edu"),
    Leave(**stamps("lab1.cise.ufl.edu"), parent="ufl.edu"),
    Ping(**stamps("lab1.cise.ufl.edu"), target="cise.ufl.edu",
         reply_to=peer("lab1.cise.ufl.edu", "10.0.4.1", 9001)),
    Pong(**stamps(), address=peer("cise.ufl.edu", "10.0.3.1")),
    ANNOUNCE,
    Claim(**stamps(msd_id="msd-2", term=4), priority=90, address=peer("cise.ufl.edu", "10.0.3.2")),
]
EXTREME_STAMPS: dict[str, Any] = {"sender": LONG_DOMAIN, "msd_id": LONG_ID, "term": U64, "seq": U64,
                  "sent_at_ms": U64}
EXTREME: list[Message] = [
    Heartbeat(**EXTREME_STAMPS, ancestors=tuple(peer(LONG_DOMAIN, LONG_HOST, 65535)
                                                for _ in range(64)),
              generation=U64, assignments=(Assignment(child=LONG_DOMAIN, start=0, end=SPACE),)),
    Heartbeat(sender="a", msd_id="m", term=0, ancestors=(), generation=0, assignments=()),
    Heartbeat(sender="a", msd_id="m", term=0, ancestors=(), generation=0, assignments=(
        Assignment(child="x", start=SPACE - 1, end=SPACE), Assignment(child="y", start=0, end=1),
    )),
    # As many assignments as fit: each takes 1 + 4 + 32 bytes with a four-letter child name.
    Heartbeat(sender="a", msd_id="m", term=0, ancestors=(), generation=0, assignments=tuple(
        Assignment(child=f"{i:04x}", start=i, end=i + 1) for i in range(1_750)
    )),
    CountReport(**EXTREME_STAMPS, parent=LONG_DOMAIN, count=10_000_000,
                address=peer(LONG_DOMAIN, "::", 0)),
    CountReport(sender="a", msd_id="m", term=0, parent="b", count=1, address=peer("a")),
    Tracer(**EXTREME_STAMPS, orphan=peer(LONG_DOMAIN, LONG_HOST), dead=LONG_DOMAIN,
           hops=(LONG_DOMAIN,) * 64),
    Tracer(sender="a", msd_id="m", term=0, orphan=peer("a"), dead="b"),
    Announce(**EXTREME_STAMPS, priority=65535, address=peer(LONG_DOMAIN, "fe80::1%eth0")),
    Claim(sender="a", msd_id="m", term=0, priority=0, address=peer("a", "0.0.0.0", 0)),
]


@pytest.mark.parametrize("message", REALISTIC + EXTREME, ids=lambda m: m.kind)
def test_every_message_round_trips(message: Message) -> None:
    datagram = enc(message, key=KEY)
    assert dec(datagram, key=KEY) == message
    assert len(datagram) <= 65_000


def test_the_reference_messages_stay_compact() -> None:
    # Pinned so that a change to the layout shows up as a change in control bytes.
    assert [len(enc(m, key=KEY)) for m in (HEARTBEAT, COUNT_REPORT, ANNOUNCE)] == [447, 214, 188]


def test_kind_codes_are_frozen_and_cover_every_message() -> None:
    assert KIND_CODES == {"heartbeat": 1, "count-report": 2, "tracer": 3, "graft": 4, "leave": 5,
                          "ping": 6, "pong": 7, "announce": 8, "claim": 9}
    assert {cls.kind for cls in MESSAGE_TYPES} == set(KIND_CODES)


def test_errors_share_one_root_and_default_to_their_docstring() -> None:
    for error in (MalformedMessage, OversizedMessage, UnknownVersion, UnknownKind, BadSignature):
        assert issubclass(error, CodecError)
        assert str(error()) == error.__doc__
    assert issubclass(CodecError, MsdError)


def test_a_short_key_is_a_configuration_error_not_bad_input() -> None:
    datagram = enc(ANNOUNCE, key=KEY)
    for call in (lambda: enc(ANNOUNCE, key=b"short"), lambda: dec(datagram, key=b"")):
        with pytest.raises(ValueError, match="at least 16"):
            call()


# --- property tests ---------------------------------------------------------------------------

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
domains = st.lists(_label, min_size=1, max_size=6).map(".".join)
msd_ids = st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=64).filter(
    lambda text: len(text.encode()) <= 64
)
u64s = st.integers(0, U64)
peers = st.builds(Peer, domain=domains, host=st.ip_addresses().map(str),
                  port=st.integers(0, 65535),
                  key=st.one_of(st.just(b""), st.binary(min_size=32, max_size=32)))


@st.composite
def assignments(draw: st.DrawFn) -> Assignment:
    start = draw(st.integers(0, SPACE - 1))
    return Assignment(child=draw(domains), start=start, end=draw(st.integers(start + 1, SPACE)))


def _message(cls: type[Message], **fields: Any) -> st.SearchStrategy[Message]:
    return st.builds(cls, sender=domains, msd_id=msd_ids, term=u64s, seq=u64s, sent_at_ms=u64s,
                     **fields)


messages = st.one_of(
    _message(Heartbeat, ancestors=st.lists(peers, max_size=8).map(tuple), generation=u64s,
             assignments=st.lists(assignments(), max_size=8).map(tuple)),
    _message(CountReport, parent=domains, count=st.integers(1, 10_000_000), address=peers,
             unicast=st.booleans()),
    _message(Tracer, orphan=peers, dead=domains, hops=st.lists(domains, max_size=8).map(tuple)),
    _message(Graft, adopter=peers, orphan=domains),
    _message(Leave, parent=domains),
    _message(Ping, target=domains, reply_to=peers),
    _message(Pong, address=peers),
    _message(Announce, priority=st.integers(0, 65535), address=peers),
    _message(Claim, priority=st.integers(0, 65535), address=peers),
)


@FAST
@given(messages)
def test_any_valid_message_round_trips_byte_for_byte(message: Message) -> None:
    datagram = enc(message, key=KEY)
    assert dec(datagram, key=KEY) == message
    assert enc(dec(datagram, key=KEY), key=KEY) == datagram  # keys too: equality skips them


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_codec_errors(data: bytes) -> None:
    with pytest.raises(CodecError):
        dec(data, key=KEY)


# --- damaged datagrams ------------------------------------------------------------------------


@pytest.mark.parametrize("message", REALISTIC, ids=lambda m: m.kind)
def test_every_truncation_is_malformed(message: Message) -> None:
    datagram = enc(message, key=KEY)
    for size in range(len(datagram)):
        with pytest.raises(MalformedMessage):
            dec(datagram[:size], key=KEY)
    with pytest.raises(MalformedMessage, match="trailing"):
        dec(datagram + b"\x00", key=KEY)


FLIPPED_HEADER: dict[int, tuple[type[CodecError], ...]] = {
    0: (MalformedMessage,), 1: (MalformedMessage,),  # magic
    2: (UnknownVersion,),
    3: (UnknownKind, BadSignature),  # another valid code fails the tag
    4: (MalformedMessage,), 5: (MalformedMessage,),  # body length
}


@pytest.mark.parametrize("message", REALISTIC, ids=lambda m: m.kind)
def test_every_single_byte_flip_is_refused_by_name(message: Message) -> None:
    datagram = enc(message, key=KEY)
    for index in range(len(datagram)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(datagram)
            damaged[index] ^= mask
            expected = FLIPPED_HEADER.get(index, (BadSignature,))  # body and tag
            with pytest.raises(expected):
                dec(bytes(damaged), key=KEY)


def test_a_different_key_is_a_bad_signature() -> None:
    with pytest.raises(BadSignature, match="HMAC tag does not match"):
        dec(enc(HEARTBEAT, key=OTHER_KEY), key=KEY)


# --- the sender's signature -------------------------------------------------------------------


def test_a_member_signing_in_another_domains_name_is_a_forged_signature() -> None:
    # The hierarchy tag is right (an insider), the Ed25519 key is not the sender's.
    forged = encode(HEARTBEAT, key=KEY, signer=STRANGER)
    with pytest.raises(ForgedSignature, match=r"heartbeat from cise\.ufl\.edu is not signed by"):
        dec(forged, key=KEY)


def test_a_tampered_body_with_a_fresh_tag_is_a_forged_signature() -> None:
    datagram = bytearray(enc(COUNT_REPORT, key=KEY))
    count_at = datagram.index((12).to_bytes(4, "big"))
    datagram[count_at:count_at + 4] = (9_999).to_bytes(4, "big")
    sealed = bytes(datagram[:-16])
    retagged = sealed + hmac.new(KEY, sealed, hashlib.sha256).digest()[:16]
    tampered = unseal(retagged, key=KEY)  # the tag passes, the body parses ...
    assert isinstance(tampered.message, CountReport) and tampered.message.count == 9_999
    with pytest.raises(ForgedSignature):  # ... and the sender's signature does not
        dec(retagged, key=KEY)


def test_a_sender_without_a_known_key_is_refused_before_anything_else() -> None:
    datagram = enc(ANNOUNCE, key=KEY)
    with pytest.raises(UnknownSender, match=r"no key is known for cise.ufl.edu \(its announce"):
        decode(datagram, key=KEY, verifier=lambda message: None)
    seen: list[Message] = []

    def ring(message: Message) -> Ed25519PublicKey | None:
        seen.append(message)
        return SIGNER.public_key()

    assert decode(datagram, key=KEY, verifier=ring) == ANNOUNCE
    assert seen == [ANNOUNCE]  # the ring is asked with the parsed, unverified message


def test_the_signature_covers_header_and_body_and_the_tag_covers_the_signature() -> None:
    datagram = enc(ANNOUNCE, key=KEY)
    sealed = unseal(datagram, key=KEY)
    assert sealed.signed == datagram[:-80] and sealed.signature == datagram[-80:-16]
    SIGNER.public_key().verify(sealed.signature, sealed.signed)
    assert hmac.new(KEY, datagram[:-16], hashlib.sha256).digest()[:16] == datagram[-16:]


def test_a_signer_that_is_not_ed25519_is_a_configuration_error() -> None:
    class Short:
        def sign(self, data: bytes) -> bytes:
            return b"x" * 10

    with pytest.raises(ValueError, match="the signer gave 10 bytes"):
        encode(ANNOUNCE, key=KEY, signer=Short())


# --- limits at encode time --------------------------------------------------------------------


class Unregistered(Message):
    """A message class the codec has no wire code for."""


def changed(message: Message, **changes: Any) -> Message:
    """`message` with fields replaced, type-correct or not: the codec is what checks them."""
    return dataclasses.replace(message, **changes)


ENCODE_VIOLATIONS: list[tuple[Message, str]] = [
    (changed(ANNOUNCE, sender="Cise.ufl.edu"), "sender: 'Cise.ufl.edu' is not a lower"),
    (changed(ANNOUNCE, sender="cise..edu"), "sender: 'cise..edu' is not"),
    (changed(ANNOUNCE, sender="-cise.edu"), "sender: '-cise.edu' is not"),
    (changed(ANNOUNCE, sender="cise.edu."), "sender: 'cise.edu.' is not"),
    (changed(ANNOUNCE, sender="a" * 64), "sender: 'aaaa"),
    (changed(ANNOUNCE, sender=LONG_DOMAIN + "e"), "sender: 254 bytes"),
    (changed(ANNOUNCE, sender="é.edu"), "sender: 'é.edu' is not ascii"),
    (changed(ANNOUNCE, sender=""), "sender: 0 bytes"),
    (changed(ANNOUNCE, msd_id=LONG_ID + "x"), "msd_id: 65 bytes"),
    (changed(ANNOUNCE, msd_id="a\nb"), "msd_id: 'a\\nb' is not free of control"),
    (changed(ANNOUNCE, msd_id="\ud800"), "msd_id: '\\ud800' is not utf-8"),
    (changed(ANNOUNCE, msd_id=7), "msd_id: 7 is not a string"),
    (changed(ANNOUNCE, term=-1), "term: -1 is not an integer in 0..18446744"),
    (changed(ANNOUNCE, seq=2**64), "seq: 18446744073709551616 is not"),
    (changed(ANNOUNCE, sent_at_ms=1.5), "sent_at_ms: 1.5 is not"),
    (changed(ANNOUNCE, term=True), "term: True is not"),
    (changed(ANNOUNCE, priority=65536), "priority: 65536 is not"),
    (changed(ANNOUNCE, address=peer("a", "10.0.0.256")), "address.host: '10.0.0.256'"),
    (changed(ANNOUNCE, address=peer("a", "example.com")), "is not an IP address"),
    (changed(ANNOUNCE, address=peer("a", "fe80::1%\n")), "address.host: 'fe80::1%\\n' is not"),
    (changed(ANNOUNCE, address=peer("a", LONG_HOST + "0")), "address.host: 46 bytes"),
    (changed(ANNOUNCE, address=peer("a", port=65536)), "address.port: 65536 is not"),
    (changed(ANNOUNCE, address=peer("a", port=-1)), "address.port: -1 is not"),
    (changed(ANNOUNCE, address=("a", "10.0.0.1", 1)), "address: ('a',"),
    (changed(ANNOUNCE, address=peer("a", key=b"k" * 31)), "address.key: a key is 32 bytes or"),
    (changed(ANNOUNCE, address=peer("a", key="k" * 32)), "address.key: a key is 32 bytes or"),
    (changed(COUNT_REPORT, count=0), "count: 0 is not an integer in 1..10000000"),
    (changed(COUNT_REPORT, count=10_000_001), "count: 10000001 is not"),
    (changed(COUNT_REPORT, unicast=1), "unicast: 1 is not a bool"),
    (changed(COUNT_REPORT, parent="x_y"), "parent: 'x_y' is not"),
    (changed(HEARTBEAT, ancestors=(peer("a"),) * 65), "ancestors: 65 items; the limit"),
    (changed(HEARTBEAT, ancestors=[peer("a")]), "ancestors: a list is not a tuple"),
    (changed(HEARTBEAT, ancestors=(peer("a"), peer("B"))), "ancestors[1].domain: 'B'"),
    (changed(HEARTBEAT, assignments=(Assignment(child="a", start=0, end=1),) * 2001),
     "assignments: 2001 items; the limit is 2000"),
    (changed(HEARTBEAT, assignments=(Assignment(child="a", start=5, end=5),)),
     "assignments[0]: start 5 is not below end 5"),
    (changed(HEARTBEAT, assignments=(Assignment(child="a", start=0, end=SPACE + 1),)),
     "assignments[0].end: 340282366920938463463374607431768211457 is not an integer in 1..3402"),
    (changed(HEARTBEAT, assignments=(Assignment(child="a", start=-1, end=1),)),
     "assignments[0].start: -1 is not"),
    (changed(HEARTBEAT, generation=None), "generation: None is not"),
    (Tracer(**stamps(), orphan=peer("a"), dead="b", hops=("c",) * 65), "hops: 65 items"),
    (Tracer(**stamps(), orphan=peer("a"), dead="b", hops=("c", "D")), "hops[1]: 'D' is not"),
]


@pytest.mark.parametrize(("message", "match"), ENCODE_VIOLATIONS,
                         ids=[match for _, match in ENCODE_VIOLATIONS])
def test_encode_refuses_a_field_beyond_its_limit(message: Message, match: str) -> None:
    with pytest.raises(MalformedMessage, match=re.escape(match)):
        enc(message, key=KEY)


def test_encode_refuses_what_would_not_fit_a_datagram() -> None:
    message = dataclasses.replace(HEARTBEAT, assignments=tuple(
        Assignment(child="a", start=i, end=i + 1) for i in range(2_000)
    ))
    with pytest.raises(OversizedMessage, match=r"would take 68\d{3} bytes; the limit is 65000"):
        enc(message, key=KEY)


def test_encode_refuses_a_class_without_a_wire_code() -> None:
    with pytest.raises(UnknownKind, match="Unregistered is not a control message"):
        enc(Unregistered(sender="a", msd_id="m", term=0), key=KEY)
    with pytest.raises(UnknownKind):
        enc(Message(sender="a", msd_id="m", term=0), key=KEY)


# --- limits at decode time: validly signed, badly built ---------------------------------------


def signed(code: int, body: bytes, *, version: int = 2, magic: bytes = b"MS",
           length: int | None = None, key: bytes = KEY,
           signer: Ed25519PrivateKey = SIGNER) -> bytes:
    """A datagram built by hand from the documented layout, with a correct signature and tag."""
    head = magic + struct.pack("!BBH", version, code, len(body) if length is None else length)
    sealed = head + body + signer.sign(head + body)
    return sealed + hmac.new(key, sealed, hashlib.sha256).digest()[:16]


def s(text: bytes) -> bytes:
    return bytes([len(text)]) + text


def common(sender: bytes = b"a.edu", msd_id: bytes = b"m") -> bytes:
    return s(sender) + s(msd_id) + struct.pack("!QQQ", 3, 4, NOW)


def p(domain: bytes = b"a.edu", host: bytes = b"10.0.0.1", port: int = 9000,
      key: bytes = b"") -> bytes:
    return s(domain) + s(host) + struct.pack("!H", port) + bytes([len(key)]) + key


def report(count: int = 5, unicast: int = 0, address: bytes = p()) -> bytes:
    return common() + s(b"b.edu") + struct.pack("!I", count) + address + bytes([unicast])


def heartbeat(ancestors: bytes = b"\x00", assignments: bytes = b"\x00\x00") -> bytes:
    return common() + ancestors + struct.pack("!Q", 1) + assignments


def key_range(start: int, last: int) -> bytes:
    return s(b"c.a.edu") + start.to_bytes(16, "big") + last.to_bytes(16, "big")


DECODE_VIOLATIONS: list[tuple[bytes, type[CodecError], str]] = [
    (signed(5, common() + s(b"b.edu")), CodecError, ""),  # the well-formed control case
    (signed(5, common(sender=b"") + s(b"b.edu")), MalformedMessage, "sender: length 0 is outside"),
    (signed(5, common(sender=b"A.edu") + s(b"b.edu")), MalformedMessage, "sender: 'A.edu' is not"),
    (signed(5, common(sender=b"\xc3\xa9") + s(b"b")), MalformedMessage, "sender: the bytes ar"),
    (signed(5, common(msd_id=b"\xff") + s(b"b.edu")), MalformedMessage, "msd_id: .* not valid utf"),
    (signed(5, common(msd_id=b"m" * 65) + s(b"b")), MalformedMessage, "msd_id: length 65"),
    (signed(5, common(msd_id=b"a\x1bb") + s(b"b")), MalformedMessage, "msd_id: .* control char"),
    (signed(5, common() + s(b"b.edu") + b"\x00"), MalformedMessage, "1 trailing bytes after the"),
    (signed(5, common() + b"\x05b.ed"), MalformedMessage, "parent: truncated: needs 5 bytes, 4"),
    (signed(5, common()), MalformedMessage, "parent: truncated"),
    (signed(5, b""), MalformedMessage, "sender: truncated"),
    (signed(5, common()[:-1]), MalformedMessage, "sent_at_ms: truncated: needs 8 bytes, 7 left"),
    (signed(5, b"\xfe" + b"a" * 254), MalformedMessage, "sender: length 254 is outside 1..253"),
    (signed(2, report(count=0)), MalformedMessage, "count: 0 is outside 1..10000000"),
    (signed(2, report(count=10_000_001)), MalformedMessage, "count: 10000001 is outside"),
    (signed(2, report(unicast=2)), MalformedMessage, "unicast: 2 is outside 0..1"),
    (signed(2, report(address=p(host=b"10.1"))), MalformedMessage, "address.host: '10.1' is not"),
    (signed(2, report(address=p(host=b"1" * 46))), MalformedMessage, "address.host: length 46"),
    (signed(2, report(address=p(host=b"fe80::1% x"))), MalformedMessage, "address.host: 'fe80::"),
    (signed(2, report(address=p(key=b"k" * 31))), MalformedMessage, "address.key: length 31"),
    (signed(2, report(address=p()[:-1] + b"\x20" + b"k" * 20)), MalformedMessage,
     "address.key: truncated"),
    (signed(1, heartbeat(ancestors=b"\x41")), MalformedMessage, "ancestors: 65 is outside 0..64"),
    (signed(1, common() + b"\x02" + p()), MalformedMessage, r"ancestors\[1\].domain: truncated"),
    (signed(1, heartbeat(assignments=b"\x07\xd1")), MalformedMessage, "assignments: 2001 is outsi"),
    (signed(1, heartbeat(assignments=b"\x00\x01" + key_range(5, 4))), MalformedMessage,
     r"assignments\[0\]: start 5 is not below end 5"),
    (signed(1, heartbeat(assignments=b"\x00\x01" + key_range(0, 0)[:-1])), MalformedMessage,
     r"assignments\[0\].end: truncated"),
    (signed(3, common() + p() + s(b"d") + bytes([65])), MalformedMessage, "hops: 65 is outside"),
    (signed(3, common() + p() + s(b"d") + b"\x01" + s(b"-x")), MalformedMessage, r"hops\[0\]: '-x"),
    (signed(5, common() + s(b"b.edu"), version=1), UnknownVersion, "format version 1; this codec"),
    (signed(5, common() + s(b"b.edu"), version=3), UnknownVersion, "format version 3"),
    (signed(5, common() + s(b"b.edu"), version=0), UnknownVersion, "format version 0"),
    (signed(0, common() + s(b"b.edu")), UnknownKind, "kind code 0 is not"),
    (signed(10, common() + s(b"b.edu")), UnknownKind, "kind code 10 is not"),
    (signed(5, common() + s(b"b.edu"), magic=b"SM"), MalformedMessage, "magic b'SM' is not b'MS'"),
    (signed(5, common() + s(b"b.edu"), length=99), MalformedMessage, "declares a 99-byte body but"),
    (signed(5, common() + s(b"b.edu"), length=1), MalformedMessage, r"\(trailing bytes\)"),
    (b"MS\x02\x05\x00\x00" + b"\x00" * 79, MalformedMessage, "85 bytes is shorter than a header"),
    (b"MS\x01\x01" + b"\x00" * 64_997, OversizedMessage, "65001 bytes; the limit is 65000"),
    # A bad body under a bad tag is never parsed: the tag is checked first.
    (signed(2, report(count=0), key=OTHER_KEY), BadSignature, "HMAC tag does not match"),
]


@pytest.mark.parametrize(("datagram", "error", "match"), DECODE_VIOLATIONS,
                         ids=[match or "well-formed" for _, _, match in DECODE_VIOLATIONS])
def test_decode_refuses_a_bad_datagram_by_name(
    datagram: bytes, error: type[CodecError], match: str
) -> None:
    if not match:
        assert dec(datagram, key=KEY) == Leave(sender="a.edu", msd_id="m", term=3, seq=4,
                                                  sent_at_ms=NOW, parent="b.edu")
        return
    with pytest.raises(error, match=match) as caught:
        dec(datagram, key=KEY)
    assert type(caught.value) is error


def test_a_one_key_range_and_the_whole_space_decode() -> None:
    body = heartbeat(assignments=b"\x00\x02" + key_range(7, 7) + key_range(0, SPACE - 1))
    message = dec(signed(1, body), key=KEY)
    assert isinstance(message, Heartbeat)
    assert message.assignments == (
        Assignment(child="c.a.edu", start=7, end=8),
        Assignment(child="c.a.edu", start=0, end=SPACE),
    )


# --- fuzz -------------------------------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    damaged = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(4)
        at = rng.randrange(len(damaged) + 1)
        if choice == 0 and damaged:
            damaged[min(at, len(damaged) - 1)] = rng.randrange(256)
        elif choice == 1:
            damaged[at:at] = rng.randbytes(rng.randint(1, 8))
        elif choice == 2:
            del damaged[at:at + rng.randint(1, 8)]
        else:
            damaged = damaged[:at]
    return bytes(damaged)


def test_fuzzed_datagrams_raise_only_codec_errors() -> None:
    rng = random.Random(20_260_522)
    seeds = [enc(m, key=KEY) for m in REALISTIC + EXTREME[1:3] + EXTREME[4:]]
    deadline = time.monotonic() + 3.0  # a bound on a slow machine, not a measurement
    tried = decoded = 0
    while tried < 20_000 and time.monotonic() < deadline:
        tried += 1
        mode = tried % 3
        if mode == 0:
            data = rng.randbytes(rng.randint(0, 120))
        else:
            data = _mutate(rng, rng.choice(seeds))
            if mode == 2 and len(data) >= 22:
                # Re-sign the damaged body so the body parser, not the tag, has to refuse it.
                data = signed(data[3], data[6:-80], version=data[2], magic=data[:2])
        try:
            message = dec(data, key=KEY)
        except CodecError:
            continue
        decoded += 1
        # Whatever decodes is canonical: it encodes back to the very same bytes.
        assert enc(message, key=KEY) == data
    assert tried >= 2_000
    assert decoded > 0


# --- replay guard -----------------------------------------------------------------------------


def msg(seq: int, *, term: int = 1, sender: str = "a.edu", msd_id: str = "m",
        sent_at_ms: int = NOW) -> Message:
    return Leave(sender=sender, msd_id=msd_id, term=term, seq=seq, sent_at_ms=sent_at_ms,
                 parent="edu")


def test_replay_guard_admits_each_message_once() -> None:
    guard = ReplayGuard()
    assert guard.admit(msg(5), now_ms=NOW) is None
    assert guard.admit(msg(5), now_ms=NOW) == "replayed"
    assert guard.admit(msg(4), now_ms=NOW) is None  # late, but never seen: reordered
    assert guard.admit(msg(4), now_ms=NOW) is Refusal.REPLAYED
    assert guard.admit(msg(6), now_ms=NOW) is None
    assert guard.admit(msg(5), now_ms=NOW) is Refusal.REPLAYED  # still remembered below 6
    assert guard.admit(msg(0, term=2), now_ms=NOW) is None  # a higher term starts afresh
    assert guard.admit(msg(99, term=1), now_ms=NOW) is Refusal.REPLAYED  # a deposed term
    assert guard.admit(msg(0, msd_id="other"), now_ms=NOW) is None  # each daemon has its own
    assert guard.admit(msg(0, sender="b.edu"), now_ms=NOW) is None


def test_replay_guard_reorder_window_is_64_behind_the_newest() -> None:
    guard = ReplayGuard()
    assert guard.admit(msg(100), now_ms=NOW) is None
    assert guard.admit(msg(36), now_ms=NOW) is None  # exactly 64 behind
    assert guard.admit(msg(35), now_ms=NOW) is Refusal.REPLAYED  # 65 behind: too old
    assert guard.admit(msg(200), now_ms=NOW) is None  # a jump forgets the old bitmap
    assert guard.admit(msg(100), now_ms=NOW) is Refusal.REPLAYED
    assert guard.admit(msg(199), now_ms=NOW) is None
    assert guard.admit(msg(199), now_ms=NOW) is Refusal.REPLAYED


def test_replay_guard_window_is_inclusive_and_refusals_change_nothing() -> None:
    guard = ReplayGuard(window_ms=30_000)
    assert guard.admit(msg(1, sent_at_ms=NOW - 30_000), now_ms=NOW) is None
    assert guard.admit(msg(2, sent_at_ms=NOW + 30_000), now_ms=NOW) is None
    assert guard.admit(msg(9, sent_at_ms=NOW - 30_001), now_ms=NOW) == "stale"
    assert guard.admit(msg(9, sent_at_ms=NOW + 30_001), now_ms=NOW) == "from the future"
    assert guard.admit(msg(3), now_ms=NOW) is None  # the refused seq 9 was not remembered


def test_replay_guard_forgets_the_least_recently_admitted_sender() -> None:
    guard = ReplayGuard(max_senders=2)
    for sender in ("a.edu", "b.edu"):
        assert guard.admit(msg(1, sender=sender), now_ms=NOW) is None
    assert guard.admit(msg(2, sender="a.edu"), now_ms=NOW) is None  # a is now the most recent
    assert guard.admit(msg(1, sender="c.edu"), now_ms=NOW) is None  # b is forgotten
    assert len(guard) == 2
    assert guard.admit(msg(2, sender="a.edu"), now_ms=NOW) is Refusal.REPLAYED
    assert guard.admit(msg(1, sender="b.edu"), now_ms=NOW) is None  # the window alone judged it
    assert repr(guard) == "ReplayGuard(window_ms=30000, senders=2/2)"


def test_replay_guard_refuses_nonsense_settings() -> None:
    with pytest.raises(ValueError, match="max_senders"):
        ReplayGuard(max_senders=0)
    with pytest.raises(ValueError, match="window_ms"):
        ReplayGuard(window_ms=-1)
