"""Read and write the dissertation's `.mds` domain files, byte for byte.

A file is one `Key:Value` line per setting, in the canonical order below, then one
`@ LABEL IP:PORT` line per delegated child domain. Every line ends with a newline.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from vdns.errors import MdsFormatError

MAX_FILE_BYTES = 64 * 1024
MAX_DELEGATIONS = 1000

# (key in the file, attribute, kind) in the order the dissertation's tool writes them.
_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("Anycast", "anycast", "ip"),
    ("ParentDNS", "parent_dns", "ip"),
    ("ParentDNSPort", "parent_dns_port", "port0"),
    ("ChildMulticast", "cmcast", "mcast"),
    ("ParentMulticast", "pmcast", "mcast"),
    ("URSIP", "urs_ip", "ip"),
    ("SelfPort", "self_port", "port"),
    ("CMPort", "cm_port", "port"),
    ("PMPort", "pm_port", "port"),
    ("URSPort", "urs_port", "port"),
    ("MCASTLOCALIP", "local_mcast", "mcast"),
    ("MCASTPort", "local_mcast_port", "port"),
    ("ANYCASTPort", "anycast_port", "port"),
    ("DomainName", "domain", "domain"),
)
_KEYS = {key: (attr, kind) for key, attr, kind in _FIELDS}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclasses.dataclass(frozen=True)
class Delegation:
    """A child domain `label.<parent>` whose DNS server listens at `ip:port`."""

    label: str
    ip: str
    port: int


@dataclasses.dataclass(frozen=True)
class DomainConfig:
    """One domain of a hierarchy, as a `.mds` file describes it."""

    domain: str
    self_port: int
    parent_dns: str
    parent_dns_port: int
    cmcast: str
    cm_port: int
    pmcast: str
    pm_port: int
    urs_ip: str
    urs_port: int
    local_mcast: str
    local_mcast_port: int
    anycast: str
    anycast_port: int
    delegations: tuple[Delegation, ...] = ()

    @property
    def is_root(self) -> bool:
        """The root has no parent DNS server: its ParentDNSPort is 0."""
        return self.parent_dns_port == 0

    @property
    def parent_domain(self) -> str | None:
        """The parent's name (this name less its first label), or None at the root."""
        if self.is_root:
            return None
        return self.domain.split(".", 1)[1]

    @property
    def mcast_name(self) -> str:
        """The DNS name of the domain's URS: `mcast.<domain>`."""
        return f"mcast.{self.domain}"

    def child_domain(self, delegation: Delegation) -> str:
        return f"{delegation.label}.{self.domain}"


def parse_mds(text: str, *, source: str = "<mds>") -> DomainConfig:
    """Parse the text of one `.mds` file; raise MdsFormatError naming the line at fault."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise MdsFormatError(f"{source}: larger than {MAX_FILE_BYTES} bytes")
    values: dict[str, object] = {}
    delegations: list[Delegation] = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        if not line.strip():
            raise MdsFormatError(f"{where}: blank line (the format has none)")
        if line.startswith("@"):
            delegations.append(_parse_delegation(line, where=where))
            if len(delegations) > MAX_DELEGATIONS:
                raise MdsFormatError(f"{where}: more than {MAX_DELEGATIONS} delegations")
            continue
        if delegations:
            raise MdsFormatError(f"{where}: a setting after the '@' delegation lines")
        key, sep, raw = line.partition(":")
        if not sep:
            raise MdsFormatError(
                f"{where}: expected 'Key:Value' or '@ LABEL IP:PORT', got {line!r}"
            )
        if key not in _KEYS:
            known = ", ".join(_KEYS)
            raise MdsFormatError(f"{where}: unknown key {key!r} (known: {known})")
        attr, kind = _KEYS[key]
        if attr in values:
            raise MdsFormatError(f"{where}: {key} given twice")
        values[attr] = _parse_value(raw, kind=kind, where=f"{where}: {key}")
    missing = [key for key, attr, _ in _FIELDS if attr not in values]
    if missing:
        raise MdsFormatError(f"{source}: missing {', '.join(missing)}")
    labels = [d.label for d in delegations]
    if len(set(labels)) != len(labels):
        raise MdsFormatError(f"{source}: a child label is delegated twice")
    # Every key was parsed by its kind above, so the values have the fields' types.
    fields = cast(dict[str, Any], values)
    return DomainConfig(**fields, delegations=tuple(delegations))


def format_mds(config: DomainConfig) -> str:
    """The `.mds` text of a domain, in the dissertation's key order."""
    lines = [f"{key}:{getattr(config, attr)}" for key, attr, _ in _FIELDS]
    lines += [f"@ {d.label} {d.ip}:{d.port}" for d in config.delegations]
    return "".join(line + "\n" for line in lines)


def load_mds(path: Path) -> DomainConfig:
    """Read one `.mds` file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MdsFormatError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise MdsFormatError(f"{path}: not ASCII text (byte {exc.start})") from exc
    return parse_mds(text, source=str(path))


def write_mds(config: DomainConfig, path: Path) -> None:
    """Write one `.mds` file (atomically: a reader never sees half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(format_mds(config), encoding="ascii")
    tmp.replace(path)


def load_hierarchy(directory: Path) -> list[DomainConfig]:
    """Every `*.mds` file of a directory, checked to form one consistent hierarchy."""
    if not directory.is_dir():
        raise MdsFormatError(f"{directory}: not a directory of .mds files")
    paths = sorted(directory.glob("*.mds"))
    if not paths:
        raise MdsFormatError(f"{directory}: holds no .mds files")
    configs = [load_mds(path) for path in paths]
    check_hierarchy(configs)
    return configs


def check_hierarchy(configs: Iterable[DomainConfig]) -> None:
    """Reject duplicate names or ports, several roots, and delegations that point nowhere."""
    configs = list(configs)
    by_name: dict[str, DomainConfig] = {}
    for config in configs:
        if config.domain in by_name:
            raise MdsFormatError(f"domain {config.domain} is described twice")
        by_name[config.domain] = config
    roots = [c.domain for c in configs if c.is_root]
    if len(roots) != 1:
        raise MdsFormatError(f"a hierarchy needs exactly one root (ParentDNSPort:0), found {roots}")
    for config in configs:
        for delegation in config.delegations:
            child = by_name.get(config.child_domain(delegation))
            if child is None:
                raise MdsFormatError(
                    f"{config.domain} delegates {delegation.label} but no file describes "
                    f"{config.child_domain(delegation)}"
                )
            if child.self_port != delegation.port:
                raise MdsFormatError(
                    f"{config.domain} delegates {delegation.label} to port {delegation.port} "
                    f"but that domain's SelfPort is {child.self_port}"
                )
    used: dict[tuple[str, int], str] = {}
    for config in configs:
        for what, ip, port in (("SelfPort", "127.0.0.1", config.self_port),
                               ("URSPort", config.urs_ip, config.urs_port)):
            owner = used.setdefault((ip, port), f"{config.domain} {what}")
            if owner != f"{config.domain} {what}":
                raise MdsFormatError(f"{config.domain} {what} {ip}:{port} clashes with {owner}")


def _parse_delegation(line: str, *, where: str) -> Delegation:
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != "@":
        raise MdsFormatError(f"{where}: expected '@ LABEL IP:PORT', got {line!r}")
    label, target = parts[1], parts[2]
    if not _LABEL.match(label):
        raise MdsFormatError(f"{where}: {label!r} is not a DNS label (a-z, 0-9, '-')")
    ip, sep, port = target.rpartition(":")
    if not sep:
        raise MdsFormatError(f"{where}: expected IP:PORT, got {target!r}")
    return Delegation(
        label=label,
        ip=str(_parse_value(ip, kind="ip", where=where)),
        port=int(_parse_value(port, kind="port", where=where)),
    )


def _parse_value(raw: str, *, kind: str, where: str) -> str | int:
    if raw != raw.strip() or not raw:
        raise MdsFormatError(f"{where}: empty value or stray spaces in {raw!r}")
    if kind in ("port", "port0"):
        if not raw.isdigit():
            raise MdsFormatError(f"{where}: {raw!r} is not a port number")
        port = int(raw)
        low = 0 if kind == "port0" else 1
        if not low <= port <= 65535 or str(port) != raw:
            raise MdsFormatError(f"{where}: port {raw} outside {low}..65535")
        return port
    if kind in ("ip", "mcast"):
        try:
            address = ipaddress.ip_address(raw)
        except ValueError:
            raise MdsFormatError(f"{where}: {raw!r} is not an IP address") from None
        if kind == "mcast" and not address.is_multicast:
            raise MdsFormatError(f"{where}: {raw} is not a multicast group")
        if str(address) != raw:
            raise MdsFormatError(f"{where}: write the address as {address}, not {raw!r}")
        return raw
    name = raw.rstrip(".").lower()
    labels = name.split(".")
    if raw != name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise MdsFormatError(
            f"{where}: {raw!r} is not a lower-case domain name without a final dot"
        )
    return name
