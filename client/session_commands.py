"""`mdns register`, `mdns search` and `mdns open`: the session commands of the client."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from pydantic import ValidationError

from client.config import HOME_ENV, RESOLV_CONF_ENV, config_path, home_domain, load_config
from client.errors import ClientError
from client.register import keep_alive, register_everywhere
from client.resolve import resolve
from client.search import SearchClient
from client.uri import parse_uri
from msd.matching import Hit
from msd.query import GRAMMAR
from msd.schema import Session, SessionRecord, field_errors
from urs.locate import parse_dns_server
from urs.playlist import m3u_playlist, player_argv

LIST_FIELDS = {"keywords"}
NUMBER_FIELDS = {"port": int, "fallback_port": int, "ttl": int, "lat": float, "lon": float}


def add_parsers(commands: Any) -> None:
    register = commands.add_parser(
        "register", help="register a session with its domain's URS and MSD in one step",
        description="Register a session: the domain's URS gives it its URI and an owner "
                    "token, then the designated MSD indexes it (and routes its keywords if "
                    "its scope is global). Fields come from a JSON FILE, flags, or both "
                    "(flags win). With --token, an existing session is updated instead.")
    register.add_argument("file", nargs="?", type=Path, metavar="FILE",
                          help="a JSON object with the session's fields (docs/schema.md)")
    register.add_argument("--domain", required=True, help="the domain to register in")
    register.add_argument("--dns", metavar="HOST:PORT", help="DNS server to find the domain")
    register.add_argument("--token", help="the owner token, to update an existing session")
    register.add_argument("--wait", action="store_true",
                          help="wait until every keyword record reached its owner (and its "
                               "shadow's) and list them; by default the MSD routes them in "
                               "the background and the command returns at once")
    register.add_argument("--keep-alive", action="store_true",
                          help="refresh the session every ttl/3 seconds until stopped")
    register.add_argument("--json", action="store_true", help="print the result as JSON")
    for name in Session.model_fields:
        flag = "--" + name.replace("_", "-")
        register.add_argument(flag, dest=f"field_{name}", metavar=name.upper(),
                              help="comma-separated" if name in LIST_FIELDS else None)

    search = commands.add_parser(
        "search", help="search the directory: keywords, AND/OR/NOT, near:, scope: ...",
        description="Search every domain's global sessions and your home domain's own ones.",
        epilog=GRAMMAR, formatter_class=argparse.RawDescriptionHelpFormatter)
    search.add_argument("query", help='e.g. "jazz near:29.6,-82.3"')
    search.add_argument("--home", help=f"your home domain, whose MSD you ask (default: "
                        f"${HOME_ENV}, then \"home\" in $XDG_CONFIG_HOME/mdns/client.json "
                        "(~/.config/mdns/client.json), then the host's DNS search domain, "
                        f"from /etc/resolv.conf or the file ${RESOLV_CONF_ENV} names)")
    search.add_argument("--domain", help="search only this domain's sessions")
    search.add_argument("--dns", metavar="HOST:PORT", help="DNS server to find the domains")
    output = search.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the sessions as JSON")
    output.add_argument("--m3u", "--m3u8", action="store_true", dest="m3u",
                        help="print an extended M3U playlist (UTF-8, i.e. M3U8): #EXTINF "
                             "with the title, rtp:// or udp:// URLs, source@ for SSM")

    open_cmd = commands.add_parser(
        "open", help="open a session's stream in its preferred player (or print the command)")
    open_cmd.add_argument("uri", help="mcast.<domain>/<id>")
    open_cmd.add_argument("--dns", metavar="HOST:PORT")
    open_cmd.add_argument("--print", action="store_true", dest="print_only",
                          help="only print the command line")


def run(args: argparse.Namespace, *, out: TextIO) -> int:
    if args.command == "register":
        return asyncio.run(_register(args, out=out))
    if args.command == "search":
        return asyncio.run(_search(args, out=out))
    return asyncio.run(_open(args, out=out))


# --- register --------------------------------------------------------------------------------

def session_from(args: argparse.Namespace) -> dict[str, Any]:
    """The session's fields from FILE and flags, checked against the schema here first."""
    session: dict[str, Any] = {}
    if args.file is not None:
        try:
            session = json.loads(args.file.read_text())
        except (OSError, ValueError) as exc:
            raise ClientError(f"{args.file}: not a readable JSON object ({exc})") from None
        if not isinstance(session, dict):
            raise ClientError(f"{args.file}: expected a JSON object of session fields")
    for name in Session.model_fields:
        value = getattr(args, f"field_{name}")
        if value is None:
            continue
        if name in LIST_FIELDS:
            session[name] = [part.strip() for part in value.split(",") if part.strip()]
        elif name in NUMBER_FIELDS:
            try:
                session[name] = NUMBER_FIELDS[name](value)
            except ValueError:
                raise ClientError(f"--{name.replace('_', '-')} {value!r} is not a number") \
                    from None
        else:
            session[name] = value
    try:
        Session.model_validate(session)
    except ValidationError as exc:
        problems = "; ".join(f"{e.field}: {e.message}" for e in field_errors(exc))
        raise ClientError(f"the session is not valid: {problems}") from None
    return session


async def _register(args: argparse.Namespace, *, out: TextIO) -> int:
    session = session_from(args)
    dns_server = parse_dns_server(args.dns) if args.dns else None
    token = args.token
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        registration, answer = await register_everywhere(
            http, domain=args.domain, session=session, dns_server=dns_server, token=token,
            wait=args.wait)
        token = registration.token or token
        routed = answer.get("routed", [])
        if args.json:
            print(json.dumps({"uri": registration.uri, "token": token, "routed": routed}),
                  file=out)
        else:
            verb = "registered" if registration.created else "updated"
            print(f"{verb} {registration.uri}", file=out)
            if registration.created:
                print(f"owner token: {token}  (keep it: --token updates the session)", file=out)
            if routed == "pending":
                print("keyword records: the MSD is routing them to their owners "
                      "(--wait shows where they went)", file=out)
            elif routed:
                failed = [r for r in routed if "error" in r]
                print(f"keyword records routed: {len(routed) - len(failed)} of {len(routed)}"
                      + (f" ({len(failed)} the MSD retries)" if failed else ""), file=out)
        if not args.keep_alive:
            return 0
        if token is None:  # register_everywhere refuses an existing session without one
            raise ClientError(f"no owner token for {registration.uri}; give --token")
        interval = Session.model_validate(session).ttl / 3  # validated: "ttl" may be text
        print(f"keeping {registration.uri} alive every {interval:.1f} s; Ctrl-C stops",
              file=out, flush=True)
        await keep_alive(http, domain=args.domain, session=session, token=token,
                         dns_server=dns_server, interval_s=interval,
                         report=lambda line: print(f"mdns: {line}", file=sys.stderr,
                                                   flush=True))


# --- search ----------------------------------------------------------------------------------

async def _search(args: argparse.Namespace, *, out: TextIO) -> int:
    dns_text = args.dns or load_config(config_path()).get("dns")
    dns_server = parse_dns_server(dns_text) if dns_text else None
    home = args.domain or home_domain(args.home)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        client = SearchClient(home=home, dns_server=dns_server, http=http)
        if args.domain:
            hits = await client.search_domain(args.query)
        else:
            hits = await client.search(args.query)
    if args.json:
        print(json.dumps([_hit_json(hit) for hit in hits], indent=2), file=out)
    elif args.m3u:
        out.write(m3u(hits))
    else:
        print(format_hits(hits), file=out)
    return 0


def _hit_json(hit: Hit[SessionRecord]) -> dict[str, Any]:
    data = hit.session.model_dump(mode="json")
    if hit.distance_km is not None:
        data["distance_km"] = round(hit.distance_km, 3)
    return data


def m3u(hits: list[Hit[SessionRecord]]) -> str:
    """The hits as an M3U playlist (UTF-8, so also M3U8), each titled with its mDNS URI."""
    return m3u_playlist((hit.session for hit in hits), with_uri=True)


def format_hits(hits: list[Hit[SessionRecord]]) -> str:
    if not hits:
        return "no sessions found"
    rows = [("title", "uri", "group:port", "source", "distance", "domain")]
    for hit in hits:
        s = hit.session
        distance = f"{hit.distance_km:.1f} km" if hit.distance_km is not None else ""
        group = f"[{s.group}]" if ":" in s.group else s.group
        rows.append((s.title[:40], s.uri, f"{group}:{s.port}", s.source or "", distance,
                     s.domain))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


# --- open ------------------------------------------------------------------------------------

async def _open(args: argparse.Namespace, *, out: TextIO) -> int:
    dns_server = parse_dns_server(args.dns) if args.dns else None
    resolved = await resolve(parse_uri(args.uri), dns_server=dns_server)
    record = resolved.record
    command = player_argv(record)
    player = command[0]
    if args.print_only or shutil.which(player) is None:
        print(shlex.join(command), file=out)
        if not args.print_only:
            print(f"({player} is not installed here; run the line above where it is)",
                  file=sys.stderr)
        return 0
    os.execvp(player, command)
    return 0  # not reached

