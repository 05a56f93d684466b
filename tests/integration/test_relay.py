"""Routed requests between real MSDs: one way to the owner, the answer straight to the origin;
one-call registration through the URS; forged or unsigned requests refused, nothing stored."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from client.search import SearchClient
from msd.keyspace import KeyRange, key_of
from msd.relay import AUTH_HEADER, sign
from tests.integration.test_msd_tree import _statuses
from vdns.harness import Hierarchy

ROOT = "level0.testdomain.info"


def _by_name(statuses: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in statuses}


def _deepest(statuses: list[dict[str, Any]]) -> str:
    return max((s["name"] for s in statuses), key=lambda name: name.count("."))


def _keyword_owned_by(status: dict[str, Any]) -> str:
    owned = KeyRange.from_json(status["ranges"][0])
    return next(w for w in (f"word{i}" for i in range(100_000)) if key_of(w) in owned)


def _session(keyword: str) -> dict[str, Any]:
    return {"id": "relayed", "title": "Relayed", "keywords": [keyword],
            "group": "239.255.9.9", "port": 5004}


async def test_registration_is_one_call_and_the_domain_indexes_it_before_answering(
    scenario3: Hierarchy,
) -> None:
    statuses = _by_name(await _statuses(scenario3))
    home = _deepest(list(statuses.values()))
    keyword = _keyword_owned_by(statuses[ROOT])  # nine hops up the chain
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{scenario3.domains[home].urs_url}/sessions",
                             json=_session(keyword)) as response:
            assert response.status == 201
            answer = await response.json()
        assert answer["indexed"] is True and answer["routed"] == "pending", answer
        msd = f"http://{statuses[home]['designated']}"
        async with http.get(f"{msd}/msd/local-search", params={"keyword": keyword}) as response:
            local = await response.json()
        assert [s["uri"] for s in local["sessions"]] == [answer["uri"]]
        client = SearchClient(home=home, dns_server=scenario3.root.dns_address, http=http)
        await client.home_msd()
        for _ in range(200):  # the keyword record travels to the root meanwhile
            if [h.session.uri for h in await client.search(f"{keyword} scope:global")]:
                break
        else:
            raise AssertionError(f"{answer['uri']} never reached the owner of {keyword}")


async def test_a_probe_travels_up_the_chain_and_the_owner_answers_the_origin(
    scenario3: Hierarchy,
) -> None:
    statuses = _by_name(await _statuses(scenario3))
    home = _deepest(list(statuses.values()))
    keyword = _keyword_owned_by(statuses[ROOT])
    async with aiohttp.ClientSession() as http:
        msd = f"http://{statuses[home]['designated']}"
        async with http.post(f"{msd}/msd/probe",
                             json={"key": f"{key_of(keyword):032x}"}) as response:
            assert response.status == 200
            answer = await response.json()
    assert answer["owner"] == ROOT
    assert answer["address"] == statuses[ROOT]["designated"]
    assert answer["hops"] == 9  # passed on by every domain below the root
    after = _by_name(await _statuses(scenario3))
    # Each domain on the way passed it on once; none of them waited for the answer.
    assert all(after[name]["routed_requests"] >= 1 for name in after if name != ROOT)


async def test_a_dead_hop_is_reported_to_the_origin_by_the_hop_before_it(
    scenario3: Hierarchy,
) -> None:
    statuses = _by_name(await _statuses(scenario3))
    home = _deepest(list(statuses.values()))
    keyword = _keyword_owned_by(statuses[ROOT])
    middle = statuses[ROOT]["children"][0]  # the root's only child in the chain
    msds = scenario3.domains[middle].msds
    assert msds is not None
    await msds.kill()
    async with aiohttp.ClientSession() as http:
        msd = f"http://{statuses[home]['designated']}"
        async with http.post(f"{msd}/msd/probe",
                             json={"key": f"{key_of(keyword):032x}"}) as response:
            answer = await response.json()
    if response.status == 200:  # the tree had already grafted around the dead domain
        assert answer["owner"] == ROOT
    else:
        assert response.status == 502
        assert middle in answer["error"] and "did not answer" in answer["error"], answer


async def test_forged_routed_requests_and_replies_are_refused_and_store_nothing(
    scenario3: Hierarchy,
) -> None:
    statuses = _by_name(await _statuses(scenario3))
    keyword = _keyword_owned_by(statuses[ROOT])
    owner = f"http://{statuses[ROOT]['designated']}"
    record = {"uri": f"mcast.{ROOT}/forged", "domain": ROOT, "id": "forged", "title": "Forged",
              "keywords": [keyword], "group": "239.255.9.9", "port": 5004,
              "expires_at": 4_000_000_000}
    body = json.dumps({"keyword": keyword, "shadow": False, "origin": ROOT, "record": record,
                       "hops": ["evil.example"], "reply_to": "127.0.0.1:9",
                       "request": "x"}).encode()
    wrong = sign(body, key=b"not the hierarchy key")
    async with aiohttp.ClientSession() as http:
        for path, headers in (("/msd/remote-register", {}),
                              ("/msd/remote-register", {AUTH_HEADER: wrong}),
                              ("/msd/probe", {AUTH_HEADER: wrong}),
                              ("/msd/reply", {AUTH_HEADER: wrong})):
            async with http.post(f"{owner}{path}", data=body,
                                 headers=headers | {"Content-Type": "application/json"}) as resp:
                assert resp.status == 403, (path, await resp.text())
        pushed = {"record": record}
        async with http.post(f"{owner}/sessions", json=pushed,
                             headers={"Authorization": "Bearer not-the-msd-key"}) as resp:
            assert resp.status == 403
        async with http.post(f"{owner}/msd/ext-search",
                             json={"keyword": keyword, "shadow": False}) as resp:
            assert (await resp.json())["sessions"] == []
        async with http.get(f"{owner}/msd/local-search", params={"keyword": keyword}) as resp:
            assert (await resp.json())["sessions"] == []
