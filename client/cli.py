"""The `mdns` command line: resolve bookmarks, run hierarchies, serve single components."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from client.bench import add_parser as add_bench_parser
from client.bench import run as run_bench_command
from client.errors import ClientError
from client.eventloop import serve
from client.fuzz import add_parser as add_fuzz_parser
from client.fuzz import run as run_fuzz
from client.key_commands import add_parsers as add_key_parsers
from client.key_commands import run as run_key_command
from client.ops_commands import COMMANDS as OPS_COMMANDS
from client.ops_commands import add_parsers as add_ops_parsers
from client.resolve import DEFAULT_TIMEOUT_S, format_table, resolve, resolve_sdp
from client.sap_commands import add_parsers as add_sap_parsers
from client.sap_commands import run as run_sap_command
from client.session_commands import add_parsers as add_session_parsers
from client.session_commands import run as run_session_command
from client.uri import parse_uri
from msd.errors import MsdError
from urs.errors import UrsError
from urs.locate import WELL_KNOWN_URS_PORT, parse_dns_server
from vdns.errors import VdnsError

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
KEYWORDS_FILE = CONFIGS_DIR / "latency-keywords.txt"

EPILOG = """\
examples:
  mdns up configs/demo
  mdns resolve mcast.ufl.edu/gators --dns 127.0.0.1:15300
  mdns resolve mcast.ufl.edu/gators --dns 127.0.0.1:15300 --sdp gators.sdp
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdns",
        description="mDNS: a directory of IP-multicast sessions that lives beside the DNS.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v info, -vv debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    resolve_cmd = commands.add_parser(
        "resolve",
        help="resolve a bookmark mcast.<domain>/<id> to its session",
        description=(
            "Resolve mcast.<domain>/<id>: DNS gives the address of mcast.<domain> and the URS "
            f"port (SRV _mdns-urs._tcp.<domain>, else {WELL_KNOWN_URS_PORT}); the URS gives the "
            "session. Prints a table, JSON (--json), or writes an SDP file a player opens (--sdp)."
        ),
    )
    resolve_cmd.add_argument("uri", help="the bookmark, e.g. mcast.ufl.edu/gators")
    resolve_cmd.add_argument("--dns", metavar="HOST:PORT",
                             help="ask this DNS server instead of the system resolver")
    output = resolve_cmd.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the record as JSON")
    output.add_argument("--sdp", metavar="FILE",
                        help="write the session's SDP description to FILE ('-' for stdout)")
    resolve_cmd.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                             metavar="SECONDS",
                             help=f"give up after this long (default {DEFAULT_TIMEOUT_S:g})")

    up_cmd = commands.add_parser(
        "up",
        help="run every domain of a directory of .mds files on loopback",
        description=(
            "Start each domain of DIR's .mds files: its DNS server on 127.0.0.1:SelfPort and its "
            "URS on URSIP:URSPort. Waits until all answer, registers DIR/sessions.json if "
            "present, prints what to try next, and runs until Ctrl-C or SIGTERM. Records are "
            "kept in the data directory and survive restarts."
        ),
    )
    up_cmd.add_argument("directory", type=Path, metavar="DIR",
                        help="a directory of .mds files, e.g. configs/scenario1")
    up_cmd.add_argument("--data-dir", type=Path, metavar="PATH",
                        help="where the URS databases live (default: "
                             "$MDNS_STATE_DIR or ~/.local/state/mdns/<DIR name>-<hash>)")
    up_cmd.add_argument("--multicast-mode", choices=("asm", "ssm", "none"), default="asm",
                        help="what the URS tells the MSDs about multicast (default asm)")
    up_cmd.add_argument("--ephemeral-ports", action="store_true",
                        help="ignore the files' ports and let the kernel choose free ones")
    up_cmd.add_argument("--no-samples", action="store_true",
                        help="do not register DIR/sessions.json")
    up_cmd.add_argument("--ready-timeout", type=float, default=15.0, metavar="SECONDS",
                        help="how long to wait for every server to answer (default 15)")
    up_cmd.add_argument("--msds", type=int, default=1, metavar="K",
                        help="MSD daemons (processes) per domain; 0 runs DNS and URS only "
                             "(default 1)")
    up_cmd.add_argument("--interface", default="127.0.0.1", metavar="ADDR",
                        help="the interface address the MSDs' multicast and unicast use "
                             "(default 127.0.0.1)")
    up_cmd.add_argument("--block-multicast", action="append", default=[], metavar="DOMAIN",
                        help="run DOMAIN's MSDs as on a host whose multicast is blocked "
                             "(repeatable)")
    up_cmd.add_argument("--urs-replicas", type=int, default=1, metavar="N",
                        help="URS replicas per domain, sharing its database (default 1); with "
                             "more, each DNS server health-checks them and answers mcast."
                             "<domain> (A, SRV) with the live ones, least loaded first, TTL 5 s")
    up_cmd.add_argument("--database", metavar="URL",
                        help="each domain's database (its URS and MSDs share it), e.g. "
                             "'postgresql+asyncpg://mdns@/mdns_{domain}?host=/run/postgresql'; "
                             "{domain} is replaced by the domain (the databases must exist); "
                             "default: SQLite files in the data directory")
    up_cmd.add_argument("--no-rate-limits", action="store_true",
                        help="turn off the per-address limits on registrations and searches "
                             "(URS and MSDs; by default 20 registrations/s per address): for "
                             "a benchmark such as 'mdns bench load' from this host")
    up_cmd.add_argument("--order", metavar="LIST",
                        help="start the MSDs one domain at a time in this order of domain "
                             "numbers (the NN of domainNN-*.mds), e.g. 10,4,5,6,1,2,7,8,9,3, "
                             "and show the tree forming (redrawn on a terminal, a line per "
                             "change otherwise)")
    up_cmd.add_argument("--delays", metavar="LIST",
                        help="seconds to wait after starting domain d: the d-th value, e.g. "
                             "5,5,5,10,30,600,5,5,300,30 (default: 5 s each)")
    up_cmd.add_argument("--time-scale", type=float, default=1.0, metavar="S",
                        help="divide every protocol timer (the heartbeat) and every delay by "
                             "S: S=100 runs a 20-minute start order in 12 s (default 1)")
    up_cmd.add_argument("--key-trust", choices=("tofu", "pinned"), default="tofu",
                        help="how MSDs trust other domains' keys: learnt on first use "
                             "(default), or only from a pinned-keys file of every domain")
    _tree_options(up_cmd)

    status_cmd = commands.add_parser(
        "status",
        help="print the tree of designated MSDs, reached from any domain",
        description=(
            "Find DOMAIN's designated MSD through DNS and its URS, climb to the root and walk "
            "every child: per domain its designated MSD, term, parent, children, link modes, "
            "subtree count, owned ranges, routes and counters; then check that the ranges "
            "tile the key space and that random keys route from every domain to their owner."
        ),
    )
    status_cmd.add_argument("--domain", required=True,
                            help="any domain of the hierarchy, e.g. level0.testdomain.info")
    status_cmd.add_argument("--dns", metavar="HOST:PORT",
                            help="ask this DNS server instead of the system resolver")
    status_cmd.add_argument("--json", action="store_true",
                            help='print {"domains": [...], "checks": {...}} as JSON')
    status_cmd.add_argument("--keys", type=int, default=10_000, metavar="N",
                            help="random keys to route from every domain (default 10000)")
    status_cmd.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")

    msd_cmd = commands.add_parser(
        "msd",
        help="run one MSD daemon for a domain",
        description=(
            "Run one MSD daemon: bootstrap from the domain's URS, take part in the election "
            "on MSD-LOCAL-MCAST and, while designated, in the tree of domains. Stops cleanly "
            "on SIGINT or SIGTERM. `mdns up --msds K` starts these for you."
        ),
    )
    msd_cmd.add_argument("--urs", required=True, metavar="URL", action="append",
                         help="the domain's URS, e.g. http://127.0.0.1:2038; repeat it for "
                              "each URS replica, tried in turn when one is unreachable")
    msd_cmd.add_argument("--msd-key-file", type=Path, required=True, metavar="FILE",
                         help="the domain's secret for announcing the designated MSD to the URS")
    msd_cmd.add_argument("--hierarchy-key-file", type=Path, required=True, metavar="FILE",
                         help="the hierarchy's shared secret: every control datagram and "
                              "MSD-to-MSD request carries an HMAC with it")
    msd_cmd.add_argument("--domain-key-file", type=Path, required=True, metavar="FILE",
                         help="the domain's Ed25519 private key (mode 0600; `mdns keys "
                              "generate`): signs everything this daemon sends")
    msd_cmd.add_argument("--pinned-keys", type=Path, metavar="FILE",
                         help="`domain public-key` lines the administrator trusts above "
                              "every other source")
    msd_cmd.add_argument("--known-keys", type=Path, metavar="FILE",
                         help="where keys learnt on first use are kept across restarts")
    msd_cmd.add_argument("--no-tofu", action="store_true",
                         help="trust no key learnt on first use or from the URS: only "
                              "--pinned-keys (and our own)")
    limits = msd_cmd.add_argument_group(
        "limits", "per client address (0 turns a rate off); requests signed by MSDs or "
                  "pushed by the URS are not rate-limited")
    limits.add_argument("--register-rate", type=float, default=20.0, metavar="PER_S",
                        help="registrations a second (default 20)")
    limits.add_argument("--register-burst", type=int, default=100, metavar="N",
                        help="registrations at once (default 100)")
    limits.add_argument("--search-rate", type=float, default=500.0, metavar="PER_S",
                        help="msd-probe, ext-search, local-search and /search requests a "
                             "second (default 500)")
    limits.add_argument("--search-burst", type=int, default=1000, metavar="N",
                        help="search requests at once (default 1000)")
    limits.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="a connection's first request head must arrive within this "
                             "(default 10)")
    limits.add_argument("--body-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="a request body must arrive within this (default 10)")
    msd_cmd.add_argument("--interface", default="127.0.0.1", metavar="ADDR",
                         help="the address whose interface carries multicast and unicast "
                              "(default 127.0.0.1)")
    msd_cmd.add_argument("--port", type=int, default=0,
                         help="UDP control and HTTP status port (default: any free port)")
    msd_cmd.add_argument("--priority", type=int, default=0,
                         help="election priority, 0-65535; the highest live one is designated")
    msd_database = msd_cmd.add_mutually_exclusive_group()
    msd_database.add_argument("--database", metavar="URL",
                              help="the domain's session store, shared by its MSDs: an "
                                   "SQLAlchemy URL, e.g. sqlite+aiosqlite:////var/lib/mdns/"
                                   "msd.sqlite or postgresql+asyncpg://...; without it, no "
                                   "sessions are kept")
    msd_database.add_argument("--database-file", type=Path, metavar="FILE",
                              help="a file holding that URL (it may hold a password)")
    msd_cmd.add_argument("--no-multicast", action="store_true",
                         help="this host's multicast is broken: elect through the URS and "
                              "ask the parent for unicast heartbeats")
    _tree_options(msd_cmd)
    add_session_parsers(commands)
    add_sap_parsers(commands)
    add_ops_parsers(commands)
    add_key_parsers(commands)
    add_fuzz_parser(commands)

    experiment = commands.add_parser("experiment", help="the dissertation's experiments")
    experiments = experiment.add_subparsers(dest="experiment", metavar="EXPERIMENT",
                                            required=True)
    latency = experiments.add_parser(
        "latency", help="discovery latency on scenario 3's chain, with injected delay",
        description=(
            "For each keyword: register a session at a random domain of scenario 3's chain "
            "(domains 10, 1, 4, 5, 2: the first --domains of them), then search for it from "
            "an independently chosen random domain until found. Every inter-domain message "
            "is delayed uniformly at random in --delay milliseconds. Reports min, median, "
            "mean, p95, max and std-dev, cold and with a warm redirection cache."))
    latency.add_argument("--domains", default="5", metavar="N|A-B",
                         help="domains of the chain, 1..5, or a range such as 1-5 to run "
                              "each count in turn (default 5)")
    latency.add_argument("--delay", default="25-100", metavar="LOW-HIGH",
                         help="inter-domain delay range in ms (default 25-100)")
    latency.add_argument("--keywords", type=Path, default=KEYWORDS_FILE, metavar="FILE",
                         help="one keyword a line (default: the dissertation's 306)")
    latency.add_argument("--seed", type=int, default=0)
    latency.add_argument("--json", action="store_true",
                         help='print {"cold": {...}, "warm": {...}} (a list for a range)')
    latency.add_argument("--out", type=Path, metavar="DIR",
                         help="write a report: samples.csv, summary.csv, summary.md and "
                              "latency.png (min/median/mean/max against the domains)")
    _scale_parser(experiments)
    _stability_parser(experiments)
    add_bench_parser(commands)
    return parser


def _scale_parser(experiments: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from vdns.scale import FIGURES, ScaleSettings  # light: the tree core and the codec

    defaults = ScaleSettings()
    scale = experiments.add_parser(
        "scale", help="a random tree of up to 10,000 domains on a virtual network and clock",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=FIGURES,
        description=(
            "Build a random tree of --domains domains (seeded), start every domain's MSD tree\n"
            "core (msd.hierarchy.Node, as the daemons run it) at once on an in-process virtual\n"
            "network and clock, and measure: convergence, skew, control bytes (every datagram\n"
            "encoded by msd.codec), route switches, routing hops and load per tree level\n"
            "against the formulas. Progress goes to stderr; docs/scale.md has the details."))
    scale.add_argument("--domains", type=int, default=defaults.domains, metavar="N",
                       help=f"domains in the tree, 1..100000 (default {defaults.domains})")
    scale.add_argument("--fanout", type=int, default=defaults.fanout, metavar="K",
                       help=f"most children a domain may have, 2..64 (default {defaults.fanout})")
    scale.add_argument("--depth", type=int, metavar="D",
                       help="deepest level a domain may sit at (default: ceil(log_K N) + 1)")
    scale.add_argument("--seed", type=int, default=defaults.seed,
                       help="seeds the tree, the checks and the lookups (default 0)")
    scale.add_argument("--window", type=int, default=defaults.window, metavar="HEARTBEATS",
                       help="heartbeats the tree must stay converged; control bytes are "
                            f"measured over them (default {defaults.window})")
    scale.add_argument("--lookups", type=int, default=defaults.lookups, metavar="L",
                       help=f"random lookups routed at the end (default {defaults.lookups})")
    scale.add_argument("--latency", type=float, default=defaults.latency_ms, metavar="MS",
                       help=f"one-way delay of every datagram (default {defaults.latency_ms:g})")
    scale.add_argument("--max-virtual", type=float, default=defaults.max_virtual_s,
                       metavar="SECONDS", help="give up converging after this much virtual "
                       f"time (default {defaults.max_virtual_s:g})")
    scale.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    _tree_options(scale)


def _stability_parser(experiments: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from vdns.stability import FIGURES, StabilitySettings

    defaults = StabilitySettings()
    stability = experiments.add_parser(
        "stability", help="start orders × α/β on the 10-domain scenarios: switches, skew, "
                          "bandwidth, stabilization, score",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=FIGURES,
        description=(
            "For each scenario, start order and alpha <= beta (0.1 to 1.9 in steps of 0.2 by\n"
            "default), --runs runs: start the domains' MSDs in the dissertation's order and\n"
            "delays, every timer and delay divided by --time-scale, and measure per domain.\n"
            "The default engine runs real MSD daemons (in this process, on loopback); 'sim'\n"
            "runs the same tree cores on a virtual network and clock (fast, exact).\n"
            "Progress on stderr; --out DIR writes CSV, a markdown summary and PNG plots;\n"
            "docs/experiments.md explains every figure."))
    stability.add_argument("--scenario", default="1,2,3", metavar="LIST",
                           help="scenarios to run, e.g. 3 or 1,3 (default 1,2,3)")
    stability.add_argument("--order", default="1,2", metavar="LIST",
                           help="start orders to run, 1 and/or 2 (default 1,2)")
    stability.add_argument("--alpha", metavar="LIST",
                           help="alpha values, e.g. 0.5 or 0.1,0.9 (default 0.1,0.3,...,1.9)")
    stability.add_argument("--beta", metavar="LIST",
                           help="beta values (default 0.1,0.3,...,1.9); cells with "
                                "alpha > beta are skipped")
    stability.add_argument("--refresh-every", metavar="LIST",
                           help="quiet periods in heartbeats, e.g. 10,100,610 (default "
                                f"{','.join(str(q) for q in defaults.refresh_every)}): counts "
                                "unchanged this long → an uneven split is divided anyway")
    stability.add_argument("--runs", type=int, default=defaults.runs,
                           help=f"runs per cell (default {defaults.runs})")
    stability.add_argument("--time-scale", type=float, default=defaults.time_scale,
                           metavar="S", help="divide every timer and delay by S (default "
                           f"{defaults.time_scale:g}: a 50 ms heartbeat, order 1 takes about "
                           "55 s a run; a busy machine may need a smaller S)")
    stability.add_argument("--heartbeat", type=float, default=defaults.heartbeat_s,
                           metavar="SECONDS", help="nominal heartbeat, before scaling "
                           f"(default {defaults.heartbeat_s:g})")
    stability.add_argument("--engine", choices=("daemons", "sim"), default=defaults.engine,
                           help="real daemons (default) or the virtual-clock simulator")
    stability.add_argument("--seed", type=int, default=defaults.seed,
                           help="seeds the simulator's network jitter (default 0)")
    stability.add_argument("--out", type=Path, metavar="DIR",
                           help="write domains.csv, cells.csv, summary.md and the PNG plots")
    stability.add_argument("--json", action="store_true",
                           help="print every run's figures (per domain too) as JSON")


def _tree_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--heartbeat", type=float, default=1.0, metavar="SECONDS",
                        help="heartbeat interval of the MSD tree and election (default 1)")
    parser.add_argument("--alpha", type=float, default=0.1,
                        help="relative count change that re-splits below the root (default 0.1)")
    parser.add_argument("--beta", type=float, default=0.1,
                        help="relative count change that re-splits at the root (default 0.1)")
    parser.add_argument("--refresh-every", type=_quiet_period, default=10, metavar="HEARTBEATS",
                        help="the quiet period: counts unchanged this many heartbeats → an "
                             "uneven split is divided anyway (twice that below the root; "
                             "default 10; docs/hierarchy.md, Damping)")


def _quiet_period(text: str) -> int:
    """--refresh-every: whole heartbeats, 1..MAX_REFRESH_EVERY."""
    from vdns.stability import MAX_REFRESH_EVERY

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected whole heartbeats") from None
    if not 1 <= value <= MAX_REFRESH_EVERY:
        raise argparse.ArgumentTypeError(f"{value}: must be 1..{MAX_REFRESH_EVERY} heartbeats")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "resolve":
            return asyncio.run(_resolve(args, out=sys.stdout))
        if args.command == "up":
            return _up(args)
        if args.command == "status":
            return asyncio.run(_status(args, out=sys.stdout))
        if args.command == "msd":
            return _msd(args)
        if args.command in ("register", "search", "open"):
            return run_session_command(args, out=sys.stdout)
        if args.command == "sap":
            return run_sap_command(args, out=sys.stdout)
        if args.command in OPS_COMMANDS:
            from client.ops_commands import run as run_ops_command

            return run_ops_command(args, out=sys.stdout)
        if args.command == "keys":
            return run_key_command(args, out=sys.stdout)
        if args.command == "fuzz":
            return run_fuzz(args, out=sys.stdout)
        if args.command == "experiment":
            return _experiment(args, out=sys.stdout)
        if args.command == "bench":
            return run_bench_command(args, out=sys.stdout)
    except (ClientError, UrsError, VdnsError, MsdError) as exc:
        print(f"mdns: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


async def _resolve(args: argparse.Namespace, *, out: TextIO) -> int:
    uri = parse_uri(args.uri)
    dns_server = parse_dns_server(args.dns) if args.dns else None
    if args.sdp:
        sdp = await resolve_sdp(uri, dns_server=dns_server, timeout=args.timeout)
        if args.sdp == "-":
            out.write(sdp)
        else:
            _write_file(Path(args.sdp), sdp)
            print(f"wrote {args.sdp} ({uri})", file=sys.stderr)
        return 0
    resolved = await resolve(uri, dns_server=dns_server, timeout=args.timeout)
    if args.json:
        print(json.dumps(resolved.raw, indent=2), file=out)
    else:
        print(format_table(resolved), file=out)
    return 0


def _up(args: argparse.Namespace) -> int:
    from client.up import run_up  # the server side pulls in more than `resolve` needs

    if not 0 < args.time_scale <= 1000 or args.heartbeat <= 0:
        raise ClientError("--time-scale must be in (0, 1000] and --heartbeat more than 0")
    if args.delays and not args.order:
        raise ClientError("--delays goes with --order")
    order = delays = None
    if args.order:
        numbers = _floats(args.order, what="--order") or ()
        if any(not n.is_integer() for n in numbers):
            raise ClientError("--order takes domain numbers, e.g. 10,4,5")
        order = [int(n) for n in numbers]
        delays = list(_floats(args.delays, what="--delays") or [5.0] * max(order))
    serve(run_up(
        args.directory,
        data_dir=args.data_dir,
        multicast_mode=args.multicast_mode,
        ephemeral_ports=args.ephemeral_ports,
        register_samples=not args.no_samples,
        ready_timeout=args.ready_timeout,
        msds=args.msds,
        multicast_blocked=args.block_multicast,
        interface=args.interface,
        heartbeat_s=args.heartbeat,
        alpha=args.alpha,
        beta=args.beta,
        refresh_every=args.refresh_every,
        database_url=args.database,
        urs_replicas=args.urs_replicas,
        key_trust=args.key_trust,
        out=sys.stdout,
        order=order,
        delays=delays,
        time_scale=args.time_scale,
        rate_limits=not args.no_rate_limits,
    ))
    return 0


async def _status(args: argparse.Namespace, *, out: TextIO) -> int:
    from client.status import collect, format_tree, summary

    dns_server = parse_dns_server(args.dns) if args.dns else None
    domains = await collect(domain=args.domain, dns_server=dns_server, timeout=args.timeout)
    checks = summary(domains, keys=max(0, args.keys))
    if args.json:
        print(json.dumps({"domains": domains, "checks": checks}, indent=2), file=out)
    else:
        print(format_tree(domains, checks), file=out)
    return 0


def _experiment(args: argparse.Namespace, *, out: TextIO) -> int:
    if args.experiment == "scale":
        return _scale(args, out=out)
    if args.experiment == "stability":
        return _stability(args, out=out)
    from vdns.experiments import MAX_DOMAINS, LatencySettings, format_report, latency

    try:
        low, high = (float(part) for part in args.delay.split("-", 1))
    except ValueError:
        raise ClientError(f"--delay {args.delay!r}: expected LOW-HIGH in ms, e.g. 25-100") \
            from None
    if not 0 <= low <= high <= 10_000:
        raise ClientError("--delay: need 0 <= LOW <= HIGH <= 10000 ms")
    try:
        keywords = tuple(w.strip() for w in args.keywords.read_text().split() if w.strip())
    except OSError as exc:
        raise ClientError(f"--keywords {args.keywords}: {exc.strerror}") from None
    counts = _domain_counts(args.domains, most=MAX_DOMAINS)
    results = []
    for count in counts:
        settings = LatencySettings(domains=count, delay_ms=(low, high), seed=args.seed,
                                   keywords=keywords, scenario_dir=CONFIGS_DIR / "scenario3")

        def say(text: str, count: int = count) -> None:
            print(f"latency, {count} domain(s): {text}", file=sys.stderr, flush=True)

        results.append(asyncio.run(latency(settings, progress=say)))
    if args.out is not None:
        from vdns.report import latency_report

        written = latency_report(results, args.out)
        print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    printable = [{k: v for k, v in r.items() if k != "samples_ms"} for r in results]
    if args.json:
        print(json.dumps(printable[0] if len(printable) == 1 else printable, indent=2), file=out)
    else:
        print("\n\n".join(format_report(r) for r in printable), file=out)
    return 0


def _domain_counts(text: str, *, most: int) -> list[int]:
    """'3' → [3]; '1-5' → [1, 2, 3, 4, 5]."""
    try:
        low, _, high = text.partition("-")
        first, last = int(low), int(high or low)
    except ValueError:
        raise ClientError(f"--domains {text!r}: expected N or A-B, e.g. 5 or 1-5") from None
    if not 1 <= first <= last <= most:
        raise ClientError(f"--domains: need 1 <= A <= B <= {most}")
    return list(range(first, last + 1))


def _floats(text: str | None, *, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ClientError(f"{what} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise ClientError(f"{what}: no value given")
    return values


def _whole(text: str | None, *, what: str) -> tuple[int, ...] | None:
    """A comma-separated list of whole numbers (None when not given)."""
    values = _floats(text, what=what)
    if values is not None and any(not v.is_integer() for v in values):
        raise ClientError(f"{what} takes whole numbers")
    return None if values is None else tuple(int(v) for v in values)


def _stability(args: argparse.Namespace, *, out: TextIO) -> int:
    from vdns.stability import GRID, StabilitySettings, sweep

    scenarios = _floats(args.scenario, what="--scenario") or ()
    orders = _floats(args.order, what="--order") or ()
    if any(not v.is_integer() for v in (*scenarios, *orders)):
        raise ClientError("--scenario and --order take whole numbers")
    if args.heartbeat <= 0:
        raise ClientError("--heartbeat must be more than 0")
    settings = StabilitySettings(
        scenarios=tuple(int(v) for v in scenarios), orders=tuple(int(v) for v in orders),
        alphas=_floats(args.alpha, what="--alpha") or GRID,
        betas=_floats(args.beta, what="--beta") or GRID,
        refresh_every=_whole(args.refresh_every, what="--refresh-every")
        or StabilitySettings().refresh_every, runs=args.runs,
        time_scale=args.time_scale, heartbeat_s=args.heartbeat, seed=args.seed,
        engine=args.engine, configs_dir=CONFIGS_DIR)
    result = sweep(settings, progress=lambda text: print(f"stability: {text}", file=sys.stderr,
                                                         flush=True))
    if args.out is not None:
        from vdns.report import stability_report

        written = stability_report(result, args.out)
        print(f"stability: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    if args.json:
        print(json.dumps(result["runs"], indent=2), file=out)
    else:
        print(format_stability(result), file=out)
    failed = sum(not run["skew_ok"] for run in result["runs"])
    if failed:
        print(f"stability: {failed} of {len(result['runs'])} runs failed the skew check (a "
              "domain not joined, or a share more than 1e-6 from 1/N)", file=sys.stderr)
        return 1
    return 0


def format_stability(result: dict[str, Any]) -> str:
    """One line per cell (means over its runs), then the best cell of each scenario/order
    and every run that failed the skew check."""
    from vdns.report import best_cells, cells

    rows = cells(result)
    lines = [f"{'scen':>4} {'order':>5} {'alpha':>5} {'beta':>5} {'quiet':>5} {'runs':>4} "
             f"{'switches':>9} {'max':>4} {'stab s':>7} {'skew max':>9} {'skew ok':>7} "
             f"{'B/s':>6} {'score':>6}"]
    for r in rows:
        ok = f"{r['runs'] - r['skew_check_failed']}/{r['runs']}"
        lines.append(f"{r['scenario']:>4} {r['order']:>5} {r['alpha']:>5g} {r['beta']:>5g} "
                     f"{r['refresh_every']:>5} {r['runs']:>4} {r['route_switches_mean']:>9.2f} "
                     f"{r['route_switches_max']:>4} {r['stabilization_s_mean']:>7.1f} "
                     f"{r['skew_max']:>9.1e} {ok:>7} {r['control_bytes_per_s_mean']:>6.0f} "
                     f"{r['score_mean']:>6.3f}")
    lines.append("")
    lines.append("best (lowest score) per scenario and order: " + "; ".join(
        f"{r['scenario']}/{r['order']}: α={r['alpha']:g} β={r['beta']:g} "
        f"quiet={r['refresh_every']} ({r['route_switches_mean']:.2f} switches)"
        for r in best_cells(rows)))
    failed = [r for r in result["runs"] if not r["skew_ok"]]
    for r in failed:
        lines.append(f"SKEW CHECK FAILED: scenario {r['scenario']} order {r['order']} "
                     f"α={r['alpha']:g} β={r['beta']:g} quiet={r['refresh_every']} run "
                     f"{r['run']}: {'; '.join(r['skew_faults'])}")
    return "\n".join(lines)


def _scale(args: argparse.Namespace, *, out: TextIO) -> int:
    from vdns.scale import ScaleSettings, format_report, scale

    if args.window < 1 or args.lookups < 1 or args.heartbeat <= 0 or args.latency < 0:
        raise ClientError("--window and --lookups need at least 1, --heartbeat more than 0, "
                          "--latency at least 0")
    settings = ScaleSettings(domains=args.domains, fanout=args.fanout, depth=args.depth,
                             seed=args.seed, heartbeat_s=args.heartbeat, latency_ms=args.latency,
                             window=args.window, lookups=args.lookups,
                             max_virtual_s=args.max_virtual, alpha=args.alpha, beta=args.beta,
                             refresh_every=args.refresh_every)
    result = scale(settings, progress=lambda text: print(f"scale: {text}", file=sys.stderr,
                                                         flush=True))
    print(json.dumps(result, indent=2) if args.json else format_report(result), file=out)
    return 0


def _msd(args: argparse.Namespace) -> int:
    from client.serve_commands import database_url
    from msd.api import ApiLimits
    from msd.daemon import run_daemon
    from msd.http_limits import HttpLimits
    from msd.keys import load_private_key, read_key_file
    from msd.ratelimit import RateLimit

    try:
        msd_key = args.msd_key_file.read_text().strip()
        hierarchy_key = args.hierarchy_key_file.read_bytes().strip()
    except OSError as exc:
        raise ClientError(f"cannot read a key file: {exc}") from None
    domain_key = load_private_key(args.domain_key_file)
    pinned = read_key_file(args.pinned_keys) if args.pinned_keys else {}
    if args.no_tofu and not pinned:
        raise ClientError("--no-tofu trusts only --pinned-keys: give that file")
    try:
        api_limits = ApiLimits(
            register=RateLimit(rate=args.register_rate, burst=args.register_burst),
            search=RateLimit(rate=args.search_rate, burst=args.search_burst))
        http_limits = HttpLimits(header_timeout_s=args.header_timeout,
                                 body_timeout_s=args.body_timeout)
    except ValueError as exc:
        raise ClientError(f"limits: {exc}") from None
    serve(run_daemon(
        urs_url=args.urs[0].rstrip("/"), msd_key=msd_key, hierarchy_key=hierarchy_key,
        urs_fallbacks=tuple(url.rstrip("/") for url in args.urs[1:]),
        domain_key=domain_key, pinned_keys=pinned, known_keys_file=args.known_keys,
        tofu=not args.no_tofu, api_limits=api_limits, http_limits=http_limits,
        interface=args.interface, port=args.port, priority=args.priority,
        heartbeat_s=args.heartbeat, alpha=args.alpha, beta=args.beta,
        refresh_every=args.refresh_every, multicast=not args.no_multicast,
        database_url=database_url(args)))
    return 0


def _write_file(path: Path, text: str) -> None:
    try:
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        raise ClientError(f"cannot write {path}: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
