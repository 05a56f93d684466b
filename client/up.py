"""`mdns up DIR`: run a hierarchy of `.mds` domains on loopback until Ctrl-C or SIGTERM.

With `--order` the MSDs start as the dissertation's controller started them (an order
and per-domain delays, vdns.startorder), every timer and delay divided by the time scale,
while a live view (client.treewatch) shows the tree forming.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from client.errors import ClientError
from client.register import register_with_urs
from client.treewatch import watch
from vdns.errors import VdnsError
from vdns.harness import Hierarchy, ServerLimits
from vdns.mds import load_hierarchy
from vdns.startorder import Start, numbered, schedule

log = logging.getLogger(__name__)

SAMPLES_FILE = "sessions.json"
MAX_SAMPLES = 1000


def default_data_dir(config_dir: Path) -> Path:
    """State under $MDNS_STATE_DIR, else $XDG_STATE_HOME/mdns, else ~/.local/state/mdns.

    The folder is named after the config directory plus a short hash of its absolute
    path, so `configs/scenario1` keeps its records across runs and never shares them
    with another checkout's `scenario1`.
    """
    base = os.environ.get("MDNS_STATE_DIR")
    if base is None:
        xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        base = str(Path(xdg) / "mdns")
    absolute = config_dir.resolve()
    digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:8]
    return Path(base) / f"{absolute.name}-{digest}"


async def run_up(
    config_dir: Path,
    *,
    data_dir: Path | None,
    multicast_mode: str,
    ephemeral_ports: bool,
    register_samples: bool,
    ready_timeout: float,
    out: TextIO,
    msds: int = 0,
    multicast_blocked: Sequence[str] = (),
    interface: str = "127.0.0.1",
    heartbeat_s: float = 1.0,
    alpha: float = 0.1,
    beta: float = 0.1,
    refresh_every: int = 10,
    database_url: str | None = None,
    urs_replicas: int = 1,
    key_trust: str = "tofu",
    stop: asyncio.Event | None = None,
    order: Sequence[int] | None = None,
    delays: Sequence[float] | None = None,
    time_scale: float = 1.0,
    rate_limits: bool = True,
) -> None:
    """Start every domain, wait until all answer, register the samples, then run until stopped.

    With `order` (and `delays`, indexed by domain number) the MSDs start one by one as the
    dissertation's controller started them; `time_scale` divides the heartbeat (so every
    protocol timer) and the delays."""
    configs = load_hierarchy(config_dir)
    starts: list[Start] = []
    if order is not None:
        if not msds:
            raise ClientError("--order starts MSD daemons: it needs --msds 1 or more")
        starts = schedule(numbered(config_dir), order=order, delays=delays or (),
                          time_scale=time_scale)
    samples_path = config_dir / SAMPLES_FILE
    # Read (and reject) the samples before anything starts listening.
    samples = _load_samples(samples_path) if register_samples and samples_path.exists() else []
    data_dir = data_dir or default_data_dir(config_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    hierarchy = Hierarchy(configs, data_dir=data_dir, multicast_mode=multicast_mode,
                          ephemeral_ports=ephemeral_ports, msds=msds,
                          heartbeat_s=heartbeat_s / time_scale,
                          multicast_blocked=multicast_blocked, interface=interface,
                          alpha=alpha, beta=beta, refresh_every=refresh_every,
                          database_url=database_url,
                          urs_replicas=urs_replicas, key_trust=key_trust,
                          limits=None if rate_limits else ServerLimits.unlimited())
    stop = stop or _stop_on_signals()
    try:
        await hierarchy.start(msds_now=not starts)
        await hierarchy.wait_ready(timeout=ready_timeout, designated=not starts)
        if starts:
            await _run_order(hierarchy, starts, samples=samples, data_dir=data_dir, out=out,
                             stop=stop, time_scale=time_scale, ready_timeout=ready_timeout)
        else:
            if msds:
                await hierarchy.wait_settled(timeout=ready_timeout)
            registered = await _register_samples(hierarchy, samples, data_dir=data_dir, out=out)
            _print_summary(hierarchy, registered, data_dir=data_dir, out=out)
            await stop.wait()
        print("\nmdns up: stopping ...", file=out, flush=True)
    finally:
        await hierarchy.close()
    print("mdns up: stopped cleanly", file=out, flush=True)


async def _run_order(
    hierarchy: Hierarchy, starts: list[Start], *, samples: list[tuple[str, dict[str, Any]]],
    data_dir: Path, out: TextIO, stop: asyncio.Event, time_scale: float, ready_timeout: float,
) -> None:
    """Start the MSDs in order under the live view; register the samples once the tree has
    settled; keep the view until stopped, then print the usual summary."""
    tty = out.isatty()
    began = time.monotonic()
    started: list[Start] = []
    order = ",".join(str(s.number) for s in starts)

    def header() -> str:
        elapsed = time.monotonic() - began
        upcoming = [s for s in starts if s not in started]
        nxt = (f"next: domain {upcoming[0].number} in {max(0.0, upcoming[0].at - elapsed):.1f} s"
               if upcoming else "all started")
        return (f"mdns up: start order {order}, time scale {time_scale:g} "
                f"(heartbeat {hierarchy.heartbeat_s * 1000:.0f} ms)\n{elapsed:.1f} s = "
                f"{elapsed * time_scale:.0f} s nominal; {len(started)}/{len(starts)} started, "
                f"{nxt}; Ctrl-C stops")

    def on_start(start: Start) -> None:
        started.append(start)
        if not tty:
            print(f"[{time.monotonic() - began:8.2f} s] started domain {start.number} "
                  f"({start.config.domain})", file=out, flush=True)

    urls = {name: d.urs_url for name, d in hierarchy.domains.items()}
    interval = max(0.2, hierarchy.heartbeat_s)
    if not tty:
        print(header(), file=out, flush=True)
    viewer = asyncio.create_task(watch(urls, out=out, tty=tty, stop=stop, interval_s=interval,
                                       header=header))
    try:
        scheduler = asyncio.create_task(hierarchy.start_in_order(starts, on_start=on_start))
        await asyncio.wait([scheduler, asyncio.ensure_future(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        if not scheduler.done():
            scheduler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scheduler
            return
        scheduler.result()
        registered: list[str] = []
        if samples:
            try:
                await hierarchy.wait_settled(timeout=ready_timeout + 60 * hierarchy.heartbeat_s)
                registered = await _register_samples(hierarchy, samples, data_dir=data_dir,
                                                     out=io.StringIO() if tty else out)
            except VdnsError as exc:
                print(f"mdns up: samples not registered: {exc}", file=out, flush=True)
        await stop.wait()
        await viewer
        _print_summary(hierarchy, registered, data_dir=data_dir, out=out)
    finally:
        viewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await viewer


def _stop_on_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets; the handlers do nothing else."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def _load_samples(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """DIR/sessions.json: a list of {"domain": ..., "session": {...}}."""
    try:
        samples = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClientError(f"{path}: not a readable JSON list of samples ({exc})") from None
    if not isinstance(samples, list) or len(samples) > MAX_SAMPLES:
        raise ClientError(f"{path}: expected a JSON list of at most {MAX_SAMPLES} samples")
    return [_sample(sample, where=f"{path} sample {n}") for n, sample in enumerate(samples, 1)]


def _load_tokens(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with contextlib.suppress(OSError, ValueError, TypeError):
        return dict(json.loads(path.read_text()))
    return {}


async def _register_samples(
    hierarchy: Hierarchy,
    samples: list[tuple[str, dict[str, Any]]],
    *,
    data_dir: Path,
    out: TextIO,
) -> list[str]:
    if not samples:
        return []
    tokens_path = data_dir / "tokens.json"
    tokens = _load_tokens(tokens_path)
    uris: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for domain, session in samples:
            running = hierarchy.domains.get(domain)
            if running is None:
                raise ClientError(f"{SAMPLES_FILE}: no domain {domain!r} in this hierarchy")
            result = await register_with_urs(http, base_url=running.urs_url, domain=domain,
                                             session=session)
            if hierarchy.msds:
                await _index_at_msd(http, urs_url=running.urs_url, session_id=session["id"])
            if result.token is not None:
                tokens[result.uri] = result.token
            state = "registered" if result.created else "already registered"
            print(f"  {state:>18}  {result.uri}", file=out)
            uris.append(result.uri)
    _write_private(tokens_path, json.dumps(tokens, indent=2) + "\n")
    return uris


async def _index_at_msd(http: aiohttp.ClientSession, *, urs_url: str, session_id: str) -> None:
    """Have the domain's designated MSD index the session (its URS holds it already)."""
    async with http.get(f"{urs_url}/bootstrap/designated") as response:
        designated = (await response.json()).get("designated")
    if not designated:
        raise ClientError(f"{urs_url} names no designated MSD to index {session_id!r} at")
    url = f"http://{designated['address']}:{designated['port']}/sessions"
    async with http.post(url, json={"id": session_id}) as response:
        if response.status != 200:
            raise ClientError(f"the MSD at {url} refused {session_id!r}: {await response.text()}")


def _sample(sample: Any, *, where: str) -> tuple[str, dict[str, Any]]:
    if not (isinstance(sample, dict) and isinstance(sample.get("domain"), str)
            and isinstance(sample.get("session"), dict)):
        raise ClientError(f'{where}: expected {{"domain": "...", "session": {{...}}}}')
    return sample["domain"], sample["session"]


def _write_private(path: Path, text: str) -> None:
    """Owner tokens are secrets: write them mode 0600, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    tmp.replace(path)


def _print_summary(
    hierarchy: Hierarchy, registered: list[str], *, data_dir: Path, out: TextIO
) -> None:
    domains = sorted(hierarchy.domains.values(), key=lambda d: (d.config.domain.count("."),
                                                                d.config.domain))
    width = max(len(d.config.domain) for d in domains)
    root = hierarchy.root
    dns = f"127.0.0.1:{root.config.self_port}"
    msds = (f", {hierarchy.msds} MSD daemon{'s' if hierarchy.msds > 1 else ''} each"
            if hierarchy.msds else "")
    print(f"\nmdns up: {len(domains)} domains answering{msds} (data in {data_dir})\n", file=out)
    print(f"  {'domain'.ljust(width)}  {'DNS':<16}  URS", file=out)
    for d in domains:
        urs = ", ".join(r.url for r in d.replicas) or d.urs_url
        print(f"  {d.config.domain.ljust(width)}  127.0.0.1:{d.config.self_port:<6}  {urs}",
              file=out)
    deepest = max(domains, key=lambda d: d.config.domain.count("."))
    example = registered[0] if registered else None
    mdns = _program_name()
    print("\nTry, in another terminal:", file=out)
    print(f"  dig @127.0.0.1 -p {root.config.self_port} {deepest.config.mcast_name}", file=out)
    if example:
        print(f"  {mdns} resolve {example} --dns {dns}", file=out)
        print(f"  {mdns} resolve {example} --dns {dns} --sdp session.sdp", file=out)
    else:
        print(f"  curl -X POST {deepest.urs_url}/sessions -H 'Content-Type: application/json' "
              "-d '{\"id\": \"demo\", \"title\": \"Demo\", \"keywords\": [\"demo\"], "
              "\"group\": \"239.255.0.1\", \"port\": 5004}'", file=out)
        print(f"  {mdns} resolve {deepest.config.mcast_name}/demo --dns {dns}", file=out)
    print(f"  curl {deepest.urs_url}/bootstrap", file=out)
    if hierarchy.msds:
        print(f"  {mdns} status --domain {deepest.config.domain} --dns {dns}", file=out)
    if registered:
        print(f"Owner tokens (for PUT): {data_dir / 'tokens.json'}", file=out)
    print("Stop with Ctrl-C.", file=out, flush=True)


def _program_name() -> str:
    """How the user can call `mdns` again: bare when it is on PATH, else the path they used."""
    invoked = Path(sys.argv[0])
    if invoked.name != "mdns":
        return "mdns"
    found = shutil.which("mdns")
    if found and Path(found).resolve() == invoked.resolve():
        return "mdns"
    try:
        return str(invoked.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(invoked)
