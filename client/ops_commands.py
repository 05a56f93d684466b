"""The operator's commands: `mdns db` (schema migrations), `mdns zone export`, and the single
servers `mdns urs` and `mdns dns` that the systemd units run (docs/deploy.md)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from client.errors import ClientError
from client.serve_commands import add_parsers as add_server_parsers
from client.serve_commands import database_url
from client.serve_commands import run as run_server

if TYPE_CHECKING:
    from msd.migrate import Schema

SCHEMAS = ("urs", "msd")
COMMANDS = ("db", "zone", "urs", "dns")  # what cli.main hands to run()


def add_parsers(commands: Any) -> None:
    db = commands.add_parser(
        "db", help="the URS and MSD database schemas: show or upgrade their revision",
        description="Every URS and MSD upgrades its database to the newest schema revision "
                    "when it starts, under a lock, so processes starting together are safe. "
                    "These commands do it by hand, e.g. before a rolling restart "
                    "(docs/deploy.md, Upgrades).")
    actions = db.add_subparsers(dest="db_action", metavar="ACTION", required=True)
    for name, text in (("current", "print each schema's revision in the database"),
                       ("upgrade", "upgrade each schema to the newest revision (or --revision)")):
        action = actions.add_parser(name, help=text, description=text)
        where = action.add_mutually_exclusive_group(required=True)
        where.add_argument("--database", metavar="URL",
                           help="an SQLAlchemy async URL, e.g. sqlite+aiosqlite:////var/lib/"
                                "mdns/urs.sqlite or postgresql+asyncpg://mdns@db/mdns")
        where.add_argument("--database-file", type=Path, metavar="FILE",
                           help="a file holding the URL (it may hold a password)")
        action.add_argument("--schema", choices=(*SCHEMAS, "all"), default="all",
                            help="which store's tables (default: all; the URS and MSD "
                                 "schemas may share one database)")
        if name == "upgrade":
            action.add_argument("--revision", default="head",
                                help="the revision to reach (default head)")

    zone = commands.add_parser(
        "zone", help="zone files for a real DNS server (nsd, knot, BIND) from .mds files")
    zone_actions = zone.add_subparsers(dest="zone_action", metavar="ACTION", required=True)
    export = zone_actions.add_parser(
        "export", help="write <domain>.zone for every domain, and nsd-zones.conf",
        description="Write one master file per domain of the .mds files: SOA, NS, "
                    "mcast.<domain> (A/AAAA of the URS), the _mdns-urs._tcp SRV record with "
                    "its port, and the delegations with glue; plus nsd-zones.conf, the "
                    "zone: clauses for nsd (docs/deploy.md).")
    export.add_argument("directory", type=Path, metavar="DIR", help="where to write them")
    export.add_argument("--config", type=Path, required=True, metavar="MDS_DIR",
                        help="a directory of .mds files, e.g. configs/demo")
    export.add_argument("--ns-address", default="127.0.0.1", metavar="ADDR",
                        help="the root domain's own name server address (the others come "
                             "from their parents' @ lines; default 127.0.0.1)")
    export.add_argument("--urs-replica", action="append", default=[],
                        metavar="DOMAIN=HOST:PORT",
                        help="a URS replica of DOMAIN (repeatable); each gets rN.mcast.DOMAIN "
                             "and an SRV record of equal priority")
    add_server_parsers(commands)


def run(args: argparse.Namespace, *, out: TextIO) -> int:
    if args.command == "db":
        return asyncio.run(_db(args, out=out))
    if args.command == "zone":
        return _zone_export(args, out=out)
    if args.command in ("urs", "dns"):
        return run_server(args)
    raise AssertionError(f"unhandled command {args.command}")


def schemas(name: str) -> list[Schema]:
    """The schemas a `--schema` choice names (imported late: each pulls in its store)."""
    from msd.store import SCHEMA as MSD_SCHEMA
    from urs.store import SCHEMA as URS_SCHEMA

    chosen = {"urs": [URS_SCHEMA], "msd": [MSD_SCHEMA]}
    return chosen.get(name, [URS_SCHEMA, MSD_SCHEMA])


async def _db(args: argparse.Namespace, *, out: TextIO) -> int:
    from msd.database import DatabaseError, open_engine
    from msd.migrate import MigrationError, current, migrate

    url = database_url(args)
    assert url is not None  # argparse requires one of the two
    try:
        engine = open_engine(url, synchronous="FULL")
    except DatabaseError as exc:
        raise ClientError(str(exc)) from None
    try:
        for schema in schemas(args.schema):
            head = ", ".join(schema.heads())
            try:
                if args.db_action == "upgrade":
                    before, after = await migrate(engine, schema, revision=args.revision)
                    change = "unchanged" if before == after else f"from {before or 'nothing'}"
                    print(f"{schema.name}: {after} ({change}; head {head})", file=out)
                else:
                    revision = await current(engine, schema)
                    state = "head" if revision == head else f"head is {head}"
                    print(f"{schema.name}: {revision or 'none'} ({state})", file=out)
            except (MigrationError, OSError) as exc:
                raise ClientError(f"{schema.name} schema: {exc}") from None
            except Exception as exc:  # the driver's own errors: one line, not a traceback
                if type(exc).__module__.startswith(("sqlalchemy", "asyncpg", "sqlite3")):
                    raise ClientError(f"{schema.name} schema: {type(exc).__name__}: {exc}") \
                        from None
                raise
    finally:
        await engine.dispose()
    return 0



def _zone_export(args: argparse.Namespace, *, out: TextIO) -> int:
    from vdns.mds import load_hierarchy
    from vdns.replicas import Replica
    from vdns.zonefile import export_zones

    replicas: dict[str, list[Replica]] = {}
    for text in args.urs_replica:
        domain, _, where = text.partition("=")
        host, _, port = where.rpartition(":")
        if not (domain and host and port.isdigit() and 1 <= int(port) <= 65535):
            raise ClientError(f"--urs-replica {text!r}: expected DOMAIN=HOST:PORT")
        replicas.setdefault(domain.rstrip(".").lower(), []).append(
            Replica(host.strip("[]"), int(port)))
    try:
        written = export_zones(load_hierarchy(args.config), args.directory,
                               root_ns_address=args.ns_address, replicas=replicas)
    except OSError as exc:
        raise ClientError(f"cannot write to {args.directory}: {exc.strerror}") from None
    for path in written:
        print(path, file=out)
    return 0
