"""`mdns bench load`: registrations and searches from worker processes against a running hierarchy.

The hierarchy is already running (`mdns up configs/demo`); it is found through DNS like
any client finds it: the target domain's URS (DNS), its designated MSD and MSD daemons
with their pids (the URS's bootstrap document), the URS's own process (the local
process listening on its port; `--pid` for anything else). Each operation in `--ops` is
one phase of `--seconds` (after `--warmup`), run by `--workers` processes of
client.loadgen, at saturation (`--concurrency` requests in flight) or at a fixed rate
(`--rate`, open loop). Meanwhile the resident memory of the target processes is sampled
and their CPU time read at each phase's ends. What each figure means: docs/bench.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import math
import multiprocessing
import secrets
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from client.errors import ClientError
from client.histogram import Histogram, merged
from client.loadgen import Endpoint, Op, Outcome, Plan, bench_session, worker_main
from client.procinfo import ProcError, Usage, listening_pid, read_usage
from urs.locate import LocateError, locate_urs, parse_dns_server

WORKERS_MAX = 64
CONCURRENCY_MAX = 10_000
SERIES_MAX = 1200  # RSS samples kept per process; halved (every other one) when full
READY_TIMEOUT_S = 60.0  # a worker process starting on a busy machine
CORPUS_CONCURRENCY = 16
CORPUS_ROUTES_TIMEOUT_S = 120.0  # until every corpus session is found by each keyword
DISCOVERY_TIMEOUT_S = 10.0
START_MARGIN_S = 0.3  # between telling the workers the start time and that time

WHAT = {
    Op.REGISTER: "POST /sessions at the URS: durable write (fsync), push to the MSD, "
                 "MSD's local write; keyword routes follow in the background",
    Op.INDEX: "POST /sessions {record} at the designated MSD (the URS's push alone): "
              "local write; keyword routes follow in the background",
    Op.SEARCH: "GET /search?q=<keyword> at the designated MSD: the whole search in one call",
    Op.CLIENT_SEARCH: "the client protocol from the worker: local-search at the home MSD "
                      "+ ext-search at the owner (redirect cache warm after the first)",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchSettings:
    """Everything `mdns bench load` was asked to do; every limit with its unit."""

    target: str
    dns: tuple[str, int] | None = None
    seconds: float = 10.0
    warmup_s: float = 1.0
    ops: tuple[Op, ...] = (Op.REGISTER, Op.SEARCH)
    concurrency: int = 32  # saturation: requests in flight, over all workers
    rate: float | None = None  # fixed rate, requests per second over all workers
    workers: int = 1
    spread: bool = False
    corpus: int = 1000  # sessions registered for the searches to find
    vocabulary: int = 300  # distinct search keywords; corpus × keywords / vocabulary hits each
    keywords_per_session: int = 3
    ttl_s: int = 120
    msd_key: str | None = None
    pids: tuple[tuple[str, int], ...] = ()
    sample_every_s: float = 1.0
    timeout_s: float = 10.0

    def check(self) -> None:
        """ClientError naming the option at fault."""
        if not 0 < self.seconds <= 86_400 or not 0 <= self.warmup_s <= 3600:
            raise ClientError("--seconds must be more than 0 (at most a day), --warmup 0-3600")
        if not 1 <= self.workers <= WORKERS_MAX:
            raise ClientError(f"--workers must be 1-{WORKERS_MAX}")
        if not self.workers <= self.concurrency <= CONCURRENCY_MAX:
            raise ClientError(f"--concurrency must be --workers ({self.workers}) to "
                              f"{CONCURRENCY_MAX}")
        if self.rate is not None and not 0 < self.rate <= 1_000_000:
            raise ClientError("--rate must be more than 0 requests per second")
        if not 1 <= self.keywords_per_session <= 10 or not 1 <= self.vocabulary <= 100_000:
            raise ClientError("--keywords-per-session must be 1-10, --vocabulary 1-100000")
        if not 0 <= self.corpus <= 1_000_000:
            raise ClientError("--corpus must be 0-1000000 sessions")
        if not 10 <= self.ttl_s <= 7 * 24 * 3600:
            raise ClientError("--ttl must be 10 s to a week")
        if Op.INDEX in self.ops and self.msd_key is None:
            raise ClientError("--ops index needs the domain's MSD key (--msd-key-file)")
        if not self.ops:
            raise ClientError("--ops names no operation")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Watched:
    """A target process whose memory and CPU time are read."""

    label: str
    pid: int


class MemoryLog:
    """RSS samples of the watched processes, bounded (halved when full)."""

    def __init__(self, watched: list[Watched]) -> None:
        self.watched = watched
        self.series: dict[int, list[tuple[float, int]]] = {w.pid: [] for w in watched}
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.unreadable: dict[int, str] = {}

    def sample(self, now: float) -> dict[int, Usage]:
        usage: dict[int, Usage] = {}
        for item in self.watched:
            try:
                usage[item.pid] = read_usage(item.pid)
            except ProcError as exc:
                self.unreadable[item.pid] = str(exc)
                continue
            rss = usage[item.pid].rss_kb
            self.first.setdefault(item.pid, rss)
            self.last[item.pid] = rss
            self.peak[item.pid] = max(self.peak.get(item.pid, 0), rss)
            series = self.series[item.pid]
            series.append((now, rss))
            if len(series) >= SERIES_MAX:
                del series[1::2]
        return usage

    async def run(self, *, every_s: float, started: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.sample(time.monotonic() - started)

    def report(self) -> list[dict[str, Any]]:
        rows = []
        for item in self.watched:
            if item.pid not in self.first:
                rows.append({"label": item.label, "pid": item.pid,
                             "error": self.unreadable.get(item.pid, "not sampled")})
                continue
            rows.append({"label": item.label, "pid": item.pid,
                         "rss_mb_start": _mb(self.first[item.pid]),
                         "rss_mb_end": _mb(self.last[item.pid]),
                         "rss_mb_max": _mb(self.peak[item.pid]),
                         "samples": [[round(t, 1), _mb(kb)] for t, kb in self.series[item.pid]]})
        return rows


async def run_bench(
    settings: BenchSettings, *, progress: Any = None,
) -> dict[str, Any]:
    """Discover the target, run each phase, and return the report (see docs/bench.md)."""
    settings.check()
    say = progress or (lambda _text: None)
    endpoints, watched = await discover(settings)
    watched += [Watched(label=label, pid=pid) for label, pid in settings.pids]
    memory = MemoryLog(watched)
    started = time.monotonic()
    memory.sample(0.0)
    sampler = asyncio.create_task(memory.run(every_s=settings.sample_every_s, started=started))
    tag = "b" + secrets.token_hex(3)
    phases: list[dict[str, Any]] = []
    histograms: list[Histogram] = []
    try:
        if any(not op.writes for op in settings.ops) and settings.corpus:
            say(f"registering a corpus of {settings.corpus} sessions to search for")
            await register_corpus(settings, endpoints, tag=tag)
        for op in settings.ops:
            say(f"phase {op}: {settings.warmup_s:g} s warm-up + {settings.seconds:g} s")
            before = memory.sample(time.monotonic() - started)
            outcomes = await run_phase(settings, op, endpoints, tag=tag)
            after = memory.sample(time.monotonic() - started)
            phase = phase_report(settings, op, outcomes, watched=watched, before=before,
                                 after=after)
            phases.append(phase)
            histograms.append(merged(o.histogram for o in outcomes))
            say(f"phase {op}: {phase['per_s']:.0f}/s, p99 {phase['p99_ms']:.1f} ms, "
                f"{phase['errors']} errors")
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    memory.sample(time.monotonic() - started)
    return summary(settings, endpoints, phases, merged(histograms), memory.report())


async def discover(settings: BenchSettings) -> tuple[list[Endpoint], list[Watched]]:
    """The endpoints to load (the target domain, or with --spread every domain of its tree)
    and the processes to watch: each domain's MSD daemons (pids from the URS's bootstrap
    document) and the local process serving each URS."""
    domains = [settings.target]
    if settings.spread:
        from client.status import collect

        statuses = await collect(domain=settings.target, dns_server=settings.dns,
                                 timeout=DISCOVERY_TIMEOUT_S)
        domains = sorted(str(s["name"]) for s in statuses if "error" not in s)
    endpoints: list[Endpoint] = []
    watched: dict[int, Watched] = {}
    timeout = aiohttp.ClientTimeout(total=DISCOVERY_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for domain in domains:
            try:
                location = await locate_urs(domain, dns_server=settings.dns,
                                            timeout=DISCOVERY_TIMEOUT_S)
            except LocateError as exc:
                raise ClientError(str(exc)) from None
            bootstrap = await _get_json(http, f"{location.base_url}/bootstrap")
            designated = bootstrap.get("designated")
            if not designated:
                raise ClientError(f"{domain} has no designated MSD (is `mdns up` running "
                                  "with MSDs?)")
            endpoints.append(Endpoint(
                domain=domain, urs_url=location.base_url,
                msd_url=f"http://{_host(designated['address'])}:{designated['port']}"))
            for member in bootstrap.get("msds") or []:
                pid = member.get("pid")
                if isinstance(pid, int) and _is_local(str(member.get("address"))):
                    watched.setdefault(pid, Watched(
                        label=f"msd {domain} ({member.get('role', '?')})", pid=pid))
            if _is_local(location.host):
                pid = listening_pid(location.port)
                if pid is not None and pid not in watched:
                    watched[pid] = Watched(label=f"urs of {domain}", pid=pid)
    return endpoints, list(watched.values())


async def register_corpus(
    settings: BenchSettings, endpoints: list[Endpoint], *, tag: str
) -> None:
    """Register the sessions the searches find (through the URS), then wait until a search
    for every keyword of the vocabulary finds all of its sessions: the routes are done."""
    vocabulary = search_vocabulary(tag, settings.vocabulary)
    ttl = max(60, math.ceil(len(settings.ops) * (settings.seconds + settings.warmup_s)) + 300)
    expected: dict[str, int] = {}
    sessions = []
    for number in range(settings.corpus):
        session = bench_session(f"{tag}-c-{number}", number=number, vocabulary=vocabulary,
                                keywords=settings.keywords_per_session, ttl_s=ttl)
        sessions.append((endpoints[number % len(endpoints)], session))
        for word in session["keywords"]:
            expected[word] = expected.get(word, 0) + 1
    failures: list[str] = []

    async def register(http: aiohttp.ClientSession, queue: list[Any]) -> None:
        while queue and not failures:
            target, session = queue.pop()
            async with http.post(f"{target.urs_url}/sessions", json=session) as response:
                answer = await response.json()
            if response.status == 201 and not answer.get("indexed"):
                # The documented fallback (a busy MSD missed the URS's 1 s push): ask it.
                async with http.post(f"{target.msd_url}/sessions",
                                     json={"id": session["id"]}) as response:
                    answer = await response.json()
            if response.status not in (200, 201):
                failures.append(f"{target.domain}: {response.status} {answer}"[:300])

    async def found(http: aiohttp.ClientSession, queue: list[Any], deadline: float) -> None:
        while queue and not failures:
            word = queue.pop()
            target = endpoints[len(queue) % len(endpoints)]
            while True:
                async with http.get(f"{target.msd_url}/search", params={"q": word}) as answer:
                    hits = len((await answer.json()).get("sessions", []))
                if hits >= expected[word]:
                    break
                if time.monotonic() > deadline:
                    failures.append(f"{word!r}: {hits} of {expected[word]} sessions found "
                                    "after waiting for the keyword routes")
                    return
                await asyncio.sleep(0.5)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        try:
            await asyncio.gather(*(register(http, sessions)
                                   for _ in range(CORPUS_CONCURRENCY)))
            words = list(expected)
            deadline = time.monotonic() + CORPUS_ROUTES_TIMEOUT_S
            await asyncio.gather(*(found(http, words, deadline)
                                   for _ in range(CORPUS_CONCURRENCY)))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ClientError(f"registering the search corpus failed: {exc}") from None
    if failures:
        raise ClientError(f"registering the search corpus failed: {failures[0]}")


def search_vocabulary(tag: str, size: int) -> tuple[str, ...]:
    return tuple(f"{tag}s{i}" for i in range(size))


def register_vocabulary(tag: str) -> tuple[str, ...]:
    return tuple(f"{tag}r{i}" for i in range(1000))


async def run_phase(
    settings: BenchSettings, op: Op, endpoints: list[Endpoint], *, tag: str
) -> list[Outcome]:
    """One phase: start the worker processes, start them together, collect their outcomes."""
    vocabulary = (register_vocabulary(tag) if op.writes
                  else search_vocabulary(tag, settings.vocabulary))
    n = settings.workers
    plans = [Plan(op=op, endpoints=tuple(endpoints), worker=i, run_tag=tag,
                  vocabulary=vocabulary, keywords_per_session=settings.keywords_per_session,
                  ttl_s=settings.ttl_s, warmup_s=settings.warmup_s, seconds=settings.seconds,
                  concurrency=None if settings.rate else _share(settings.concurrency, n, i),
                  rate=settings.rate / n if settings.rate else None,
                  timeout_s=settings.timeout_s, msd_key=settings.msd_key)
             for i in range(n)]
    context = multiprocessing.get_context("spawn")
    running: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
    try:
        for plan in plans:
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(plan, child),
                                      name=f"mdns-loadgen-{plan.worker}", daemon=True)
            process.start()
            child.close()
            running.append((process, parent))
        for _, conn in running:
            await _expect(conn, "ready", timeout=READY_TIMEOUT_S)
        start_at = time.monotonic() + START_MARGIN_S
        for _, conn in running:
            conn.send(start_at)
        wait = START_MARGIN_S + settings.warmup_s + settings.seconds + settings.timeout_s + 30
        outcomes = [await _expect(conn, Outcome, timeout=wait) for _, conn in running]
    finally:
        for worker, conn in running:
            conn.close()
            await asyncio.to_thread(worker.join, 5)
            if worker.is_alive():
                worker.terminate()
                await asyncio.to_thread(worker.join, 5)
    return outcomes


def phase_report(
    settings: BenchSettings, op: Op, outcomes: list[Outcome], *, watched: list[Watched],
    before: dict[int, Usage], after: dict[int, Usage],
) -> dict[str, Any]:
    """One phase's figures: throughput, latency quantiles, errors, CPU of every process."""
    histogram = merged(o.histogram for o in outcomes)
    ok = sum(o.ok for o in outcomes)
    errors = sum(o.errors for o in outcomes)
    kinds: dict[str, int] = {}
    for outcome in outcomes:
        for kind, count in outcome.error_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + count
    cpu = {w.label: round(after[w.pid].cpu_s - before[w.pid].cpu_s, 2) for w in watched
           if w.pid in before and w.pid in after}
    span = settings.warmup_s + settings.seconds  # CPU is read around warm-up and window
    busiest = max(cpu.values(), default=0.0)
    return {
        "op": str(op), "what": WHAT[op],
        "mode": "rate" if settings.rate else "saturation",
        "offered_per_s": settings.rate, "concurrency": None if settings.rate
        else settings.concurrency,
        "per_s": round(ok / settings.seconds, 1), "ok": ok, "errors": errors,
        "error_kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])[:10]),
        "empty": sum(o.empty for o in outcomes),
        "p50_ms": _ms(histogram.quantile(0.50)), "p90_ms": _ms(histogram.quantile(0.90)),
        "p99_ms": _ms(histogram.quantile(0.99)), "max_ms": _ms(histogram.max_ms),
        "mean_ms": _ms(histogram.mean_ms),
        "target_cpu_s": cpu,
        "target_busy": {label: round(s / span, 2) for label, s in cpu.items()},
        # What the busiest target process would do with a core to itself: requests (warm-up
        # included, as its CPU time is) per CPU-second it used.
        "per_cpu_s_of_busiest": round(sum(o.sent for o in outcomes) / busiest, 1)
        if busiest > 0 else None,
        "loadgen_busy": round(sum(o.cpu_s for o in outcomes) / span, 2),
    }


def summary(
    settings: BenchSettings, endpoints: list[Endpoint], phases: list[dict[str, Any]],
    histogram: Histogram, processes: list[dict[str, Any]],
) -> dict[str, Any]:
    def rate_of(writes: bool) -> float | None:
        rates = [p["per_s"] for p in phases if Op(p["op"]).writes is writes]
        return max(rates) if rates else None

    sampled = [p for p in processes if "rss_mb_start" in p]
    return {
        "target": settings.target,
        "domains": [e.domain for e in endpoints],
        "mode": "rate" if settings.rate else "saturation",
        "rate": settings.rate,
        "concurrency": None if settings.rate else settings.concurrency,
        "workers": settings.workers,
        "seconds": settings.seconds,
        "warmup_s": settings.warmup_s,
        "registrations_per_s": rate_of(True),
        "searches_per_s": rate_of(False),
        "p50_ms": _ms(histogram.quantile(0.50)),
        "p99_ms": _ms(histogram.quantile(0.99)),
        "errors": sum(p["errors"] for p in phases),
        "rss_mb_start": round(sum(p["rss_mb_start"] for p in sampled), 1),
        "rss_mb_end": round(sum(p["rss_mb_end"] for p in sampled), 1),
        "phases": phases,
        "processes": processes,
    }


def format_report(result: dict[str, Any]) -> str:
    """The report as a table for people."""
    mode = (f"open loop at {result['rate']:g}/s" if result["mode"] == "rate"
            else f"saturation, {result['concurrency']} in flight")
    lines = [f"mdns bench load: {', '.join(result['domains'])}; {mode}; "
             f"{result['workers']} worker process(es); {result['seconds']:g} s per phase "
             f"(+{result['warmup_s']:g} s warm-up)", ""]
    header = (f"{'phase':<14} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
              f"{'errors':>7} {'per busiest CPU-s':>18}")
    lines += [header, "-" * len(header)]
    for phase in result["phases"]:
        per_cpu = phase["per_cpu_s_of_busiest"]
        lines.append(f"{phase['op']:<14} {phase['per_s']:>8.0f} {phase['p50_ms']:>8.1f} "
                     f"{phase['p99_ms']:>8.1f} {phase['max_ms']:>8.1f} {phase['errors']:>7} "
                     f"{'-' if per_cpu is None else f'{per_cpu:.0f}':>18}")
    lines.append("")
    for phase in result["phases"]:
        lines.append(f"{phase['op']}: {phase['what']}")
        busy = ", ".join(f"{label} {share:.2f}" for label, share in
                         sorted(phase["target_busy"].items(), key=lambda kv: -kv[1])[:4])
        lines.append(f"  CPU busy (cores): {busy or 'not readable'}; "
                     f"load generator {phase['loadgen_busy']:.2f}")
        if phase["empty"]:
            lines.append(f"  {phase['empty']} searches found nothing")
        for kind, count in phase["error_kinds"].items():
            lines.append(f"  {count} × {kind}")
    lines.append("")
    lines.append(f"memory (RSS MB): {result['rss_mb_start']:.1f} at the start, "
                 f"{result['rss_mb_end']:.1f} at the end, over:")
    for process in result["processes"]:
        if "error" in process:
            lines.append(f"  {process['label']}: {process['error']}")
        else:
            lines.append(f"  {process['label']} pid {process['pid']}: "
                         f"{process['rss_mb_start']:.1f} → {process['rss_mb_end']:.1f} "
                         f"(max {process['rss_mb_max']:.1f})")
    return "\n".join(lines)


# --- the command line -----------------------------------------------------------------------

def add_parser(commands: Any) -> None:
    bench = commands.add_parser("bench", help="benchmarks against a running hierarchy")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    load = kinds.add_parser(
        "load", help="registrations and searches from worker processes: throughput, "
                     "p50/p99 latency, errors, memory of the target processes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Load a running hierarchy (e.g. `mdns up configs/demo`) from separate worker\n"
            "processes, one phase per operation in --ops:\n"
            + "".join(f"  {op:<14} {WHAT[op]}\n" for op in Op)
            + "Saturation (--concurrency) or a fixed rate (--rate, open loop: latency counts\n"
              "from when each request was due). Prints throughput, p50/p99 latency, errors,\n"
              "the CPU each target process used and its resident memory (docs/bench.md)."))
    load.add_argument("--target", required=True, metavar="DOMAIN",
                      help="the domain whose URS and designated MSD take the load")
    load.add_argument("--dns", metavar="HOST:PORT",
                      help="the hierarchy's DNS server (as `mdns up` prints it)")
    load.add_argument("--seconds", type=float, default=10.0, metavar="S",
                      help="counted seconds per phase (default 10)")
    load.add_argument("--warmup", type=float, default=1.0, metavar="S",
                      help="seconds of load before counting starts (default 1)")
    load.add_argument("--ops", default="register,search", metavar="OP[,OP...]",
                      help=f"phases, in order, from {', '.join(Op)} (default register,search)")
    load.add_argument("--concurrency", type=int, default=32, metavar="C",
                      help="saturation: requests in flight over all workers (default 32)")
    load.add_argument("--rate", type=float, metavar="R",
                      help="a fixed rate instead: R requests per second, open loop")
    load.add_argument("--workers", type=int, default=1, metavar="N",
                      help="load generator processes (default 1)")
    load.add_argument("--spread", action="store_true",
                      help="spread the load over every domain of the target's tree")
    load.add_argument("--corpus", type=int, default=1000, metavar="N",
                      help="sessions registered first for searches to find (default 1000)")
    load.add_argument("--vocabulary", type=int, default=300, metavar="V",
                      help="distinct search keywords (default 300: 10 hits per search with "
                           "the default corpus)")
    load.add_argument("--keywords-per-session", type=int, default=3, metavar="K")
    load.add_argument("--ttl", type=int, default=120, metavar="S",
                      help="ttl of the sessions registered under load (default 120)")
    load.add_argument("--msd-key-file", type=Path, metavar="FILE",
                      help="the target domain's MSD key (for --ops index; `mdns up` keeps it "
                           "in DATA_DIR/DOMAIN/msd.key)")
    load.add_argument("--pid", action="append", default=[], metavar="LABEL=PID",
                      help="another process to watch (repeatable)")
    load.add_argument("--timeout", type=float, default=10.0, metavar="S",
                      help="per request (default 10)")
    load.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, *, out: TextIO) -> int:
    settings = settings_from(args)
    result = asyncio.run(run_bench(settings, progress=lambda text: print(
        f"bench: {text}", file=sys.stderr, flush=True)))
    print(json.dumps(result, indent=2) if args.json else format_report(result), file=out)
    return 0


def settings_from(args: argparse.Namespace) -> BenchSettings:
    try:
        ops = tuple(Op(name.strip()) for name in args.ops.split(",") if name.strip())
    except ValueError:
        raise ClientError(f"--ops {args.ops!r}: each must be one of {', '.join(Op)}") from None
    pids: list[tuple[str, int]] = []
    for item in args.pid:
        label, _, pid = item.rpartition("=")
        if not label or not pid.isdigit():
            raise ClientError(f"--pid {item!r}: expected LABEL=PID")
        pids.append((label, int(pid)))
    msd_key = None
    if args.msd_key_file is not None:
        try:
            msd_key = args.msd_key_file.read_text().strip()
        except OSError as exc:
            raise ClientError(f"--msd-key-file: {exc.strerror}: {args.msd_key_file}") from None
    settings = BenchSettings(
        target=args.target.strip().rstrip(".").lower(),
        dns=parse_dns_server(args.dns) if args.dns else None,
        seconds=args.seconds, warmup_s=args.warmup, ops=ops, concurrency=args.concurrency,
        rate=args.rate, workers=args.workers, spread=args.spread, corpus=args.corpus,
        vocabulary=args.vocabulary, keywords_per_session=args.keywords_per_session,
        ttl_s=args.ttl, msd_key=msd_key, pids=tuple(pids), timeout_s=args.timeout)
    settings.check()
    return settings


# --- plumbing -----------------------------------------------------------------------------

async def _expect(conn: Connection, expected: Any, *, timeout: float) -> Any:
    """The worker's next message, which must be `expected` (a value, or a type)."""
    def receive() -> Any:
        if not conn.poll(timeout):
            raise ClientError(f"a load generator process said nothing for {timeout:g} s")
        return conn.recv()

    try:
        message = await asyncio.to_thread(receive)
    except EOFError:
        raise ClientError("a load generator process died (see its traceback above)") from None
    if isinstance(expected, type):
        if not isinstance(message, expected):
            raise ClientError(str(message))
    elif message != expected:
        raise ClientError(str(message))
    return message


async def _get_json(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    try:
        async with http.get(url) as response:
            if response.status != 200:
                raise ClientError(f"{url} answered {response.status}")
            answer = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ClientError(f"{url}: {exc or type(exc).__name__}") from None
    if not isinstance(answer, dict):
        raise ClientError(f"{url} did not answer a JSON object")
    return answer


def _share(total: int, parts: int, index: int) -> int:
    return total // parts + (1 if index < total % parts else 0)


def _is_local(address: str) -> bool:
    """Whether an address ("HOST", "HOST:PORT" or "[V6]:PORT") is this host's loopback."""
    for candidate in (address, address.rpartition(":")[0].strip("[]")):
        try:
            return ipaddress.ip_address(candidate).is_loopback
        except ValueError:
            continue
    return False


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _mb(kb: int) -> float:
    return round(kb / 1024, 1)


def _ms(value: float) -> float:
    return round(value, 2)
