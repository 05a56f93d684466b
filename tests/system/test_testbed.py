"""Five domains on five hosts (network namespaces), one of them behind a multicast block.

The testbed (vdns.testbed) runs scenario 1's first five domains breadth-first, one per
host, each as real processes: DNS on port 53, URS on port 80, two MSD daemons, at a
0.5 s heartbeat. h5 runs dom000.dom00, the child of the middle domain dom00 (h2); its
inbound multicast is dropped by nftables. The tests run in order on one testbed:

1. the tree forms, routes whole, and the blocked link runs on unicast;
2. sessions registered on every host are found from every host;
3. chaos: kill -9 and restart of a designated MSD, a backup MSD, a URS, the middle
   domain (every process of h2) and the root (every process of h1), timed;
4. 1 % and then 10 % loss on every host's control channels (UDP), with sessions
   registered under loss;
5. every session is still found from every host, and no process crashed, logged a
   traceback, or failed to stop cleanly.

Convergence times are printed at the end and written to <state dir>/report.json. Timing
bounds are heartbeats plus SLACK_S for a loaded 2-core machine. Skipped unless root with
ip, nft and tc; the testbed's logs stay in /tmp/mdns-testbed/<prefix>/logs.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from client.status import summary
from vdns.netns import Impairment, check_available
from vdns.testbed import Testbed as NamespaceTestbed  # not a test class, despite its name
from vdns.testbed import TestbedSettings as Settings

REPO = Path(__file__).resolve().parents[2]
HB = 0.5
SLACK_S = 5.0  # polling, process start-up and a 2-core machine shared with other tests
HOSTS = 5
ROOT, MIDDLE, LEAF, BLOCKED = "h1", "h2", "h3", "h5"  # h2 = dom00, h5 = dom000.dom00
PER_HOST = 2  # sessions registered on each host before the chaos
Statuses = dict[str, dict[str, Any]]

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]


class Probe:
    """A netns_probe process running as one host; orders in, answers out (JSON lines)."""

    def __init__(self, testbed: NamespaceTestbed, host: str) -> None:
        argv = testbed.exec_argv(host, [sys.executable, "-m", "tests.system.netns_probe"])
        log = (testbed.state_dir / "logs" / f"probe-{host}.log").open("ab")
        self.process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log)
        log.close()
        assert self._read(timeout=60) == "ready"

    def call(self, order: dict[str, Any], *, timeout: float = 30) -> Any:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(order) + "\n").encode())
        self.process.stdin.flush()
        return self._read(timeout=timeout)

    def _read(self, *, timeout: float) -> Any:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"the probe did not answer within {timeout} s")
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError("the probe exited")
        reply = json.loads(line)
        if not reply["ok"]:
            raise ProbeError(reply["error"])
        return reply["result"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class ProbeError(Exception):
    """An order the probe carried out failed (the message says how)."""


class Bed:
    """The testbed, a probe per host (made on first use), the sessions and the figures."""

    def __init__(self, testbed: NamespaceTestbed) -> None:
        self.testbed = testbed
        self.probes: dict[str, Probe] = {}
        self.sessions: dict[str, str] = {}  # keyword → URI
        self.figures: list[dict[str, Any]] = []
        self.started = time.monotonic()

    def probe(self, host: str) -> Probe:
        if host not in self.probes:
            self.probes[host] = Probe(self.testbed, host)
        return self.probes[host]

    def domain(self, host: str) -> str:
        return self.testbed.placement(host).domain

    def statuses(self, hosts: list[str] | None = None) -> Statuses:
        placed = [p for p in self.testbed.placements
                  if hosts is None or p.host.name in hosts]
        found: Statuses = self.probe("obs").call(
            {"op": "statuses", "urs": {p.domain: p.urs_url for p in placed}})
        return found

    def wait(self, what: str, check: Callable[[Statuses], bool], *, timeout: float,
             hosts: list[str] | None = None, since: float | None = None) -> Statuses:
        """Poll until `check` holds; record how long it took (from `since`, or now)."""
        since = since if since is not None else time.monotonic()
        deadline = time.monotonic() + timeout
        found: Statuses = {}
        while time.monotonic() < deadline:
            found = self.statuses(hosts)
            if check(found):
                took = time.monotonic() - since
                self.figures.append({"step": what, "seconds": round(took, 2),
                                     "heartbeats": round(took / HB, 1)})
                return found
            time.sleep(HB / 5)
        brief = {name: s.get("error") or (s.get("state"), s.get("parent"), s.get("count"))
                 for name, s in found.items()}
        raise AssertionError(f"{what}: not within {timeout} s: {brief}")

    def register(self, host: str, keyword: str) -> None:
        number = len(self.sessions)
        session = {"id": f"s{number}", "title": f"Session {number}", "keywords": [keyword],
                   "group": f"239.255.{number // 250}.{number % 250 + 1}", "port": 5004}
        placed = self.testbed.placement(host)
        result = self.probe(host).call({"op": "register", "domain": placed.domain,
                                        "dns": placed.dns, "session": session}, timeout=60)
        self.sessions[keyword] = result["uri"]

    def search_from(self, host: str) -> dict[str, Any]:
        placed = self.testbed.placement(host)
        result: dict[str, Any] = self.probe(host).call(
            {"op": "search", "home": placed.domain, "dns": placed.dns,
             "query": " OR ".join(sorted(self.sessions))}, timeout=60)
        return result

    def all_found(self, hosts: list[str], *, what: str, timeout: float = 30) -> None:
        """Every registered session is found from each host (retried: a search may meet
        a tree that is still healing); records how long that took."""
        since = time.monotonic()
        for host in hosts:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    found = set(self.search_from(host)["uris"])
                except ProbeError as exc:
                    found, error = set(), str(exc)
                else:
                    error = ""
                missing = set(self.sessions.values()) - found
                if not missing:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{what}: from {host}, {len(missing)} of "
                                         f"{len(self.sessions)} sessions not found: "
                                         f"{sorted(missing)[:5]} {error}")
                time.sleep(HB)
        took = time.monotonic() - since
        self.figures.append({"step": what, "seconds": round(took, 2),
                             "heartbeats": round(took / HB, 1)})

    def close(self) -> None:
        for probe in self.probes.values():
            probe.close()


# --- what the statuses must show ----------------------------------------------------------


def settled(expected: int) -> Callable[[Statuses], bool]:
    def check(found: Statuses) -> bool:
        live = [s for s in found.values() if "error" not in s]
        if len(live) != expected:
            return False
        roots = [s for s in live if s.get("state") == "root"]
        return (len(roots) == 1 and roots[0].get("count") == expected
                and all(s.get("state") in ("root", "joined") for s in live)
                and not summary(live, keys=0)["tiling_problems"])
    return check


def routes_whole(found: Statuses, *, keys: int = 300) -> bool:
    live = [s for s in found.values() if "error" not in s]
    checks = summary(live, keys=keys)
    return not checks["tiling_problems"] and not checks["routing_problems"]


# --- the testbed --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    problem = check_available()
    if problem:
        pytest.skip(f"the namespace testbed {problem}")
    testbed = NamespaceTestbed(Settings(hosts=HOSTS, msds=2, heartbeat_s=HB,
                                        block_multicast=(BLOCKED,)))
    testbed.up()
    bed = Bed(testbed)
    try:
        yield bed
    finally:
        bed.close()
        testbed.down()
        report = {"prefix": testbed.prefix, "heartbeat_s": HB, "figures": bed.figures}
        (testbed.state_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        width = max((len(f["step"]) for f in bed.figures), default=10)
        lines = [f"  {f['step']:<{width}}  " + (f["note"] if "note" in f else
                 f"{f['seconds']:7.2f} s  {f['heartbeats']:6.1f} hb") for f in bed.figures]
        sys.stderr.write(f"\nnamespace testbed {testbed.prefix} (heartbeat {HB} s; report in "
                         f"{testbed.state_dir / 'report.json'}):\n" + "\n".join(lines) + "\n")


def test_the_tree_forms_routes_whole_and_the_blocked_link_runs_on_unicast(bed: Bed) -> None:
    found = bed.wait("tree formed (5 hosts, from start)", settled(HOSTS), timeout=120,
                     since=bed.started)
    assert routes_whole(found, keys=2000)
    blocked, middle = bed.domain(BLOCKED), bed.domain(MIDDLE)

    def on_unicast(found: Statuses) -> bool:  # both ends agree (the child may try multicast
        return (found[blocked].get("links") == {middle: "unicast"}  # once more after joining)
                and found[middle].get("links", {}).get(blocked) == "unicast")

    found = bed.wait("blocked link on unicast (from start)", lambda f: settled(HOSTS)(f)
                     and on_unicast(f), timeout=60, since=bed.started)
    others = {link for name, s in found.items() for peer, link in s["links"].items()
              if blocked not in (name, peer)}
    assert others == {"multicast"}
    assert bed.testbed.multicast_dropped(BLOCKED) > 0  # multicast did reach it, and was dropped
    assert bed.testbed.multicast_dropped(LEAF) == 0


def test_sessions_registered_on_every_host_are_found_from_every_host(bed: Bed) -> None:
    for placed in bed.testbed.placements:
        for i in range(PER_HOST):
            bed.register(placed.host.name, f"{placed.host.name}kw{i}")
    bed.all_found([p.host.name for p in bed.testbed.placements], what="found from every host")


def test_chaos_kills_and_restarts(bed: Bed) -> None:
    testbed = bed.testbed
    hosts = [p.host.name for p in testbed.placements]

    # The designated MSD of a leaf dies: a backup takes over within 3 heartbeats.
    leaf = bed.domain(LEAF)
    before = bed.statuses([LEAF])[leaf]
    index = next(i for i in range(2) if before["msd"]["pid"] == testbed.pids.get(f"{LEAF}/msd-{i}"))
    killed, killed_at = time.monotonic(), time.time()
    testbed.kill(LEAF, f"msd-{index}")
    after = bed.wait("designated MSD killed: backup designated (seen)", lambda f: (
        f[leaf].get("designated") not in (None, before["designated"])
        and f[leaf].get("state") == "joined"), timeout=3 * HB + SLACK_S, hosts=[LEAF],
        since=killed)
    assert after[leaf]["term"] > before["term"]
    office = after[leaf]["designated_since"] - killed_at  # the new designated's own clock
    bed.figures.append({"step": "designated MSD killed: backup designated (its clock)",
                        "seconds": round(office, 2), "heartbeats": round(office / HB, 1)})
    assert office <= 3 * HB + SLACK_S
    testbed.start(LEAF, f"msd-{index}")  # back, as a backup: the designated stays
    bed.wait("killed MSD restarted: tree settled", settled(HOSTS), timeout=60)

    # A backup dies and comes back: nothing moves.
    middle = bed.domain(MIDDLE)
    before = bed.statuses([MIDDLE])[middle]
    backup = next(i for i in range(2) if before["msd"]["pid"] != testbed.pids[f"{MIDDLE}/msd-{i}"])
    testbed.kill(MIDDLE, f"msd-{backup}")
    time.sleep(4 * HB)
    testbed.start(MIDDLE, f"msd-{backup}")
    time.sleep(4 * HB)
    now = bed.wait("backup MSD killed and restarted: tree settled", settled(HOSTS), timeout=30)
    assert (now[middle]["designated"], now[middle]["term"]) == (before["designated"],
                                                                before["term"])

    # A URS dies: its MSDs go on and the tree stays whole; back, the MSDs use it again.
    before = bed.statuses([LEAF])[leaf]
    testbed.kill(LEAF, "urs")
    time.sleep(6 * HB)
    during = bed.probe("obs").call({"op": "msd_status", "address": before["designated"]})
    assert (during.get("state"), during.get("term")) == ("joined", before["term"]), during
    whole = bed.statuses([h for h in hosts if h != LEAF]) | {leaf: during}
    assert leaf in whole[bed.domain(ROOT)]["children"] and routes_whole(whole)
    restarted = time.monotonic()
    testbed.start(LEAF, "urs")
    after = bed.wait("URS restarted: answering, tree settled", settled(HOSTS), timeout=60,
                     since=restarted)
    assert after[leaf]["designated"] == before["designated"]  # nobody was deposed
    bed.all_found([LEAF], what="found after the URS restart")

    # The middle domain dies whole (DNS, URS, both MSDs): its child is grafted under the root.
    killed = time.monotonic()
    testbed.kill_host(MIDDLE)
    live = [h for h in hosts if h != MIDDLE]
    blocked = bed.domain(BLOCKED)
    bed.wait("middle domain killed: routing whole among the live", lambda f: (
        routes_whole(f) and f[blocked].get("state") == "fostered"), timeout=5 * HB + SLACK_S,
        hosts=live, since=killed)
    bed.all_found([ROOT, BLOCKED], what="middle domain dead: all found (shadows)")
    restart(bed, MIDDLE)

    # The root dies whole: a forest until it returns.
    killed = time.monotonic()
    testbed.kill_host(ROOT)
    rest = [h for h in hosts if h != ROOT]

    def forest(found: Statuses) -> bool:  # the root's children stand in as roots
        live = [s for s in found.values() if "error" not in s]
        return len(live) == len(rest) and all(
            s.get("state") == "waiting" or s.get("parent") not in (None, bed.domain(ROOT))
            for s in live)

    bed.wait("root killed: its children stand in as roots", forest,
             timeout=5 * HB + SLACK_S, hosts=rest, since=killed)
    restart(bed, ROOT)
    bed.all_found(hosts, what="after the chaos: all found from every host")


def restart(bed: Bed, host: str) -> None:
    """Start every process of a dead host; time its return and the tree's."""
    restarted = time.monotonic()
    bed.testbed.start_host(host)
    domain = bed.domain(host)
    bed.wait(f"{domain.split('.')[0]} restarted: designated again", lambda f: f[domain].get(
        "state") in ("root", "joined"), timeout=60, hosts=[host], since=restarted)
    bed.wait(f"{domain.split('.')[0]} restarted: tree settled", settled(HOSTS), timeout=60,
             since=restarted)


@pytest.mark.parametrize("loss", [1, 10])
def test_control_channel_loss(bed: Bed, loss: int) -> None:
    """Every host loses `loss` % of the UDP datagrams it sends (the control channels, and
    DNS): the tree stays whole, sessions register and are found; at 10 %, the chaos of a
    killed designated MSD and a killed middle domain is survived as well."""
    testbed = bed.testbed
    hosts = [p.host.name for p in testbed.placements]
    before = bed.statuses()
    how = testbed.impair(hosts, Impairment(loss_pct=loss, udp_only=True))
    try:
        time.sleep(10 * HB)
        found = bed.wait(f"{loss} % UDP loss ({how}): tree settled after 10 hb",
                         settled(HOSTS), timeout=60)
        assert routes_whole(found)
        terms = sum(found[d]["term"] != before[d]["term"] for d in found)
        switches = sum(found[d]["route_switches"] - before[d]["route_switches"] for d in found
                       if found[d]["term"] == before[d]["term"])
        bed.figures.append({"step": f"{loss} % UDP loss, first 10 hb",
                            "note": f"{terms} term changes, {switches} route switches"})
        for host in (LEAF, BLOCKED):
            bed.register(host, f"loss{loss}{host}")
        bed.all_found(hosts, what=f"{loss} % UDP loss: all found from every host", timeout=60)
        if loss >= 10:
            chaos_under_loss(bed, loss)
        # Elections nobody caused: a backup that lost the announces and saw the lease late.
        spared = [h for h in hosts if loss < 10 or h not in ("h4", MIDDLE)]
        after = bed.statuses(spared)
        changed = sorted(d for d, s in after.items() if s.get("term") != before[d]["term"])
        bed.figures.append({"step": f"{loss} % UDP loss, whole phase",
                            "note": f"term changes in domains not killed: {changed or 'none'}"})
    finally:
        testbed.clear(hosts)


def chaos_under_loss(bed: Bed, loss: int) -> None:
    testbed = bed.testbed
    hosts = [p.host.name for p in testbed.placements]
    other = "h4"  # dom02, a leaf: its designated MSD dies
    domain = bed.domain(other)
    before = bed.statuses([other])[domain]
    index = next(i for i in range(2) if before["msd"]["pid"] == testbed.pids[f"{other}/msd-{i}"])
    killed = time.monotonic()
    testbed.kill(other, f"msd-{index}")
    bed.wait(f"{loss} % loss: designated MSD killed: backup designated", lambda f: (
        f[domain].get("designated") not in (None, before["designated"])
        and f[domain].get("state") == "joined"), timeout=3 * HB + SLACK_S, hosts=[other],
        since=killed)
    testbed.start(other, f"msd-{index}")
    killed = time.monotonic()
    testbed.kill_host(MIDDLE)
    blocked = bed.domain(BLOCKED)
    bed.wait(f"{loss} % loss: middle domain killed: routing whole among the live", lambda f: (
        routes_whole(f) and f[blocked].get("state") == "fostered"), timeout=5 * HB + SLACK_S,
        hosts=[h for h in hosts if h != MIDDLE], since=killed)
    bed.all_found([ROOT, BLOCKED], what=f"{loss} % loss: middle dead: all found (shadows)",
                  timeout=60)
    restart(bed, MIDDLE)
    bed.all_found(hosts, what=f"{loss} % loss, after the chaos: all found from every host",
                  timeout=60)


def test_nothing_crashed_and_everything_stops_cleanly(bed: Bed) -> None:
    testbed = bed.testbed
    bed.wait("loss cleared: tree settled", settled(HOSTS), timeout=60)
    bed.all_found([p.host.name for p in testbed.placements], what="final: all found")
    assert testbed.crashed() == {}
    assert testbed.tracebacks() == {}
    assert all(status == -signal.SIGKILL for _, status in testbed.kill_log), testbed.kill_log
    killed = {name for name, _ in testbed.kill_log}
    bed.close()
    statuses = testbed.down()
    unclean = {name: status for name, status in statuses.items() if status != 0}
    assert unclean == {}, f"not stopped cleanly by SIGTERM: {unclean} (killed earlier: {killed})"
