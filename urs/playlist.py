"""Stream URLs and M3U playlists (pure): what players such as VLC, ffplay and mpv open."""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterable

from msd.schema import Network, SessionRecord, StreamType


def stream_url(record: SessionRecord) -> str:
    """`rtp://@group:port` (udp:// for raw UDP), `rtp://source@group:port` for SSM, IPv6 in []."""
    group = ipaddress.ip_address(record.group)
    host = f"[{group}]" if group.version == 6 else str(group)
    scheme = "rtp" if record.stream_type is StreamType.RTP else "udp"
    # Only SSM names its source: VLC reads source@group as a source-specific join.
    source = record.source if record.network is Network.SSM and record.source else ""
    if source and ":" in source:
        source = f"[{source}]"
    return f"{scheme}://{source}@{host}:{record.port}"


DEFAULT_PLAYER = "ffplay"


def player_argv(record: SessionRecord) -> list[str]:
    """The command line that plays the stream: the host's `application` and `cli_args`
    (else ffplay), then the stream URL; what `mdns open` runs and the landing page shows."""
    try:
        args = shlex.split(record.cli_args or "")
    except ValueError:  # unbalanced quotes: the host meant words, not shell syntax
        args = (record.cli_args or "").split()
    return [record.application or DEFAULT_PLAYER, *args, stream_url(record)]


def amt_url(record: SessionRecord) -> str | None:
    """`amt://source@group:port` for an SSM session (RFC 7450 AMT relays tunnel only
    source-specific joins to hosts without native multicast); None for ASM."""
    if record.network is not Network.SSM or not record.source:
        return None
    group = ipaddress.ip_address(record.group)
    host = f"[{group}]" if group.version == 6 else str(group)
    source = f"[{record.source}]" if ":" in record.source else record.source
    return f"amt://{source}@{host}:{record.port}"


def m3u_playlist(records: Iterable[SessionRecord], *, with_uri: bool = False) -> str:
    """An extended M3U (M3U8: it is UTF-8) playlist: #EXTM3U, then #EXTINF and the URL of each."""
    lines = ["#EXTM3U"]
    for record in records:
        title = " ".join(record.title.split())  # one line, whatever the title held
        if with_uri:
            title += f" ({record.uri})"
        lines += [f"#EXTINF:-1,{title}", stream_url(record)]
    return "\n".join(lines) + "\n"
