"""The SDP reader: what real announcers send, what the writer writes, and hostile input by name."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msd.schema import SessionRecord
from urs.errors import UrsError
from urs.sdp import session_sdp
from urs.sdp_parse import (
    MAX_BYTES,
    MAX_LINE_CHARS,
    MAX_MEDIA,
    Connection,
    SdpError,
    SdpMissingField,
    SdpSyntaxError,
    SdpTooLarge,
    parse,
)

VLC = (
    "v=0\r\n"
    "o=- 15580419163813326858 15580419163813326858 IN IP4 host.example\r\n"
    "s=Jazz night\r\n"
    "i=Live from the club\r\n"
    "c=IN IP4 239.255.12.42/255\r\n"
    "t=0 0\r\n"
    "a=tool:vlc 3.0.18\r\n"
    "a=recvonly\r\n"
    "a=type:broadcast\r\n"
    "a=charset:UTF-8\r\n"
    "a=cat:Music.Jazz\r\n"
    "a=keywds:jazz saxophone\r\n"
    "m=video 5004 RTP/AVP 33\r\n"
    "b=RR:0\r\n"
    "a=rtpmap:33 MP2T/90000\r\n"
)


def test_a_vlc_announcement() -> None:
    sdp = parse(VLC.encode())
    assert sdp.origin.key == ("-", "15580419163813326858", "IN", "IP4", "host.example")
    assert sdp.origin.sess_version == 15580419163813326858
    assert (sdp.name, sdp.info) == ("Jazz night", "Live from the club")
    assert sdp.connection == Connection("IP4", "239.255.12.42", ttl=255)
    assert sdp.keywords == ["jazz", "saxophone"] and sdp.categories == ["Music.Jazz"]
    assert sdp.times == ((0, 0),)
    [media] = sdp.media
    assert (media.kind, media.port, media.proto, media.formats) == ("video", 5004, "RTP/AVP",
                                                                     ("33",))
    assert media.rtpmap("33") == "MP2T/90000" and media.rtpmap("96") is None
    assert sdp.connection_of(media) == sdp.connection


def test_bare_line_feeds_trailing_blank_lines_and_media_level_connection() -> None:
    text = ("v=0\no=alice 1 2 IN IP6 2001:db8::1\ns=-\nt=0 0\n"
            "m=audio 5006/2 RTP/AVP 96\nc=IN IP6 FF15::101/3\ni=the audio\n"
            "a=rtpmap:96 opus/48000/2\n\n\n")
    sdp = parse(text)
    [media] = sdp.media
    assert media.connection == Connection("IP6", "ff15::101", ttl=None, count=3)
    assert media.port_count == 2 and media.info == "the audio"
    assert sdp.connection is None and sdp.connection_of(media) == media.connection


def test_ssm_source_filter_at_session_and_media_level() -> None:
    text = ("v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=S\r\nc=IN IP4 232.1.1.1/64\r\nt=0 0\r\n"
            "a=source-filter: incl IN IP4 232.1.1.1 192.0.2.10 192.0.2.11\r\n"
            "m=video 5004 udp 33\r\n"
            "m=audio 5006 udp 33\r\na=source-filter: excl IN IP4 * 192.0.2.99\r\n")
    sdp = parse(text)
    first, second = sdp.media
    [session_filter] = sdp.source_filters(first)
    assert (session_filter.mode, session_filter.sources) == ("incl",
                                                             ("192.0.2.10", "192.0.2.11"))
    [media_filter] = sdp.source_filters(second)
    assert (media_filter.mode, media_filter.destination) == ("excl", "*")


RECORD: dict[str, Any] = {
    "id": "jazz", "title": "Jazz night", "keywords": ["jazz", "live"], "group": "239.1.2.3",
    "port": 5004, "uri": "mcast.example.org/jazz", "domain": "example.org",
    "expires_at": 1_700_003_600.0, "updated_at": 1_700_000_000.25,
}


@pytest.mark.parametrize("changes", [
    {},
    {"group": "ff0e::db8:1"},
    {"group": "232.1.1.1", "network": "ssm", "source": "192.0.2.10", "stream_type": "udp"},
    {"group": "ff3e::8000:1", "network": "ssm", "source": "2001:db8::5", "mime": "audio/opus"},
    {"description": "two\nlines", "scope": "local"},
])
def test_reads_what_the_writer_writes(changes: dict[str, Any]) -> None:
    record = SessionRecord.model_validate(RECORD | changes)
    sdp = parse(session_sdp(record, page_url="http://x/jazz",
                            extra_attributes=(("x-mdns-uri", record.uri),)))
    [media] = sdp.media
    connection = sdp.connection_of(media)
    assert connection is not None and connection.address == record.group
    assert media.port == record.port and sdp.name == record.title
    assert sdp.keywords == record.keywords and sdp.attribute("x-mdns-uri") == [record.uri]
    assert sdp.uri == "http://x/jazz"
    if record.source and record.network == "ssm":
        assert sdp.source_filters(media)[0].sources == (record.source,)


@pytest.mark.parametrize(("text", "error", "message"), [
    ("", SdpMissingField, "v=0"),
    ("v=1\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\n", SdpMissingField, "v=0"),
    ("v=0\r\ns=x\r\n", SdpMissingField, "o= is missing"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n", SdpMissingField, "s= is missing"),
    ("v=0\r\no=- 1 IN IP4 0.0.0.0\r\ns=x\r\n", SdpSyntaxError, "6 fields"),
    ("v=0\r\no=- x 1 IN IP4 0.0.0.0\r\ns=x\r\n", SdpSyntaxError, "decimal"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\nbogus\r\n", SdpSyntaxError, "line 4"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\nc=IN IP4 239.1.1.1\r\n", SdpSyntaxError, "TTL"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\nc=IN IP4 239.1.1.1/300\r\n", SdpSyntaxError,
     "0..255"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\nc=IN IP6 239.1.1.1/3\r\n", SdpSyntaxError,
     "IPv4"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\nc=IN IP9 x\r\n", SdpSyntaxError, "IP4 or IP6"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\nm=video 70000 RTP/AVP 33\r\n", SdpSyntaxError,
     "port"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\nm=video 5004 RTP/AVP\r\n", SdpSyntaxError, "m="),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\nt=now\r\n", SdpSyntaxError, "t="),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\na=source-filter: maybe\r\n", SdpSyntaxError,
     "source-filter"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\x00y\r\n", SdpSyntaxError, "control"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\ry\r\n", SdpSyntaxError, "control"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\na=bad name:1\r\n", SdpSyntaxError, "token"),
])
def test_malformed_descriptions_are_named(text: str, error: type[SdpError],
                                          message: str) -> None:
    with pytest.raises(error, match=message):
        parse(text.encode())


def test_limits() -> None:
    head = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=x\r\n"
    with pytest.raises(SdpTooLarge):
        parse(b"v=0\r\n" + b"a" * MAX_BYTES)
    with pytest.raises(SdpTooLarge, match="longer"):
        parse(head + "i=" + "x" * MAX_LINE_CHARS + "\r\n")
    with pytest.raises(SdpTooLarge, match="m= sections"):
        parse(head + "m=video 1 udp 33\r\n" * (MAX_MEDIA + 1))
    with pytest.raises(SdpTooLarge, match="lines"):
        parse(head + "b=AS:1\r\n" * 600)


def test_latin1_is_read_and_errors_share_one_root() -> None:
    sdp = parse(b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=Caf\xe9\r\n")
    assert sdp.name == "Café"
    assert issubclass(SdpError, UrsError)
    assert str(SdpTooLarge()) == SdpTooLarge.__doc__


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.text(max_size=600).map(lambda t: ("v=0\n" + t).encode()))
def test_never_crashes(data: bytes) -> None:
    with contextlib.suppress(SdpError):
        parse(data)
