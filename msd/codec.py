"""The MSD control messages on the wire: versioned, size-bounded datagrams, each signed with the
sending domain's Ed25519 key and tagged with the hierarchy's HMAC key."""

from __future__ import annotations

import dataclasses
import functools
import hmac
import ipaddress
import re
import struct
from collections.abc import Callable
from typing import Any, Protocol, TypeGuard

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from msd.errors import MsdError
from msd.messages import BY_KIND, Assignment, Message, Peer

# --- the format and its limits (docs/control-messages.md) -----------------------------------

MAGIC = b"MS"
VERSION = 2  # 1 had the HMAC tag only; 2 adds the sender's Ed25519 signature and peer keys
HEADER_BYTES = 6  # magic 2, version u8, kind code u8, body length u16
SIGNATURE_BYTES = 64  # Ed25519, by the sending domain's key, over header + body
TAG_BYTES = 16  # HMAC-SHA256 truncated to 128 bits, over header + body + signature
TRAILER_BYTES = SIGNATURE_BYTES + TAG_BYTES
MAX_DATAGRAM_BYTES = 65_000
MAX_BODY_BYTES = MAX_DATAGRAM_BYTES - HEADER_BYTES - TRAILER_BYTES
KEY_MIN_BYTES = 16  # a shorter HMAC key is a configuration mistake, not a choice
KEY_BYTES = 32  # an Ed25519 public key, as a peer carries it

DOMAIN_MAX_BYTES = 253  # ASCII, so bytes == characters
MSD_ID_MAX_BYTES = 64  # UTF-8 bytes
HOST_MAX_BYTES = 45  # the longest IPv6 literal (with an embedded IPv4 part)
PORT_MAX = 65_535
ANCESTORS_MAX = 64  # peers
HOPS_MAX = 64  # domains
ASSIGNMENTS_MAX = 2_000  # children; at 34+ bytes each the datagram limit bites first
U64_MAX = 2**64 - 1  # term, seq, generation, sent_at_ms (milliseconds)
COUNT_MIN = 1  # domains: a subtree always holds its own root
COUNT_MAX = 10_000_000  # domains
PRIORITY_MAX = 65_535  # election priority, u16
KEYSPACE_END = 2**128  # an assignment is [start, end) with 0 <= start < end <= KEYSPACE_END

_HEADER = struct.Struct("!2sBBH")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
# The same rule as the .mds files: lower-case labels, no final dot.
_DOMAIN_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
# Control characters in an id (or an IPv6 scope) would let a peer forge log lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HOST_CHARS = re.compile(r"[0-9A-Za-z.:%_-]+", re.ASCII)  # ipaddress allows any scope text


# --- errors ---------------------------------------------------------------------------------


class CodecError(MsdError):
    """A control datagram, or a message about to be sent, breaks the wire format."""

    def __init__(self, detail: str = "") -> None:
        # As in dnspython, the class docstring is the message when there is nothing to add.
        super().__init__(detail or self.__doc__)


class MalformedMessage(CodecError):
    """A field is truncated, too long, out of range or not what its type allows."""


class OversizedMessage(CodecError):
    """The datagram is longer than MAX_DATAGRAM_BYTES."""


class UnknownVersion(CodecError):
    """The datagram is of a format version this codec does not speak."""


class UnknownKind(CodecError):
    """The kind code (or the message class) is not one of the control messages."""


class BadSignature(CodecError):
    """The HMAC tag does not match: another hierarchy's key, or altered bytes."""


class UnknownSender(CodecError):
    """No public key is known for the sending domain, so its signature cannot be checked."""


class ForgedSignature(CodecError):
    """The Ed25519 signature does not verify with the sending domain's key."""


def _bad(what: str, problem: str) -> MalformedMessage:
    return MalformedMessage(f"{what}: {problem}")


def _is_int(value: object) -> TypeGuard[int]:
    # bool is an int subclass; True as a term or a port is a bug upstream.
    return isinstance(value, int) and not isinstance(value, bool)


# The same few names and addresses arrive in every heartbeat; remembering the verdicts
# (bounded) saves a regex or an ipaddress parse per field.
@functools.lru_cache(maxsize=16_384)
def is_domain(text: str) -> bool:
    """A lower-case DNS name without a final dot, as the wire (and the .mds files) take it."""
    return _DOMAIN_NAME.fullmatch(text) is not None


@functools.lru_cache(maxsize=16_384)
def _is_host(text: str) -> bool:
    if _HOST_CHARS.fullmatch(text) is None:
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --- field types: each knows how to check and write a value, and to read it back -------------


class _Reader:
    """The body from `pos` up to, never past, `end`: the length the header declared."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, *, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def take(self, size: int, what: str) -> int:
        """The offset of the next `size` bytes, which are then consumed."""
        at = self.pos
        if at + size > self.end:
            raise _bad(what, f"truncated: needs {size} bytes, {self.end - at} left in the body")
        self.pos = at + size
        return at


class _Field:
    """One wire type."""

    __slots__ = ()

    def write(self, out: list[bytes], value: object, what: str) -> None:
        raise NotImplementedError

    def read(self, r: _Reader, what: str) -> Any:
        raise NotImplementedError


class _UInt(_Field):
    """A big-endian unsigned integer of `size` bytes, limited to low..high, stored less `bias`.

    An assignment's `end` may be 2**128 itself; storing end - 1 (the last key, which
    start < end keeps non-negative) fits it in 16 bytes with no flag or 17th byte.
    """

    __slots__ = ("bias", "high", "low", "size")

    def __init__(self, size: int, *, low: int = 0, high: int | None = None, bias: int = 0) -> None:
        self.size = size
        self.low = low
        self.high = 256**size - 1 + bias if high is None else high
        self.bias = bias

    def write(self, out: list[bytes], value: object, what: str) -> None:
        if not _is_int(value) or not self.low <= value <= self.high:
            raise _bad(what, f"{value!r} is not an integer in {self.low}..{self.high}")
        out.append((value - self.bias).to_bytes(self.size, "big"))

    def read(self, r: _Reader, what: str) -> int:
        at = r.take(self.size, what)
        value = int.from_bytes(r.data[at:at + self.size], "big") + self.bias
        if not self.low <= value <= self.high:
            raise _bad(what, f"{value} is outside {self.low}..{self.high}")
        return value


class _Flag(_UInt):
    """A bool as one byte, 0 or 1."""

    def write(self, out: list[bytes], value: object, what: str) -> None:
        if not isinstance(value, bool):
            raise _bad(what, f"{value!r} is not a bool")
        super().write(out, int(value), what)

    def read(self, r: _Reader, what: str) -> bool:
        return super().read(r, what) == 1


class _Text(_Field):
    """A string of 1..limit bytes after a u8 length, and `valid` (what `meaning` says)."""

    __slots__ = ("encoding", "limit", "meaning", "valid")

    def __init__(self, *, limit: int, encoding: str, valid: Callable[[str], bool],
                 meaning: str) -> None:
        self.limit = limit
        self.encoding = encoding
        self.valid = valid
        self.meaning = meaning

    def check(self, text: str, what: str) -> None:
        if not self.valid(text):
            raise _bad(what, f"{text[:80]!r} is not {self.meaning}")

    def write(self, out: list[bytes], value: object, what: str) -> None:
        if not isinstance(value, str):
            raise _bad(what, f"{value!r} is not a string")
        try:
            raw = value.encode(self.encoding)
        except UnicodeEncodeError:
            raise _bad(what, f"{value[:80]!r} is not {self.encoding}") from None
        if not 1 <= len(raw) <= self.limit:
            raise _bad(what, f"{len(raw)} bytes; a value takes 1..{self.limit}")
        self.check(value, what)
        out += (len(raw).to_bytes(1, "big"), raw)

    def read(self, r: _Reader, what: str) -> str:
        size = r.data[r.take(1, what)]
        if not 1 <= size <= self.limit:
            raise _bad(what, f"length {size} is outside 1..{self.limit} bytes")
        at = r.take(size, what)
        try:
            text = r.data[at:at + size].decode(self.encoding)
        except UnicodeDecodeError:
            raise _bad(what, f"the bytes are not valid {self.encoding}") from None
        self.check(text, what)
        return text


class _Key(_Field):
    """An Ed25519 public key after a u8 length: 32 bytes, or none (0) when not known."""

    __slots__ = ()

    def write(self, out: list[bytes], value: object, what: str) -> None:
        if not isinstance(value, bytes) or len(value) not in (0, KEY_BYTES):
            raise _bad(what, f"a key is {KEY_BYTES} bytes or empty, not {value!r:.80}")
        out += (len(value).to_bytes(1, "big"), value)

    def read(self, r: _Reader, what: str) -> bytes:
        size = r.data[r.take(1, what)]
        if size not in (0, KEY_BYTES):
            raise _bad(what, f"length {size}: a key is {KEY_BYTES} bytes or empty")
        at = r.take(size, what)
        return bytes(r.data[at:at + size])


class _Tuple(_Field):
    """A count (of `count` bytes, at most `limit`), then that many items."""

    __slots__ = ("count", "item")

    def __init__(self, item: _Field, *, count: int, limit: int) -> None:
        self.item = item
        self.count = _UInt(count, high=limit)

    def write(self, out: list[bytes], value: object, what: str) -> None:
        if not isinstance(value, tuple):
            raise _bad(what, f"a {type(value).__name__} is not a tuple")
        if len(value) > self.count.high:
            raise _bad(what, f"{len(value)} items; the limit is {self.count.high}")
        self.count.write(out, len(value), what)
        for index, element in enumerate(value):
            self.item.write(out, element, f"{what}[{index}]")

    def read(self, r: _Reader, what: str) -> tuple[Any, ...]:
        item = self.item
        return tuple(item.read(r, f"{what}[{i}]") for i in range(self.count.read(r, what)))


class _Record(_Field):
    """A dataclass, its fields in a fixed order, and a rule across them (if any)."""

    __slots__ = ("cls", "fields", "rule")

    def __init__(self, cls: type[Any], fields: tuple[tuple[str, _Field], ...], *,
                 rule: Callable[[Any, str], None] | None = None) -> None:
        self.cls = cls
        self.fields = fields
        self.rule = rule

    def write(self, out: list[bytes], value: object, what: str) -> None:
        if type(value) is not self.cls:
            raise _bad(what, f"{value!r:.80} is not a {self.cls.__name__}")
        for name, field in self.fields:
            field.write(out, getattr(value, name), f"{what}.{name}" if what else name)
        if self.rule is not None:
            self.rule(value, what)

    def read(self, r: _Reader, what: str) -> Any:
        # Reading in the order of `fields` is reading in wire order.
        value = self.cls(**{name: field.read(r, f"{what}.{name}" if what else name)
                            for name, field in self.fields})
        if self.rule is not None:
            self.rule(value, what)
        return value


def _start_before_end(value: Assignment, what: str) -> None:
    if value.start >= value.end:
        raise _bad(what, f"start {value.start} is not below end {value.end}")


# --- the layout of every message (the table in docs/control-messages.md) --------------------

_Fields = tuple[tuple[str, _Field], ...]
_U64 = _UInt(8)
_DOMAIN = _Text(limit=DOMAIN_MAX_BYTES, encoding="ascii", valid=is_domain,
                meaning="a lower-case DNS name without a final dot")
_PEER = _Record(Peer, (
    ("domain", _DOMAIN),
    ("host", _Text(limit=HOST_MAX_BYTES, encoding="ascii", valid=_is_host,
                   meaning="an IP address literal")),
    ("port", _UInt(2, high=PORT_MAX)),
    ("key", _Key()),
))
_ASSIGNMENT = _Record(Assignment, (
    ("child", _DOMAIN),
    ("start", _UInt(16)),
    ("end", _UInt(16, low=1, bias=1)),
), rule=_start_before_end)
_COMMON: _Fields = (
    ("sender", _DOMAIN),
    ("msd_id", _Text(limit=MSD_ID_MAX_BYTES, encoding="utf-8",
                     valid=lambda t: not _CONTROL.search(t), meaning="free of control characters")),
    ("term", _U64), ("seq", _U64), ("sent_at_ms", _U64),
)
_ELECTION: _Fields = (("priority", _UInt(2, high=PRIORITY_MAX)), ("address", _PEER))
# The kind codes are wire constants: once published, never renumbered or reused.
_KINDS: tuple[tuple[int, str, _Fields], ...] = (
    (1, "heartbeat", (
        ("ancestors", _Tuple(_PEER, count=1, limit=ANCESTORS_MAX)),
        ("generation", _U64),
        ("assignments", _Tuple(_ASSIGNMENT, count=2, limit=ASSIGNMENTS_MAX)),
    )),
    (2, "count-report", (
        ("parent", _DOMAIN),
        ("count", _UInt(4, low=COUNT_MIN, high=COUNT_MAX)),
        ("address", _PEER),
        ("unicast", _Flag(1, high=1)),
    )),
    (3, "tracer", (
        ("orphan", _PEER),
        ("dead", _DOMAIN),
        ("hops", _Tuple(_DOMAIN, count=1, limit=HOPS_MAX)),
    )),
    (4, "graft", (("adopter", _PEER), ("orphan", _DOMAIN))),
    (5, "leave", (("parent", _DOMAIN),)),
    (6, "ping", (("target", _DOMAIN), ("reply_to", _PEER))),
    (7, "pong", (("address", _PEER),)),
    (8, "announce", _ELECTION),
    (9, "claim", _ELECTION),
)
KIND_CODES: dict[str, int] = {kind: code for code, kind, _ in _KINDS}
_BY_CLASS = {
    BY_KIND[kind]: (code, _Record(BY_KIND[kind], _COMMON + fields)) for code, kind, fields in _KINDS
}
_BY_CODE = dict(_BY_CLASS.values())


# --- the codec ------------------------------------------------------------------------------


class Signer(Protocol):
    """What signs a datagram: an Ed25519PrivateKey is one (64-byte signatures)."""

    def sign(self, data: bytes) -> bytes: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Sealed:
    """A datagram whose hierarchy tag matched and whose body parsed; its signature unchecked."""

    message: Message
    signed: bytes  # header + body: what the signature covers
    signature: bytes

    def verify(self, key: Ed25519PublicKey) -> None:
        """Raise ForgedSignature unless `key` signed this datagram."""
        try:
            key.verify(self.signature, self.signed)
        except InvalidSignature:
            raise ForgedSignature(f"the {self.message.kind} from {self.message.sender} is not "
                                  "signed by that domain's key") from None


def _check_key(key: bytes) -> None:
    # A bad key is the operator's error, not the peer's: it must surface, not be dropped
    # and counted like bad input, hence ValueError rather than a CodecError.
    if not isinstance(key, bytes) or len(key) < KEY_MIN_BYTES:
        raise ValueError(f"the hierarchy key must be bytes, at least {KEY_MIN_BYTES} of them")


def encode(message: Message, *, key: bytes, signer: Signer) -> bytes:
    """The signed datagram for `message`; a CodecError if any field breaks its limit.

    `signer` is the sending domain's Ed25519 private key; `key` the hierarchy's HMAC key."""
    _check_key(key)
    kind = _BY_CLASS.get(type(message))
    if kind is None:
        raise UnknownKind(f"{type(message).__name__} is not a control message with a wire code")
    code, layout = kind
    parts: list[bytes] = []
    layout.write(parts, message, "")
    body = b"".join(parts)
    if len(body) > MAX_BODY_BYTES:
        raise OversizedMessage(
            f"this {message.kind} would take {HEADER_BYTES + len(body) + TRAILER_BYTES} "
            f"bytes; the limit is {MAX_DATAGRAM_BYTES}"
        )
    signed = _HEADER.pack(MAGIC, VERSION, code, len(body)) + body
    signature = signer.sign(signed)
    if len(signature) != SIGNATURE_BYTES:
        raise ValueError(f"the signer gave {len(signature)} bytes; Ed25519 gives "
                         f"{SIGNATURE_BYTES}")
    sealed = signed + signature
    return sealed + hmac.digest(key, sealed, "sha256")[:TAG_BYTES]


def unseal(datagram: bytes, *, key: bytes) -> Sealed:
    """Check the framing and the hierarchy tag, then parse the body; the signature is left
    to `Sealed.verify`, since which key to check it with depends on the sender.

    The tag is checked before the body is read, so bytes nobody in the hierarchy tagged
    are never parsed beyond the fixed header.
    """
    _check_key(key)
    size = len(datagram)
    if size > MAX_DATAGRAM_BYTES:
        raise OversizedMessage(f"{size} bytes; the limit is {MAX_DATAGRAM_BYTES}")
    if size < HEADER_BYTES + TRAILER_BYTES:
        raise MalformedMessage(
            f"{size} bytes is shorter than a header, signature and tag "
            f"({HEADER_BYTES + TRAILER_BYTES} bytes)"
        )
    magic, version, code, body_size = _HEADER.unpack_from(datagram)
    if magic != MAGIC:
        raise MalformedMessage(f"magic {magic!r} is not {MAGIC!r}: not an MSD control datagram")
    if version != VERSION:
        raise UnknownVersion(f"format version {version}; this codec speaks version {VERSION}")
    layout = _BY_CODE.get(code)
    if layout is None:
        raise UnknownKind(f"kind code {code} is not a control message")
    body_end = HEADER_BYTES + body_size
    if body_end + TRAILER_BYTES != size:
        held = size - HEADER_BYTES - TRAILER_BYTES
        raise MalformedMessage(
            f"the header declares a {body_size}-byte body but {held} bytes are there "
            f"({'missing' if held < body_size else 'trailing'} bytes)"
        )
    tag_at = body_end + SIGNATURE_BYTES
    expected = hmac.digest(key, memoryview(datagram)[:tag_at], "sha256")[:TAG_BYTES]
    if not hmac.compare_digest(expected, datagram[tag_at:]):
        raise BadSignature()
    r = _Reader(datagram, pos=HEADER_BYTES, end=body_end)
    message: Message = layout.read(r, "")
    if r.pos != body_end:
        raise MalformedMessage(f"{body_end - r.pos} trailing bytes after the {message.kind} body")
    return Sealed(message=message, signed=bytes(datagram[:body_end]),
                  signature=bytes(datagram[body_end:tag_at]))


def decode(
    datagram: bytes, *, key: bytes,
    verifier: Callable[[Message], Ed25519PublicKey | None],
) -> Message:
    """The message in `datagram`; a CodecError for anything not exactly well-formed, not
    tagged with the hierarchy key, or not signed by its sender's key.

    `verifier` names the key to check a message's signature with (msd.keys.KeyRing.verifier):
    None means no key is known for its sender (UnknownSender)."""
    sealed = unseal(datagram, key=key)
    public = verifier(sealed.message)
    if public is None:
        raise UnknownSender(f"no key is known for {sealed.message.sender} (its "
                            f"{sealed.message.kind} cannot be checked)")
    sealed.verify(public)
    return sealed.message
