"""Replay protection for decoded control messages: a freshness window and per-sender order."""

from __future__ import annotations

from collections import OrderedDict
from enum import StrEnum

from msd.messages import Message

WINDOW_MS = 30_000  # how far a sender's clock may be from ours, either way, in milliseconds
MAX_SENDERS = 100_000  # (sender, msd_id) pairs remembered, least recently admitted dropped first


class Refusal(StrEnum):
    """Why a message was refused; the daemon counts refusals by this value."""

    REPLAYED = "replayed"  # not newer than the last admitted (term, seq) of its sender
    STALE = "stale"  # sent more than the window before now
    FROM_THE_FUTURE = "from the future"  # sent more than the window after now


class ReplayGuard:
    """Admits a message once, in order, and only while fresh (pure: the caller passes now).

    A sender's messages must carry strictly increasing `seq` within a `term`; a higher term
    starts afresh (a newly designated daemon, or one that restarted into a new term).
    Memory is bounded: past `max_senders` the least recently admitted sender is forgotten,
    and its next message is then judged by the window alone.
    """

    __slots__ = ("_last", "max_senders", "window_ms")

    def __init__(self, *, window_ms: int = WINDOW_MS, max_senders: int = MAX_SENDERS) -> None:
        if window_ms < 0 or max_senders < 1:
            raise ValueError("window_ms must be >= 0 and max_senders >= 1")
        self.window_ms = window_ms
        self.max_senders = max_senders
        self._last: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()

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
        stamp = (message.term, message.seq)
        last = self._last.get(who)
        # Tuple order is the rule: a higher term wins whatever its seq; within a term,
        # only a higher seq. A lower term is a deposed daemon's word or a replay.
        if last is not None:
            if stamp <= last:
                return Refusal.REPLAYED
            self._last.move_to_end(who)
        elif len(self._last) >= self.max_senders:
            self._last.popitem(last=False)
        self._last[who] = stamp
        return None
