"""The `mdns` command as a user runs it: `mdns up` in one process, `mdns resolve` in another."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MDNS = [sys.executable, "-m", "client.cli"]


def _mdns(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MDNS, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, check=False)


@dataclasses.dataclass
class Demo:
    process: subprocess.Popen[str]
    summary: str
    dns_port: int
    data_dir: Path


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[Demo]:
    """`mdns up configs/demo` on ephemeral ports, read until it says it is ready."""
    process = subprocess.Popen(
        [*MDNS, "up", "configs/demo", "--ephemeral-ports", "--data-dir", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Stop with Ctrl-C"):
            break
    text = "".join(lines)
    try:
        assert "Stop with Ctrl-C" in text, text + (process.stderr.read() if process.stderr else "")
        match = re.search(r"^\s+edu\s+127\.0\.0\.1:(\d+)", text, re.M)
        assert match, text
        yield Demo(process, text, int(match.group(1)), tmp_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=15)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def test_up_registers_the_samples_and_resolve_finds_them(demo: Demo) -> None:
    text, dns_port, data_dir = demo.summary, demo.dns_port, demo.data_dir
    assert "registered  mcast.ufl.edu/gators" in text
    assert "mcast.cise.ufl.edu/jazz-night" in text
    tokens = json.loads((data_dir / "tokens.json").read_text())
    assert set(tokens) >= {"mcast.ufl.edu/gators", "mcast.cise.ufl.edu/jazz-night"}
    assert oct((data_dir / "tokens.json").stat().st_mode & 0o777) == "0o600"

    table = _mdns("resolve", "mcast.ufl.edu/gators", "--dns", f"127.0.0.1:{dns_port}")
    assert table.returncode == 0, table.stderr
    assert re.search(r"^group\s+239\.255\.0\.150$", table.stdout, re.M)

    as_json = _mdns("resolve", "mcast.cise.ufl.edu/jazz-night", "--dns",
                    f"127.0.0.1:{dns_port}", "--json")
    assert as_json.returncode == 0, as_json.stderr
    record = json.loads(as_json.stdout)
    assert (record["source"], record["network"]) == ("10.1.2.3", "ssm")

    sdp_file = data_dir / "jazz.sdp"
    sdp = _mdns("resolve", "mcast.cise.ufl.edu/jazz-night", "--dns", f"127.0.0.1:{dns_port}",
                "--sdp", str(sdp_file))
    assert sdp.returncode == 0, sdp.stderr
    assert "a=source-filter: incl IN IP4 232.1.1.1 10.1.2.3" in sdp_file.read_text()


def test_status_shows_the_settled_tree_of_msd_processes(demo: Demo) -> None:
    """`mdns up` runs one MSD process per domain; `mdns status` walks their tree."""
    deadline = time.monotonic() + 20
    while True:
        result = _mdns("status", "--domain", "cise.ufl.edu", "--dns",
                       f"127.0.0.1:{demo.dns_port}", "--json", "--keys", "1000")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        checks, domains = report["checks"], report["domains"]
        root = next((d for d in domains if d["name"] == "edu"), {})
        if root.get("count") == 4 and not checks["tiling_problems"]:
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.5)
    assert checks["routing_problems"] == [] and checks["skew"] < 1e-6
    assert {d["name"] for d in domains} == {"edu", "ufl.edu", "mit.edu", "cise.ufl.edu"}
    for domain in domains:
        assert {"name", "designated", "term", "parent", "children", "links", "count", "ranges",
                "routes", "control_bytes", "route_switches", "last_change", "dropped",
                "heartbeat_s", "msds"} <= set(domain)
        assert [m["role"] for m in domain["msds"]] == ["designated"]
        assert domain["msds"][0]["pid"] not in (None, demo.process.pid)  # its own process
    tree = _mdns("status", "--domain", "mit.edu", "--dns", f"127.0.0.1:{demo.dns_port}")
    assert tree.returncode == 0
    assert "ranges tile the space: yes" in tree.stdout
    assert re.search(r"^  ufl\.edu .*\n    cise\.ufl\.edu ", tree.stdout, re.M), tree.stdout


def test_register_and_search_from_the_command_line(demo: Demo) -> None:
    dns = f"127.0.0.1:{demo.dns_port}"
    jazz = _mdns("search", "jazz", "--home", "mit.edu", "--dns", dns, "--json")
    assert jazz.returncode == 0, jazz.stderr
    assert [s["uri"] for s in json.loads(jazz.stdout)] == ["mcast.cise.ufl.edu/jazz-night"]

    registered = _mdns("register", "--domain", "mit.edu", "--dns", dns, "--json",
                       "--id", "jazz-club", "--title", "MIT jazz club", "--keywords",
                       "Jazz, music", "--group", "239.255.7.7", "--port", "5010",
                       "--lat", "42.36", "--lon", "-71.09", "--wait")
    assert registered.returncode == 0, registered.stderr
    result = json.loads(registered.stdout)
    assert result["uri"] == "mcast.mit.edu/jazz-club" and result["token"]
    assert len(result["routed"]) == 4 and all("owner" in r for r in result["routed"])

    near = _mdns("search", 'jazz near:"Cambridge, MA" within:10', "--home", "ufl.edu",
                 "--dns", dns, "--json")
    assert near.returncode == 0, near.stderr
    hits = json.loads(near.stdout)
    assert [h["uri"] for h in hits] == ["mcast.mit.edu/jazz-club"]
    assert 0 < hits[0]["distance_km"] < 10

    local = _mdns("search", "lecture", "--home", "ufl.edu", "--dns", dns)
    assert local.returncode == 0 and local.stdout.strip() == "no sessions found"
    own = _mdns("search", "lecture", "--home", "mit.edu", "--dns", dns, "--m3u")
    assert own.stdout.splitlines()[0] == "#EXTM3U" and "rtp://@[ff15::6006]:5008" in own.stdout

    refused = _mdns("search", "NOT jazz", "--home", "edu", "--dns", dns)
    assert refused.returncode == 1 and "not negated" in refused.stderr
    bad = _mdns("register", "--domain", "mit.edu", "--dns", dns, "--id", "x", "--title", "X",
                "--keywords", "a", "--group", "10.0.0.1", "--port", "1")
    assert bad.returncode == 1 and "group" in bad.stderr and "not a multicast" in bad.stderr
    opened = _mdns("open", "mcast.ufl.edu/gators", "--dns", dns, "--print")
    assert opened.stdout.strip() == "ffplay rtp://@239.255.0.150:5004"


def test_up_stops_cleanly_on_sigterm(demo: Demo) -> None:
    process = demo.process
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=15)
    assert process.returncode == 0, err
    assert "stopped cleanly" in out
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["resolve", "not-a-uri"], "is not an mcast URI"),
        (["resolve", "mcast.ufl.edu/gators", "--dns", "nonsense"], "is not an IP address"),
        (["up", "no/such/dir"], "not a directory of .mds files"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_1(args: list[str], message: str) -> None:
    result = _mdns(*args)
    assert result.returncode == 1
    assert message in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_unknown_id_is_one_line_and_exit_1(demo: Demo) -> None:
    result = _mdns("resolve", "mcast.ufl.edu/nobody", "--dns", f"127.0.0.1:{demo.dns_port}")
    assert result.returncode == 1
    expected = "mdns: no session 'nobody' at mcast.ufl.edu (unknown or expired)"
    assert result.stderr.strip() == expected


def test_a_dns_server_that_never_answers_times_out_cleanly() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # receives the query, never answers
        port = silent.getsockname()[1]
        result = _mdns("resolve", "mcast.ufl.edu/gators", "--dns", f"127.0.0.1:{port}",
                       "--timeout", "1")
    assert result.returncode == 1
    assert "did not answer" in result.stderr


@pytest.mark.timeout(120)
def test_up_in_a_start_order_prints_the_tree_forming_line_by_line(tmp_path: Path) -> None:
    """`mdns up --order` with stdout not a terminal: a line per start and per change."""
    process = subprocess.Popen(
        [*MDNS, "up", "configs/demo", "--ephemeral-ports", "--no-samples", "--data-dir",
         str(tmp_path), "--order", "1,3,2,4", "--delays", "2,2,2,2", "--time-scale", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if re.search(r"cise\.ufl\.edu: joined under ufl\.edu, count 1, owns 25\.00%", line):
                break
        text = "".join(lines)
        assert lines[0].startswith("mdns up: start order 1,3,2,4, time scale 2 "), text
        started = re.findall(r"started domain (\d) \((\S+)\)", text)
        assert started == [("1", "edu"), ("3", "mit.edu"), ("2", "ufl.edu"),
                           ("4", "cise.ufl.edu")], text
        assert "cise.ufl.edu: joined under ufl.edu, count 1, owns 25.00%" in text, text
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "mdns up: stopped cleanly" in out
