"""The .mds reader and writer: the dissertation's files round-trip; bad files are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdns.errors import MdsFormatError
from vdns.mds import format_mds, load_hierarchy, load_mds, parse_mds, write_mds

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
THESIS_FILES = sorted(CONFIGS.glob("scenario[123]/*.mds"))
GOOD = (CONFIGS / "scenario1" / "domain07-dom0200.mds").read_text()


def test_all_thirty_dissertation_files_are_here() -> None:
    assert len(THESIS_FILES) == 30


@pytest.mark.parametrize("path", THESIS_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_dissertation_file_round_trips_byte_identical(path: Path, tmp_path: Path) -> None:
    config = load_mds(path)
    assert format_mds(config).encode() == path.read_bytes()
    out = tmp_path / path.name
    write_mds(config, out)
    assert out.read_bytes() == path.read_bytes()


def test_fields_are_read_with_their_meaning() -> None:
    config = load_mds(CONFIGS / "scenario1" / "domain06-dom020.mds")
    assert config.domain == "dom020.dom02.level0.testdomain.info"
    assert (config.self_port, config.urs_port) == (2031, 2033)
    assert (config.cmcast, config.cm_port) == ("239.0.0.113", 2032)
    assert (config.pmcast, config.pm_port) == ("239.0.0.107", 2017)
    assert (config.local_mcast, config.local_mcast_port) == ("239.0.0.114", 2034)
    assert config.parent_domain == "dom02.level0.testdomain.info"
    assert [d.label for d in config.delegations] == ["dom0200", "dom0201", "dom0202"]
    assert config.delegations[0].port == 2036


def test_root_is_recognised_by_parent_port_zero() -> None:
    root = load_mds(CONFIGS / "scenario1" / "domain10-level0.mds")
    assert root.is_root and root.parent_domain is None


@pytest.mark.parametrize("scenario", ["scenario1", "scenario2", "scenario3", "demo"])
def test_each_hierarchy_is_consistent(scenario: str) -> None:
    configs = load_hierarchy(CONFIGS / scenario)
    assert sum(c.is_root for c in configs) == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("SelfPort:2036", "SelfPort:70000"), "outside 1..65535"),
        (GOOD.replace("SelfPort:2036", "SelfPort:abc"), "not a port number"),
        (GOOD.replace("SelfPort:2036\n", ""), "missing SelfPort"),
        (GOOD + "SelfPort:1\n", "SelfPort given twice"),
        (GOOD.replace("URSIP:127.0.0.1", "URSIP:127.0.0.300"), "not an IP address"),
        (GOOD.replace("ChildMulticast:239.0.0.115", "ChildMulticast:10.0.0.1"),
         "not a multicast group"),
        (GOOD.replace("Anycast:", "Anycastt:"), "unknown key 'Anycastt'"),
        (GOOD.replace("CMPort:2037", "CMPort 2037"), "expected 'Key:Value'"),
        (GOOD + "\n", "blank line"),
        (GOOD + "@ child 127.0.0.1\n", "expected IP:PORT"),
        (GOOD + "@ Bad_Label 127.0.0.1:1\n", "not a DNS label"),
        (GOOD + "@ a 127.0.0.1:1\nCMPort:1\n", "a setting after the '@'"),
        (GOOD + "@ a 127.0.0.1:1\n@ a 127.0.0.1:2\n", "delegated twice"),
        (GOOD.replace("DomainName:dom0200", "DomainName:Dom0200"), "lower-case domain name"),
        (GOOD.replace("URSPort:2038", "URSPort: 2038"), "stray spaces"),
    ],
)
def test_malformed_file_is_rejected_with_the_line_at_fault(text: str, message: str) -> None:
    with pytest.raises(MdsFormatError, match=message):
        parse_mds(text, source="bad.mds")


def test_non_ascii_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.mds"
    path.write_bytes(GOOD.encode() + "@ caf\u00e9 127.0.0.1:1\n".encode())
    with pytest.raises(MdsFormatError, match="not ASCII"):
        load_mds(path)


def _write_hierarchy(tmp_path: Path, *names: str) -> None:
    for name in names:
        (tmp_path / name).write_bytes((CONFIGS / "scenario1" / name).read_bytes())


def test_hierarchy_with_a_dangling_delegation_is_rejected(tmp_path: Path) -> None:
    _write_hierarchy(tmp_path, "domain10-level0.mds", "domain04-dom01.mds")
    with pytest.raises(MdsFormatError, match=r"no file describes dom00\.level0"):
        load_hierarchy(tmp_path)


def test_hierarchy_without_a_root_is_rejected(tmp_path: Path) -> None:
    _write_hierarchy(tmp_path, "domain04-dom01.mds")
    with pytest.raises(MdsFormatError, match="exactly one root"):
        load_hierarchy(tmp_path)


def test_empty_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(MdsFormatError, match=r"holds no \.mds files"):
        load_hierarchy(tmp_path)
