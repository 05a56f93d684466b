"""Every setting of one URS, with its unit and bounds, in one frozen object."""

from __future__ import annotations

import dataclasses
import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from msd.http_limits import HttpLimits
from msd.keys import parse_key_text
from msd.ratelimit import RateLimit
from urs.errors import SettingsError
from vdns.mds import DomainConfig

KIB = 1024
REGISTER_LIMIT = RateLimit(rate=20, burst=100)  # per client address, requests a second
LIST_LIMIT = RateLimit(rate=50, burst=200)


class MulticastMode(StrEnum):
    """What the domain's network offers its MSDs: any-source, source-specific, or no multicast."""

    ASM = "asm"
    SSM = "ssm"
    NONE = "none"


class GroupPort(NamedTuple):
    """A multicast group (or, for anycast, a unicast address) and its UDP port."""

    group: str
    port: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class UrsSettings:
    """One domain's URS: what it serves, where it keeps it, and the limits it enforces."""

    domain: str
    data_dir: Path
    pmcast: GroupPort
    cmcast: GroupPort
    msd_local: GroupPort
    anycast: GroupPort
    # Empty means the embedded default, SQLite at <data_dir>/urs.sqlite (filled in below).
    database_url: str = ""
    multicast_mode: MulticastMode = MulticastMode.ASM
    parent_domain: str | None = None
    parent_dns: tuple[str, int] | None = None
    # The DNS server asked for other domains' URSes, so the search page links each result to
    # its landing page; None: link to http://mcast.<domain>/<id> (the well-known port 80)
    # without asking anyone.
    dns_server: tuple[str, int] | None = None
    # Shared secret of the domain's MSDs for PUT /bootstrap/designated; None disables it.
    msd_key: str | None = dataclasses.field(default=None, repr=False)
    # The domain's Ed25519 public key (base64), published in /bootstrap for its MSDs and in
    # /bootstrap/designated for the child domains' URSes; None publishes none.
    public_key: str | None = None
    # Per client address: POST /sessions and PUT /<id>; GET /sessions (the listing).
    register_limit: RateLimit = REGISTER_LIMIT
    list_limit: RateLimit = LIST_LIMIT
    http_limits: HttpLimits = dataclasses.field(default_factory=HttpLimits)
    # Where serve() binds when it is not handed a socket.
    host: str = "127.0.0.1"
    port: int = 0
    purge_interval_s: float = 60.0
    max_body_bytes: int = 64 * KIB
    # One deadline for the whole parent lookup (DNS, connect, response).
    parent_timeout_s: float = 3.0
    # How long a parent answer (or failure) is reused: bootstrap polls must not fan out.
    parent_cache_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.domain or self.domain != self.domain.strip().lower().rstrip("."):
            raise SettingsError(f"domain {self.domain!r} must be a lower-case name, no final dot")
        object.__setattr__(self, "multicast_mode", _mode(self.multicast_mode))
        for name in ("pmcast", "cmcast", "msd_local", "anycast"):
            value = GroupPort(*getattr(self, name))
            _check_port(value.port, what=f"{name} port")
            _check_address(value.group, what=f"{name} address")
            object.__setattr__(self, name, value)
        if self.parent_dns is not None:
            host, port = self.parent_dns
            _check_port(port, what="parent_dns port")
            object.__setattr__(self, "parent_dns", (host, port))
        if self.dns_server is not None:
            host, port = self.dns_server
            _check_port(port, what="dns_server port")
            _check_address(host, what="dns_server address")
            object.__setattr__(self, "dns_server", (host, port))
        if (self.parent_domain is None) != (self.parent_dns is None):
            raise SettingsError("parent_domain and parent_dns go together (both None at the root)")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port {self.port} outside 0..65535 (0 = any free port)")
        if not 0.01 <= self.purge_interval_s <= 86400:
            raise SettingsError("purge_interval_s must be within 0.01..86400 seconds")
        if not 1 * KIB <= self.max_body_bytes <= 16 * 1024 * KIB:
            raise SettingsError("max_body_bytes must be within 1 KiB..16 MiB")
        if not 0 < self.parent_timeout_s <= 60:
            raise SettingsError("parent_timeout_s must be within (0, 60] seconds")
        if not 0 <= self.parent_cache_s <= 3600:
            raise SettingsError("parent_cache_s must be within 0..3600 seconds")
        if self.msd_key is not None and len(self.msd_key) < 16:
            raise SettingsError("msd_key must be at least 16 characters (or None to disable)")
        if self.public_key is not None:
            try:
                parse_key_text(self.public_key)
            except ValueError as exc:
                raise SettingsError(f"public_key: {exc}") from None
        if not self.database_url:
            path = (self.data_dir / "urs.sqlite").resolve()
            object.__setattr__(self, "database_url", f"sqlite+aiosqlite:///{path}")

    @property
    def is_root(self) -> bool:
        """The root domain has no parent URS to ask."""
        return self.parent_domain is None

    @classmethod
    def from_mds(
        cls,
        config: DomainConfig,
        *,
        data_dir: Path,
        multicast_mode: MulticastMode | str = MulticastMode.ASM,
        msd_key: str | None = None,
        database_url: str = "",
        public_key: str | None = None,
    ) -> UrsSettings:
        """The settings of a domain's URS as its `.mds` file describes them."""
        parent_dns = None if config.is_root else (config.parent_dns, config.parent_dns_port)
        return cls(
            domain=config.domain,
            data_dir=data_dir,
            database_url=database_url,
            pmcast=GroupPort(config.pmcast, config.pm_port),
            cmcast=GroupPort(config.cmcast, config.cm_port),
            msd_local=GroupPort(config.local_mcast, config.local_mcast_port),
            anycast=GroupPort(config.anycast, config.anycast_port),
            multicast_mode=_mode(multicast_mode),
            parent_domain=config.parent_domain,
            parent_dns=parent_dns,
            # A simulated domain's own DNS server, which forwards along the hierarchy.
            dns_server=("127.0.0.1", config.self_port),
            msd_key=msd_key,
            public_key=public_key,
            host=config.urs_ip,
            port=config.urs_port,
        )


def _mode(value: MulticastMode | str) -> MulticastMode:
    try:
        return MulticastMode(value)
    except ValueError:
        choices = ", ".join(mode.value for mode in MulticastMode)
        raise SettingsError(f"multicast_mode {value!r} is not one of {choices}") from None


def _check_port(port: int, *, what: str) -> None:
    if not 1 <= port <= 65535:
        raise SettingsError(f"{what} {port} outside 1..65535")


def _check_address(value: str, *, what: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise SettingsError(f"{what} {value!r} is not an IP address") from None
