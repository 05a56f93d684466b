"""Run a whole hierarchy of `.mds` domains on one host: each domain's DNS server and URS.

Every socket is bound before anything serves, so a clash is reported up front and
nothing is left half started; with `ephemeral_ports` every port is taken from the
kernel (port 0) and the configs are rewritten to match, which is how tests run the
dissertation's hierarchies without fixed ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype
from aiohttp import ClientError, ClientSession, ClientTimeout, web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from msd.api import ApiLimits
from msd.http_limits import HttpLimits
from msd.keys import (
    generate_private_key,
    key_line,
    key_text,
    load_private_key,
    public_bytes,
    write_private_key,
)
from msd.ratelimit import RateLimit
from msd.relay import Delay
from msd.store import sqlite_url
from urs.app import create_app, make_runner, start_site
from urs.settings import UrsSettings
from vdns.errors import VdnsError
from vdns.mds import DomainConfig
from vdns.msds import DomainMsds, MsdLaunch
from vdns.replicas import Replica
from vdns.server import DnsServer
from vdns.sockets import bind_dns_sockets, remap_ports
from vdns.startorder import Start

log = logging.getLogger(__name__)

MULTICAST_MODES = ("asm", "ssm", "none")
KEY_TRUST = ("tofu", "pinned")
MAX_MSDS_PER_DOMAIN = 16
MAX_URS_REPLICAS = 16
DOMAIN_PLACEHOLDER = "{domain}"  # in a database URL: each domain's own database


@dataclasses.dataclass
class UrsReplica:
    """One URS process (here: an aiohttp runner) of a domain; all share the domain's database."""

    runner: web.AppRunner
    host: str
    port: int
    alive: bool = True

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def kill(self) -> None:
        """Stop serving at once: its port refuses connections from now on."""
        if self.alive:
            self.alive = False
            await self.runner.cleanup()


DOMAIN_KEY_FILE = "domain.key"  # the domain's Ed25519 private key, in its data directory
PINNED_KEYS_FILE = "pinned.keys"  # every domain's public key, for --key-trust pinned


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """Limits for every server of a hierarchy (None: each server's defaults)."""

    http: HttpLimits | None = None  # URS and MSD: slow and greedy connections
    msd_api: ApiLimits | None = None  # MSD: per-address registration and search rates
    urs_register: RateLimit | None = None  # URS: POST /sessions and PUT /<id>
    urs_list: RateLimit | None = None  # URS: GET /sessions

    @classmethod
    def unlimited(cls) -> ServerLimits:
        """No per-address rate limit anywhere (rate 0): for a hierarchy whose one client is
        a benchmark or an experiment on this host, which the limits would throttle."""
        off = RateLimit(rate=0, burst=1)
        return cls(msd_api=ApiLimits(register=off, search=off), urs_register=off, urs_list=off)


@dataclasses.dataclass
class RunningDomain:
    """One domain's servers while the hierarchy runs."""

    config: DomainConfig
    dns: DnsServer
    urs: web.AppRunner  # the first URS replica's, at the .mds file's URSIP:URSPort
    msds: DomainMsds | None = None
    replicas: list[UrsReplica] = dataclasses.field(default_factory=list)  # every URS replica

    @property
    def dns_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.config.self_port)

    @property
    def urs_url(self) -> str:
        return f"http://{self.config.urs_ip}:{self.config.urs_port}"


class Hierarchy:
    """Start, check and stop every domain of a hierarchy in this process."""

    def __init__(
        self,
        configs: Sequence[DomainConfig],
        *,
        data_dir: Path,
        multicast_mode: str = "asm",
        ephemeral_ports: bool = False,
        msds: int = 0,
        msd_in_process: bool = False,
        heartbeat_s: float = 1.0,
        alpha: float = 0.1,
        beta: float = 0.1,
        refresh_every: int = 10,
        multicast_blocked: Sequence[str] = (),
        interface: str = "127.0.0.1",
        inter_domain_delay: Delay | None = None,
        database_url: str | None = None,
        urs_replicas: int = 1,
        health_interval_s: float = 1.0,
        sessions: bool = True,
        key_trust: str = "tofu",
        limits: ServerLimits | None = None,
    ) -> None:
        """`sessions=False` runs the MSDs without a session store: the tree alone (the
        stability experiment), and no database to open while other daemons run."""
        if multicast_mode not in MULTICAST_MODES:
            raise VdnsError(f"multicast mode must be one of {', '.join(MULTICAST_MODES)}")
        if key_trust not in KEY_TRUST:
            raise VdnsError(f"key trust must be one of {', '.join(KEY_TRUST)}")
        self.key_trust = key_trust
        self.limits = limits or ServerLimits()
        if not 0 <= msds <= MAX_MSDS_PER_DOMAIN:
            raise VdnsError(f"--msds must be 0..{MAX_MSDS_PER_DOMAIN}, got {msds}")
        if not 1 <= urs_replicas <= MAX_URS_REPLICAS:
            raise VdnsError(f"--urs-replicas must be 1..{MAX_URS_REPLICAS}, got {urs_replicas}")
        # Replica 0 listens at the .mds file's URSPort, the others on free ports; with more
        # than one, each DNS server checks its domain's replicas and answers with the healthy
        # ones, least loaded first.
        self.urs_replicas = urs_replicas
        self.health_interval_s = health_interval_s
        self._configs = list(configs)
        self.data_dir = data_dir
        self.multicast_mode = multicast_mode
        self.ephemeral_ports = ephemeral_ports
        self.msds = msds
        self.msd_in_process = msd_in_process
        self.heartbeat_s = heartbeat_s
        self.alpha, self.beta = alpha, beta
        self.refresh_every = refresh_every
        self.interface = interface
        if inter_domain_delay is not None and not msd_in_process:
            raise VdnsError("injected delays need in-process MSDs (msd_in_process=True)")
        self.inter_domain_delay = inter_domain_delay
        self.sessions = sessions
        self.multicast_blocked = frozenset(multicast_blocked)
        unknown = self.multicast_blocked - {c.domain for c in self._configs}
        if unknown:
            raise VdnsError(f"no such domain to block multicast for: {', '.join(sorted(unknown))}")
        if (database_url is not None and DOMAIN_PLACEHOLDER not in database_url
                and len(self._configs) > 1):
            raise VdnsError(f"--database: a hierarchy of {len(self._configs)} domains needs "
                            f"one database per domain; put {DOMAIN_PLACEHOLDER} in the URL")
        self.database_url = database_url
        self.domains: dict[str, RunningDomain] = {}

    def __repr__(self) -> str:
        return f"<Hierarchy domains={len(self._configs)} running={len(self.domains)}>"

    @property
    def root(self) -> RunningDomain:
        return next(d for d in self.domains.values() if d.config.is_root)

    async def start(self, *, msds_now: bool = True) -> None:
        """Bind every socket, then serve; on any failure nothing is left running.

        `msds_now=False` starts the DNS servers and URSs only; the MSD daemons then start
        per domain (`start_domain_msds`), e.g. in a start order (`start_in_order`)."""
        sockets: list[socket.socket] = []
        try:
            bound = self._bind_all(sockets)
            configs = self._configs
            if self.ephemeral_ports:
                configs = remap_ports(configs, bound.port_map)
            for config in configs:
                udp, tcp = bound.dns[config.domain]
                urs_socks = bound.urs[config.domain]
                addresses = [Replica(config.urs_ip, sock.getsockname()[1]) for sock in urs_socks]
                dns_server = DnsServer(
                    config, urs_replicas=addresses if len(addresses) > 1 else (),
                    health_interval_s=self.health_interval_s)
                await dns_server.start(udp_sock=udp, tcp_sock=tcp)
                replicas = [UrsReplica(await self._start_urs(config, sock), where.address,
                                       where.port)
                            for sock, where in zip(urs_socks, addresses, strict=True)]
                self.domains[config.domain] = RunningDomain(config, dns_server,
                                                            replicas[0].runner,
                                                            replicas=replicas)
                log.info("domain %s: DNS 127.0.0.1:%d, URS %s:%d", config.domain,
                         config.self_port, config.urs_ip, config.urs_port)
            if self.msds and msds_now:
                for name in self.domains:
                    await self.start_domain_msds(name)
        except BaseException:
            await self.close()
            for sock in sockets:
                sock.close()
            raise

    async def start_domain_msds(self, domain: str) -> None:
        """Start one domain's MSD daemons (its DNS server and URS already serve)."""
        running = self.domains[domain]
        if running.msds is not None:
            return
        hierarchy_key = _secret_file(self.data_dir / "hierarchy.key")
        pinned = None
        if self.key_trust == "pinned":
            # The administrator's way: every domain's public key, pinned; nothing learnt.
            pinned = self.data_dir / PINNED_KEYS_FILE
            lines = [key_line(r.config.domain, public_bytes(load_private_key(
                self.data_dir / r.config.domain / DOMAIN_KEY_FILE)))
                for r in self.domains.values()]
            pinned.write_text("".join(f"{line}\n" for line in lines))
        domain_dir = self.data_dir / running.config.domain
        launch = MsdLaunch(
            urs_url=running.urs_url, msd_key_file=domain_dir / "msd.key",
            hierarchy_key_file=hierarchy_key, log_dir=domain_dir,
            domain_key_file=domain_dir / DOMAIN_KEY_FILE, pinned_keys_file=pinned,
            heartbeat_s=self.heartbeat_s, alpha=self.alpha, beta=self.beta,
            refresh_every=self.refresh_every,
            in_process=self.msd_in_process, interface=self.interface,
            multicast=running.config.domain not in self.multicast_blocked,
            database_url=(self.domain_database(running.config.domain)
                          if self.sessions else None),
            inter_domain_delay=self.inter_domain_delay,
            urs_fallbacks=tuple(r.url for r in running.replicas[1:]),
            api_limits=self.limits.msd_api, http_limits=self.limits.http)
        running.msds = DomainMsds(launch, domain=running.config.domain, count=self.msds)
        await running.msds.start()

    async def start_in_order(
        self, starts: Sequence[Start], *, on_start: Callable[[Start], None] | None = None,
    ) -> dict[str, float]:
        """The dissertation's controller: start each domain's MSDs at its time (seconds after
        the call, on the monotonic clock; `vdns.startorder.schedule` divides them by the
        time scale). Returns when the last has started: {domain: monotonic start time}."""
        began = time.monotonic()
        started: dict[str, float] = {}
        for start in sorted(starts, key=lambda s: s.at):
            wait = began + start.at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            name = _domain_by_config(self.domains, start)
            started[name] = time.monotonic()
            await self.start_domain_msds(name)
            if on_start is not None:
                on_start(start)
        return started

    def domain_database(self, domain: str, *, store: str = "msd") -> str:
        """The database of one domain's MSDs (or, with `store="urs"`, of its URS): the
        `database_url` with the domain put in, else an SQLite file in the data directory."""
        if self.database_url is not None:
            return self.database_url.replace(DOMAIN_PLACEHOLDER, domain)
        if store == "urs":
            return ""  # the URS's own default, <data_dir>/<domain>/urs.sqlite
        return sqlite_url(self.data_dir, domain)

    def _bind_all(self, sockets: list[socket.socket]) -> _Bound:
        bound = _Bound()
        if self.ephemeral_ports:
            # Multicast channels: a free port for each distinct CMCAST/PMCAST/local port.
            for config in self._configs:
                for port in (config.cm_port, config.pm_port, config.local_mcast_port,
                             config.anycast_port):
                    if port not in bound.port_map:
                        bound.port_map[port] = _free_udp_port()
        for config in self._configs:
            dns_port = 0 if self.ephemeral_ports else config.self_port
            urs_port = 0 if self.ephemeral_ports else config.urs_port
            udp, tcp = bind_dns_sockets("127.0.0.1", dns_port, owner=f"DNS of {config.domain}")
            sockets += [udp, tcp]
            bound.dns[config.domain] = (udp, tcp)
            bound.port_map[config.self_port] = udp.getsockname()[1]
            urs_socks = [_bind_tcp(config.urs_ip, urs_port if n == 0 else 0,
                                   what=f"URS of {config.domain}")
                         for n in range(self.urs_replicas)]
            sockets += urs_socks
            bound.urs[config.domain] = urs_socks
            bound.port_map[config.urs_port] = urs_socks[0].getsockname()[1]
        return bound

    async def _start_urs(self, config: DomainConfig, sock: socket.socket) -> web.AppRunner:
        domain_dir = self.data_dir / config.domain
        domain_dir.mkdir(parents=True, exist_ok=True)
        settings = UrsSettings.from_mds(
            config,
            data_dir=domain_dir,
            multicast_mode=self.multicast_mode,
            msd_key=_msd_key(domain_dir),
            database_url=self.domain_database(config.domain, store="urs"),
            public_key=key_text(public_bytes(_domain_key(domain_dir))),
        )
        limits = self.limits
        settings = dataclasses.replace(
            settings, http_limits=limits.http or settings.http_limits,
            register_limit=limits.urs_register or settings.register_limit,
            list_limit=limits.urs_list or settings.list_limit)
        runner = make_runner(create_app(settings))
        await runner.setup()
        await start_site(runner, sock)
        return runner

    async def wait_ready(self, *, timeout: float = 10.0, designated: bool = True) -> None:
        """Return once every DNS server and URS answers, and (with MSDs, unless
        `designated=False`) every domain has a designated MSD; raise VdnsError naming the
        laggards."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pending = dict(self.domains)
        async with ClientSession(timeout=ClientTimeout(total=2)) as http:
            while pending:
                for name, domain in list(pending.items()):
                    if (await _dns_answers(domain) and await _urs_answers(http, domain)
                            and (not (self.msds and designated)
                                 or (await _tree_state(http, domain))[0])):
                        del pending[name]
                if not pending:
                    return
                if loop.time() > deadline:
                    raise VdnsError(f"not answering after {timeout:.0f} s: {', '.join(pending)}")
                await asyncio.sleep(0.1)

    async def wait_settled(self, *, timeout: float = 30.0) -> None:
        """Return once the MSD tree has formed: every domain joined, the root counting all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        expected = len(self.domains)
        async with ClientSession(timeout=ClientTimeout(total=2)) as http:
            while True:
                states = [await _tree_state(http, d) for d in self.domains.values()]
                roots = [count for state, count in states if state == "root"]
                joined = all(state in ("root", "joined") for state, _ in states)
                if joined and roots == [expected]:
                    return
                if loop.time() > deadline:
                    raise VdnsError(f"the MSD tree did not settle within {timeout:.0f} s")
                await asyncio.sleep(self.heartbeat_s / 4)

    async def close(self) -> None:
        """Stop every server; safe to call twice, and after a failed start."""
        domains, self.domains = list(self.domains.values()), {}
        await asyncio.gather(*(d.msds.close() for d in domains if d.msds is not None),
                             return_exceptions=True)
        for domain in domains:
            for replica in domain.replicas:
                with contextlib.suppress(Exception):
                    await replica.kill()
            with contextlib.suppress(Exception):
                await domain.dns.close()


def _domain_by_config(domains: dict[str, RunningDomain], start: Start) -> str:
    """The running domain a start names (its ports may have been remapped: match by name)."""
    if start.config.domain not in domains:
        raise VdnsError(f"no running domain {start.config.domain}")
    return start.config.domain


@dataclasses.dataclass
class _Bound:
    dns: dict[str, tuple[socket.socket, socket.socket]] = dataclasses.field(default_factory=dict)
    urs: dict[str, list[socket.socket]] = dataclasses.field(default_factory=dict)
    port_map: dict[int, int] = dataclasses.field(default_factory=dict)


def _bind_tcp(host: str, port: int, *, what: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise VdnsError(
                f"{host}:{port} ({what}) is already in use: is another `mdns up` running?"
            ) from None
        raise VdnsError(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _msd_key(domain_dir: Path) -> str:
    """The domain's secret for MSD → URS calls, made once and kept (mode 0600)."""
    return _secret_file(domain_dir / "msd.key").read_text().strip()


def _domain_key(domain_dir: Path) -> Ed25519PrivateKey:
    """The domain's Ed25519 key, made once and kept (mode 0600), as `mdns keys generate`
    would make it: so `mdns up` needs no extra step."""
    path = domain_dir / DOMAIN_KEY_FILE
    if not path.exists():
        write_private_key(path, generate_private_key())
    return load_private_key(path)


def _secret_file(path: Path) -> Path:
    """A random secret in `path`, made once and kept (mode 0600)."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    return path


def _free_udp_port() -> int:
    """A UDP port the kernel says is free now (multicast receivers bind it later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _dns_answers(domain: RunningDomain) -> bool:
    query = dns.message.make_query(domain.config.domain, dns.rdatatype.SOA)
    try:
        host, port = domain.dns_address
        reply = await dns.asyncquery.udp(query, host, port=port, timeout=1.0)
    except (dns.exception.DNSException, OSError):
        return False
    return bool(reply.answer)


async def _tree_state(http: ClientSession, domain: RunningDomain) -> tuple[str, int]:
    """(state, subtree count) of the domain's designated MSD, ("", 0) when unknown: the URS
    names none yet, or the daemon it names has not taken its place in the tree."""
    try:
        async with http.get(f"{domain.urs_url}/bootstrap/designated") as response:
            designated = (await response.json()).get("designated")
        if not designated:
            return "", 0
        status_url = f"http://{designated['address']}:{designated['port']}/status"
        async with http.get(status_url) as answer:
            status = await answer.json()
        return str(status.get("state", "")), int(status.get("count", 0))
    except (ClientError, TimeoutError, ValueError, KeyError):
        return "", 0


async def _urs_answers(http: ClientSession, domain: RunningDomain) -> bool:
    for replica in domain.replicas:
        try:
            async with http.get(f"{replica.url}/health") as response:
                if response.status != 200:
                    return False
        except (ClientError, TimeoutError):
            return False
    return True
