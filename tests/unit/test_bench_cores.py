"""The benchmark's parts without a hierarchy: histogram, /proc parsers, the load driver."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from typing import Any

import pytest

from client.histogram import Histogram, merged
from client.loadgen import Op, Plan, RequestFailed, drive
from client.procinfo import (
    listening_inodes,
    listening_pid,
    parse_cpu_s,
    parse_rss_kb,
    read_usage,
)


def test_quantiles_are_within_one_bucket_above_the_exact_value() -> None:
    rng = random.Random(1)
    samples = [rng.lognormvariate(1.0, 1.2) for _ in range(20_000)]
    histogram = Histogram()
    for value in samples:
        histogram.add(value)
    ordered = sorted(samples)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = ordered[max(0, int(q * len(ordered) + 0.999999) - 1)]
        assert exact <= histogram.quantile(q) <= exact * 1.0101
    assert histogram.quantile(1.0) == max(samples)
    assert histogram.count == len(samples)
    assert histogram.mean_ms == pytest.approx(sum(samples) / len(samples))


def test_merging_equals_adding_everything_to_one() -> None:
    parts = [Histogram() for _ in range(3)]
    whole = Histogram()
    for i in range(3000):
        value = (i % 97) * 0.37
        parts[i % 3].add(value)
        whole.add(value)
    total = merged(parts)
    assert total.count == whole.count
    for q in (0.1, 0.5, 0.99):
        assert total.quantile(q) == whole.quantile(q)
    assert (total.min_ms, total.max_ms) == (whole.min_ms, whole.max_ms)


def test_an_empty_histogram_and_bad_input() -> None:
    assert Histogram().quantile(0.99) == 0.0
    with pytest.raises(ValueError, match=">= 0 ms"):
        Histogram().add(-1.0)
    with pytest.raises(ValueError, match=">= 0 ms"):
        Histogram().add(float("nan"))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Histogram().quantile(1.5)


def test_proc_parsers() -> None:
    assert parse_rss_kb("Name:\tpython\nVmRSS:\t  81234 kB\nThreads:\t3\n") == 81234
    with pytest.raises(ValueError, match="VmRSS"):
        parse_rss_kb("Name:\tkthreadd\n")
    stat = "123 (a (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0"
    assert parse_cpu_s(stat, ticks_per_s=100) == 3.0
    table = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
             "  timeout inode\n"
             "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000"
             "     0        0 4242 1 0000000000000000 100 0 0 10 0\n"
             "   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000"
             "     0        0 4343 1 0000000000000000 20 4 30 10 -1\n")
    assert listening_inodes(table, port=8080) == {"4242"}  # the LISTEN row, not the connection
    assert listening_inodes(table, port=8081) == set()


def test_this_process_is_found_by_its_listening_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        assert listening_pid(port) == os.getpid()
    usage = read_usage(os.getpid())
    assert usage.rss_kb > 1000 and usage.cpu_s > 0


async def _sleepy(number: int) -> int:
    await asyncio.sleep(0.01)
    return number % 2  # every other "search" finds nothing


def _plan(**options: Any) -> Plan:
    return Plan(op=Op.SEARCH, endpoints=(), worker=0, run_tag="t", vocabulary=("a",),
                **options)


async def test_open_loop_sends_at_the_rate_and_counts_only_the_window() -> None:
    plan = _plan(warmup_s=0.2, seconds=0.5, rate=100.0, concurrency=None)
    outcome = await drive(_sleepy, plan=plan, start_at=time.monotonic())
    assert outcome.sent == 70  # 0.7 s at 100/s, warm-up included
    assert outcome.ok == 50 and outcome.errors == 0  # the counted half second
    assert outcome.empty == 25
    assert 10 <= outcome.histogram.quantile(0.5) < 200  # from when each was due


async def test_closed_loop_keeps_the_concurrency_and_counts_failures() -> None:
    async def flaky(number: int) -> int:
        await asyncio.sleep(0.005)
        if number % 10 == 0:
            raise RequestFailed("MSD answered 503")
        return 1

    outcome = await drive(flaky, plan=_plan(warmup_s=0.0, seconds=0.3, concurrency=4),
                          start_at=time.monotonic())
    assert outcome.ok > 20 and outcome.errors > 0
    assert outcome.error_kinds == {"MSD answered 503": outcome.errors}
    assert outcome.sent >= outcome.ok + outcome.errors
