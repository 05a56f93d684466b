"""Replay protection for decoded control messages: a freshness window and per-sender order."""

from __future__ import annotations

from collections import OrderedDict
from enum import StrEnum

from msd.messages import Message

WINDOW_MS = 30_000  # how far a sender's clock may be from ours, either way, in milliseconds
REORDER_WINDOW = 64  # sequence numbers below the highest that may still arrive, once each
MAX_SENDERS = 100_000  # (sender, msd_id) pairs remembered, least recently admitted dropped first


class Refusal(StrEnum):
    """Why a message was refused; the daemon counts refusals by this value."""

    REPLAYED = "replayed"  # already admitted, or too far behind its sender's newest
    STALE = "stale"  # sent more than the window before now
    FROM_THE_FUTURE = "from the future"  # sent more than the window after now


class ReplayGuard:
    """Admits a message once, and only while fresh (pure: the caller passes now).

    Within a `term`, a sender's `seq` may arrive out of order (a heartbeat sent both by
    multicast and by unicast reaches two sockets): as in IPsec's anti-replay window, a
    seq up to REORDER_WINDOW below the newest is admitted once, remembered in a bitmap.
    A higher term starts afresh (a newly designated daemon, or one that restarted into a
    new term); a lower term is a deposed daemon's word or a replay.
    Memory is bounded: past `max_senders` the least recently admitted sender is forgotten,
    and its next message is then judged by the window alone.
    """

    __slots__ = ("_last", "max_senders", "window_ms")

    def __init__(self, *, window_ms: int = WINDOW_MS, max_senders: int = MAX_SENDERS) -> None:
        if window_ms < 0 or max_senders < 1:
            raise ValueError("window_ms must be >= 0 and max_senders >= 1")
        self.window_ms = window_ms
        self.max_senders = max_senders
        # (sender, msd_id) → (term, newest seq, bitmap of seqs admitted below the newest)
        self._last: OrderedDict[tuple[str, str], tuple[int, int, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def __repr__(self) -> str:
        return (
            f"ReplayGuard(window_ms={self.window_ms}, senders={len(self._last)}"
            f"/{self.max_senders})"
        )

    def admit(self, message: Message, *, now_ms: int) -> Refusal | None:
        """None if the message is fresh and new (it is then remembered), else why not."""
        if message.sent_at_ms < now_ms - self.window_ms:
            return Refusal.STALE
        if message.sent_at_ms > now_ms + self.window_ms:
            return Refusal.FROM_THE_FUTURE
        who = (message.sender, message.msd_id)
        term, seq = message.term, message.seq
        last = self._last.get(who)
        if last is None or term > last[0]:
            state = (term, seq, 0)
        elif term < last[0]:
            return Refusal.REPLAYED
        else:
            _, newest, seen = last
            if seq > newest:
                shift = seq - newest
                seen = ((seen << shift) | (1 << (shift - 1))) & ((1 << REORDER_WINDOW) - 1)
                state = (term, seq, seen)
            else:
                behind = newest - seq  # 0: the newest itself
                if behind == 0 or behind > REORDER_WINDOW or seen >> (behind - 1) & 1:
                    return Refusal.REPLAYED
                state = (term, newest, seen | 1 << (behind - 1))
        if last is not None:
            self._last.move_to_end(who)
        elif len(self._last) >= self.max_senders:
            self._last.popitem(last=False)
        self._last[who] = state
        return None


MAX_NONCES = 100_000  # HTTP requests between MSDs remembered within the window


class NonceCache:
    """Admits each signed HTTP request between MSDs once, and only while fresh (pure).

    A request carries its sender's clock (`sent_at_ms`) and a random nonce, both under
    the signature: a copy sent again within the window has the same nonce and is
    refused; one sent later is stale. Nonces are kept for twice the window (the sender's
    clock may run ahead or behind by one window) and at most `max_entries` of them; past
    that the oldest is forgotten.
    """

    __slots__ = ("_seen", "max_entries", "window_ms")

    def __init__(self, *, window_ms: int = WINDOW_MS, max_entries: int = MAX_NONCES) -> None:
        if window_ms < 0 or max_entries < 1:
            raise ValueError("window_ms must be >= 0 and max_entries >= 1")
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()  # → when admitted

    def __len__(self) -> int:
        return len(self._seen)

    def __repr__(self) -> str:
        return f"NonceCache(window_ms={self.window_ms}, nonces={len(self._seen)})"

    def admit(self, sender: str, nonce: str, *, sent_at_ms: int, now_ms: int) -> Refusal | None:
        """None if the request is fresh and its nonce new (it is then remembered)."""
        if sent_at_ms < now_ms - self.window_ms:
            return Refusal.STALE
        if sent_at_ms > now_ms + self.window_ms:
            return Refusal.FROM_THE_FUTURE
        while self._seen:
            oldest = next(iter(self._seen.values()))
            if oldest >= now_ms - 2 * self.window_ms:
                break
            self._seen.popitem(last=False)
        who = (sender, nonce)
        if who in self._seen:
            return Refusal.REPLAYED
        if len(self._seen) >= self.max_entries:
            self._seen.popitem(last=False)
        self._seen[who] = now_ms
        return None
