"""The whole resolve and search path through DNS software nobody here wrote: nsd serves every
domain's zone, exported by `mdns zone export` from the `.mds` files, and unbound resolves
for the client with a stub zone per domain. `mdns resolve` and `mdns search --domain` ask
unbound; the URSes and MSDs are the project's. Everything listens on free ports of
127.0.0.1 in a temporary folder; skipped, saying why, without nsd or unbound."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from vdns.harness import Hierarchy
from vdns.mds import load_hierarchy
from vdns.zonefile import NSD_CONF, export_zones

ROOT = Path(__file__).resolve().parents[2]
NSD, UNBOUND = shutil.which("nsd") or "/usr/sbin/nsd", shutil.which("unbound") or \
    "/usr/sbin/unbound"
MISSING = [name for name, path in (("nsd", NSD), ("unbound", UNBOUND)) if not Path(path).exists()]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(MISSING), reason=(
        f"{' and '.join(MISSING)} not installed: `apt-get install nsd unbound` (Debian), "
        "which `deploy/quickstart setup` does when run as root")),
]
START_S = 20.0
SESSION = {"id": "jazz-night", "title": "CISE jazz night", "keywords": ["jazz", "music"],
           "group": "239.255.7.7", "port": 5006, "scope": "global"}
DOMAIN = "cise.ufl.edu"


def _free_port() -> int:
    """A port free for UDP and TCP now (nsd and unbound bind both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Hierarchy]:
    # A 1 s heartbeat: the designated MSDs' leases must outlive a busy machine's pauses
    # while the `mdns` processes start.
    hierarchy = Hierarchy(load_hierarchy(ROOT / "configs" / "demo"), data_dir=tmp_path / "data",
                          ephemeral_ports=True, msds=1, msd_in_process=True, heartbeat_s=1.0)
    try:
        await hierarchy.start()
        await hierarchy.wait_ready(timeout=30)
        await hierarchy.wait_settled(timeout=30)
        yield hierarchy
    finally:
        await hierarchy.close()


def _daemon(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _answers(port: int, name: str, rdtype: str) -> dns.message.Message | None:
    query = dns.message.make_query(name, rdtype)
    try:
        return await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
    except (dns.exception.DNSException, OSError):
        return None


async def _until_answered(port: int, name: str, rdtype: str, *, log: Path) -> None:
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        reply = await _answers(port, name, rdtype)
        if reply is not None and reply.rcode() == dns.rcode.NOERROR and reply.answer:
            return
        await asyncio.sleep(0.2)
    text = await asyncio.to_thread(log.read_text)
    raise AssertionError(f"no answer for {name} {rdtype} on port {port}:\n{text}")


@pytest.fixture
def dns_servers(demo: Hierarchy, tmp_path: Path) -> Iterator[int]:
    """nsd with every zone, unbound in front of it; yields unbound's port."""
    folder = tmp_path / "dns"
    zones = folder / "zones"
    configs = [d.config for d in demo.domains.values()]  # the ports the harness chose
    export_zones(configs, zones)
    nsd_port, unbound_port = _free_port(), _free_port()
    (folder / "nsd.conf").write_text(f"""server:
  ip-address: 127.0.0.1@{nsd_port}
  port: {nsd_port}
  do-ip6: no
  username: ""
  chroot: ""
  zonesdir: "{zones}"
  pidfile: "{folder}/nsd.pid"
  zonelistfile: "{folder}/zone.list"
  xfrdfile: "{folder}/xfrd.state"
  xfrdir: "{folder}"
  database: ""
  server-count: 1
  verbosity: 1
remote-control:
  control-enable: no
include: "{zones / NSD_CONF}"
""")
    # One stub zone per domain, all at the one nsd: a referral cannot carry a port, so
    # unbound must be told where each zone is (docs/deploy.md).
    stubs = "".join(f'stub-zone:\n  name: "{c.domain}."\n  stub-addr: 127.0.0.1@{nsd_port}\n'
                    for c in configs)
    local = "".join(f'  local-zone: "{c.domain}." transparent\n'
                    f'  domain-insecure: "{c.domain}."\n' for c in configs)
    (folder / "unbound.conf").write_text(f"""server:
  interface: 127.0.0.1@{unbound_port}
  port: {unbound_port}
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  username: ""
  chroot: ""
  directory: "{folder}"
  pidfile: "{folder}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 1
  module-config: "iterator"
  qname-minimisation: no
  local-zone: "." refuse
{local}  cache-max-ttl: 5
remote-control:
  control-enable: no
{stubs}""")
    nsd = _daemon([NSD, "-d", "-c", str(folder / "nsd.conf")], folder / "nsd.log")
    unbound = _daemon([UNBOUND, "-d", "-c", str(folder / "unbound.conf")],
                      folder / "unbound.log")
    try:
        yield unbound_port
    finally:
        for process in (unbound, nsd):
            _stop(process)


def _mdns(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client.cli", *argv], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, check=False)


async def test_resolve_and_search_through_unbound_and_nsd(
    demo: Hierarchy, dns_servers: int, tmp_path: Path
) -> None:
    unbound = dns_servers
    log = tmp_path / "dns" / "unbound.log"
    await _until_answered(unbound, f"mcast.{DOMAIN}", "A", log=log)
    url = f"{demo.domains[DOMAIN].urs_url}/sessions?wait=true"
    async with aiohttp.ClientSession() as http, http.post(url, json=SESSION) as response:
        assert response.status == 201, await response.text()
        assert (await response.json())["indexed"]

    # What unbound says is nsd's zone, exported from the .mds files with the harness's ports.
    srv = await _answers(unbound, f"_mdns-urs._tcp.{DOMAIN}", "SRV")
    assert srv is not None
    assert [r.port for rrset in srv.answer for r in rrset] == [demo.domains[DOMAIN]
                                                               .config.urs_port]
    dns_option = f"127.0.0.1:{unbound}"
    resolved = await asyncio.to_thread(_mdns, "resolve", f"mcast.{DOMAIN}/jazz-night",
                                       "--dns", dns_option, "--json")
    assert resolved.returncode == 0, resolved.stderr
    assert json.loads(resolved.stdout)["group"] == "239.255.7.7"

    found = await asyncio.to_thread(_mdns, "search", "jazz", "--domain", DOMAIN,
                                    "--dns", dns_option, "--json")
    assert found.returncode == 0, found.stderr
    assert [s["uri"] for s in json.loads(found.stdout)] == [f"mcast.{DOMAIN}/jazz-night"]

    missing = await asyncio.to_thread(_mdns, "resolve", "mcast.nowhere.ufl.edu/x", "--dns",
                                      dns_option)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr  # nsd's NXDOMAIN, through unbound


def test_mdns_zone_export_writes_the_files_nsd_checks(tmp_path: Path) -> None:
    result = _mdns("zone", "export", str(tmp_path), "--config", "configs/demo",
                   "--urs-replica", "mit.edu=127.0.0.1:8001",
                   "--urs-replica", "mit.edu=127.0.0.1:8002")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cise.ufl.edu.zone", "edu.zone", "mit.edu.zone", NSD_CONF, "ufl.edu.zone"]
    checkzone = shutil.which("nsd-checkzone") or "/usr/sbin/nsd-checkzone"
    for zone in ("edu", "ufl.edu", "cise.ufl.edu", "mit.edu"):
        checked = subprocess.run([checkzone, zone, str(tmp_path / f"{zone}.zone")],
                                 capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
    mit = (tmp_path / "mit.edu.zone").read_text()
    assert "_mdns-urs._tcp 30 IN SRV 0 1 8001 r1.mcast" in mit
    assert "_mdns-urs._tcp 30 IN SRV 0 1 8002 r2.mcast" in mit
