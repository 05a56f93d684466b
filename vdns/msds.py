"""The MSD daemons of one simulated domain: K processes (or, for fast tests, K in-process tasks).

`mdns up --msds K` runs real processes, so a test or a person can `kill -9` one; the
in-process mode runs the very same `MsdDaemon` class in this event loop, where a kill is
a task cancelled without a goodbye.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path

from msd.api import ApiLimits
from msd.daemon import MsdDaemon, MsdSettings
from msd.http_limits import HttpLimits
from msd.keys import load_private_key, read_key_file
from msd.relay import Delay
from vdns.errors import VdnsError

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class MsdLaunch:
    """How to start a domain's MSD daemons."""

    urs_url: str
    msd_key_file: Path
    hierarchy_key_file: Path
    log_dir: Path  # also holds each daemon's known keys (msd-<index>.known-keys)
    domain_key_file: Path  # the domain's Ed25519 private key
    pinned_keys_file: Path | None = None  # given: trust only these keys (no first use)
    interface: str = "127.0.0.1"
    heartbeat_s: float = 1.0
    alpha: float = 0.1
    beta: float = 0.1
    refresh_every: int = 10  # heartbeats (HierarchyConfig.refresh_every)
    in_process: bool = False
    multicast: bool = True  # False: the daemons behave as on a host whose multicast is blocked
    database_url: str | None = None  # the domain's session store, shared by its MSDs
    inter_domain_delay: Delay | None = None  # experiments (in-process daemons only)
    urs_fallbacks: tuple[str, ...] = ()  # the domain's other URS replicas, tried in turn
    api_limits: ApiLimits | None = None  # None: the daemon's defaults
    http_limits: HttpLimits | None = None


class _Daemon:
    """One MSD: a child process or an in-process task."""

    def __init__(self, launch: MsdLaunch, *, index: int, domain: str) -> None:
        self.launch, self.index, self.domain = launch, index, domain
        self.process: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None
        self.daemon: MsdDaemon | None = None
        self._stop = asyncio.Event()

    @property
    def known_keys_file(self) -> Path:
        return self.launch.log_dir / f"msd-{self.index}.known-keys"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        if self.process is not None:
            return self.process.returncode is None
        return self.task is not None and not self.task.done()

    async def start(self) -> None:
        launch = self.launch
        priority = 100 - self.index  # the first daemon is preferred, then the next
        if launch.in_process:
            self._stop = asyncio.Event()
            pinned = launch.pinned_keys_file
            self.daemon = MsdDaemon(MsdSettings(
                urs_url=launch.urs_url,
                msd_key=launch.msd_key_file.read_text().strip(),
                hierarchy_key=launch.hierarchy_key_file.read_bytes().strip(),
                domain_key=load_private_key(launch.domain_key_file),
                pinned_keys=read_key_file(pinned) if pinned else {},
                tofu=pinned is None, known_keys_file=self.known_keys_file,
                interface=launch.interface, priority=priority, heartbeat_s=launch.heartbeat_s,
                alpha=launch.alpha, beta=launch.beta, refresh_every=launch.refresh_every,
                multicast=launch.multicast,
                database_url=launch.database_url,
                inter_domain_delay=launch.inter_domain_delay,
                urs_fallbacks=launch.urs_fallbacks,
                api_limits=launch.api_limits or ApiLimits(),
                http_limits=launch.http_limits or HttpLimits()))
            self.task = asyncio.create_task(self.daemon.run(self._stop),
                                            name=f"msd {self.domain} #{self.index}")
            return
        log_path = launch.log_dir / f"msd-{self.index}.log"
        with log_path.open("ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "client.cli", "-v", "msd",
                "--urs", launch.urs_url,
                *[arg for url in launch.urs_fallbacks for arg in ("--urs", url)],
                "--msd-key-file", str(launch.msd_key_file),
                "--hierarchy-key-file", str(launch.hierarchy_key_file),
                "--domain-key-file", str(launch.domain_key_file),
                "--known-keys", str(self.known_keys_file),
                *(["--pinned-keys", str(launch.pinned_keys_file), "--no-tofu"]
                  if launch.pinned_keys_file else []),
                "--interface", launch.interface,
                "--priority", str(priority),
                "--heartbeat", str(launch.heartbeat_s),
                "--alpha", str(launch.alpha), "--beta", str(launch.beta),
                "--refresh-every", str(launch.refresh_every),
                *([] if launch.multicast else ["--no-multicast"]),
                *(["--database", launch.database_url] if launch.database_url else []),
                *_limit_options(launch),
                stdin=asyncio.subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            )

    async def kill(self) -> None:
        """Die without a word: SIGKILL, or a cancelled task."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self.task is not None:
            self.task.cancel()
            # Bounded: a daemon whose shutdown hangs must fail the caller, not hang it.
            done, _ = await asyncio.wait({self.task}, timeout=STOP_GRACE_S)
            if not done:
                raise VdnsError(f"MSD {self.domain} #{self.index} did not stop within "
                                f"{STOP_GRACE_S:g} s of being cancelled")
            if not self.task.cancelled():
                self.task.exception()  # retrieved: a daemon that failed is dead all the same

    async def stop(self) -> None:
        """Stop cleanly: SIGTERM (SIGKILL after a grace period), or the stop event."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=STOP_GRACE_S)
            except TimeoutError:
                log.warning("MSD %s #%d ignored SIGTERM; killing it", self.domain, self.index)
                await self.kill()
        if self.task is not None:
            self._stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(self.task), timeout=STOP_GRACE_S)
            except (TimeoutError, Exception):
                await self.kill()


class DomainMsds:
    """The K MSD daemons of one domain."""

    def __init__(self, launch: MsdLaunch, *, domain: str, count: int) -> None:
        self.launch = launch
        self.domain = domain
        self.daemons = [_Daemon(launch, index=i, domain=domain) for i in range(count)]

    def __repr__(self) -> str:
        alive = sum(d.alive for d in self.daemons)
        return f"<DomainMsds {self.domain} {alive}/{len(self.daemons)} alive>"

    async def start(self) -> None:
        self.launch.log_dir.mkdir(parents=True, exist_ok=True)
        for daemon in self.daemons:
            await daemon.start()

    async def kill(self, index: int | None = None) -> None:
        """Kill one daemon (by index) or all of them."""
        targets = self.daemons if index is None else [self.daemons[index]]
        await asyncio.gather(*(d.kill() for d in targets))

    async def restart(self, index: int | None = None) -> None:
        targets = self.daemons if index is None else [self.daemons[index]]
        for daemon in targets:
            if not daemon.alive:
                await daemon.start()

    async def close(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.daemons))


def _limit_options(launch: MsdLaunch) -> list[str]:
    """`mdns msd` options for the limits a launch sets (none: the daemon's defaults)."""
    options: list[str] = []
    if launch.api_limits is not None:
        api = launch.api_limits
        options += ["--register-rate", f"{api.register.rate:g}",
                    "--register-burst", str(api.register.burst),
                    "--search-rate", f"{api.search.rate:g}",
                    "--search-burst", str(api.search.burst)]
    if launch.http_limits is not None:
        options += ["--header-timeout", f"{launch.http_limits.header_timeout_s:g}",
                    "--body-timeout", f"{launch.http_limits.body_timeout_s:g}"]
    return options
