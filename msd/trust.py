"""The daemon's side of the key ring: open it, learn from the URS, and know an introducer.

The ring itself (msd/keys.py) is pure; here are the files and the bootstrap document
around it, and which heartbeats may vouch for other domains' keys (docs/threat-model.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msd.hierarchy import Node
from msd.keys import (
    KeyFileError,
    KeyRing,
    Learned,
    TrustLevel,
    append_key_line,
    parse_key_text,
    read_key_file,
)
from msd.messages import Heartbeat, Message

log = logging.getLogger(__name__)


def open_keyring(
    *, domain: str, own: bytes, pinned: Mapping[str, bytes], known_file: Path | None,
    tofu: bool,
) -> KeyRing:
    """Our key, the pinned ones, and what an earlier run learnt, which `known_file` keeps."""
    known: dict[str, bytes] = {}
    if known_file is not None and known_file.exists():
        try:
            known = read_key_file(known_file)
        except KeyFileError as exc:
            # A damaged record of first uses must not stop the daemon: it starts afresh.
            log.error("ignoring the known keys: %s", exc)

    def keep(name: str, raw: bytes, level: TrustLevel) -> None:
        if known_file is None:
            return
        try:
            append_key_line(known_file, name, raw, note=level.name.lower())
        except OSError as exc:
            log.warning("cannot record the key of %s in %s: %s", name, known_file, exc)

    return KeyRing(domain=domain, own=own, pinned=pinned, known=known, tofu=tofu,
                   on_learn=keep)


class UrsKeys:
    """What the URS's bootstrap document says about keys: our own (checked) and the
    parent's (learnt at the URS's level). Logged once per change, not once per poll."""

    def __init__(self, ring: KeyRing, *, own: bytes) -> None:
        self._ring = ring
        self._own = own
        self._seen: tuple[object, object] = (None, None)
        self.own_mismatch = 0  # polls on which the URS published another key for us

    def update(self, bootstrap: Mapping[str, Any]) -> None:
        own_text = bootstrap.get("public_key")
        parent = bootstrap.get("parent")
        designated = bootstrap.get("parent_designated")
        parent_text = designated.get("public_key") if isinstance(designated, dict) else None
        seen, self._seen = self._seen, (own_text, (parent, parent_text))
        quiet = seen == self._seen
        if isinstance(own_text, str) and own_text and _raw(own_text) != self._own:
            self.own_mismatch += 1
            if not quiet:
                log.error("the URS publishes another key for %s than this daemon's own: "
                          "fix the URS's public key or this daemon's --domain-key-file",
                          self._ring.domain)
        if not isinstance(parent, str) or parent == "void" or not isinstance(parent_text, str):
            return
        raw = _raw(parent_text)
        if raw is None:
            if not quiet:
                log.warning("the URS gave a malformed key for the parent %s", parent)
            return
        outcome = self._ring.learn(parent, raw, TrustLevel.URS)
        if outcome is Learned.CONFLICT and not quiet:
            log.error("the URS gives %s another key than the one pinned for it", parent)
        elif outcome is Learned.REPLACED:
            log.warning("the URS replaced the key learnt on first use for %s", parent)


def is_introducer(node: Node | None, message: Message) -> bool:
    """A heartbeat of our parent (own or foster) or of an ancestor vouches for the keys of
    the ancestors above it."""
    if node is None or not isinstance(message, Heartbeat):
        return False
    sender = message.sender
    return (sender == node.parent_domain
            or (node.parent is not None and sender == node.parent.domain)
            or any(a.domain == sender for a in node.ancestors))


def _raw(text: str) -> bytes | None:
    try:
        return parse_key_text(text)
    except ValueError:
        return None
