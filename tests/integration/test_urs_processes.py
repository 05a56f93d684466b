"""The services the systemd units run, as processes: `mdns dns` health-checking two `mdns urs`
replicas on one database, each publishing the domain's public key (`--public-key-file`).
SIGKILL one replica: `mdns resolve` keeps working without an error, and the DNS answer
drops the dead replica within a few seconds."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype
import pytest

from msd.keys import generate_private_key, key_line, key_text, public_bytes
from vdns.mds import load_hierarchy, write_mds

ROOT = Path(__file__).resolve().parents[2]
MDNS = [sys.executable, "-m", "client.cli"]
CHECK_S = 0.5
START_S = 60.0  # a process start on a 2-core machine busy with other tests
SLACK_S = 3.0
SESSION = {"id": "gators", "title": "Gators", "keywords": ["football"],
           "group": "239.255.0.150", "port": 5004}


def _free_port() -> int:
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


@dataclasses.dataclass
class Services:
    dns_port: int
    urs: list[tuple[int, subprocess.Popen[bytes]]]
    domain: str
    public_key: str  # what each replica must publish in /bootstrap


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    root = next(c for c in load_hierarchy(ROOT / "configs" / "demo") if c.is_root)
    dns_port, urs_ports = _free_port(), [_free_port(), _free_port()]
    config = dataclasses.replace(root, delegations=(), self_port=dns_port, urs_port=urs_ports[0])
    write_mds(config, tmp_path / "edu.mds")
    (tmp_path / "msd.key").write_text("a-test-msd-key-of-enough-length\n")
    public = public_bytes(generate_private_key())
    (tmp_path / "domain.key.pub").write_text(key_line(config.domain, public) + "\n")
    database = f"sqlite+aiosqlite:///{tmp_path / 'urs.sqlite'}"
    processes: list[subprocess.Popen[bytes]] = []

    def start(*argv: str, log: str) -> subprocess.Popen[bytes]:
        with (tmp_path / log).open("wb") as out:
            process = subprocess.Popen([*MDNS, "-v", *argv], cwd=ROOT, stdout=out,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        processes.append(process)
        return process

    try:
        replicas = [(port, start("urs", "--config", str(tmp_path / "edu.mds"),
                                 "--database", database, "--port", str(port),
                                 "--msd-key-file", str(tmp_path / "msd.key"),
                                 "--public-key-file", str(tmp_path / "domain.key.pub"),
                                 log=f"urs-{port}.log"))
                    for port in urs_ports]
        start("dns", "--config", str(tmp_path / "edu.mds"), "--health-interval", str(CHECK_S),
              *[arg for port in urs_ports for arg in ("--urs-replica", f"127.0.0.1:{port}")],
              log="dns.log")
        yield Services(dns_port, replicas, config.domain, key_text(public))
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _srv_ports(port: int, domain: str) -> list[int] | None:
    query = dns.message.make_query(f"_mdns-urs._tcp.{domain}", dns.rdatatype.SRV)
    try:
        reply = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=1)
    except (dns.exception.DNSException, OSError):
        return None
    return [r.port for rrset in reply.answer for r in sorted(rrset, key=lambda r: r.priority)]


def _resolve(services: Services) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MDNS, "resolve", f"mcast.{services.domain}/gators", "--dns",
                           f"127.0.0.1:{services.dns_port}"], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=False)


@pytest.mark.timeout(180)
async def test_sigkill_one_urs_process_resolve_keeps_working(services: Services) -> None:
    ports = sorted(port for port, _ in services.urs)
    deadline = time.monotonic() + START_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while sorted(await _srv_ports(services.dns_port, services.domain) or []) != ports:
            assert time.monotonic() < deadline, "the DNS server did not come up"
            await asyncio.sleep(0.2)
        first_port = services.urs[0][0]
        while True:  # the replicas start, and migrate the one database, together
            try:
                async with http.post(f"http://127.0.0.1:{first_port}/sessions",
                                     json=SESSION) as response:
                    assert response.status == 201, await response.text()
                    break
            except aiohttp.ClientConnectionError:
                assert time.monotonic() < deadline, "the URS did not come up"
                await asyncio.sleep(0.2)
        for port in ports:
            while True:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/gators") as response:
                        assert response.status == 200
                    async with http.get(f"http://127.0.0.1:{port}/bootstrap") as response:
                        assert (await response.json())["public_key"] == services.public_key
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, f"the URS on {port} did not come up"
                    await asyncio.sleep(0.2)

    ranked = await _srv_ports(services.dns_port, services.domain)
    assert ranked is not None
    victim_port = ranked[0]  # the one clients try first
    survivor = next(port for port in ports if port != victim_port)
    victim = next(process for port, process in services.urs if port == victim_port)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed = time.monotonic()

    async def dropped() -> float:
        while True:
            if await _srv_ports(services.dns_port, services.domain) == [survivor]:
                return time.monotonic() - killed
            await asyncio.sleep(CHECK_S / 5)

    watch = asyncio.create_task(dropped())
    result = await asyncio.to_thread(_resolve, services)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"127.0.0.1:{survivor}" in result.stdout
    took = await asyncio.wait_for(watch, timeout=4 * CHECK_S + SLACK_S + 5)
    assert took < 4 * CHECK_S + SLACK_S, f"the dead replica was answered for {took:.1f} s"
