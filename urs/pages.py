"""The HTML pages of the URS (Jinja2, autoescaped, no JavaScript, nothing loaded from elsewhere)."""

from __future__ import annotations

import datetime
from typing import Any

import jinja2

from msd.schema import SessionRecord, session_fields
from urs.playlist import stream_url

# Pages carry inline CSS only; nothing else may load or run.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'"

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("urs", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def player_command(record: SessionRecord) -> str | None:
    """The command line the host suggests, or None if it names no application."""
    if not record.application:
        return None
    parts = [record.application, record.cli_args or "", stream_url(record)]
    return " ".join(part for part in parts if part)


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
    return _env.get_template("landing.html").render(
        record=record,
        parameters=parameters,
        coordinates=coordinates,
        expires=_utc(record.expires_at),
        expires_in=_duration(record.expires_at - now),
        updated=_utc(record.updated_at),
        stream_url=stream_url(record),
        player_command=player_command(record),
        sdp_href=sdp_href,
        json_href=json_href,
        m3u_href=m3u_href,
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
