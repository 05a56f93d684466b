"""The designated-MSD election of one domain (pure: messages, URS answers, ticks in; actions out).

Rules (the reasoning and the timing argument are in docs/election.md):
- The designated announces on MSD-LOCAL-MCAST and renews its URS lease
  (`PutDesignated`, ttl = 3 heartbeats) every heartbeat, and polls the URS once per
  heartbeat, half a heartbeat after its renewal, as a cross-check.
- A backup that has had no sign of life of its term's designated (an announce or claim
  heard, or a URS renewal seen) for 2 heartbeats, plus a stagger of 1/8 heartbeat per
  better-ranked daemon it knows (at most 2), claims term + 1 (`Claim` and `PutDesignated`).
- A new daemon listens for one claim window + 1 heartbeat and needs one URS answer
  before it may claim; with multicast off, the URS lease is the only source of news.
- Higher term wins; at equal terms higher (priority, msd_id) wins; a designated that
  hears better steps down at once. Lower terms are ignored, and terms only grow.
- A candidate becomes designated after a claim window (1/2 heartbeat; none without
  multicast) with no better claim AND an accepted PUT; a 409 sends it back to backup
  with the URS's term.
- The URS holding our own term for another daemon is a split brain: the weaker daemon
  steps down, the stronger bumps its term so the URS refuses the other's next renewal.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import zlib
from typing import TypeVar

from msd.errors import MsdError
from msd.messages import Announce, Claim, Peer

SILENCE_HB = 2.0  # no sign of life from the designated this long → presumed dead
SUSPECT_HB = 1.5  # a backup that missed one announce asks the URS whether it was renewed
CLAIM_WINDOW_HB = 0.5  # a candidate waits this long for a better claim
STAGGER_HB = 0.125  # claim delay per better-ranked backup, so one usually claims alone
STAGGER_RANKS = 2  # ranks past this claim together: bounds the delay (3-heartbeat budget)
LEASE_HB = 3  # the URS lease lasts this many heartbeats (whole seconds, rounded up)
GIVE_UP_HB = 2.0  # a candidate whose PUT gets no answer returns to backup after this
PEERS_MAX = 64  # daemons remembered for ranking; the oldest is forgotten first
PRIORITY_MAX = 65_535  # the codec's u16
LEASE_MAX_S = 600  # the URS's limit on a designated ttl


class Role(enum.Enum):
    """Where a daemon stands in its domain's election."""

    BACKUP = "backup"
    CANDIDATE = "candidate"
    DESIGNATED = "designated"


class StepDownReason(enum.StrEnum):
    """Why a designated MSD stopped being one."""

    HIGHER_TERM = "higher-term"  # a message or the URS names a higher term
    BETTER_CLAIM = "better-claim"  # same term, a higher (priority, msd_id) announced or claimed
    URS_REFUSED = "urs-refused"  # our lease renewal got 409: the URS holds a higher term
    URS_HOLDER = "urs-holder"  # the URS holds our term for a daemon that ranks above us


@dataclasses.dataclass(frozen=True)
class SendLocal:
    """Multicast on MSD-LOCAL-MCAST."""

    message: Announce | Claim


@dataclasses.dataclass(frozen=True)
class PutDesignated:
    """PUT /bootstrap/designated with our address, this term and this ttl (whole seconds)."""

    term: int
    ttl_s: int


@dataclasses.dataclass(frozen=True)
class BecameDesignated:
    """We are the designated MSD for `term` (repeated with a higher term after a bump)."""

    term: int


@dataclasses.dataclass(frozen=True)
class SteppedDown:
    """We stopped being designated; `term` is the term we held."""

    term: int
    reason: StepDownReason


@dataclasses.dataclass(frozen=True)
class PollUrs:
    """GET /bootstrap/designated and hand the answer to `urs_state`."""


Action = SendLocal | PutDesignated | BecameDesignated | SteppedDown | PollUrs
_M = TypeVar("_M", Announce, Claim)


def urs_holder(host: str, port: int) -> str:
    """How an election names a URS entry's holder: `host:port` as the URS reports them."""
    return f"{host}:{port}"


class Election:
    """One MSD daemon's view of its domain's election; the daemon gates on `is_designated`."""

    def __init__(
        self,
        *,
        domain: str,
        msd_id: str,
        priority: int,
        address: Peer,
        heartbeat_s: float,
        now: float,
        use_multicast: bool = True,
    ) -> None:
        if not 0 <= priority <= PRIORITY_MAX:
            raise MsdError(f"election priority {priority} must be within 0..{PRIORITY_MAX}")
        if not (math.isfinite(heartbeat_s) and 0 < heartbeat_s * LEASE_HB <= LEASE_MAX_S):
            raise MsdError(
                f"heartbeat_s {heartbeat_s} must be > 0 and at most {LEASE_MAX_S / LEASE_HB:g} s"
                f" (the URS lease, {LEASE_HB} heartbeats, is limited to {LEASE_MAX_S} s)"
            )
        self.domain = domain
        self.msd_id = msd_id
        self.priority = priority
        self.address = address
        self.holder = urs_holder(address.host, address.port)
        self.heartbeat_s = heartbeat_s
        self.use_multicast = use_multicast
        self.ttl_s = math.ceil(LEASE_HB * heartbeat_s)
        self.stale_ignored = 0  # messages of a lower term: a deposed or late daemon's words
        self._role = Role.BACKUP
        self._term = 0
        self._leader: tuple[int, str] | None = None  # best (priority, msd_id) heard for _term
        self._heard_at = -math.inf  # last sign of life of _term's designated
        # A restarted daemon first listens, so that it follows a healthy designated.
        listen = (CLAIM_WINDOW_HB + 1) * heartbeat_s if use_multicast else 0.0
        self._quiet_until = now + listen
        self._started = now
        self._urs_at = -math.inf  # when the URS last answered a poll
        self._polled_at = -math.inf
        self._renewed_at = -math.inf  # our last announce and PUT as designated
        self._window_end = math.inf
        self._give_up_at = math.inf
        self._accepted = False  # the URS accepted our PUT of _term (as candidate)
        self._peers: dict[str, tuple[int, str]] = {}  # msd_id → (priority, holder) last heard
        self._seq = 0
        # Without multicast nobody learns a rank: spread the claims by a hash of the id.
        self._hash_rank = zlib.crc32(msd_id.encode("utf-8")) % (STAGGER_RANKS + 1)

    def __repr__(self) -> str:
        return (f"<Election {self.domain} {self.msd_id} {self._role.value} term={self._term}"
                f" multicast={self.use_multicast}>")

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        """The highest term this daemon knows of (the one it holds when designated)."""
        return self._term

    @property
    def is_designated(self) -> bool:
        return self._role is Role.DESIGNATED

    # --- inputs ----------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Timers: renewals and cross-checks, the claim window, silence and the stagger."""
        hb = self.heartbeat_s
        actions: list[Action] = []
        if self._role is Role.DESIGNATED:
            if now >= self._renewed_at + hb:
                actions += self._renew(now)
            if now >= max(self._polled_at + hb, self._renewed_at + hb / 2):
                actions.append(self._poll(now))
            return actions
        if self._role is Role.CANDIDATE:
            if now >= self._give_up_at:
                # The URS never answered our PUT: wait a full silence before trying again.
                self._become_backup()
                self._heard_at = now
                return []
            return self._maybe_win(now)
        if now >= self._poll_due():
            actions.append(self._poll(now))
        return actions + self._maybe_claim(now)

    def receive(self, message: Announce | Claim, now: float) -> list[Action]:
        """An authenticated Announce or Claim heard on MSD-LOCAL-MCAST."""
        if message.sender != self.domain or message.msd_id == self.msd_id:
            return []
        self._remember(message)
        if message.term < self._term:
            self.stale_ignored += 1
            return []
        rival = (message.priority, message.msd_id)
        if message.term > self._term:
            # A weaker daemon claims while we may claim too: claim the same term, and the
            # (priority, msd_id) order decides, as if the two claims had crossed.
            counter = (
                isinstance(message, Claim) and self._role is Role.BACKUP
                and rival < (self.priority, self.msd_id)
                and now >= self._silent_until() and self._urs_fresh()
            )
            actions = self._adopt(message.term, StepDownReason.HIGHER_TERM)
            if counter:
                return actions + self._claim(now, term=message.term)
            self._leader, self._heard_at = rival, now
            return actions
        if self._role is Role.BACKUP:
            if self._leader is None or rival > self._leader:
                self._leader = rival
            self._heard_at = now  # someone holding or claiming our term is alive
            return []
        if rival > (self.priority, self.msd_id):
            actions = self._step_down(StepDownReason.BETTER_CLAIM)
            self._leader, self._heard_at = rival, now
            return actions
        if self._role is Role.DESIGNATED:
            # Answer a weaker rival at once rather than at the next heartbeat.
            return [SendLocal(self._message(Announce, now))]
        return []

    def urs_state(
        self, designated: tuple[int, str, float] | None, now: float, *, last_term: int = 0
    ) -> list[Action]:
        """The answer to PollUrs: (term, "host:port", expires_at on our clock) or None, and
        the highest term the URS ever recorded (a claim must go above it, even after the
        lease expired, so that a deposed daemon's term is never reused)."""
        self._urs_at = now
        if last_term > self._term and self._role is Role.BACKUP:
            self._term = last_term
        if designated is None:
            return self._maybe_claim(now)
        term, holder, expires_at = designated
        if term < self._term:
            return self._maybe_claim(now)  # a deposed designated's lease, soon overwritten
        actions = self._adopt(term, StepDownReason.HIGHER_TERM) if term > self._term else []
        if holder == self.holder:
            # Our own lease (or a previous incarnation's): no sign of anyone else's life.
            return actions + self._maybe_claim(now)
        if self._role is Role.BACKUP:
            renewed_at = min(expires_at - self.ttl_s, now)
            self._heard_at = max(self._heard_at, renewed_at)
            return actions + self._maybe_claim(now)
        # Another daemon holds our own term: multicast did not settle it (partition or none).
        if self._ranks_above_us(holder):
            actions += self._step_down(StepDownReason.URS_HOLDER)
            self._heard_at = now
            return actions
        if self._role is Role.CANDIDATE:
            return actions  # our first renewal overwrites the weaker entry
        # A weaker daemon renewed after us, so it still acts: a higher term makes the URS
        # refuse its next renewal (409), whether or not it ever hears us.
        self._term += 1
        self._leader = (self.priority, self.msd_id)
        return [*actions, BecameDesignated(self._term), *self._renew(now)]

    def urs_put_result(self, *, accepted: bool, term: int, now: float) -> list[Action]:
        """The outcome of PutDesignated: accepted, or 409 with the URS's current term."""
        if not accepted:
            if term <= self._term:
                return []  # refused an older term of ours; we already know better
            actions = self._adopt(term, StepDownReason.URS_REFUSED)
            self._heard_at = now  # the URS refuses only for a lease that has not expired
            return actions
        if term != self._term or self._role is not Role.CANDIDATE:
            return []
        self._accepted = True
        return self._maybe_win(now)

    def next_deadline(self) -> float:
        """When `tick` next has something to do (a shell may sleep until then)."""
        hb = self.heartbeat_s
        if self._role is Role.DESIGNATED:
            return min(self._renewed_at + hb, max(self._polled_at + hb, self._renewed_at + hb / 2))
        if self._role is Role.CANDIDATE:
            return min(self._window_end if self._accepted else math.inf, self._give_up_at)
        if self._urs_fresh():
            return min(self._poll_due(), self._claim_due())
        return self._poll_due()

    # --- transitions -------------------------------------------------------------------------

    def _maybe_claim(self, now: float) -> list[Action]:
        if self._role is not Role.BACKUP or now < self._claim_due() or not self._urs_fresh():
            return []
        return self._claim(now, term=self._term + 1)

    def _claim(self, now: float, *, term: int) -> list[Action]:
        self._term = term
        self._role = Role.CANDIDATE
        self._leader = (self.priority, self.msd_id)
        self._accepted = False
        # Without multicast nobody can hear a claim: the URS lease alone decides.
        self._window_end = now + (CLAIM_WINDOW_HB * self.heartbeat_s if self.use_multicast else 0)
        self._give_up_at = now + GIVE_UP_HB * self.heartbeat_s
        put = PutDesignated(term=self._term, ttl_s=self.ttl_s)
        if not self.use_multicast:
            return [put]
        return [SendLocal(self._message(Claim, now)), put]

    def _maybe_win(self, now: float) -> list[Action]:
        if self._role is not Role.CANDIDATE or not self._accepted or now < self._window_end:
            return []
        self._role = Role.DESIGNATED
        self._window_end = self._give_up_at = math.inf
        return [BecameDesignated(self._term), *self._renew(now)]

    def _renew(self, now: float) -> list[Action]:
        self._renewed_at = now
        put = PutDesignated(term=self._term, ttl_s=self.ttl_s)
        if not self.use_multicast:
            return [put]
        return [SendLocal(self._message(Announce, now)), put]

    def _adopt(self, term: int, reason: StepDownReason) -> list[Action]:
        actions = self._step_down(reason)
        self._term = term
        self._leader = None
        return actions

    def _step_down(self, reason: StepDownReason) -> list[Action]:
        actions: list[Action] = []
        if self._role is Role.DESIGNATED:
            actions.append(SteppedDown(self._term, reason))
        self._become_backup()
        return actions

    def _become_backup(self) -> None:
        self._role = Role.BACKUP
        self._accepted = False
        self._window_end = self._give_up_at = math.inf

    # --- helpers ---------------------------------------------------------------------------

    def _poll_due(self) -> float:
        # With multicast, ask the URS once an announce is overdue, so that its answer is in
        # before the claim; without, ask when the lease would have gone stale.
        if self.use_multicast:
            hb = self.heartbeat_s
            return max(self._polled_at + hb, self._heard_at + SUSPECT_HB * hb)
        return max(self._polled_at + self.heartbeat_s, self._claim_due())

    def _silent_until(self) -> float:
        return max(self._heard_at + SILENCE_HB * self.heartbeat_s, self._quiet_until)

    def _claim_due(self) -> float:
        return self._silent_until() + self._stagger()

    def _urs_fresh(self) -> bool:
        # A claim needs a URS answer given after the silence began (or, new, after start):
        # the designated may be alive behind a multicast partition. Without multicast the
        # answer itself must show the lease stale.
        if not self.use_multicast:
            return self._urs_at >= self._claim_due()
        return self._urs_at >= max(self._heard_at + SUSPECT_HB * self.heartbeat_s, self._started)

    def _stagger(self) -> float:
        if not self.use_multicast:
            return self._hash_rank * STAGGER_HB * self.heartbeat_s
        me = (self.priority, self.msd_id)
        leader = self._leader[1] if self._leader is not None else None
        rank = sum(
            1 for msd_id, (priority, _) in self._peers.items()
            if msd_id != leader and (priority, msd_id) > me
        )
        return min(rank, STAGGER_RANKS) * STAGGER_HB * self.heartbeat_s

    def _ranks_above_us(self, holder: str) -> bool:
        for msd_id, (priority, known) in self._peers.items():
            if known == holder:
                return (priority, msd_id) > (self.priority, self.msd_id)
        # Never heard it (no multicast, or a partition): an order both daemons can compute.
        return holder > self.holder

    def _remember(self, message: Announce | Claim) -> None:
        self._peers.pop(message.msd_id, None)
        if len(self._peers) >= PEERS_MAX:
            del self._peers[next(iter(self._peers))]
        holder = urs_holder(message.address.host, message.address.port)
        self._peers[message.msd_id] = (message.priority, holder)

    def _poll(self, now: float) -> PollUrs:
        self._polled_at = now
        return PollUrs()

    def _message(self, kind: type[_M], now: float) -> _M:
        self._seq += 1
        return kind(
            sender=self.domain, msd_id=self.msd_id, term=self._term, priority=self.priority,
            address=self.address, seq=self._seq, sent_at_ms=max(0, int(now * 1000)),
        )
