"""The HTML pages of the URS (Jinja2, autoescaped, no JavaScript, nothing loaded from elsewhere)."""

from __future__ import annotations

import datetime
import shlex
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import jinja2

from msd.query import GRAMMAR, QUERY_MAX_CHARS
from msd.schema import SessionRecord, session_fields
from urs.playlist import amt_url, player_argv, stream_url
from urs.search import Result, Where

# Pages carry inline CSS only; nothing else may load or run, and forms go only to this URS.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("urs", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def player_command(record: SessionRecord) -> str:
    """The command line that plays the stream (the host's application, else ffplay)."""
    return shlex.join(player_argv(record))


def search_href(query: str, *, where: Where = Where.ALL, fmt: str | None = None) -> str:
    """A link to this URS's search page (or its M3U/JSON) for a query."""
    params = {"q": query, "in": where.value} | ({"format": fmt} if fmt else {})
    return "/search?" + urlencode(params)


def render_landing(
    record: SessionRecord, *, now: float, sdp_href: str, json_href: str, m3u_href: str
) -> str:
    """The landing page of a session: what it is, where it streams, how to play it."""
    values = record.model_dump(mode="json")
    parameters = [(name, _display(values[name])) for name in session_fields()]
    coordinates = None
    if record.lat is not None and record.lon is not None:
        geo = f"geo:{record.lat},{record.lon}"
        coordinates = {"lat": record.lat, "lon": record.lon, "geo": geo}
    keywords = [(keyword, search_href(keyword)) for keyword in record.keywords]
    return _env.get_template("landing.html").render(
        domain=record.domain,
        record=record,
        keywords=keywords,
        parameters=parameters,
        coordinates=coordinates,
        expires=_utc(record.expires_at),
        expires_in=_duration(record.expires_at - now),
        updated=_utc(record.updated_at),
        stream_url=stream_url(record),
        amt_url=amt_url(record),
        player_command=player_command(record),
        sdp_command=shlex.join(["ffplay", "-protocol_whitelist", "file,rtp,udp",
                                f"{record.id}.sdp"]),
        mdns_command=shlex.join(["mdns", "open", record.uri]),
        sdp_href=sdp_href,
        json_href=json_href,
        m3u_href=m3u_href,
    )


def render_search(
    *, domain: str, query: str, where: Where, results: Sequence[Result] | None = None,
    found: int = 0, error: str | None = None,
) -> str:
    """The search page: the form, the results (when a query ran), the query language."""
    rows = [{"result": result, "stream_url": stream_url(result.session)}
            for result in results or ()]
    return _env.get_template("search.html").render(
        domain=domain,
        query=query,
        where=where.value,
        rows=rows if results is not None else None,
        found=found,
        error=error,
        m3u_href=search_href(query, where=where, fmt="m3u"),
        json_href=search_href(query, where=where, fmt="json"),
        query_max_chars=QUERY_MAX_CHARS,
        grammar=GRAMMAR,
    )


def render_not_found(*, domain: str, session_id: str) -> str:
    """The 404 page: the name does not resolve (never registered, or expired)."""
    return _env.get_template("not_found.html").render(
        domain=domain, uri=f"mcast.{domain}/{session_id}"
    )


def _display(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(item) for item in value)
    return str(value)


def _utc(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days {seconds % 86400 // 3600} h"
