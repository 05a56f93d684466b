"""The election core on a simulated MSD-LOCAL-MCAST and URS lease: one designated, fast takeover."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import random
from collections.abc import Callable

import pytest

from msd.election import (
    Action,
    BecameDesignated,
    Election,
    PollUrs,
    PutDesignated,
    Role,
    SendLocal,
    StepDownReason,
    SteppedDown,
    urs_holder,
)
from msd.errors import MsdError
from msd.messages import Announce, Claim, Peer

HB = 2.0  # not 1, so that nothing silently assumes one-second heartbeats
DT = HB / 10
TAKEOVER_LIMIT = 3 * HB
DOMAIN = "dom00.example.org"
MODES = pytest.mark.parametrize("multicast", [True, False], ids=["multicast", "urs-only"])


@dataclasses.dataclass
class FakeUrs:
    """The designated soft state with the URS's rule: 409 only for an unexpired higher term."""

    entry: tuple[int, str, float] | None = None

    def get(self, now: float) -> tuple[int, str, float] | None:
        return self.entry if self.entry is not None and self.entry[2] > now else None

    def put(self, *, term: int, holder: str, ttl_s: int, now: float) -> tuple[bool, int]:
        current = self.get(now)
        if current is not None and current[0] > term:
            return False, current[0]
        self.entry = (term, holder, now + ttl_s)
        return True, term


@dataclasses.dataclass
class Node:
    election: Election
    alive: bool = True
    group: int = 0  # multicast partition: messages reach only the same group
    urs_ok: bool = True  # False: every request to the URS is lost
    last_term: int = 0
    log: list[tuple[float, Action]] = dataclasses.field(default_factory=list)

    def became(self) -> list[float]:
        return [t for t, a in self.log if isinstance(a, BecameDesignated)]

    def stepped_down(self) -> list[SteppedDown]:
        return [a for _, a in self.log if isinstance(a, SteppedDown)]


class Sim:
    """N elections on one virtual clock, a lossy local multicast and one URS, in lock step."""

    def __init__(self, n: int, *, multicast: bool = True, loss: float = 0.0, seed: int = 1,
                 shuffle: bool = False, urs_delay: int = 0):
        self.multicast = multicast
        self.urs_delay = urs_delay  # steps before a URS answer reaches the daemon
        # (due step, daemon, the input carrying the answer as the URS gave it when asked)
        self.pending: list[tuple[int, Node, Callable[[], list[Action]]]] = []
        self.loss = loss
        self.shuffle = shuffle  # tick the daemons in a random order each step
        self.rng = random.Random(seed)
        self.urs = FakeUrs()
        self.k = 0
        self.nodes = [self.make(i) for i in range(n)]
        self.max_designated = 0

    @property
    def now(self) -> float:
        return self.k * DT

    def make(self, i: int) -> Node:
        election = Election(
            domain=DOMAIN, msd_id=f"msd-{i}", priority=100 + 10 * i,
            address=Peer(domain=DOMAIN, host="127.0.0.1", port=7000 + i),
            heartbeat_s=HB, now=self.now, use_multicast=self.multicast,
        )
        return Node(election)

    def restart(self, i: int) -> None:
        self.nodes[i] = self.make(i)

    def designated(self) -> list[Node]:
        return [n for n in self.nodes if n.alive and n.election.is_designated]

    def step(self) -> None:
        self.k += 1
        due = [p for p in self.pending if p[0] <= self.k]
        self.pending = [p for p in self.pending if p[0] > self.k]
        for _, node, deliver in due:
            if node.alive:
                self.feed(node, deliver())
        order = list(self.nodes)
        if self.shuffle:
            self.rng.shuffle(order)
        for node in order:
            if node.alive:
                self.feed(node, node.election.tick(self.now))
        self.max_designated = max(self.max_designated, len(self.designated()))

    def run(self, heartbeats: float, *, one_designated: bool = False) -> None:
        for _ in range(round(heartbeats * HB / DT)):
            self.step()
            if one_designated:
                assert len(self.designated()) == 1, self.nodes

    def run_until_designated(self, limit_hb: float) -> float:
        start = self.now
        while not self.designated():
            assert self.now - start <= limit_hb * HB, self.nodes
            self.step()
        return self.now - start

    def feed(self, first: Node, actions: list[Action]) -> None:
        queue = collections.deque([(first, actions)])
        now = self.now
        while queue:
            node, batch = queue.popleft()
            # Every state change happened in the input that produced this batch.
            assert node.election.term >= node.last_term, "terms only grow"
            node.last_term = node.election.term
            for action in batch:
                node.log.append((now, action))
                if isinstance(action, SendLocal):
                    assert self.multicast, "no SendLocal without multicast"
                    for other in self.nodes:
                        if (other is not node and other.alive and other.group == node.group
                                and self.rng.random() >= self.loss):
                            queue.append((other, other.election.receive(action.message, now)))
                elif isinstance(action, PutDesignated) and node.urs_ok:
                    put = self.urs.put(
                        term=action.term, holder=node.election.holder, ttl_s=action.ttl_s, now=now
                    )
                    self.answer(queue, node, put=put)
                elif isinstance(action, PollUrs) and node.urs_ok:
                    self.answer(queue, node, state=self.urs.get(now))

    def answer(self, queue: collections.deque[tuple[Node, list[Action]]], node: Node, *,
               put: tuple[bool, int] | None = None,
               state: tuple[int, str, float] | None = None) -> None:
        """A URS answer, as the URS gave it when asked: at once, or `urs_delay` steps later."""
        election = node.election

        def deliver() -> list[Action]:
            if put is not None:
                return election.urs_put_result(accepted=put[0], term=put[1], now=self.now)
            return election.urs_state(state, self.now)

        if self.urs_delay:
            self.pending.append((self.k + self.urs_delay, node, deliver))
        else:
            queue.append((node, deliver()))


def _kill_designated(sim: Sim) -> Node:
    (victim,) = sim.designated()
    victim.alive = False
    return victim


def _claims_since(sim: Sim, start: float) -> int:
    return sum(
        1 for node in sim.nodes for t, a in node.log
        if t >= start and isinstance(a, SendLocal) and isinstance(a.message, Claim)
    )


# --- whole domains -----------------------------------------------------------------------------


@MODES
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_exactly_one_designated_once_settled(n: int, multicast: bool) -> None:
    sim = Sim(n, multicast=multicast)
    sim.run_until_designated(3)
    sim.run(2)
    sim.run(30, one_designated=True)
    (winner,) = sim.designated()
    if multicast:  # everyone claims together at start: the highest priority wins
        assert winner.election.msd_id == f"msd-{n - 1}"
        assert sim.max_designated == 1
    entry = sim.urs.get(sim.now)  # the designated wrote itself into the URS soft state
    assert entry is not None and entry[:2] == (winner.election.term, winner.election.holder)
    assert all(n.election.term == winner.election.term for n in sim.nodes)
    for node in sim.nodes:  # the URS is asked at most once per heartbeat per daemon
        polls = [t for t, a in node.log if isinstance(a, PollUrs)]
        assert all(b - a >= HB - 1e-9 for a, b in itertools.pairwise(polls))


@MODES
@pytest.mark.parametrize("n", [2, 3, 5])
def test_takeover_within_three_heartbeats(n: int, multicast: bool) -> None:
    # Kill the designated at every phase of its heartbeat; the worst case is just after it
    # announced and renewed, when the backups' silence starts at the moment of death.
    times = []
    for phase in range(10):
        sim = Sim(n, multicast=multicast, seed=phase)
        sim.run_until_designated(3)
        sim.run(5 + phase / 10)
        old = _kill_designated(sim)
        killed_at = sim.now
        times.append(sim.run_until_designated(TAKEOVER_LIMIT / HB))
        sim.run(3, one_designated=True)
        (new,) = sim.designated()
        assert new.election.term > old.election.term
        if multicast:  # the stagger lets the best-placed backup claim alone
            assert _claims_since(sim, killed_at) == 1
        # A second death in a row is handled the same way (n > 2 leaves a backup).
        if n > 2:
            _kill_designated(sim)
            times.append(sim.run_until_designated(TAKEOVER_LIMIT / HB))
            sim.run(3, one_designated=True)
    assert max(times) <= TAKEOVER_LIMIT
    # Nobody claims before 2 silent heartbeats (then a claim window, with multicast) from the
    # last renewal, which is at most one heartbeat before the death.
    assert min(times) >= (1.5 if multicast else 1.0) * HB - 1e-9


def test_takeover_when_the_best_backups_died_too() -> None:
    # The last-ranked backup waits the longest stagger and still makes the bound.
    times = []
    for phase in range(10):
        sim = Sim(5, seed=phase)
        sim.run_until_designated(3)
        sim.run(5 + phase / 10)
        for node in sim.nodes[1:]:  # msd-4 is designated; msd-3 and msd-2 rank above msd-1
            node.alive = False
        sim.nodes[1].alive = True
        killed_at = sim.now
        times.append(sim.run_until_designated(TAKEOVER_LIMIT / HB))
        # msd-0 ranks lower still but its stagger is capped: both claim, priority decides.
        assert sim.designated() == [sim.nodes[1]]
        assert _claims_since(sim, killed_at) == 2
    assert max(times) <= TAKEOVER_LIMIT


@MODES
@pytest.mark.parametrize("n", [2, 3, 5])
def test_restarted_old_designated_does_not_depose_the_new_one(n: int, multicast: bool) -> None:
    sim = Sim(n, multicast=multicast)
    sim.run_until_designated(3)
    sim.run(3)
    old = _kill_designated(sim)
    index = sim.nodes.index(old)
    sim.run_until_designated(3)
    sim.run(2)
    (new,) = sim.designated()
    sim.run(5)  # the old one's lease has long expired: the URS shows the new one alone
    sim.restart(index)
    sim.run(20, one_designated=True)
    assert sim.designated() == [new]
    assert sim.nodes[index].became() == []
    assert sim.nodes[index].election.term == new.election.term


@MODES
def test_restart_while_the_old_lease_is_still_live(multicast: bool) -> None:
    # The designated dies and comes back at once, before anyone took over.
    sim = Sim(3, multicast=multicast)
    sim.run_until_designated(3)
    sim.run(3)
    old = _kill_designated(sim)
    index = sim.nodes.index(old)
    sim.restart(index)
    sim.run_until_designated(4)
    sim.run(20, one_designated=True)
    assert max(n.election.term for n in sim.nodes) > old.election.term


def test_split_brain_at_equal_terms_settles_through_the_urs() -> None:
    # Multicast partitioned from the start: both halves claim term 1 and the URS accepts both.
    sim = Sim(3)
    sim.nodes[0].group = 1
    sim.run(4)
    assert sim.max_designated == 2
    sim.run(1)
    assert len(sim.designated()) == 1  # the URS cross-check settled it within a heartbeat
    sim.nodes[0].group = 0
    sim.run(20, one_designated=True)
    losers = [n for n in sim.nodes if n.stepped_down()]
    assert len(losers) == 1
    assert losers[0].stepped_down()[0].reason is StepDownReason.URS_HOLDER


def test_split_brain_from_a_partition_heals_to_one() -> None:
    sim = Sim(3)
    sim.run_until_designated(3)
    sim.run(3)
    (old,) = sim.designated()
    old.group, old.urs_ok = 1, False  # cut off from its peers and from the URS
    sim.run(5)
    assert len(sim.designated()) == 2  # the others took over; the old one cannot know
    (new,) = [n for n in sim.designated() if n is not old]
    assert new.election.term > old.election.term
    old.group, old.urs_ok = 0, True
    sim.run(0.5)
    assert sim.designated() == [new]
    (step,) = old.stepped_down()
    assert step.reason in (StepDownReason.HIGHER_TERM, StepDownReason.URS_REFUSED)
    assert not old.election.is_designated
    sim.run(20, one_designated=True)


@pytest.mark.parametrize("urs_delay", [0, 2])
def test_lossy_multicast_keeps_one_designated(urs_delay: int) -> None:
    # 20 % loss: backups miss announces now and then, but the URS shows the lease renewed.
    sim = Sim(5, loss=0.2, seed=3, shuffle=True, urs_delay=urs_delay)
    sim.run_until_designated(4)
    sim.run(3)
    (first,) = sim.designated()
    sim.run(100, one_designated=True)
    assert sim.designated() == [first]


def test_urs_only_simultaneous_claims_settle() -> None:
    # A URS round trip longer than the stagger: several daemons see no lease, PUT term 1 and
    # are accepted (the URS takes an equal term). The cross-check leaves one.
    sim = Sim(5, multicast=False, urs_delay=2)
    sim.run(2)
    assert sim.max_designated >= 2
    sim.run(2)
    sim.run(20, one_designated=True)
    (winner,) = sim.designated()
    for node in sim.nodes:
        if node.became() and node is not winner:
            assert node.stepped_down()[0].reason in (
                StepDownReason.URS_REFUSED, StepDownReason.URS_HOLDER
            )


def test_event_driven_clock_elects_one() -> None:
    # The 10,000-domain simulator jumps from deadline to deadline instead of stepping.
    sim = Sim(3)
    deadline_log = []
    for _ in range(500):
        deadline = min(n.election.next_deadline() for n in sim.nodes if n.alive)
        sim.k = max(sim.k + 1, math.ceil(max(deadline, 0.0) / DT - 1e-9))
        for node in sim.nodes:
            if node.alive and node.election.next_deadline() <= sim.now:
                sim.feed(node, node.election.tick(sim.now))
        deadline_log.append(sim.now)
        if sim.now > 40 * HB:
            break
    assert len(sim.designated()) == 1
    assert len(deadline_log) < 40 * 10  # fewer wake-ups than fixed steps


# --- single rules --------------------------------------------------------------------------------


def _election(*, priority: int = 100, msd_id: str = "msd-a", multicast: bool = True,
              now: float = 0.0) -> Election:
    return Election(
        domain=DOMAIN, msd_id=msd_id, priority=priority,
        address=Peer(domain=DOMAIN, host="127.0.0.1", port=7000),
        heartbeat_s=HB, now=now, use_multicast=multicast,
    )


def _announce(*, term: int, priority: int = 50, msd_id: str = "msd-b", sender: str = DOMAIN,
              kind: type[Announce] | type[Claim] = Announce) -> Announce | Claim:
    return kind(sender=sender, msd_id=msd_id, term=term, priority=priority,
                address=Peer(domain=DOMAIN, host="127.0.0.1", port=7001))


def _role(election: Election) -> Role:
    # A call, not the property, so that mypy does not keep an earlier assert's narrowing.
    return election.role


def _designated(election: Election, *, term: int = 1) -> list[Action]:
    """Drive a lone election to DESIGNATED at `term` through an empty URS."""
    election.urs_state(None, 0.0)
    actions = election.tick(3 * HB)
    assert any(isinstance(a, PutDesignated) for a in actions)
    election.urs_put_result(accepted=True, term=1, now=3 * HB)
    actions = election.tick(4 * HB)
    assert election.is_designated and election.term == 1
    if term > 1:
        election.receive(_announce(term=term - 1, priority=0, kind=Claim), 4 * HB)
    return actions


def test_new_daemon_listens_before_claiming() -> None:
    election = _election()
    assert election.tick(0.0) == [PollUrs()]
    assert election.urs_state(None, 0.0) == []
    quiet = (0.5 + 1) * HB
    assert all(isinstance(a, PollUrs) for a in election.tick(quiet - DT))
    actions = election.tick(quiet)
    assert _role(election) is Role.CANDIDATE and election.term == 1
    claim, put = actions
    assert isinstance(claim, SendLocal) and isinstance(claim.message, Claim)
    assert put == PutDesignated(term=1, ttl_s=math.ceil(3 * HB))


@MODES
def test_a_claim_goes_above_the_highest_term_the_urs_remembers(multicast: bool) -> None:
    """A domain whose lease expired long ago (its daemons all died) must not reuse a term:
    a deposed daemon still acting at that term would be indistinguishable."""
    election = _election(multicast=multicast)
    election.tick(0.0)
    actions = election.urs_state(None, 0.0, last_term=7)  # URS-only may claim at once
    actions += election.tick((0.5 + 1) * HB)
    assert PutDesignated(term=8, ttl_s=math.ceil(3 * HB)) in actions
    assert not any(isinstance(a, PutDesignated) and a.term <= 7 for a in actions)
    election.urs_put_result(accepted=True, term=8, now=(0.5 + 1) * HB)
    election.tick(3 * HB)
    assert election.is_designated and election.term == 8
    election.urs_state(None, 3 * HB, last_term=2)  # an older floor changes nothing
    assert election.term == 8


def test_no_claim_without_a_urs_answer() -> None:
    election = _election()
    election.tick(0.0)
    assert all(not isinstance(a, PutDesignated) for a in election.tick(10 * HB))
    assert _role(election) is Role.BACKUP


def test_designated_renews_every_heartbeat_and_cross_checks() -> None:
    election = _election()
    became = _designated(election)
    assert became[0] == BecameDesignated(1)
    assert [type(a) for a in became[1:]] == [SendLocal, PutDesignated]
    assert election.tick(4.5 * HB) == [PollUrs()]
    actions = election.tick(5 * HB)
    assert [type(a) for a in actions] == [SendLocal, PutDesignated]
    assert actions[1] == PutDesignated(term=1, ttl_s=6)


def test_messages_of_other_domains_and_our_own_are_ignored() -> None:
    election = _election()
    _designated(election)
    assert election.receive(_announce(term=9, sender="other.example.org"), 5.0) == []
    assert election.receive(_announce(term=9, msd_id="msd-a"), 5.0) == []
    assert election.is_designated and election.term == 1


def test_stale_announce_is_ignored_and_counted() -> None:
    election = _election()
    _designated(election)
    election.receive(_announce(term=5, priority=0), 5.0)  # adopt 5 (a higher term deposes us)
    assert election.receive(_announce(term=3, priority=999), 5.0) == []
    assert election.term == 5 and election.stale_ignored == 1


def test_higher_term_deposes_at_once() -> None:
    election = _election()
    _designated(election)
    actions = election.receive(_announce(term=2, priority=0), 5.0)
    assert actions == [SteppedDown(1, StepDownReason.HIGHER_TERM)]
    assert not election.is_designated and election.term == 2
    assert "backup" in repr(election) and "term=2" in repr(election)


@pytest.mark.parametrize("kind", [Announce, Claim])
def test_equal_term_better_rival_wins(kind: type[Announce] | type[Claim]) -> None:
    election = _election(priority=100)
    _designated(election)
    actions = election.receive(_announce(term=1, priority=200, kind=kind), 5.0)
    assert actions == [SteppedDown(1, StepDownReason.BETTER_CLAIM)]
    assert _role(election) is Role.BACKUP and election.term == 1


def test_equal_term_weaker_rival_is_answered() -> None:
    election = _election(priority=100)
    _designated(election)
    (reply,) = election.receive(_announce(term=1, priority=100, msd_id="msd-0"), 5.0)
    assert isinstance(reply, SendLocal) and isinstance(reply.message, Announce)
    assert election.is_designated


def test_candidate_yields_to_a_better_claim_and_a_409() -> None:
    election = _election(priority=100)
    election.urs_state(None, 0.0)
    election.tick(3 * HB)
    assert _role(election) is Role.CANDIDATE
    assert election.receive(_announce(term=1, priority=101, kind=Claim), 3 * HB) == []
    assert _role(election) is Role.BACKUP
    election.urs_state(None, 7 * HB)
    election.tick(7 * HB)
    assert _role(election) is Role.CANDIDATE and election.term == 2
    assert election.urs_put_result(accepted=False, term=7, now=7 * HB) == []
    assert _role(election) is Role.BACKUP and election.term == 7


def test_designated_refused_by_the_urs_steps_down() -> None:
    election = _election()
    _designated(election)
    actions = election.urs_put_result(accepted=False, term=4, now=5 * HB)
    assert actions == [SteppedDown(1, StepDownReason.URS_REFUSED)]
    assert election.term == 4 and not election.is_designated


def test_urs_holder_at_our_term() -> None:
    # A stronger holder (by address, never heard on multicast) deposes us ...
    election = _election()
    _designated(election)
    actions = election.urs_state((1, urs_holder("127.0.0.1", 7999), 100.0), 5 * HB)
    assert actions == [SteppedDown(1, StepDownReason.URS_HOLDER)]
    # ... a weaker one makes us bump the term, so that the URS refuses its next renewal.
    election = _election()
    _designated(election)
    actions = election.urs_state((1, urs_holder("127.0.0.0", 7000), 100.0), 5 * HB)
    assert actions[0] == BecameDesignated(2)
    assert PutDesignated(term=2, ttl_s=6) in actions
    assert election.is_designated and election.term == 2


def test_urs_only_mode_never_multicasts_and_claims_on_a_stale_lease() -> None:
    election = _election(multicast=False, msd_id="msd-x")
    assert election.tick(election.next_deadline()) == [PollUrs()]
    holder = urs_holder("127.0.0.1", 7001)
    # A lease renewed just now: wait; one renewed over 2 heartbeats ago: claim term + 1.
    assert election.urs_state((4, holder, 0.0 + 6), 0.0) == []
    assert _role(election) is Role.BACKUP and election.term == 4
    for action in election.tick(election.next_deadline()):
        assert isinstance(action, PollUrs)
    now = election.next_deadline()
    actions = election.urs_state((4, holder, 0.0 + 6), now)
    assert actions == [PutDesignated(term=5, ttl_s=6)]
    actions = election.urs_put_result(accepted=True, term=5, now=now)
    assert actions[0] == BecameDesignated(5)
    assert not any(isinstance(a, SendLocal) for a in actions)


def test_candidate_without_urs_answer_gives_up() -> None:
    election = _election()
    election.urs_state(None, 0.0)
    election.tick(3 * HB)
    assert _role(election) is Role.CANDIDATE
    election.tick(3 * HB + 2 * HB)
    assert _role(election) is Role.BACKUP and election.term == 1


@pytest.mark.parametrize(
    ("priority", "heartbeat_s"), [(-1, 1.0), (70_000, 1.0), (1, 0.0), (1, math.nan), (1, 201.0)]
)
def test_bad_settings_are_refused(priority: int, heartbeat_s: float) -> None:
    with pytest.raises(MsdError):
        Election(domain=DOMAIN, msd_id="m", priority=priority,
                 address=Peer(domain=DOMAIN, host="127.0.0.1", port=7000),
                 heartbeat_s=heartbeat_s, now=0.0)
