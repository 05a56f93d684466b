"""Stream URLs and M3U playlists: RTP and raw UDP, IPv6 brackets, source@ only for SSM."""

from __future__ import annotations

from typing import Any

import pytest

from msd.schema import SessionRecord
from urs.playlist import amt_url, m3u_playlist, player_argv, stream_url

BASE: dict[str, Any] = {
    "id": "jazz", "title": "Jazz night", "keywords": ["jazz"], "group": "239.1.2.3",
    "port": 5004, "uri": "mcast.example.org/jazz", "domain": "example.org",
    "expires_at": 1_700_003_600.0, "updated_at": 1_700_000_000.0,
}


def record(**changes: Any) -> SessionRecord:
    return SessionRecord.model_validate(BASE | changes)


@pytest.mark.parametrize(("changes", "url"), [
    ({}, "rtp://@239.1.2.3:5004"),
    ({"stream_type": "udp"}, "udp://@239.1.2.3:5004"),
    ({"source": "192.0.2.10"}, "rtp://@239.1.2.3:5004"),  # ASM: a source is not a filter
    ({"network": "ssm", "source": "192.0.2.10", "group": "232.1.1.1"},
     "rtp://192.0.2.10@232.1.1.1:5004"),
    ({"group": "ff0e::db8:1"}, "rtp://@[ff0e::db8:1]:5004"),
    ({"network": "ssm", "source": "2001:db8::5", "group": "ff3e::8000:1", "stream_type": "udp"},
     "udp://[2001:db8::5]@[ff3e::8000:1]:5004"),
])
def test_stream_url(changes: dict[str, Any], url: str) -> None:
    assert stream_url(record(**changes)) == url


@pytest.mark.parametrize(("changes", "url"), [
    ({}, None),
    ({"source": "192.0.2.10"}, None),  # ASM: AMT relays only source-specific joins
    ({"network": "ssm", "source": "192.0.2.10", "group": "232.1.1.1"},
     "amt://192.0.2.10@232.1.1.1:5004"),
    ({"network": "ssm", "source": "2001:db8::5", "group": "ff3e::8000:1"},
     "amt://[2001:db8::5]@[ff3e::8000:1]:5004"),
])
def test_amt_url_only_for_ssm(changes: dict[str, Any], url: str | None) -> None:
    assert amt_url(record(**changes)) == url


@pytest.mark.parametrize(("changes", "argv"), [
    ({}, ["ffplay", "rtp://@239.1.2.3:5004"]),  # no application: ffplay, as mdns open
    ({"application": "vlc", "cli_args": "--network-caching=500 --meta-title='Jazz night'"},
     ["vlc", "--network-caching=500", "--meta-title=Jazz night", "rtp://@239.1.2.3:5004"]),
    ({"application": "mpv", "cli_args": "--title='unbalanced"},  # words, not shell syntax
     ["mpv", "--title='unbalanced", "rtp://@239.1.2.3:5004"]),
])
def test_player_argv(changes: dict[str, Any], argv: list[str]) -> None:
    assert player_argv(record(**changes)) == argv


def test_playlist_of_several_sessions() -> None:
    text = m3u_playlist([record(title="Café  au lait"), record(id="b", uri="mcast.x/b",
                                                               group="ff0e::1")],
                        with_uri=True)
    assert text == ("#EXTM3U\n#EXTINF:-1,Café au lait (mcast.example.org/jazz)\n"
                    "rtp://@239.1.2.3:5004\n#EXTINF:-1,Jazz night (mcast.x/b)\n"
                    "rtp://@[ff0e::1]:5004\n")
    assert m3u_playlist([]) == "#EXTM3U\n"
