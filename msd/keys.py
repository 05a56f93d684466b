"""Per-domain Ed25519 keys: the private key file, `domain public-key` lines, and the key ring.

Every domain has one Ed25519 key pair; all MSD daemons of the domain sign with its
private key (a PEM file, mode 0600). Receivers hold a `KeyRing`: which public key
speaks for which domain, and how far each is trusted. Keys come from four sources,
most trusted first (docs/threat-model.md):

1. `PINNED`: the daemon's own key and the administrator's file of `domain key` lines;
2. `URS`: the domain's own URS (the parent domain's key, from the bootstrap document);
3. `INTRODUCED`: a heartbeat of a parent or ancestor, signed by a key we hold, naming
   the keys of the ancestors above it;
4. `SELF`: a domain's own word for its key, trusted on first use (SSH's model).

A key is replaced only by a more trusted source; a different key from an equal or less
trusted source is a conflict, refused and counted. With `tofu=False` only pinned keys
count. The ring is pure: it reads no file and no clock; `on_learn` lets the shell keep
what it learns.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from msd.codec import KEY_BYTES, is_domain
from msd.errors import MsdError
from msd.messages import Heartbeat, Message, Peer, Tracer

MAX_KEYS = 100_000  # domains a ring remembers; past that, first-use keys make room
KEY_FILE_MAX_BYTES = 16 * 1024 * 1024  # a `domain key` file: about 150,000 lines at most


class KeyFileError(MsdError):
    """A key file cannot be read or written, or holds something that is not a key."""


class TrustLevel(enum.IntEnum):
    """Where a public key came from; a higher level replaces a lower one."""

    SELF = 0  # the domain said so itself, first heard (trust on first use)
    INTRODUCED = 1  # a parent or ancestor whose key we hold named it in a signed heartbeat
    URS = 2  # our own URS published it (the parent domain's key, through the bootstrap)
    PINNED = 3  # our own key, or the administrator's pinned-keys file


class Learned(enum.StrEnum):
    """What `KeyRing.learn` made of a key."""

    NEW = "new"  # a domain we had no key for
    KNOWN = "known"  # the key we hold (its level may have risen)
    REPLACED = "replaced"  # a more trusted source replaced a different key
    CONFLICT = "conflict"  # a different key from a source no more trusted: refused
    REFUSED = "refused"  # trust on first use is off, or the ring is full of better keys


# --- key material ---------------------------------------------------------------------------


def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    """The raw 32-byte public key of a private key."""
    return key.public_key().public_bytes_raw()


def key_text(raw: bytes) -> str:
    """A public key as people and files carry it: 44 characters of standard base64."""
    return base64.b64encode(raw).decode("ascii")


def parse_key_text(text: str) -> bytes:
    """The raw public key in `text` (base64 of 32 bytes); ValueError naming the rule."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text[:60]!r} is not base64") from None
    if len(raw) != KEY_BYTES:
        raise ValueError(f"a public key is {KEY_BYTES} bytes, this one {len(raw)}")
    return raw


def key_line(domain: str, raw: bytes) -> str:
    """One line of a pinned- or known-keys file."""
    return f"{domain} {key_text(raw)}"


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write a private key as unencrypted PKCS#8 PEM, mode 0600; never over an existing file."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; remove it first (a domain keeps one key)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a domain's private key; refuse one that others may read, as ssh does."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the domain key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); "
                           f"chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key "
                           "(make one with `mdns keys generate`)")
    return key


def parse_key_lines(text: str, *, source: str) -> dict[str, bytes]:
    """`domain key` lines (`#` starts a comment); the last line of a domain wins."""
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2:
            raise KeyFileError(f"{source}:{number}: expected 'domain public-key', "
                               f"got {len(words)} words")
        domain, text_key = words
        domain = domain.lower().rstrip(".")
        if not is_domain(domain):
            raise KeyFileError(f"{source}:{number}: {domain[:80]!r} is not a domain name")
        try:
            keys[domain] = parse_key_text(text_key)
        except ValueError as exc:
            raise KeyFileError(f"{source}:{number}: {exc}") from None
    return keys


def read_key_file(path: Path) -> dict[str, bytes]:
    """The `domain key` lines of a file (pinned or known keys)."""
    try:
        if path.stat().st_size > KEY_FILE_MAX_BYTES:
            raise KeyFileError(f"{path} is larger than {KEY_FILE_MAX_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {path}: {exc}") from None
    return parse_key_lines(text, source=str(path))


def append_key_line(path: Path, domain: str, raw: bytes, *, note: str = "") -> None:
    """Remember one learnt key at the end of a known-keys file (made 0600 if new)."""
    line = key_line(domain, raw) + (f"  # {note}" if note else "") + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(line)


# --- the ring -------------------------------------------------------------------------------


def peers_of(message: Message) -> Iterable[Peer]:
    """Every peer a message names (its fields of type Peer and tuples of them)."""
    for field in dataclasses.fields(message):
        value = getattr(message, field.name)
        if isinstance(value, Peer):
            yield value
        elif isinstance(value, tuple):
            yield from (item for item in value if isinstance(item, Peer))


def own_word(message: Message) -> Peer | None:
    """The peer in which the sender names itself, with a key (the key it claims)."""
    return next((p for p in peers_of(message) if p.domain == message.sender and p.key), None)


@dataclasses.dataclass
class _Entry:
    raw: bytes
    level: TrustLevel
    verifier: Ed25519PublicKey


class KeyRing:
    """Which Ed25519 key speaks for which domain, and how far each is trusted."""

    def __init__(
        self,
        *,
        domain: str,
        own: bytes,
        pinned: Mapping[str, bytes] | None = None,
        known: Mapping[str, bytes] | None = None,
        tofu: bool = True,
        max_keys: int = MAX_KEYS,
        on_learn: Callable[[str, bytes, TrustLevel], None] | None = None,
    ) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.domain = domain
        self.tofu = tofu
        self.max_keys = max_keys
        self._on_learn = on_learn
        self._keys: OrderedDict[str, _Entry] = OrderedDict()
        self.counts: dict[str, int] = {outcome.value: 0 for outcome in Learned}
        for name, raw in (known or {}).items():
            # What an earlier run learnt keeps the lowest level: it was never checked again.
            if tofu:
                self._set(name, raw, TrustLevel.SELF)
        for name, raw in (pinned or {}).items():
            self._set(name, raw, TrustLevel.PINNED)
        pinned_own = (pinned or {}).get(domain)
        if pinned_own is not None and pinned_own != own:
            raise KeyFileError(f"the pinned keys give {domain} another key than the daemon's "
                               "own private key")
        self._set(domain, own, TrustLevel.PINNED)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"<KeyRing {self.domain} keys={len(self._keys)} tofu={self.tofu}>"

    def get(self, domain: str) -> bytes | None:
        entry = self._keys.get(domain)
        return entry.raw if entry else None

    def level(self, domain: str) -> TrustLevel | None:
        entry = self._keys.get(domain)
        return entry.level if entry else None

    def verifier(self, message: Message) -> Ed25519PublicKey | None:
        """The key to check `message`'s signature with: the one we hold for its sender, else
        (first use, if allowed) the key the sender names itself with; None if neither."""
        entry = self._keys.get(message.sender)
        if entry is not None:
            return entry.verifier
        if not self.tofu:
            return None
        peer = own_word(message)
        if peer is None:
            return None
        try:
            return Ed25519PublicKey.from_public_bytes(peer.key)
        except ValueError:
            return None

    def learn(self, domain: str, raw: bytes, level: TrustLevel) -> Learned:
        """Take `raw` as `domain`'s key from a source of trust `level`."""
        outcome = self._learn(domain, raw, level)
        self.counts[outcome.value] += 1
        return outcome

    def _learn(self, domain: str, raw: bytes, level: TrustLevel) -> Learned:
        if len(raw) != KEY_BYTES:
            return Learned.REFUSED
        entry = self._keys.get(domain)
        if entry is not None:
            if entry.raw == raw:
                if level > entry.level:
                    entry.level = level
                    self._kept(domain, raw, level)
                return Learned.KNOWN
            if level <= entry.level:
                return Learned.CONFLICT
            outcome = Learned.REPLACED
        else:
            if not self.tofu and level < TrustLevel.PINNED:
                return Learned.REFUSED
            if len(self._keys) >= self.max_keys and not self._make_room():
                return Learned.REFUSED
            outcome = Learned.NEW
        if not self._set(domain, raw, level):
            return Learned.REFUSED
        self._kept(domain, raw, level)
        return outcome

    def absorb(self, message: Message, *, introducer: bool) -> list[tuple[str, Learned]]:
        """Learn the keys a verified message names: the sender's own, and, when the sender
        is an `introducer` (our parent or an ancestor) and the message a heartbeat, the
        keys of the ancestors above it; a tracer's orphan speaks for itself."""
        sender_level = self.level(message.sender)
        results: list[tuple[str, Learned]] = []
        for peer in peers_of(message):
            if not peer.key or peer.domain == self.domain:
                continue
            if peer.domain == message.sender:
                level = TrustLevel.SELF
            elif introducer and isinstance(message, Heartbeat) and sender_level is not None:
                level = min(TrustLevel.INTRODUCED, sender_level)
            elif isinstance(message, Tracer) and peer is message.orphan:
                level = TrustLevel.SELF
            else:
                continue
            held = self._keys.get(peer.domain)
            if held is not None and held.raw == peer.key and held.level >= level:
                continue  # nothing new: the common case, kept cheap
            results.append((peer.domain, self.learn(peer.domain, peer.key, level)))
        return results

    def _set(self, domain: str, raw: bytes, level: TrustLevel) -> bool:
        try:
            verifier = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            return False
        self._keys[domain] = _Entry(raw=raw, level=level, verifier=verifier)
        self._keys.move_to_end(domain)
        return True

    def _make_room(self) -> bool:
        """Forget the oldest first-use key, so a flood of invented names cannot lock out
        real newcomers; keys from better sources are never forgotten."""
        victim = next((name for name, e in self._keys.items() if e.level is TrustLevel.SELF),
                      None)
        if victim is None:
            return False
        del self._keys[victim]
        return True

    def _kept(self, domain: str, raw: bytes, level: TrustLevel) -> None:
        if self._on_learn is not None and level < TrustLevel.PINNED:
            self._on_learn(domain, raw, level)

    def status(self) -> dict[str, object]:
        """For /status: how many keys at each level, and what learning made of keys."""
        levels = {level.name.lower(): 0 for level in TrustLevel}
        for entry in self._keys.values():
            levels[entry.level.name.lower()] += 1
        return {"keys": len(self._keys), "by_level": levels, "learned": dict(self.counts),
                "tofu": self.tofu}
