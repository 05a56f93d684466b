"""A live view of the MSD tree while it forms: redrawn on a terminal, else a line per change.

Polls every domain's designated MSD (found through its URS, as `mdns status` does) and
renders one compact line per domain in tree order: state, parent link, subtree count,
share of the key space, route switches. Pure rendering (`render`, `changes`) is kept
apart from the polling loop (`watch`), so it is tested without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

import aiohttp

from client.errors import ClientError
from client.status import designated_status
from msd.keyspace import KeyRange
from msd.treeview import skew, tiling_problems

CLEAR = "\x1b[H\x1b[J"  # cursor home, clear to the end of the screen


def _tree_key(name: str) -> tuple[str, ...]:
    return tuple(reversed(name.split(".")))


def share(status: Mapping[str, Any]) -> float:
    return sum(KeyRange.from_json(r).share for r in status.get("ranges", []))


def summary_line(statuses: Mapping[str, Mapping[str, Any] | None]) -> str:
    live = [s for s in statuses.values() if s]
    if not live:
        return "no designated MSD yet"
    tiles = "tile" if not tiling_problems(live) else "do not tile yet"
    switches = sum(int(s.get("route_switches", 0)) for s in live)
    roots = [s for s in live if s.get("state") == "root"]
    root_count = roots[0].get("count") if len(roots) == 1 else "-"
    return (f"{len(live)}/{len(statuses)} domains in the tree, root counts {root_count}, "
            f"ranges {tiles}, skew {skew(live):.1e}, route switches {switches}")


def render(statuses: Mapping[str, Mapping[str, Any] | None], *, header: str) -> str:
    """The compact view: a header, one line per domain in tree order, a summary."""
    names = sorted(statuses, key=_tree_key)
    top = min((name.count(".") for name in names), default=0)
    width = max((len(name) + 2 * (name.count(".") - top) for name in names), default=10)
    lines = [header, ""]
    for name in names:
        indent = "  " * (name.count(".") - top)
        status = statuses[name]
        label = (indent + name).ljust(width)
        if status is None:
            lines.append(f"  {label}  not started")
            continue
        lines.append(f"  {label}  {status.get('state', '?')!s:<8} "
                     f"count {status.get('count', '?'):>3}  owns {share(status):7.2%}  "
                     f"switches {status.get('route_switches', '?'):>3}")
    lines += ["", summary_line(statuses)]
    return "\n".join(lines)


def _signature(status: Mapping[str, Any] | None) -> tuple[Any, ...]:
    if status is None:
        return ("absent",)
    return (status.get("state"), status.get("parent"), status.get("count"),
            round(share(status), 6), status.get("route_switches"))


def changes(
    before: Mapping[str, Mapping[str, Any] | None],
    after: Mapping[str, Mapping[str, Any] | None], *, elapsed: float,
) -> list[str]:
    """One line per domain whose state, parent, count, share or switches changed."""
    lines = []
    for name in sorted(after, key=_tree_key):
        status = after[name]
        if status is None or _signature(before.get(name)) == _signature(status):
            continue
        parent = status.get("parent")
        where = f"under {parent}" if parent else "as a root"
        lines.append(f"[{elapsed:8.2f} s] {name}: {status.get('state')} {where}, "
                     f"count {status.get('count')}, owns {share(status):.2%}, "
                     f"switches {status.get('route_switches')}")
    return lines


async def poll(
    http: aiohttp.ClientSession, urs_urls: Mapping[str, str]
) -> dict[str, dict[str, Any] | None]:
    """Every domain's designated MSD's /status (None where there is none, or no answer)."""
    async def one(url: str) -> dict[str, Any] | None:
        with contextlib.suppress(ClientError, aiohttp.ClientError, TimeoutError, KeyError):
            status = await designated_status(http, url)
            if status is not None and status.get("state"):
                return status
        return None

    found = await asyncio.gather(*(one(url) for url in urs_urls.values()))
    return dict(zip(urs_urls, found, strict=True))


async def watch(
    urs_urls: Mapping[str, str], *, out: TextIO, tty: bool, stop: asyncio.Event,
    interval_s: float, header: Callable[[], str], until: asyncio.Event | None = None,
) -> dict[str, dict[str, Any] | None]:
    """Redraw (tty) or print changes (not a tty) every `interval_s` until `stop` (or `until`)
    is set; returns the last statuses seen."""
    began = time.monotonic()
    last: dict[str, dict[str, Any] | None] = dict.fromkeys(urs_urls)
    timeout = aiohttp.ClientTimeout(total=max(1.0, 4 * interval_s))
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not stop.is_set() and not (until is not None and until.is_set()):
            current = await poll(http, urs_urls)
            if tty:
                out.write(CLEAR + render(current, header=header()) + "\n")
            else:
                for line in changes(last, current, elapsed=time.monotonic() - began):
                    out.write(line + "\n")
            out.flush()
            last = current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_either(stop, until), timeout=interval_s)
    return last


async def _either(first: asyncio.Event, second: asyncio.Event | None) -> None:
    waits: Sequence[asyncio.Task[bool]] = [asyncio.ensure_future(first.wait())]
    if second is not None:
        waits = [*waits, asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
