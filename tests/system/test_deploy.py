"""deploy/: the systemd units pass `systemd-analyze verify` and their command lines are ones
`mdns` accepts; the sample production files parse (the zone with nsd's own checker)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest

from client.cli import build_parser
from vdns.mds import load_mds

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "deploy" / "systemd").glob("mdns-*@.service"))
SAMPLE = ROOT / "deploy" / "production"
DOMAIN = "example.org"


def test_there_is_a_unit_for_each_service() -> None:
    assert [unit.name for unit in UNITS] == ["mdns-dns@.service", "mdns-msd@.service",
                                             "mdns-urs@.service"]


def _settings(unit: Path) -> dict[str, list[str]]:
    text = unit.read_text().replace("\\\n", " ")
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith(("#", "[")):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_each_unit_is_sandboxed(unit: Path) -> None:
    settings = _settings(unit)
    for key, value in (("DynamicUser", "yes"), ("ProtectSystem", "strict"),
                       ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes")):
        assert settings.get(key) == [value], key
    assert settings["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    privileged = unit.name != "mdns-msd@.service"  # port 53 or 80; the MSD needs nothing
    expected = ["CAP_NET_BIND_SERVICE"] if privileged else [""]
    assert settings["CapabilityBoundingSet"] == expected
    assert settings.get("AmbientCapabilities", [""]) == expected


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_each_command_line_is_one_mdns_accepts(unit: Path, tmp_path: Path) -> None:
    settings = _settings(unit)
    environment = dict(item.split("=", 1) for line in settings.get("Environment", [])
                       for item in shlex.split(line))
    env_file = SAMPLE / "etc" / "mdns" / DOMAIN / f"{unit.name.split('-')[1].split('@')[0]}.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.partition("=")
                environment[key] = value
    (command,) = settings["ExecStart"]
    command = (command.replace("%i", DOMAIN).replace("%d", str(tmp_path))
               .replace("%S", "/var/lib"))
    command = re.sub(r"\$\{(\w+)\}", lambda m: shlex.quote(environment[m.group(1)]), command)
    command = re.sub(r"\$(\w+)", lambda m: environment[m.group(1)], command)  # word-split
    argv = shlex.split(command)
    assert argv[0] == "/opt/mdns/bin/mdns"
    args = build_parser().parse_args(argv[1:])  # exits (fails the test) on a bad option
    assert args.command == unit.name.split("-")[1].split("@")[0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian: the systemd package)")
@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_finds_nothing(unit: Path, tmp_path: Path) -> None:
    # A template is verified as an instance; ExecStart must name an executable that exists.
    mdns = shutil.which("mdns") or str(ROOT / ".venv" / "bin" / "mdns")
    instance = tmp_path / unit.name.replace("@.", f"@{DOMAIN}.")
    instance.write_text(unit.read_text().replace("/opt/mdns/bin/mdns", mdns))
    result = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""  # not even a warning


def test_the_sample_domain_file_and_zone_parse() -> None:
    config = load_mds(SAMPLE / "etc" / "mdns" / DOMAIN / "domain.mds")
    assert (config.domain, config.urs_port, config.self_port) == (DOMAIN, 80, 53)
    zone = dns.zone.from_file(str(SAMPLE / f"{DOMAIN}.zone"), origin=DOMAIN, relativize=False)
    mcast = zone.find_rdataset(f"mcast.{DOMAIN}.", dns.rdatatype.A)
    srv = zone.find_rdataset(f"_mdns-urs._tcp.{DOMAIN}.", dns.rdatatype.SRV)
    assert {r.address for r in mcast} == {"192.0.2.10", "192.0.2.11"}
    assert {(r.port, r.target.to_text()) for r in srv} == {(80, "r1.mcast.example.org."),
                                                         (80, "r2.mcast.example.org.")}
    assert mcast.ttl == srv.ttl == 5
    checkzone = shutil.which("nsd-checkzone") or "/usr/sbin/nsd-checkzone"
    if Path(checkzone).exists():
        checked = subprocess.run([checkzone, DOMAIN, str(SAMPLE / f"{DOMAIN}.zone")],
                                 capture_output=True, text=True, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
