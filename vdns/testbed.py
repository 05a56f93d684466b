"""The multi-host testbed: one domain per network namespace, with real DNS, URS and MSDs.

Host i (a namespace, vdns.netns) runs domain i of a hierarchy's first N domains in
breadth-first order from the root, as separate processes: its DNS server on port 53 of
the host's address (`mdns dns`), its URS on port 80 (`mdns urs`) and K MSD daemons
(`mdns msd`), every socket on the host's address, multicast on its eth0. The domains'
`.mds` files are rewritten for the hosts: ParentDNS and the `@` delegations name the
other hosts' addresses, port 53. A test (or a person, through deploy/testbed) kills and
restarts single processes, blocks a host's multicast and impairs its link.

The state of a run (its prefix, hosts, processes) is kept in `<state_dir>/state.json`,
so `deploy/testbed status|kill|start|down` work from any shell; `down` also cleans up
after a run whose state file is gone (by its prefix).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from msd.keys import generate_private_key, key_line, public_bytes, write_private_key
from vdns.errors import VdnsError
from vdns.mds import Delegation, DomainConfig, load_hierarchy, write_mds
from vdns.netns import Host, Impairment, Network, NetworkPlan, new_prefix

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "scenario1"
STATE_ENV = "MDNS_TESTBED_DIR"
DNS_PORT = 53
URS_PORT = 80  # the well-known port: a bookmark mcast.<domain>/<id> is also a URL
STOP_GRACE_S = 5.0
STATE_FILE = "state.json"
DOMAIN_KEY_FILE = "domain.key"  # each domain's Ed25519 private key, in its data directory


@dataclasses.dataclass(frozen=True, kw_only=True)
class TestbedSettings:
    """One run: how many hosts, which hierarchy, how many MSDs, which faults from the start."""

    hosts: int = 5
    config_dir: Path = DEFAULT_CONFIG
    msds: int = 2
    heartbeat_s: float = 0.5
    block_multicast: tuple[str, ...] = ()  # host names (h3) or domain names
    impairment: Impairment | None = None  # on every host's eth0
    prefix: str | None = None  # default: a fresh random one
    state_dir: Path | None = None  # default: $MDNS_TESTBED_DIR/<prefix> or /tmp/mdns-testbed/...


@dataclasses.dataclass(frozen=True)
class Placement:
    """Which domain a host runs, with the `.mds` file rewritten for it."""

    host: Host
    config: DomainConfig

    @property
    def domain(self) -> str:
        return self.config.domain

    @property
    def urs_url(self) -> str:
        return f"http://{self.host.address}:{URS_PORT}"

    @property
    def dns(self) -> str:
        return f"{self.host.address}:{DNS_PORT}"


def select_domains(configs: Sequence[DomainConfig], count: int) -> list[DomainConfig]:
    """The first `count` domains breadth-first from the root (children by name): a tree."""
    by_name = {c.domain: c for c in configs}
    roots = [c for c in configs if c.is_root]
    if len(roots) != 1:
        raise VdnsError(f"the hierarchy needs exactly one root, found {len(roots)}")
    if not 1 <= count <= len(configs):
        raise VdnsError(f"--hosts must be 1..{len(configs)} for this hierarchy, got {count}")
    chosen: list[DomainConfig] = []
    queue = deque(roots)
    while queue and len(chosen) < count:
        config = queue.popleft()
        chosen.append(config)
        children = sorted(config.child_domain(d) for d in config.delegations)
        queue.extend(by_name[name] for name in children if name in by_name)
    return chosen


def place(domains: Sequence[DomainConfig], hosts: Sequence[Host]) -> list[Placement]:
    """Each domain on its host: DNS on port 53 and the URS on port 80 of the host's
    address, parent and children found at theirs (delegations to absent children dropped)."""
    address = {d.domain: h.address for d, h in zip(domains, hosts, strict=False)}
    placed = []
    for config, host in zip(domains, hosts, strict=False):
        parent = config.parent_domain
        delegations = tuple(Delegation(d.label, address[config.child_domain(d)], DNS_PORT)
                            for d in config.delegations if config.child_domain(d) in address)
        placed.append(Placement(host, dataclasses.replace(
            config, self_port=DNS_PORT, urs_ip=host.address, urs_port=URS_PORT,
            anycast=host.address,
            parent_dns=address[parent] if parent else host.address,
            parent_dns_port=DNS_PORT if parent else 0,
            delegations=delegations)))
    return placed


def default_state_dir(prefix: str) -> Path:
    base = os.environ.get(STATE_ENV) or "/tmp/mdns-testbed"
    return Path(base) / prefix


class Testbed:
    """Build, run, break and tear down one testbed."""

    def __init__(self, settings: TestbedSettings) -> None:
        self.settings = settings
        prefix = settings.prefix or new_prefix()
        self.plan = NetworkPlan.make(prefix, settings.hosts)
        self.network = Network(self.plan)
        self.state_dir = settings.state_dir or default_state_dir(prefix)
        configs = load_hierarchy(settings.config_dir)
        self.placements = place(select_domains(configs, settings.hosts), self.plan.hosts)
        self.blocked = frozenset(self.placement(name).host.name
                                 for name in settings.block_multicast)
        self.impairments: dict[str, Impairment] = {}
        self.pids: dict[str, int] = {}  # "h1/dns" → pid
        self._children: dict[str, subprocess.Popen[bytes]] = {}  # started by this process
        self.killed: dict[str, int | None] = {}  # killed and not restarted: name → status
        self.kill_log: list[tuple[str, int | None]] = []  # every kill: (name, exit status)

    def __repr__(self) -> str:
        return f"<Testbed {self.prefix} hosts={len(self.placements)} running={len(self.pids)}>"

    @property
    def prefix(self) -> str:
        return self.plan.prefix

    @property
    def root(self) -> Placement:
        return self.placements[0]

    def placement(self, name: str) -> Placement:
        """A host by its name (h1), namespace or address, or by the domain it runs."""
        for placed in self.placements:
            if name in (placed.domain, placed.host.name, placed.host.namespace,
                        placed.host.address):
                return placed
        raise VdnsError(f"no host or domain {name!r} in testbed {self.prefix}")

    def components(self) -> list[str]:
        return ["dns", "urs", *(f"msd-{i}" for i in range(self.settings.msds))]

    # --- lifecycle -------------------------------------------------------------------------

    def up(self) -> None:
        """Namespaces, configs, keys, then every process; on failure everything goes."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        (self.state_dir / "configs").mkdir(exist_ok=True)
        try:
            self.network.create()
            self._save()
            for name in sorted(self.blocked):
                self.network.block_multicast(self.placement(name).host)
            if self.settings.impairment is not None:
                self.impair([p.host.name for p in self.placements], self.settings.impairment)
            _secret(self.state_dir / "hierarchy.key")
            for placed in self.placements:
                data = self.data_dir(placed)
                data.mkdir(parents=True, exist_ok=True)
                _secret(data / "msd.key")
                _domain_key(data / DOMAIN_KEY_FILE, domain=placed.domain)
                write_mds(placed.config, self.mds_path(placed))
            for component in self.components():  # DNS servers first, MSDs last
                for placed in self.placements:
                    self.start(placed.host.name, component)
        except BaseException:
            self.down()
            raise

    def down(self) -> dict[str, int | None]:
        """Stop every process (SIGTERM, SIGKILL after a grace period), delete every
        namespace of this run; the exit status of each process that was running."""
        statuses: dict[str, int | None] = {}
        alive = [name for name in self.pids if self.alive(name)]
        for name in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pids[name], signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for name in alive:
            statuses[name] = self._wait(name, until=deadline)
        for name, status in statuses.items():
            if status is None and self.alive(name):  # never a stranger that took the pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pids[name], signal.SIGKILL)
                statuses[name] = self._wait(name, until=time.monotonic() + 2)
        problems = self.network.destroy()
        if problems:
            log.warning("testbed %s: %s", self.prefix, "; ".join(problems))
        self.pids.clear()
        with contextlib.suppress(OSError):
            (self.state_dir / STATE_FILE).unlink()
        return statuses

    # --- processes -------------------------------------------------------------------------

    def start(self, host: str, component: str) -> int:
        """Start one process of a host (again, after a kill); its pid."""
        placed = self.placement(host)
        name = f"{placed.host.name}/{component}"
        if name in self.pids and self.alive(name):
            raise VdnsError(f"{name} is running already (pid {self.pids[name]})")
        argv = self.network.exec_argv(placed.host, self._command(placed, component))
        log_path = self.log_path(placed.host.name, component)
        with log_path.open("ab") as log_file:
            log_file.write(f"--- {time.strftime('%H:%M:%S')} start {name}\n".encode())
            log_file.flush()
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.pids[name] = process.pid
        self._children[name] = process
        self.killed.pop(name, None)
        self._save()
        return process.pid

    def kill(self, host: str, component: str, *, sig: int = signal.SIGKILL) -> int | None:
        """Send a signal to one process (kill -9 by default) and wait for it to go; its
        exit status (None if it was not this process's child or would not die)."""
        name = f"{self.placement(host).host.name}/{component}"
        if name not in self.pids:
            raise VdnsError(f"{name} was never started")
        if not self.alive(name):
            raise VdnsError(f"{name} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pids[name], sig)
        status = self._wait(name, until=time.monotonic() + STOP_GRACE_S)
        self.killed[name] = status
        self.kill_log.append((name, status))
        return status

    def kill_host(self, host: str) -> None:
        """The whole domain dies at once: every process of the host, kill -9."""
        placed = self.placement(host)
        for component in self.components():
            name = f"{placed.host.name}/{component}"
            if name in self.pids and self.alive(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pids[name], signal.SIGKILL)
        for component in self.components():
            name = f"{placed.host.name}/{component}"
            if name in self.pids:
                self.killed[name] = self._wait(name, until=time.monotonic() + STOP_GRACE_S)
                self.kill_log.append((name, self.killed[name]))

    def start_host(self, host: str) -> None:
        for component in self.components():
            name = f"{self.placement(host).host.name}/{component}"
            if not self.alive(name):
                self.start(host, component)

    def alive(self, name: str) -> bool:
        child = self._children.get(name)
        if child is not None:
            return child.poll() is None
        pid = self.pids.get(name)
        if pid is None:
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return str(self.state_dir).encode() in cmdline  # not a stranger that reused the pid

    def crashed(self) -> dict[str, int | None]:
        """Processes that are gone though nobody killed them: name → exit status."""
        gone: dict[str, int | None] = {}
        for name in self.pids:
            if name not in self.killed and not self.alive(name):
                child = self._children.get(name)
                gone[name] = child.returncode if child is not None else None
        return gone

    def tracebacks(self) -> dict[str, int]:
        """Log files with Python tracebacks in them: name → how many."""
        found = {}
        for path in sorted((self.state_dir / "logs").glob("*.log")):
            count = path.read_text(errors="replace").count("Traceback (most recent call last)")
            if count:
                found[path.stem] = count
        return found

    # --- faults ----------------------------------------------------------------------------

    def impair(self, hosts: Iterable[str], impairment: Impairment) -> str:
        """Impair the hosts' links ('netem', or 'nft' on a kernel without netem)."""
        how = "none"
        for host in hosts:
            placed = self.placement(host)
            how = self.network.impair(placed.host, impairment)
            self.impairments[placed.host.name] = impairment
        self._save()
        return how

    def clear(self, hosts: Iterable[str]) -> None:
        for host in hosts:
            placed = self.placement(host)
            self.network.clear(placed.host)
            self.impairments.pop(placed.host.name, None)
        self._save()

    def multicast_dropped(self, host: str) -> int:
        return self.network.multicast_dropped(self.placement(host).host)

    # --- paths and commands ----------------------------------------------------------------

    def data_dir(self, placed: Placement) -> Path:
        return self.state_dir / "data" / placed.domain

    def mds_path(self, placed: Placement) -> Path:
        return self.state_dir / "configs" / f"{placed.host.name}-{placed.domain}.mds"

    def log_path(self, host: str, component: str) -> Path:
        return self.state_dir / "logs" / f"{host}-{component}.log"

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` on a host (or on the observer, "obs")."""
        target = self.plan.observer if host == self.plan.observer.name else \
            self.placement(host).host
        return self.network.exec_argv(target, argv)

    def _command(self, placed: Placement, component: str) -> list[str]:
        mdns = [sys.executable, "-m", "client.cli", "-v"]
        data = self.data_dir(placed)
        if component == "dns":
            return [*mdns, "dns", "--config", str(self.mds_path(placed)),
                    "--host", placed.host.address]
        if component == "urs":
            return [*mdns, "urs", "--config", str(self.mds_path(placed)), "--data-dir", str(data),
                    "--msd-key-file", str(data / "msd.key"),
                    "--public-key-file", str(data / f"{DOMAIN_KEY_FILE}.pub")]
        index = int(component.removeprefix("msd-"))
        return [*mdns, "msd", "--urs", placed.urs_url, "--msd-key-file", str(data / "msd.key"),
                "--hierarchy-key-file", str(self.state_dir / "hierarchy.key"),
                "--domain-key-file", str(data / DOMAIN_KEY_FILE),
                "--known-keys", str(data / f"{component}.known-keys"),
                "--interface", placed.host.address, "--priority", str(100 - index),
                "--heartbeat", str(self.settings.heartbeat_s),
                "--database", f"sqlite+aiosqlite:///{data / 'msd.sqlite'}"]

    def _wait(self, name: str, *, until: float) -> int | None:
        child = self._children.get(name)
        while time.monotonic() < until:
            if child is not None:
                status = child.poll()
                if status is not None:
                    return status
            elif not self.alive(name):
                return None
            time.sleep(0.05)
        return None

    # --- state -----------------------------------------------------------------------------

    def _save(self) -> None:
        state = {
            "prefix": self.prefix, "config_dir": str(self.settings.config_dir),
            "msds": self.settings.msds, "heartbeat_s": self.settings.heartbeat_s,
            "hosts": [{"host": p.host.name, "namespace": p.host.namespace,
                       "address": p.host.address, "domain": p.domain,
                       "multicast": "blocked" if p.host.name in self.blocked else "on",
                       "impairment": str(self.impairments[p.host.name])
                       if p.host.name in self.impairments else ""}
                      for p in self.placements],
            "observer": {"namespace": self.plan.observer.namespace,
                         "address": self.plan.observer.address},
            "pids": self.pids,
        }
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> Testbed:
        """The testbed a state file describes (for the command line's later calls)."""
        try:
            state: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise VdnsError(f"no testbed state in {state_dir}: {exc}") from None
        hosts = state["hosts"]
        testbed = cls(TestbedSettings(
            hosts=len(hosts), config_dir=Path(state["config_dir"]), msds=int(state["msds"]),
            heartbeat_s=float(state["heartbeat_s"]), prefix=state["prefix"],
            state_dir=state_dir,
            block_multicast=tuple(h["host"] for h in hosts if h["multicast"] == "blocked")))
        testbed.pids = {str(k): int(v) for k, v in state["pids"].items()}
        testbed.impairments = {h["host"]: Impairment.parse(h["impairment"].removesuffix(
            " (UDP only)"), udp_only=h["impairment"].endswith("(UDP only)"))
            for h in hosts if h.get("impairment") and h["impairment"] != "none"}
        return testbed


def _domain_key(path: Path, *, domain: str) -> None:
    """The domain's Ed25519 key pair, made once as `mdns keys generate` makes it: the
    private key (0600) for its MSDs, `path`.pub (the `DOMAIN KEY` line) for its URS."""
    if path.exists():
        return
    key = generate_private_key()
    write_private_key(path, key)
    path.with_name(path.name + ".pub").write_text(key_line(domain, public_bytes(key)) + "\n")


def _secret(path: Path) -> None:
    """A random secret in `path`, made once (mode 0600)."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
