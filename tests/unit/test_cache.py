"""The redirection cache: the dissertation's score, hits, expiry, eviction, invalidation, scale."""

from __future__ import annotations

import random
from typing import Any

import pytest

from msd.cache import (
    CacheError,
    ClockWentBackwardsError,
    InvalidCacheConfigError,
    InvalidRedirectError,
    Redirect,
    RedirectCache,
    score,
)
from msd.errors import MsdError
from msd.keyspace import SPACE

HOUR_MS = 3_600_000


def redirect(domain: str = "dom01.level0.testdomain.info", *, term: int = 1) -> Redirect:
    return Redirect(domain=domain, host="127.0.0.1", port=9001, start=0, end=SPACE // 2, term=term)


def test_the_dissertations_example_score() -> None:
    assert round(score(534, 259_576, timeout_ms=3_600_000, lam=0.4), 3) == 247.004
    assert round(score(534, 259_576), 3) == 247.004  # λ = 0.4 and one hour are the defaults


def test_a_cache_reports_the_same_score() -> None:
    cache = RedirectCache(10)
    cache.put("jazz", redirect(), 0)
    for _ in range(533):
        cache.get("jazz", 1_000)
    found = cache.score_of("jazz", 1_000 + 259_576)
    assert found is not None and round(found, 3) == 247.004
    assert cache.score_of("blues", 1_000 + 259_576) is None


def test_hit_miss_and_expiry() -> None:
    cache = RedirectCache(10, timeout_ms=1_000)
    assert cache.get("jazz", 0) is None
    cache.put("jazz", redirect(), 0)
    assert cache.get("jazz", 1_000) == redirect()  # idle exactly the timeout: still valid
    assert cache.get("jazz", 2_000) == redirect()  # the hit refreshed last access
    assert cache.get("jazz", 3_001) is None  # idle past the timeout: a miss, and gone
    assert "jazz" not in cache and len(cache) == 0
    assert (cache.hits, cache.misses, cache.expirations) == (2, 2, 1)


def test_put_replaces_and_keeps_the_frequency() -> None:
    cache = RedirectCache(10)
    cache.put("jazz", redirect(term=1), 0)
    cache.get("jazz", 10)
    cache.put("jazz", redirect("dom02.level0.testdomain.info", term=2), 20)
    assert cache.get("jazz", 30) == redirect("dom02.level0.testdomain.info", term=2)
    assert cache.score_of("jazz", 30) == score(3, 0)
    assert len(cache) == 1 and cache.evictions == 0


def test_the_hybrid_evicts_what_neither_lru_nor_lfu_would() -> None:
    cache = RedirectCache(3)  # λ = 0.4, one hour
    cache.put("old-popular", redirect(), 0)
    for _ in range(59):
        cache.get("old-popular", 0)  # freq 60, idle longest: LRU's victim
    cache.put("middling", redirect(), 1_000_000)
    cache.get("middling", 1_000_000)  # freq 2, idle 2 000 s
    cache.put("new-rare", redirect(), 3_000_000)  # freq 1, idle 0: LFU's victim
    scores = {k: cache.score_of(k, 3_000_000) for k in ("old-popular", "middling", "new-rare")}
    assert scores == pytest.approx({"old-popular": 30.0, "middling": 16.8, "new-rare": 36.4})
    cache.put("newcomer", redirect(), 3_000_000)
    assert set(cache) == {"old-popular", "new-rare", "newcomer"}
    assert cache.evictions == 1


@pytest.mark.parametrize(("lam", "victim"), [(1.0, "b"), (0.0, "a")])
def test_lambda_one_is_lfu_and_zero_is_lru(lam: float, victim: str) -> None:
    cache = RedirectCache(2, lam=lam)
    cache.put("a", redirect(), 0)
    cache.get("a", 0)  # a: freq 2, older
    cache.put("b", redirect(), 10)  # b: freq 1, newer
    cache.put("c", redirect(), 20)
    assert victim not in cache and len(cache) == 2


def test_an_expired_entry_makes_room_before_any_live_one() -> None:
    cache = RedirectCache(2, timeout_ms=1_000)
    cache.put("stale", redirect(), 0)
    for _ in range(1_000):
        cache.get("stale", 0)  # a huge frequency outscores anything live
    cache.put("fresh", redirect(), 1_500)
    cache.put("newer", redirect(), 1_600)
    assert set(cache) == {"fresh", "newer"}
    assert (cache.expirations, cache.evictions, len(cache)) == (1, 0, 2)


def test_invalidate() -> None:
    cache = RedirectCache(4)
    cache.put("jazz", redirect(), 0)
    assert cache.invalidate("jazz") is True
    assert cache.invalidate("jazz") is False
    assert cache.get("jazz", 1) is None
    assert (cache.invalidations, cache.misses, len(cache)) == (1, 1, 0)


def test_random_workload_matches_the_scan_of_every_score() -> None:
    """Against a reference that scores every entry: same victim (or a tie), never over capacity."""
    rnd = random.Random(42)
    capacity, timeout = 50, 200_000
    cache = RedirectCache(capacity, timeout_ms=timeout, lam=0.4)
    model: dict[str, tuple[int, int]] = {}  # keyword -> (freq, last_access)
    now = 0
    for _ in range(20_000):
        now += rnd.randint(0, 3_000)
        keyword = f"k{rnd.randint(0, 200)}"
        op = rnd.random()
        if op < 0.55:
            got = cache.get(keyword, now)
            held = model.get(keyword)
            if held is None or now - held[1] > timeout:
                assert got is None
                model.pop(keyword, None)
            else:
                assert got is not None
                model[keyword] = (held[0] + 1, now)
        elif op < 0.95:
            before = set(cache)
            cache.put(keyword, redirect(), now)
            if keyword in model:
                model[keyword] = (model[keyword][0], now)
            else:
                gone = before - set(cache)
                if len(model) >= capacity:
                    assert len(gone) == 1
                    (victim,) = gone
                    expired = [k for k, (_, last) in model.items() if now - last > timeout]
                    if expired:
                        oldest = min(expired, key=lambda k: model[k][1])
                        assert model[victim][1] == model[oldest][1]
                    else:
                        scores = {
                            k: score(f, now - last, timeout_ms=timeout)
                            for k, (f, last) in model.items()
                        }
                        assert scores[victim] == pytest.approx(min(scores.values()), abs=1e-9)
                    del model[victim]
                else:
                    assert not gone
                model[keyword] = (1, now)
        else:
            assert cache.invalidate(keyword) == (model.pop(keyword, None) is not None)
        assert set(cache) == set(model)
        assert len(cache) <= capacity
    assert cache.evictions > 1_000 and cache.expirations > 0 and cache.invalidations > 0


def test_a_hundred_thousand_entries_fill_and_churn_quickly() -> None:
    capacity = 100_000
    cache = RedirectCache(capacity)
    rnd = random.Random(7)
    target = redirect()
    now = puts = 0
    for i in range(capacity):
        cache.put(f"keyword-{i}", target, now)
        now += 1
    for i in range(capacity, 3 * capacity):
        now += 1
        if rnd.random() < 0.5:
            cache.get(f"keyword-{rnd.randrange(i)}", now)
        else:
            cache.put(f"keyword-{i}", target, now)
            puts += 1
    assert len(cache) == capacity
    assert cache.evictions == puts and cache.hits + cache.misses == 2 * capacity - puts


@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"capacity": 1.5},
        {"capacity": 10, "timeout_ms": 0},
        {"capacity": 10, "lam": 1.5},
        {"capacity": 10, "lam": float("nan")},
        {"capacity": True},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidCacheConfigError) as caught:
        RedirectCache(**kwargs)
    assert isinstance(caught.value, MsdError)


@pytest.mark.parametrize(
    "changes",
    [
        {"domain": ""},
        {"host": ""},
        {"port": 0},
        {"port": 70_000},
        {"start": 5, "end": 5},
        {"end": SPACE + 1},
        {"start": -1},
        {"term": -1},
        {"term": True},
    ],
)
def test_bad_redirects_are_refused(changes: dict[str, Any]) -> None:
    fields: dict[str, Any] = {
        "domain": "d",
        "host": "127.0.0.1",
        "port": 1,
        "start": 0,
        "end": 10,
        "term": 0,
    }
    with pytest.raises(InvalidRedirectError):
        Redirect(**(fields | changes))


def test_a_redirect_knows_its_range() -> None:
    r = Redirect(domain="d", host="h", port=1, start=10, end=20, term=3)
    assert r.covers(10) and r.covers(19) and not r.covers(20) and not r.covers(9)


def test_the_clock_must_not_go_backwards() -> None:
    cache = RedirectCache(4)
    cache.put("jazz", redirect(), 100)
    with pytest.raises(ClockWentBackwardsError):
        cache.get("jazz", 99)
    fractional: Any = 100.5
    with pytest.raises(CacheError):
        cache.get("jazz", fractional)
    not_a_redirect: Any = "dom01"
    with pytest.raises(InvalidRedirectError):
        cache.put("jazz", not_a_redirect, 101)


def test_clear_forgets_every_redirect_and_keeps_working() -> None:
    cache = RedirectCache(4)
    for number, word in enumerate(("a", "b", "c")):
        cache.put(word, redirect(), number)
    cache.clear()
    assert len(cache) == 0 and cache.get("a", 10) is None
    for number, word in enumerate(("d", "e", "f", "g", "h")):  # fills past capacity again
        cache.put(word, redirect(), 20 + number)
    assert len(cache) == 4 and "d" not in cache
