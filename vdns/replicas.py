"""The URS replicas of one domain as its DNS server sees them: healthy or not, how loaded.

A pure core, as `vdns.zone` is: `observe` takes one health check's outcome (vdns.health
does the polling), `ranked` answers which replicas to publish, least loaded first. No
sockets, no clock: the caller passes `now` (monotonic seconds).

The policy (docs/vdns.md, "Replicated URS"):
- A replica is published while it is up. It goes down after `fail_after` failed checks
  in a row, or at once when it refused the connection (nothing listens: it is dead); one
  good check brings it back.
- A replica never checked yet is published (a DNS server starting beside its URSes must
  not answer with nothing for the first second).
- Least loaded first: fewer requests in flight, then a lower recent request rate. Equal
  loads take turns, so idle replicas share the clients.
- When no replica is up, every replica is published: the checks may be what is broken,
  and a client that tries each in turn loses nothing by it (fail open).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence

DEFAULT_FAIL_AFTER = 2
RATE_RESOLUTION = 0.5  # requests/s: rates closer than this count as equal (they take turns)


class Health(enum.Enum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclasses.dataclass(frozen=True)
class Replica:
    """Where one URS replica listens."""

    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


@dataclasses.dataclass
class ReplicaState:
    """What the last checks of one replica said."""

    replica: Replica
    health: Health = Health.UNKNOWN
    failures: int = 0  # failed checks in a row
    in_flight: int = 0
    rate: float = 0.0
    checked_at: float | None = None
    error: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"replica": str(self.replica), "health": self.health.value,
                "in_flight": self.in_flight, "rate": self.rate, "error": self.error}


class ReplicaSet:
    """A domain's URS replicas, in configuration order (their names r1, r2, ... follow it)."""

    def __init__(self, replicas: Sequence[Replica], *,
                 fail_after: int = DEFAULT_FAIL_AFTER) -> None:
        if not replicas:
            raise ValueError("a replica set needs at least one replica")
        if len(set(replicas)) != len(replicas):
            raise ValueError(f"a replica is listed twice: {[str(r) for r in replicas]}")
        if fail_after < 1:
            raise ValueError("fail_after must be at least 1")
        self.states = [ReplicaState(replica) for replica in replicas]
        self.fail_after = fail_after
        self._turn = 0

    def __repr__(self) -> str:
        shown = ", ".join(f"{s.replica} {s.health.value}" for s in self.states)
        return f"<ReplicaSet {shown}>"

    @property
    def replicas(self) -> list[Replica]:
        return [state.replica for state in self.states]

    def observe(self, index: int, *, ok: bool, now: float, in_flight: int = 0,
                rate: float = 0.0, refused: bool = False, error: str | None = None) -> None:
        """One health check of replica `index`: answered (with its load), or failed."""
        state = self.states[index]
        state.checked_at = now
        if ok:
            state.health, state.failures, state.error = Health.UP, 0, None
            state.in_flight, state.rate = max(0, in_flight), max(0.0, rate)
            return
        state.failures += 1
        state.error = error
        if refused or state.failures >= self.fail_after:
            state.health = Health.DOWN

    def ranked(self) -> list[tuple[int, Replica]]:
        """(index, replica) to publish, least loaded first; each call is one DNS answer."""
        live = [(i, s) for i, s in enumerate(self.states) if s.health is not Health.DOWN]
        if not live:
            live = list(enumerate(self.states))  # fail open
        self._turn += 1
        turn = self._turn

        def load(item: tuple[int, ReplicaState]) -> tuple[int, int, int]:
            index, state = item
            # Equal loads rotate: the turn shifts which of them comes first.
            return (state.in_flight, round(state.rate / RATE_RESOLUTION),
                    (index - turn) % len(self.states))

        return [(i, s.replica) for i, s in sorted(live, key=load)]
