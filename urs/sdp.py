"""A pure RFC 8866 SDP writer: one session record in, the text a player opens out."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Sequence

from msd.schema import Network, Scope, SessionRecord, StreamType

# RFC 8866 5.2: the multicast TTL of c=; 127 reaches the global multicast internet,
# 15 keeps administratively scoped traffic inside a site (the customary values).
TTL_GLOBAL = 127
TTL_LOCAL = 15
DYNAMIC_PAYLOAD = 96
_MEDIA_KINDS = frozenset({"audio", "video", "text", "application", "message"})
# RTP/AVP static payload types (RFC 3551) for the media types a directory typically lists.
_STATIC_PAYLOADS: dict[str, tuple[int, str]] = {
    "video/mp2t": (33, "MP2T/90000"),
    "video/mpv": (32, "MPV/90000"),
    "audio/mpa": (14, "MPA/90000"),
    "audio/pcmu": (0, "PCMU/8000"),
    "audio/pcma": (8, "PCMA/8000"),
}
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f]+")


def session_sdp(
    record: SessionRecord, *, page_url: str | None = None,
    extra_attributes: Sequence[tuple[str, str]] = (),
) -> str:
    """The SDP description of a session; `page_url` becomes the u= line if given, and
    `extra_attributes` (name, value) are added as session-level a= lines."""
    group = ipaddress.ip_address(record.group)
    origin = ipaddress.ip_address(record.source) if record.source else None
    origin_text = (
        f"IN IP{origin.version} {origin}" if origin is not None else "IN IP4 0.0.0.0"
    )
    lines = [
        "v=0",
        f"o=- {_session_id(record.uri)} {_session_version(record.updated_at)} {origin_text}",
        f"s={_text(record.title) or '-'}",
    ]
    if record.description.strip():
        lines.append(f"i={_text(record.description)}")
    if page_url:
        lines.append(f"u={_text(page_url)}")
    if group.version == 4:
        ttl = TTL_GLOBAL if record.scope is Scope.GLOBAL else TTL_LOCAL
        lines.append(f"c=IN IP4 {group}/{ttl}")
    else:
        # IPv6 carries its scope in the address itself; c= takes no TTL (RFC 8866 5.7).
        lines.append(f"c=IN IP6 {group}")
    lines += ["t=0 0", "a=tool:mdns", "a=recvonly"]
    if record.keywords:
        lines.append(f"a=keywds:{' '.join(record.keywords)}")
    if record.network is Network.SSM and record.source is not None:
        lines.append(f"a=source-filter: incl IN IP{group.version} {group} {record.source}")
    lines += [f"a={name}:{_text(value)}" for name, value in extra_attributes]
    lines += _media(record)
    return "".join(line + "\r\n" for line in lines)


def media_kind(mime: str) -> str:
    """The m= media of a MIME type: its top-level type when SDP knows it, else application."""
    kind = mime.partition("/")[0].lower()
    return kind if kind in _MEDIA_KINDS else "application"


def _media(record: SessionRecord) -> list[str]:
    kind = media_kind(record.mime)
    mime = record.mime.lower()
    subtype = record.mime.partition("/")[2]
    if record.stream_type is StreamType.UDP:
        if mime == "video/mp2t":
            # Raw MPEG-TS over UDP: ffmpeg reads `udp 33`, not RFC 8866's `udp MP2T`.
            return [f"m=video {record.port} udp 33"]
        return [f"m={kind} {record.port} udp {subtype}"]
    payload, rtpmap = _STATIC_PAYLOADS.get(mime, (DYNAMIC_PAYLOAD, ""))
    if not rtpmap:
        rtpmap = f"{subtype}/{48000 if kind == 'audio' else 90000}"
        if mime == "audio/opus":
            rtpmap += "/2"  # RFC 7587: opus is always announced as two channels
    return [f"m={kind} {record.port} RTP/AVP {payload}", f"a=rtpmap:{payload} {rtpmap}"]


def _session_id(uri: str) -> int:
    # Stable per URI, so a player sees an update as a new version of the same session.
    return int.from_bytes(hashlib.sha256(uri.encode()).digest()[:7], "big")


def _session_version(updated_at: float) -> int:
    # Milliseconds: two updates within one second still get distinct versions.
    return int(updated_at * 1000)


def _text(value: str) -> str:
    # SDP is line-based: a description's line breaks would end the field early.
    return _LINE_BREAKS.sub(" ", value).strip()
