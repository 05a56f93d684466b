"""deploy/testbed: the multi-host testbed from the command line (see docs/testbed.md).

    deploy/testbed up [--hosts 5] [--block-multicast h5] [--netem "loss 1%"] ...
    deploy/testbed status [--prefix P]
    deploy/testbed exec [--prefix P] HOST -- COMMAND ...
    deploy/testbed kill|start [--prefix P] HOST [COMPONENT ...]
    deploy/testbed netem [--prefix P] [--hosts h1,h2] SPEC|clear [--udp-only]
    deploy/testbed down [--prefix P]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vdns.errors import VdnsError
from vdns.netns import Impairment, check_available, existing_namespaces
from vdns.testbed import (
    DEFAULT_CONFIG,
    STATE_FILE,
    Testbed,
    TestbedSettings,
    default_state_dir,
)

SETTLE_POLL_S = 2.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploy/testbed",
        description="A hierarchy of mDNS domains, one per Linux network namespace on a "
                    "bridge: real multicast between hosts, DNS on port 53, URS and MSD "
                    "processes per host. Needs root, ip, nft (and tc).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = commands.add_parser("up", help="build the namespaces and start every domain")
    up.add_argument("--hosts", type=int, default=5, metavar="N",
                    help="hosts, one domain each: the hierarchy's first N domains "
                         "breadth-first from the root (default 5)")
    up.add_argument("--config", type=Path, default=DEFAULT_CONFIG, metavar="DIR",
                    help="the .mds hierarchy (default configs/scenario1)")
    up.add_argument("--msds", type=int, default=2, metavar="K",
                    help="MSD daemons per domain (default 2)")
    up.add_argument("--heartbeat", type=float, default=0.5, metavar="SECONDS",
                    help="heartbeat interval of every MSD (default 0.5)")
    up.add_argument("--block-multicast", action="append", default=[], metavar="HOST",
                    help="drop every multicast datagram HOST (h3, or a domain) receives "
                         "(repeatable)")
    up.add_argument("--netem", metavar="SPEC",
                    help="impair every host's link, e.g. 'delay 20ms loss 1%%' (tc netem; "
                         "on a kernel without it, loss alone through nftables)")
    up.add_argument("--udp-only", action="store_true",
                    help="--netem applies to UDP only (the control channels, and DNS)")
    up.add_argument("--prefix", help="namespace prefix (default: mtb + 6 random hex digits)")
    up.add_argument("--state-dir", type=Path, metavar="DIR",
                    help="logs, configs, data (default $MDNS_TESTBED_DIR/<prefix> or "
                         "/tmp/mdns-testbed/<prefix>)")
    up.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                    help="wait this long for the tree to form (0: do not wait)")

    for name, text in (("status", "show hosts, processes and the tree"),
                       ("down", "stop every process and delete the namespaces")):
        command = commands.add_parser(name, help=text)
        _prefix_option(command)

    run = commands.add_parser("exec", help="run a command as one host (or 'obs', the observer)")
    _prefix_option(run)
    run.add_argument("host")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")

    for name, text in (("kill", "kill -9 processes of a host (default: all of them)"),
                       ("start", "start processes of a host again (default: all stopped)")):
        command = commands.add_parser(name, help=text)
        _prefix_option(command)
        command.add_argument("host", help="h1, h2, ... or a domain")
        command.add_argument("components", nargs="*", metavar="COMPONENT",
                             help="dns, urs, msd-0, msd-1, ...")

    netem = commands.add_parser("netem", help="impair hosts' links (or 'clear')")
    _prefix_option(netem)
    netem.add_argument("spec", help="e.g. 'loss 10%%', 'delay 20ms 5ms loss 1%%', or clear")
    netem.add_argument("--hosts", help="comma-separated hosts (default: all)")
    netem.add_argument("--udp-only", action="store_true")
    return parser


def _prefix_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", help="which testbed (default: the only one running)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "down":
            return _down(args)
        testbed = Testbed.load(_state_dir(args.prefix))
        if args.command == "status":
            return _status(testbed)
        if args.command == "exec":
            command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
            if not command:
                raise VdnsError("give the command after --")
            return subprocess.call(testbed.exec_argv(args.host, command))
        host = testbed.placement(args.host).host.name if args.command in ("kill", "start") \
            else ""
        if args.command == "kill":
            running = [c for c in testbed.components() if testbed.alive(f"{host}/{c}")]
            for component in args.components or running:
                status = testbed.kill(args.host, component)
                print(f"killed {args.host}/{component}"
                      + (f" (exit {status})" if status is not None else ""))
            return 0
        if args.command == "start":
            wanted = args.components or [c for c in testbed.components()
                                         if not testbed.alive(f"{host}/{c}")]
            for component in wanted:
                print(f"started {args.host}/{component}: pid {testbed.start(args.host, component)}")
            return 0
        if args.command == "netem":
            hosts = args.hosts.split(",") if args.hosts else [
                p.host.name for p in testbed.placements]
            if args.spec == "clear":
                testbed.clear(hosts)
                print(f"cleared {', '.join(hosts)}")
            else:
                impairment = Impairment.parse(args.spec, udp_only=args.udp_only)
                how = testbed.impair(hosts, impairment)
                print(f"{impairment} on {', '.join(hosts)} ({how})")
            return 0
    except VdnsError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 1
    raise AssertionError(f"unhandled command {args.command}")


def _up(args: argparse.Namespace) -> int:
    problem = check_available()
    if problem:
        raise VdnsError(problem)
    impairment = Impairment.parse(args.netem, udp_only=args.udp_only) if args.netem else None
    testbed = Testbed(TestbedSettings(
        hosts=args.hosts, config_dir=args.config, msds=args.msds, heartbeat_s=args.heartbeat,
        block_multicast=tuple(args.block_multicast), impairment=impairment,
        prefix=args.prefix, state_dir=args.state_dir))
    testbed.up()
    print(f"testbed {testbed.prefix}: {len(testbed.placements)} hosts, state in "
          f"{testbed.state_dir}")
    _print_hosts(testbed)
    if args.wait > 0:
        took = _wait_settled(testbed, timeout=args.wait)
        print(f"\nthe tree formed in {took:.1f} s" if took is not None else
              f"\nthe tree did not form within {args.wait:g} s; see `status` and the logs")
    root, last = testbed.root, testbed.placements[-1]
    me, p = "deploy/testbed", f"--prefix {testbed.prefix}"
    mdns = f"{sys.executable} -m client.cli"
    print(f"""
Try:
  {me} status {p}
  {me} exec {p} obs -- {mdns} status --domain {root.domain} --dns {root.dns}
  {me} exec {p} {last.host.name} -- {mdns} register --domain {last.domain} \\
      --dns {last.dns} --id jazz --title Jazz --keywords jazz --group 239.255.7.7 --port 5010 --wait
  {me} exec {p} h1 -- {mdns} search jazz --home {root.domain} --dns {root.dns}
  {me} kill {p} h2 msd-0; {me} start {p} h2 msd-0
  {me} netem {p} --udp-only 'loss 10%'; {me} netem {p} clear
  {me} down {p}""")
    return 0


def _down(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args.prefix, must_exist=False)
    if (state_dir / STATE_FILE).exists():
        testbed = Testbed.load(state_dir)
        statuses = testbed.down()
        unclean = {n: s for n, s in statuses.items() if s not in (0, None)}
        print(f"testbed {testbed.prefix}: stopped {len(statuses)} processes"
              + (f"; not cleanly: {unclean}" if unclean else "") + ", namespaces deleted")
        return 0
    if not args.prefix:
        raise VdnsError("no state file: give --prefix to delete a run's namespaces")
    from vdns.netns import Network, NetworkPlan

    namespaces = existing_namespaces(args.prefix)
    Network(NetworkPlan.make(args.prefix, 1)).destroy()
    print(f"testbed {args.prefix}: deleted {len(namespaces)} namespaces (no state file)")
    return 0


def _status(testbed: Testbed) -> int:
    _print_hosts(testbed)
    print()
    for name, pid in sorted(testbed.pids.items()):
        state = "running" if testbed.alive(name) else "stopped"
        print(f"  {name:<10} pid {pid:<8} {state}")
    tree = _tree(testbed, as_json=False)
    print("\n" + (tree or "(no tree yet: no designated MSD answers at the root)"))
    return 0


def _print_hosts(testbed: Testbed) -> None:
    print(f"\n  {'host':<5} {'address':<12} {'domain':<40} multicast  impairment")
    for placed in testbed.placements:
        name = placed.host.name
        multicast = "blocked" if name in testbed.blocked else "on"
        impairment = str(testbed.impairments.get(name, "")) or "-"
        print(f"  {name:<5} {placed.host.address:<12} {placed.domain:<40} {multicast:<10} "
              f"{impairment}")
    print(f"  {'obs':<5} {testbed.plan.observer.address:<12} (observer: clients only)")


def _tree(testbed: Testbed, *, as_json: bool) -> Any:
    root = testbed.root
    argv = [sys.executable, "-m", "client.cli", "status", "--domain", root.domain, "--dns",
            root.dns, "--keys", "1000", "--timeout", "5", *(["--json"] if as_json else [])]
    result = subprocess.run(testbed.exec_argv("obs", argv), capture_output=True, text=True,
                            check=False, timeout=60)
    if result.returncode != 0:
        return None
    return json.loads(result.stdout) if as_json else result.stdout.rstrip()


def _wait_settled(testbed: Testbed, *, timeout: float) -> float | None:
    started = time.monotonic()
    expected = len(testbed.placements)
    while time.monotonic() - started < timeout:
        found = _tree(testbed, as_json=True)
        if found is not None:
            domains = found["domains"]
            states = [d.get("state") for d in domains]
            if (len(domains) == expected and states.count("root") == 1
                    and all(s in ("root", "joined") for s in states)
                    and not found["checks"]["tiling_problems"]):
                return time.monotonic() - started
        time.sleep(SETTLE_POLL_S)
    return None


def _state_dir(prefix: str | None, *, must_exist: bool = True) -> Path:
    if prefix:
        return default_state_dir(prefix)
    base = Path(os.environ.get("MDNS_TESTBED_DIR") or "/tmp/mdns-testbed")
    runs = sorted(p.parent for p in base.glob(f"*/{STATE_FILE}"))
    if len(runs) == 1:
        return runs[0]
    if not runs and not must_exist:
        return base / "-"
    raise VdnsError(f"{len(runs)} testbeds in {base} ({', '.join(p.name for p in runs)}): "
                    "give --prefix")


if __name__ == "__main__":
    sys.exit(main())
