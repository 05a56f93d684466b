"""Hosts as Linux network namespaces on one bridge: the network half of the testbed.

Every host is a namespace with one veth interface, `eth0`, plugged into a bridge that
lives in a namespace of its own, so no address, route or datagram of the testbed ever
touches the machine's own network stack. Each namespace has a route for 224.0.0.0/4 on
eth0; the bridge floods multicast (snooping off), as a switch without an IGMP querier
does. On top of that:

- **blocked multicast**: an nftables rule in the host drops every datagram addressed to
  224.0.0.0/4 on input (its own looped-back multicast included), unicast still flows;
- **impairments**: `tc netem` on eth0 (delay, jitter, loss) where the kernel has it; on a
  kernel without sch_netem, loss alone through an nftables rule on eth0's egress hook
  (`numgen random`), which drops what eth0 would send, exactly where netem would.
  Either can be limited to UDP (the control channels, and DNS).

Names carry a per-run prefix, so runs in parallel never meet. The commands are built by
pure functions (tested without root); `Network` runs them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import secrets
import signal
import subprocess
from collections.abc import Callable, Sequence

from vdns.errors import VdnsError

SUBNET = ipaddress.IPv4Network("10.250.0.0/24")
MULTICAST = "224.0.0.0/4"
MAX_HOSTS = 200  # 10.250.0.1 .. .200; the observer takes .254
OBSERVER = "obs"
PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9]{2,11}$")
COMMAND_TIMEOUT_S = 15.0

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


class NetnsError(VdnsError):
    """A namespace, link, rule or qdisc could not be set up; the message has the command."""


@dataclasses.dataclass(frozen=True)
class Host:
    """One host of the testbed: its namespace, its address on the bridge, its bridge port."""

    name: str  # h1, h2, ... or "obs"
    namespace: str
    address: str
    port: str  # the veth end in the bridge namespace


@dataclasses.dataclass(frozen=True)
class Impairment:
    """What `tc netem` would do to a host's outgoing datagrams: delay, jitter, loss."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    udp_only: bool = False

    @classmethod
    def parse(cls, spec: str, *, udp_only: bool = False) -> Impairment:
        """A netem-style spec: 'delay 20ms', 'delay 50ms 25ms loss 1%', 'loss 10%'."""
        words = spec.split()
        values: dict[str, float] = {}
        i = 0
        try:
            while i < len(words):
                word = words[i]
                if word == "delay":
                    values["delay_ms"] = _milliseconds(words[i + 1])
                    i += 2
                    if i < len(words) and words[i][0].isdigit():
                        values["jitter_ms"] = _milliseconds(words[i])
                        i += 1
                elif word == "loss":
                    text = words[i + 1]
                    if not text.endswith("%"):
                        raise ValueError(text)
                    values["loss_pct"] = float(text[:-1])
                    i += 2
                else:
                    raise ValueError(word)
        except (IndexError, ValueError):
            raise NetnsError(f"impairment {spec!r}: expected 'delay 20ms [5ms] loss 1%' "
                             "(either part may be left out)") from None
        impairment = cls(**values, udp_only=udp_only)
        if not 0 <= impairment.loss_pct <= 100 or impairment.delay_ms < 0 \
                or impairment.jitter_ms < 0 or impairment.delay_ms > 10_000:
            raise NetnsError(f"impairment {spec!r}: loss 0-100 %, delay 0-10000 ms")
        return impairment

    @property
    def netem_args(self) -> list[str]:
        args: list[str] = []
        if self.delay_ms:
            args += ["delay", f"{self.delay_ms:g}ms"]
            if self.jitter_ms:
                args.append(f"{self.jitter_ms:g}ms")
        if self.loss_pct:
            args += ["loss", f"{self.loss_pct:g}%"]
        return args

    def __str__(self) -> str:
        return " ".join(self.netem_args) + (" (UDP only)" if self.udp_only else "") or "none"


@dataclasses.dataclass(frozen=True)
class NetworkPlan:
    """The namespaces and addresses of one run (pure data)."""

    prefix: str
    hosts: tuple[Host, ...]
    observer: Host

    @property
    def bridge_namespace(self) -> str:
        return f"{self.prefix}-br"

    @property
    def namespaces(self) -> list[str]:
        return [self.bridge_namespace, *(h.namespace for h in (*self.hosts, self.observer))]

    @classmethod
    def make(cls, prefix: str, count: int) -> NetworkPlan:
        if not PREFIX_PATTERN.match(prefix):
            raise NetnsError(f"prefix {prefix!r}: 3-12 lower-case letters and digits, "
                             "starting with a letter")
        if not 1 <= count <= MAX_HOSTS:
            raise NetnsError(f"hosts must be 1..{MAX_HOSTS}, got {count}")
        hosts = tuple(Host(name=f"h{i}", namespace=f"{prefix}-h{i}",
                           address=str(SUBNET.network_address + i), port=f"h{i}")
                      for i in range(1, count + 1))
        observer = Host(name=OBSERVER, namespace=f"{prefix}-{OBSERVER}",
                        address=str(SUBNET.network_address + 254), port=OBSERVER)
        return cls(prefix=prefix, hosts=hosts, observer=observer)

    def host(self, name: str) -> Host:
        for host in (*self.hosts, self.observer):
            if name in (host.name, host.namespace, host.address):
                return host
        raise NetnsError(f"no host {name!r} in this testbed (hosts: "
                         f"{', '.join(h.name for h in self.hosts)}, {OBSERVER})")


def new_prefix() -> str:
    """A prefix no other run is likely to have: 'mtb' and six random hex digits."""
    return f"mtb{secrets.token_hex(3)}"


def create_commands(plan: NetworkPlan) -> list[list[str]]:
    """Everything `ip` must do to build the bridge and every host (pure)."""
    br = plan.bridge_namespace
    commands = [["ip", "netns", "add", br],
                ["ip", "-n", br, "link", "set", "lo", "up"],
                ["ip", "-n", br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"],
                ["ip", "-n", br, "link", "set", "br0", "up"]]
    for host in (*plan.hosts, plan.observer):
        ns = host.namespace
        commands += [
            ["ip", "netns", "add", ns],
            ["ip", "-n", br, "link", "add", host.port, "type", "veth", "peer", "name", "eth0",
             "netns", ns],
            ["ip", "-n", ns, "addr", "add", f"{host.address}/{SUBNET.prefixlen}", "dev", "eth0"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", ns, "link", "set", "eth0", "up"],
            ["ip", "-n", ns, "route", "add", MULTICAST, "dev", "eth0"],
            ["ip", "-n", br, "link", "set", host.port, "master", "br0", "up"],
        ]
    return commands


def block_multicast_commands(host: Host) -> list[list[str]]:
    """Drop every multicast datagram the host would receive (pure)."""
    nft = ["ip", "netns", "exec", host.namespace, "nft"]
    return [[*nft, "add", "table", "inet", "mcblock"],
            [*nft, "add", "chain", "inet", "mcblock", "input",
             "{ type filter hook input priority 0; policy accept; }"],
            [*nft, "add", "rule", "inet", "mcblock", "input", "ip", "daddr", MULTICAST,
             "counter", "drop"]]


def netem_commands(host: Host, impairment: Impairment) -> list[list[str]]:
    """tc netem on the host's eth0, all traffic or UDP only (pure)."""
    tc = ["ip", "netns", "exec", host.namespace, "tc"]
    if not impairment.udp_only:
        return [[*tc, "qdisc", "add", "dev", "eth0", "root", "netem", *impairment.netem_args]]
    return [[*tc, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "prio", "bands", "3",
             "priomap", *["0"] * 16],
            [*tc, "qdisc", "add", "dev", "eth0", "parent", "1:3", "handle", "30:", "netem",
             *impairment.netem_args],
            [*tc, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
             "u32", "match", "ip", "protocol", "17", "0xff", "flowid", "1:3"]]


def nft_loss_commands(host: Host, impairment: Impairment) -> list[list[str]]:
    """Loss without netem: drop at random on eth0's egress hook, where netem would (pure)."""
    nft = ["ip", "netns", "exec", host.namespace, "nft"]
    basis_points = round(impairment.loss_pct * 100)
    match = ["meta", "l4proto", "udp"] if impairment.udp_only else []
    return [[*nft, "add", "table", "netdev", "impair"],
            [*nft, "add", "chain", "netdev", "impair", "egress",
             "{ type filter hook egress device eth0 priority 0; policy accept; }"],
            [*nft, "add", "rule", "netdev", "impair", "egress", *match, "numgen", "random",
             "mod", "10000", "<", str(basis_points), "counter", "drop"]]


def clear_commands(host: Host) -> list[list[str]]:
    """Remove whatever impairment the host has (either kind); errors are expected here."""
    return [["ip", "netns", "exec", host.namespace, "tc", "qdisc", "del", "dev", "eth0", "root"],
            ["ip", "netns", "exec", host.namespace, "nft", "delete", "table", "netdev",
             "impair"]]


def _run(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, check=False,
                          timeout=COMMAND_TIMEOUT_S)


class Network:
    """Carries out a NetworkPlan: create, impair, and always tear down."""

    def __init__(self, plan: NetworkPlan, *, runner: Runner = _run) -> None:
        self.plan = plan
        self._run = runner
        self._netem: bool | None = None  # does this kernel have sch_netem? (asked once)

    def __repr__(self) -> str:
        return f"<Network {self.plan.prefix} hosts={len(self.plan.hosts)}>"

    def create(self) -> None:
        """Build everything; on any failure remove what was made, then raise."""
        try:
            for command in create_commands(self.plan):
                self._must(command)
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> list[str]:
        """Delete every namespace of this run that exists, killing what still runs in it.

        Safe to call twice and after a failed create; returns the problems it met."""
        problems: list[str] = []
        for namespace in existing_namespaces(self.plan.prefix, runner=self._run):
            # Whatever still runs in a namespace of this run was started by it.
            for pid in self._run(["ip", "netns", "pids", namespace]).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            result = self._run(["ip", "netns", "del", namespace])
            if result.returncode != 0:
                problems.append(f"ip netns del {namespace}: {result.stderr.strip()}")
        return problems

    def block_multicast(self, host: Host) -> None:
        for command in block_multicast_commands(host):
            self._must(command)

    def multicast_dropped(self, host: Host) -> int:
        """Datagrams the host's multicast block has dropped so far."""
        result = self._run(["ip", "netns", "exec", host.namespace, "nft", "list", "table",
                            "inet", "mcblock"])
        found = re.search(r"counter packets (\d+)", result.stdout)
        return int(found.group(1)) if found else 0

    def impair(self, host: Host, impairment: Impairment) -> str:
        """Apply an impairment (replacing any); returns 'netem' or 'nft' (how it was done)."""
        netem = self._has_netem()
        if not netem and (impairment.delay_ms or impairment.jitter_ms):
            raise NetnsError("this kernel has no netem qdisc (sch_netem), so no delay can be "
                             "injected; loss alone works (through nftables)")
        self.clear(host)
        if not impairment.netem_args:
            return "none"
        if netem:
            for command in netem_commands(host, impairment):
                self._must(command)
            return "netem"
        for command in nft_loss_commands(host, impairment):
            self._must(command)
        return "nft"

    def clear(self, host: Host) -> None:
        for command in clear_commands(host):
            self._run(command)

    def exec_argv(self, host: Host, argv: Sequence[str]) -> list[str]:
        """The command line that runs `argv` as that host."""
        return ["ip", "netns", "exec", host.namespace, *argv]

    def _has_netem(self) -> bool:
        if self._netem is None:
            probe = self.plan.bridge_namespace
            add = self._run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo",
                             "root", "netem", "delay", "0ms"])
            self._netem = add.returncode == 0
            if self._netem:
                self._run(["ip", "netns", "exec", probe, "tc", "qdisc", "del", "dev", "lo",
                           "root"])
        return self._netem

    def _must(self, command: Sequence[str]) -> None:
        result = self._run(command)
        if result.returncode != 0:
            raise NetnsError(f"{' '.join(command)}: {result.stderr.strip() or 'failed'}")


def existing_namespaces(prefix: str, *, runner: Runner = _run) -> list[str]:
    """This run's namespaces that exist now (`ip netns list`), hosts before the bridge."""
    listed = runner(["ip", "netns", "list"]).stdout.split("\n")
    names = [line.split()[0] for line in listed if line.strip()]
    mine = [n for n in names if n.startswith(f"{prefix}-")]
    return sorted(mine, key=lambda n: (n.endswith("-br"), n))


def check_available(*, runner: Runner = _run) -> str | None:
    """Why the testbed cannot run here (not root, no ip, no nft, no namespaces), or None."""
    import shutil

    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            return f"needs {tool} ({'iproute2' if tool != 'nft' else 'nftables'})"
    name = f"mtbcheck{secrets.token_hex(3)}"
    made = runner(["ip", "netns", "add", name])
    if made.returncode != 0:
        return f"ip netns add fails here: {made.stderr.strip()}"
    runner(["ip", "netns", "del", name])
    return None


def _milliseconds(text: str) -> float:
    if text.endswith("ms"):
        return float(text[:-2])
    if text.endswith("s"):
        return float(text[:-1]) * 1000
    raise ValueError(text)
