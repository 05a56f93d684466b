"""Routed requests between real MSDs: one way to the owner, the answer straight to the origin;
one-call registration through the URS; forged or unsigned requests refused, nothing stored."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from client.search import SearchClient
from msd.keys import KeyRing, generate_private_key, load_private_key, public_bytes
from msd.keyspace import KeyRange, key_of
from msd.relay import RelayAuth
from tests.integration.test_msd_tree import _statuses
from vdns.harness import DOMAIN_KEY_FILE, Hierarchy

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
    hierarchy_key = (scenario3.data_dir / "hierarchy.key").read_bytes().strip()
    child = "dom00." + ROOT  # the root's child: the root holds its key

    def signer(*, key: bytes = hierarchy_key, domain: str = child,
               private: Any = None) -> RelayAuth:
        private = private or generate_private_key()
        return RelayAuth(hierarchy_key=key, domain=domain, signer=private,
                         keyring=KeyRing(domain=domain, own=public_bytes(private)),
                         clock_ms=lambda: int(time.time() * 1000))

    outsider = signer(key=b"not the hierarchy key, but long enough")
    impostor = signer()  # the hierarchy key, but not the child's own Ed25519 key
    refusals: list[tuple[str, dict[str, str]]] = [("/msd/remote-register", {})]  # unsigned
    refusals += [(path, outsider.headers("POST", path, body))
                 for path in ("/msd/remote-register", "/msd/probe", "/msd/reply",
                              "/msd/mirror")]
    refusals.append(("/msd/remote-register",
                     impostor.headers("POST", "/msd/remote-register", body)))
    real = signer(private=load_private_key(scenario3.data_dir / child / DOMAIN_KEY_FILE))
    reply = json.dumps({"request": "nobody waits for this", "result": {}}).encode()
    once = real.headers("POST", "/msd/reply", reply)
    async with aiohttp.ClientSession() as http:
        for path, headers in refusals:
            async with http.post(f"{owner}{path}", data=body,
                                 headers=headers | {"Content-Type": "application/json"}) as resp:
                assert resp.status == 403, (path, headers, await resp.text())
        # The child's own key passes once; the very same request again is a replay.
        for expected in (200, 403):
            async with http.post(f"{owner}/msd/reply", data=reply, headers=once) as resp:
                assert resp.status == expected, await resp.text()
        async with http.get(f"{owner}/status") as resp:
            rejected = (await resp.json())["http_rejected"]
        assert rejected["auth_unsigned"] >= 1 and rejected["auth_bad_hmac"] >= 3
        assert rejected["auth_forged"] >= 1 and rejected["auth_replayed"] >= 1
        pushed = {"record": record}
        async with http.post(f"{owner}/sessions", json=pushed,
                             headers={"Authorization": "Bearer not-the-msd-key"}) as resp:
            assert resp.status == 403
        async with http.post(f"{owner}/msd/ext-search",
                             json={"keyword": keyword, "shadow": False}) as resp:
            assert (await resp.json())["sessions"] == []
        async with http.get(f"{owner}/msd/local-search", params={"keyword": keyword}) as resp:
            assert (await resp.json())["sessions"] == []
