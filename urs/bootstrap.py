"""The bootstrap document a domain's MSD daemons read, and the designated-MSD soft state.

The URS tells its MSDs the channels of their domain (PMCAST, CMCAST, MSD-LOCAL-MCAST,
anycast), the multicast mode and the parent domain; it keeps the soft state of the
domain's own designated MSD (set by the elected MSD, expiring unless refreshed) and
asks the parent domain's URS for the parent's designated MSD.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, Protocol

import aiohttp
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, ValidationError

from msd.keys import parse_key_text
from urs.errors import UrsError
from urs.metrics import UrsMetrics
from urs.settings import GroupPort, UrsSettings
from urs.store import Designated, Member, SessionStore

log = logging.getLogger(__name__)

DESIGNATED_TTL_MIN = 1
# An elected MSD refreshes well within this; a dead one is forgotten after at most 10 minutes.
DESIGNATED_TTL_MAX = 600
TERM_MAX = 2**63 - 1
# The parent's answer is a few hundred bytes; anything much larger is not a URS talking.
PARENT_REPLY_MAX_BYTES = 16 * 1024
LOCATE_MARGIN_S = 0.2


class ParentLocator(Protocol):
    """Finds the base URL (`http://host:port`) of a domain's URS.

    `deadline` is on the running loop's monotonic clock (`loop.time()`); the caller also
    enforces it, so a locator may use it only to size its own retries.
    """

    async def __call__(self, domain: str, *, deadline: float) -> str: ...


class DnsParentLocator:
    """The production locator: `mcast.<domain>` through DNS (urs.locate)."""

    def __init__(self, dns_server: tuple[str, int] | None) -> None:
        self._dns_server = dns_server

    def __repr__(self) -> str:
        return f"DnsParentLocator(dns_server={self._dns_server!r})"

    async def __call__(self, domain: str, *, deadline: float) -> str:
        # Imported here: the locator is the only user, and tests inject another one.
        from urs.locate import locate_urs

        # Leave a margin: when DNS is slow, its own error (naming the DNS server) should arrive
        # before the caller's deadline replaces it with a generic timeout, and dnspython
        # overruns its lifetime by about 0.1 s.
        left = deadline - asyncio.get_running_loop().time()
        remaining = max(left - max(0.1 * left, LOCATE_MARGIN_S), 0.01)
        location = await locate_urs(domain, dns_server=self._dns_server, timeout=remaining)
        return location.base_url


def _unicast_address(value: str) -> str:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"address {value!r} is not an IPv4 or IPv6 address") from None
    if address.is_multicast or address.is_unspecified:
        raise ValueError(f"address {value} must be a unicast address")
    return str(address)


UnicastAddress = Annotated[str, AfterValidator(_unicast_address)]


class DesignatedUpdate(BaseModel):
    """Body of PUT /bootstrap/designated: the elected MSD announces itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    address: UnicastAddress
    port: Annotated[StrictInt, Field(ge=1, le=65535)]
    term: Annotated[StrictInt, Field(ge=0, le=TERM_MAX)]
    ttl: Annotated[StrictInt, Field(ge=DESIGNATED_TTL_MIN, le=DESIGNATED_TTL_MAX)]


class MemberUpdate(BaseModel):
    """Body of PUT /bootstrap/msds/<msd_id>: one MSD daemon reports itself."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    address: UnicastAddress
    port: Annotated[StrictInt, Field(ge=1, le=65535)]
    pid: Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]
    role: Literal["designated", "candidate", "backup"]
    ttl: Annotated[StrictInt, Field(ge=DESIGNATED_TTL_MIN, le=DESIGNATED_TTL_MAX)]



class _DesignatedView(BaseModel):
    model_config = ConfigDict(extra="ignore")

    address: str
    port: Annotated[StrictInt, Field(ge=1, le=65535)]
    term: Annotated[StrictInt, Field(ge=0, le=TERM_MAX)]
    expires_at: float


def _public_key(value: str | None) -> str | None:
    if value is not None:
        parse_key_text(value)  # a ValueError becomes a ValidationError
    return value


class _DesignatedReply(BaseModel):
    # What GET /bootstrap/designated answers; unknown keys are ignored for newer parents.
    model_config = ConfigDict(extra="ignore")

    domain: str
    designated: _DesignatedView | None
    public_key: Annotated[str | None, AfterValidator(_public_key)] = None


@dataclasses.dataclass(frozen=True)
class ParentAnswer:
    """The parent's designated MSD (or None) and, when the lookup failed, why."""

    designated: dict[str, Any] | None
    error: str | None


class BootstrapService:
    """Builds the bootstrap document and keeps the designated-MSD soft state."""

    def __init__(
        self,
        settings: UrsSettings,
        *,
        store: SessionStore,
        clock: Callable[[], float],
        http: aiohttp.ClientSession,
        metrics: UrsMetrics,
        locator: ParentLocator | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._http = http
        self._metrics = metrics
        self._locator = locator or DnsParentLocator(settings.parent_dns)
        self._lock = asyncio.Lock()
        self._cached: ParentAnswer | None = None
        self._cached_until = 0.0
        self._refresh: asyncio.Task[ParentAnswer] | None = None

    def __repr__(self) -> str:
        return f"BootstrapService(domain={self._settings.domain!r}, locator={self._locator!r})"

    async def document(self, *, wait_for_parent: bool = True) -> dict[str, Any]:
        """GET /bootstrap: everything an MSD of this domain needs to start.

        Without `wait_for_parent` (the answer to an MSD's poll) the parent's designated MSD
        is the last one looked up, refreshed in the background: the poll's answer is what
        the domain's election reads, and a parent whose DNS or URS is dead (up to
        `parent_timeout_s` per lookup) must not make that answer stale."""
        settings = self._settings
        if wait_for_parent:
            parent = await self.parent_designated()
        else:
            parent = self.parent_designated_now()
        # Read after the parent's part: the lease is as fresh as the answer can make it.
        own = await self._store.get_designated(settings.domain, now=self._clock())
        return {
            "domain": settings.domain,
            "parent": settings.parent_domain or "void",
            "pmcast": _channel(settings.pmcast),
            "cmcast": _channel(settings.cmcast),
            "msd_local": _channel(settings.msd_local),
            "anycast": _channel(settings.anycast),
            "multicast_mode": settings.multicast_mode.value,
            "designated": own.to_json() if own is not None else None,
            "last_term": await self._store.last_term(settings.domain),
            "public_key": settings.public_key,
            "msds": [m.to_json() for m in await self._store.members(settings.domain,
                                                                     now=self._clock())],
            "parent_designated": parent.designated,
            "parent_error": parent.error,
        }

    async def own_designated(self) -> dict[str, Any]:
        """GET /bootstrap/designated: this domain's soft state only (never recursive)."""
        own = await self._store.get_designated(self._settings.domain, now=self._clock())
        return {
            "domain": self._settings.domain,
            "designated": own.to_json() if own is not None else None,
            "last_term": await self._store.last_term(self._settings.domain),
            "public_key": self._settings.public_key,
        }

    async def set_member(self, msd_id: str, update: MemberUpdate) -> None:
        """PUT /bootstrap/msds/<msd_id>: refresh one daemon's entry (soft state)."""
        member = Member(msd_id=msd_id, address=update.address, port=update.port,
                        pid=update.pid, role=update.role, expires_at=self._clock() + update.ttl)
        await self._store.set_member(self._settings.domain, member)

    async def set_designated(self, update: DesignatedUpdate) -> Designated:
        """PUT /bootstrap/designated; TermConflictError if a higher term holds the entry."""
        now = self._clock()
        entry = Designated(
            address=update.address,
            port=update.port,
            term=update.term,
            expires_at=now + update.ttl,
        )
        stored = await self._store.set_designated(self._settings.domain, entry, now=now)
        self._metrics.designated_updates.inc()
        return stored

    def parent_designated_now(self) -> ParentAnswer:
        """The parent's designated MSD as last looked up, without waiting: a lookup starts
        in the background when that answer is stale (or there is none yet)."""
        if self._settings.parent_domain is None:
            return ParentAnswer(designated=None, error=None)
        fresh = (self._cached is not None
                 and asyncio.get_running_loop().time() < self._cached_until)
        if not fresh and (self._refresh is None or self._refresh.done()):
            self._refresh = asyncio.create_task(self.parent_designated(),
                                                name=f"parent lookup {self._settings.domain}")
        if self._cached is not None:
            return self._cached
        return ParentAnswer(designated=None, error="the parent's URS is being looked up")

    async def close(self) -> None:
        """Stop a background lookup (at shutdown)."""
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh

    async def parent_designated(self) -> ParentAnswer:
        """The parent's designated MSD, cached for `parent_cache_s`; never raises."""
        parent = self._settings.parent_domain
        if parent is None:
            return ParentAnswer(designated=None, error=None)
        loop = asyncio.get_running_loop()
        # One lookup at a time: concurrent bootstrap requests share its answer.
        async with self._lock:
            if self._cached is not None and loop.time() < self._cached_until:
                return self._cached
            answer = await self._ask_parent(parent)
            self._cached = answer
            self._cached_until = loop.time() + self._settings.parent_cache_s
            return answer

    async def _ask_parent(self, parent: str) -> ParentAnswer:
        budget = self._settings.parent_timeout_s
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        base_url: str | None = None
        try:
            async with asyncio.timeout_at(deadline):
                base_url = await self._locator(parent, deadline=deadline)
                url = f"{base_url.rstrip('/')}/bootstrap/designated"
                async with self._http.get(
                    url, headers={"Accept": "application/json"}, allow_redirects=False
                ) as response:
                    if response.status != 200:
                        raise _ParentReplyError(f"answered HTTP {response.status}")
                    raw = await response.content.read(PARENT_REPLY_MAX_BYTES + 1)
            if len(raw) > PARENT_REPLY_MAX_BYTES:
                raise _ParentReplyError(f"answer larger than {PARENT_REPLY_MAX_BYTES} bytes")
            reply = _DesignatedReply.model_validate_json(raw)
            if reply.domain != parent:
                raise _ParentReplyError(f"answered for domain {reply.domain!r}")
        except TimeoutError:
            if base_url is None:
                error = f"locating the URS of parent domain {parent} took over {budget:g} s"
            else:
                error = f"parent URS of {parent} at {base_url} did not answer within {budget:g} s"
        except _ParentReplyError as exc:
            error = f"parent URS of {parent} at {base_url}: {exc}"
        except ValidationError:
            error = f"parent URS of {parent} at {base_url}: answer is not a designated document"
        except aiohttp.ClientError as exc:
            error = f"parent URS of {parent} at {base_url}: {type(exc).__name__}: {exc}"
        except (UrsError, OSError) as exc:
            # LocateError (a UrsError) already says which name failed and why.
            error = f"cannot reach the URS of parent domain {parent}: {exc}"
        else:
            self._metrics.parent_lookups.labels(outcome="ok").inc()
            view = reply.designated
            designated = None
            if view is not None:
                # The parent's key rides with its designated entry: what its children's MSDs
                # pin it by (docs/threat-model.md).
                designated = view.model_dump() | {"public_key": reply.public_key}
            return ParentAnswer(designated=designated, error=None)
        self._metrics.parent_lookups.labels(outcome="error").inc()
        log.warning("parent lookup failed: %s", error)
        return ParentAnswer(designated=None, error=error)


class _ParentReplyError(UrsError):
    """The parent URS answered, but not with a designated document."""


def _channel(value: GroupPort) -> dict[str, Any]:
    return {"group": value.group, "port": value.port}
