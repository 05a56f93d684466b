"""What Linux's /proc says about a local process: resident memory, CPU time, who listens on a port.

`mdns bench load` reads the target MSD and URS processes here. The parsers take text and
return data; only the `read_*` and `listening_pid` functions touch /proc.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

PROC = Path("/proc")
STATUS_MAX_BYTES = 64 * 1024  # /proc/<pid>/status is ~1.5 KiB
STAT_MAX_BYTES = 4096
TCP_LISTEN = "0A"  # the state column of /proc/net/tcp for LISTEN


class ProcError(OSError):
    """A process or its /proc entry is not readable (gone, or another user's)."""


@dataclasses.dataclass(frozen=True)
class Usage:
    """A process's resident memory and CPU time at one moment."""

    rss_kb: int
    cpu_s: float


def parse_rss_kb(status: str) -> int:
    """VmRSS in KiB from the text of /proc/<pid>/status."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1])
    raise ValueError("no VmRSS line (a kernel thread, or a zombie)")


def parse_cpu_s(stat: str, *, ticks_per_s: int) -> float:
    """utime + stime in seconds from the text of /proc/<pid>/stat."""
    # The command name (field 2) is in parentheses and may hold spaces; count after it.
    _, close, rest = stat.rpartition(")")
    fields = rest.split()
    if not close or len(fields) < 13:
        raise ValueError("not a /proc/<pid>/stat line")
    return (int(fields[11]) + int(fields[12])) / ticks_per_s


def listening_inodes(table: str, *, port: int) -> set[str]:
    """Socket inodes listening on `port` in the text of /proc/net/tcp or tcp6."""
    inodes: set[str] = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_LISTEN:
            continue
        _, _, port_hex = fields[1].rpartition(":")
        if int(port_hex, 16) == port:
            inodes.add(fields[9])
    return inodes


def read_usage(pid: int) -> Usage:
    """Resident memory and CPU time of a local process (ProcError if not readable)."""
    try:
        status = _read(PROC / str(pid) / "status", STATUS_MAX_BYTES)
        stat = _read(PROC / str(pid) / "stat", STAT_MAX_BYTES)
        return Usage(rss_kb=parse_rss_kb(status),
                     cpu_s=parse_cpu_s(stat, ticks_per_s=os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError) as exc:
        raise ProcError(f"cannot read process {pid}: {exc}") from None


def listening_pid(port: int) -> int | None:
    """The local process listening on TCP `port`, if this user may see it; else None."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            inodes |= listening_inodes((PROC / "net" / table).read_text(), port=port)
        except OSError:
            continue
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    return int(entry.name)
        except OSError:
            continue  # gone meanwhile, or another user's
    return None


def _read(path: Path, limit: int) -> str:
    with path.open("rb") as file:
        return file.read(limit).decode("utf-8", "replace")
