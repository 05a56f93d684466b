"""`mdns urs` and `mdns dns`: one domain's URS, or its DNS server, as a long-running service.

What the systemd units in deploy/systemd/ run (docs/deploy.md). Each reads the domain's
`.mds` file, takes its secrets from files (systemd's credentials), serves until SIGTERM or
SIGINT (the handlers only set an event) and then shuts down cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
from pathlib import Path
from typing import Any

from client.errors import ClientError
from client.eventloop import serve

log = logging.getLogger(__name__)


def add_parsers(commands: Any) -> None:
    urs = commands.add_parser(
        "urs", help="run one domain's URS (one replica) until stopped",
        description="Serve the URS of the domain a .mds file describes: its sessions, "
                    "bootstrap and health. Replicas of one domain run this with the same "
                    "--database. Stops cleanly on SIGTERM or SIGINT.")
    urs.add_argument("--config", type=Path, required=True, metavar="FILE",
                     help="the domain's .mds file")
    add_database_options(urs)
    urs.add_argument("--data-dir", type=Path, metavar="DIR",
                     help="where the default SQLite database lives (default: "
                          "$STATE_DIRECTORY, which systemd's StateDirectory= sets, else .)")
    urs.add_argument("--msd-key-file", type=Path, metavar="FILE",
                     help="the domain's MSD key (without it, MSDs cannot announce themselves)")
    urs.add_argument("--public-key-file", type=Path, metavar="FILE",
                     help="the domain's public key: the `DOMAIN KEY` line `mdns keys generate` "
                          "writes to FILE.pub; published to the domain's MSDs and child "
                          "domains (without it, they learn the key on first use)")
    urs.add_argument("--host", help="address to listen on (default: the file's URSIP)")
    urs.add_argument("--port", type=int, help="port to listen on (default: the file's URSPort)")
    urs.add_argument("--multicast-mode", choices=("asm", "ssm", "none"), default="asm",
                     help="what the URS tells the MSDs about multicast (default asm)")

    dns = commands.add_parser(
        "dns", help="run one domain's DNS server (vdns) until stopped",
        description="Serve the zone of the domain a .mds file describes (mcast.<domain>, "
                    "the URS SRV record, delegations), forwarding along the hierarchy. With "
                    "--urs-replica, it health-checks those URS replicas and answers with the "
                    "live ones, least loaded first. Stops cleanly on SIGTERM or SIGINT.")
    dns.add_argument("--config", type=Path, required=True, metavar="FILE",
                     help="the domain's .mds file")
    dns.add_argument("--host", default="127.0.0.1", help="address to listen on")
    dns.add_argument("--port", type=int, help="port to listen on (default: the file's SelfPort)")
    dns.add_argument("--ns-address", metavar="ADDR",
                     help="the address published for ns.<domain> (default: --host)")
    dns.add_argument("--urs-replica", action="append", default=[], metavar="HOST:PORT",
                     help="a URS replica to health-check and publish (repeatable)")
    dns.add_argument("--health-interval", type=float, default=1.0, metavar="SECONDS",
                     help="how often each replica's /health is asked (default 1)")


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """--database URL, or --database-file FILE holding it (a URL with a password is a secret)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--database", metavar="URL",
                       help="an SQLAlchemy async URL, e.g. postgresql+asyncpg://mdns@db/ufl_edu "
                            "(default: SQLite in the data directory)")
    where.add_argument("--database-file", type=Path, metavar="FILE",
                       help="a file holding the URL (e.g. a systemd credential)")


def database_url(args: argparse.Namespace) -> str | None:
    """The URL from --database or --database-file, or None."""
    if getattr(args, "database_file", None) is not None:
        try:
            url = args.database_file.read_text().strip()
        except OSError as exc:
            raise ClientError(f"--database-file {args.database_file}: {exc.strerror}") from None
        if not url:
            raise ClientError(f"--database-file {args.database_file} is empty")
        return str(url)
    value = getattr(args, "database", None)
    return str(value) if value else None


def run(args: argparse.Namespace) -> int:
    if args.command == "urs":
        serve(_urs(args))
    else:
        serve(_dns(args))
    return 0


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


def _config(path: Path) -> Any:
    from vdns.mds import load_mds

    return load_mds(path)


async def _urs(args: argparse.Namespace) -> None:
    from urs.app import serve
    from urs.settings import UrsSettings

    config = _config(args.config)
    key = None
    if args.msd_key_file is not None:
        try:
            key = args.msd_key_file.read_text().strip()
        except OSError as exc:
            raise ClientError(f"--msd-key-file {args.msd_key_file}: {exc.strerror}") from None
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    data_dir = args.data_dir or Path(state or ".")
    public_key = None
    if args.public_key_file is not None:
        public_key = _public_key(args.public_key_file, domain=config.domain)
    settings = UrsSettings.from_mds(config, data_dir=data_dir, multicast_mode=args.multicast_mode,
                                    msd_key=key, database_url=database_url(args) or "",
                                    public_key=public_key)
    settings = dataclasses.replace(
        settings, host=args.host or settings.host,
        port=settings.port if args.port is None else args.port)
    stop = _stop_on_signals()
    log.info("URS of %s starting on %s:%d", settings.domain, settings.host, settings.port)
    try:
        await serve(settings, stop=stop)
    except OSError as exc:
        raise ClientError(f"URS of {settings.domain}: cannot listen on {settings.host}:"
                          f"{settings.port}: {exc.strerror}") from None


def _public_key(path: Path, *, domain: str) -> str:
    """The domain's public key (base64) from a `DOMAIN KEY` file."""
    from msd.keys import KeyFileError, key_text, read_key_file

    try:
        keys = read_key_file(path)
    except KeyFileError as exc:
        raise ClientError(f"--public-key-file: {exc}") from None
    if domain not in keys:
        raise ClientError(f"--public-key-file {path} has no key for {domain} (expected the "
                          f"line `{domain} KEY` that `mdns keys generate` writes)")
    return key_text(keys[domain])


async def _dns(args: argparse.Namespace) -> None:
    from vdns.replicas import Replica
    from vdns.server import DnsServer

    config = _config(args.config)
    if args.port is not None:
        config = dataclasses.replace(config, self_port=args.port)
    replicas = []
    for text in args.urs_replica:
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ClientError(f"--urs-replica {text!r}: expected HOST:PORT")
        replicas.append(Replica(host.strip("[]"), int(port)))
    server = DnsServer(config, host=args.host, ns_address=args.ns_address,
                       urs_replicas=replicas, health_interval_s=args.health_interval)
    stop = _stop_on_signals()
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.close()
