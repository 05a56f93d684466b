"""The dissertation's start orders: which domain starts when, as a plain schedule.

A start order lists domain numbers (the `NN` of `domainNN-LABEL.mds`); the delays are
indexed by domain number: after starting domain `d`, the controller waits `delays[d-1]`
seconds before starting the next. `schedule` turns both into (start time, number) pairs,
divided by a time scale, so the same schedule drives real daemons (`mdns up --order`),
the stability experiment and the virtual-clock simulator (`vdns.netsim.run_schedule`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path

from vdns.errors import VdnsError
from vdns.mds import DomainConfig, load_hierarchy, load_mds

# The dissertation's two start orders of chapter 5 (thesis/README.md).
ORDERS: dict[int, tuple[tuple[int, ...], tuple[float, ...]]] = {
    1: ((10, 4, 5, 6, 1, 2, 7, 8, 9, 3), (5, 5, 5, 10, 30, 600, 5, 5, 300, 30)),
    2: ((10, 1, 4, 5, 2, 3, 6, 7, 8, 9), (5, 5, 5, 5, 5, 540, 5, 5, 5, 5)),
}
MAX_DELAY_S = 86_400.0
_NUMBERED = re.compile(r"domain(\d{1,4})-.*\.mds$")


@dataclasses.dataclass(frozen=True)
class Start:
    """One domain's start: `at` seconds (already divided by the time scale) after the first."""

    at: float
    number: int
    config: DomainConfig


def parse_numbers(text: str, *, what: str) -> tuple[float, ...]:
    """'10,4,5' → (10.0, 4.0, 5.0); a VdnsError naming the option on anything else."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise VdnsError(f"{what} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise VdnsError(f"{what}: no numbers given")
    return values


def numbered(directory: Path) -> dict[int, DomainConfig]:
    """The domains of a hierarchy by their number (`domainNN-…mds`), checked as a whole."""
    configs = {c.domain: c for c in load_hierarchy(directory)}
    numbers: dict[int, DomainConfig] = {}
    for path in sorted(directory.glob("*.mds")):
        match = _NUMBERED.match(path.name)
        if match is None:
            raise VdnsError(f"{path}: a start order needs files named domainNN-LABEL.mds")
        number = int(match.group(1))
        if number in numbers:
            raise VdnsError(f"{path}: domain number {number} is taken twice")
        numbers[number] = configs[load_mds(path).domain]
    return numbers


def schedule(
    domains: dict[int, DomainConfig], *, order: Sequence[int], delays: Sequence[float],
    time_scale: float = 1.0,
) -> list[Start]:
    """Start times for `order`: after domain d, wait delays[d-1] (both divided by time_scale)."""
    if time_scale <= 0:
        raise VdnsError("--time-scale must be more than 0")
    if sorted(order) != sorted(domains) or len(set(order)) != len(order):
        raise VdnsError(f"--order must name every domain once: {sorted(domains)}, "
                        f"got {list(order)}")
    if len(delays) < max(order):
        raise VdnsError(f"--delays needs a delay for every domain number up to {max(order)}, "
                        f"got {len(delays)}")
    if any(not 0 <= d <= MAX_DELAY_S for d in delays):
        raise VdnsError(f"--delays must be 0..{MAX_DELAY_S:g} seconds each")
    starts: list[Start] = []
    at = 0.0
    for number in order:
        starts.append(Start(at=at, number=number, config=domains[number]))
        at += delays[number - 1] / time_scale
    return starts


def last_start(starts: Sequence[Start]) -> float:
    return max((s.at for s in starts), default=0.0)
