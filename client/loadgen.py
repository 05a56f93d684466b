"""The load generator's worker: one process driving one kind of request at a running hierarchy.

`mdns bench load` starts N of these (multiprocessing, spawn) per phase, so the load is
made outside the processes it measures. A worker gets a `Plan`, opens its connections,
says it is ready, waits for the common start time (CLOCK_MONOTONIC is system-wide on
Linux, so one deadline serves every process), then runs either

- **closed loop** (saturation): `concurrency` tasks, each sending its next request as
  soon as the previous one is answered; or
- **open loop** (fixed rate): request i is due at start + i / rate whatever happened to
  the earlier ones, and its latency counts from when it was due, so a stalled server
  shows up in the tail instead of silently lowering the offered load.

Requests due in the first `warmup_s` are sent but not counted; the counted window is
the next `seconds`. Each operation is one of `Op`; what each one measures is in
docs/bench.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from client.eventloop import event_loop_factory
from client.histogram import Histogram

ERROR_KINDS_MAX = 20  # distinct error messages kept per worker; the rest are counted as "other"
ERROR_TEXT_MAX = 200


class Op(StrEnum):
    """The request a phase sends."""

    REGISTER = "register"  # POST /sessions at the URS: durable write + push to the MSD
    INDEX = "index"  # POST /sessions {"record"} at the designated MSD (the URS's push alone)
    SEARCH = "search"  # GET /search?q= at the designated MSD: the whole search in one call
    CLIENT_SEARCH = "client-search"  # the client protocol (client.search.SearchClient)

    @property
    def writes(self) -> bool:
        return self in (Op.REGISTER, Op.INDEX)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One domain under load: its URS and its designated MSD."""

    domain: str
    urs_url: str
    msd_url: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Plan:
    """What one worker does in one phase."""

    op: Op
    endpoints: tuple[Endpoint, ...]  # requests go round-robin over these
    worker: int
    run_tag: str  # makes session ids and keywords unique to this run
    vocabulary: tuple[str, ...]  # the keywords searched for (or given to registrations)
    keywords_per_session: int = 3
    ttl_s: int = 120
    warmup_s: float = 1.0
    seconds: float = 10.0
    concurrency: int | None = 8  # closed loop; None with a rate
    rate: float | None = None  # open loop, requests per second from this worker
    timeout_s: float = 10.0
    max_in_flight: int = 10_000  # open loop: requests beyond this are not sent, but counted
    msd_key: str | None = None  # Op.INDEX: the domain's MSD key


@dataclasses.dataclass
class Outcome:
    """What one worker saw in the counted window."""

    op: Op
    ok: int = 0
    errors: int = 0
    empty: int = 0  # searches answered with no session
    error_kinds: dict[str, int] = dataclasses.field(default_factory=dict)
    histogram: Histogram = dataclasses.field(default_factory=Histogram)
    sent: int = 0  # every request sent, warm-up included
    cpu_s: float = 0.0  # this worker's own CPU time in the phase

    def error(self, text: str) -> None:
        self.errors += 1
        key = text[:ERROR_TEXT_MAX]
        if key not in self.error_kinds and len(self.error_kinds) >= ERROR_KINDS_MAX:
            key = "other"
        self.error_kinds[key] = self.error_kinds.get(key, 0) + 1


class RequestFailed(Exception):
    """A request the target refused or did not answer properly; the message is counted."""


Request = Callable[[int], Awaitable[int]]  # request number → sessions found (searches) or 1


def worker_main(plan: Plan, conn: Connection) -> None:
    """The worker process: ready → wait for the start time → run → send the Outcome."""
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            outcome = runner.run(_run(plan, conn))
    except BaseException as exc:  # the parent must hear about it, whatever it was
        conn.send(f"worker {plan.worker} failed: {type(exc).__name__}: {exc}")
        raise
    conn.send(outcome)


async def _run(plan: Plan, conn: Connection) -> Outcome:
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=plan.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        request = _request(plan, http)
        conn.send("ready")
        start_at = await asyncio.to_thread(conn.recv)
        if not isinstance(start_at, float):
            raise RuntimeError(f"expected the start time, got {start_at!r}")
        cpu0 = time.process_time()
        outcome = await drive(request, plan=plan, start_at=start_at)
        outcome.cpu_s = time.process_time() - cpu0
        return outcome


async def drive(request: Request, *, plan: Plan, start_at: float) -> Outcome:
    """Run `request` closed- or open-loop from `start_at` (time.monotonic) to the window's end."""
    outcome = Outcome(op=plan.op)
    counted_from = start_at + plan.warmup_s
    end = counted_from + plan.seconds
    delay = start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)

    async def one(number: int, due: float) -> None:
        counted = counted_from <= due < end
        try:
            found = await request(number)
        except RequestFailed as exc:
            if counted:
                outcome.error(str(exc))
            return
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            if counted:
                outcome.error(f"{type(exc).__name__}: {exc}")
            return
        if counted:
            outcome.ok += 1
            outcome.histogram.add((time.monotonic() - due) * 1000.0)
            if found == 0:
                outcome.empty += 1

    if plan.rate is None:
        concurrency = max(1, plan.concurrency or 1)
        counter = itertools.count()

        async def loop(_: int) -> None:
            while True:
                due = time.monotonic()
                if due >= end:
                    return
                outcome.sent += 1
                await one(next(counter), due)

        await asyncio.gather(*(loop(i) for i in range(concurrency)))
        return outcome

    interval = 1.0 / plan.rate
    tasks: set[asyncio.Task[None]] = set()
    number = 0
    while True:
        due = start_at + number * interval
        if due >= end:
            break
        now = time.monotonic()
        # Behind schedule, still yield: the requests in flight must get their answers.
        await asyncio.sleep(max(0.0, due - now))
        if len(tasks) >= plan.max_in_flight:
            if counted_from <= due < end:
                outcome.error(f"not sent: {plan.max_in_flight} requests already in flight")
        else:
            task = asyncio.create_task(one(number, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            outcome.sent += 1
        number += 1
    if tasks:
        await asyncio.gather(*tasks)
    return outcome


def _request(plan: Plan, http: aiohttp.ClientSession) -> Request:
    endpoints = plan.endpoints
    tag = f"{plan.run_tag}-{plan.worker}"
    vocabulary = plan.vocabulary

    def endpoint(number: int) -> Endpoint:
        return endpoints[number % len(endpoints)]

    def keyword(number: int) -> str:
        return vocabulary[(number * 7919) % len(vocabulary)]  # a prime stride: spread, repeatable

    if plan.op is Op.REGISTER:
        async def register(number: int) -> int:
            session = bench_session(f"{tag}-{number}", number=number, vocabulary=vocabulary,
                                    keywords=plan.keywords_per_session, ttl_s=plan.ttl_s)
            async with http.post(f"{endpoint(number).urs_url}/sessions",
                                 json=session) as response:
                body = await response.read()
            if response.status != 201:
                raise RequestFailed(f"URS answered {response.status}: {_text(body)}")
            answer = json.loads(body)
            if answer.get("indexed") is not True:
                raise RequestFailed(f"stored but not indexed: {answer.get('reason')}")
            return 1

        return register

    if plan.op is Op.INDEX:
        headers = {"Authorization": f"Bearer {plan.msd_key}"}

        async def index(number: int) -> int:
            target = endpoint(number)
            session = bench_session(f"{tag}-{number}", number=number, vocabulary=vocabulary,
                                    keywords=plan.keywords_per_session, ttl_s=plan.ttl_s)
            now = time.time()
            record = session | {"uri": f"mcast.{target.domain}/{session['id']}",
                                "domain": target.domain, "expires_at": now + plan.ttl_s,
                                "updated_at": now}
            async with http.post(f"{target.msd_url}/sessions", json={"record": record},
                                 headers=headers) as response:
                body = await response.read()
            if response.status != 200:
                raise RequestFailed(f"MSD answered {response.status}: {_text(body)}")
            return 1

        return index

    if plan.op is Op.SEARCH:
        async def search(number: int) -> int:
            async with http.get(f"{endpoint(number).msd_url}/search",
                                params={"q": keyword(number)}) as response:
                body = await response.read()
            if response.status != 200:
                raise RequestFailed(f"MSD answered {response.status}: {_text(body)}")
            return len(json.loads(body)["sessions"])

        return search

    from client.errors import ClientError
    from client.search import SearchClient  # the query language and the redirect cache

    clients: dict[str, SearchClient] = {}
    for target in endpoints:
        client = SearchClient(home=target.domain, dns_server=None, http=http)
        client.set_home_msd(target.msd_url)  # as a running client knows it after one lookup
        clients[target.domain] = client

    async def client_search(number: int) -> int:
        try:
            hits = await clients[endpoint(number).domain].search(keyword(number))
        except ClientError as exc:
            raise RequestFailed(str(exc)) from None
        return len(hits)

    return client_search


def bench_session(
    session_id: str, *, number: int, vocabulary: tuple[str, ...], keywords: int, ttl_s: int,
) -> dict[str, Any]:
    """A valid session for the benchmark: `keywords` words of the vocabulary, a place, a group."""
    words = [vocabulary[(number * keywords + i) % len(vocabulary)] for i in range(keywords)]
    return {"id": session_id, "title": f"Bench session {number}", "keywords": words,
            "group": f"239.{192 + number % 32}.{number // 256 % 256}.{number % 256}",
            "port": 5004, "ttl": ttl_s, "lat": 29.0 + (number % 1000) / 1000,
            "lon": -82.0 - (number % 997) / 1000}


def _text(body: bytes) -> str:
    return " ".join(body[:ERROR_TEXT_MAX].decode("utf-8", "replace").split())
