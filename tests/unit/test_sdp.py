"""The SDP text the URS writes: RTP and raw UDP MPEG-TS, IPv6, SSM source filters, other media."""

from __future__ import annotations

from typing import Any

from msd.schema import SessionRecord
from urs.sdp import media_kind, session_sdp

SESSION: dict[str, Any] = {
    "id": "jazz",
    "title": "Jazz night",
    "keywords": ["jazz", "live"],
    "group": "239.1.2.3",
    "port": 5004,
    "uri": "mcast.example.org/jazz",
    "domain": "example.org",
    "expires_at": 1_700_003_600.0,
    "updated_at": 1_700_000_000.25,
}


def record(**changes: Any) -> SessionRecord:
    return SessionRecord.model_validate(SESSION | changes)


def lines(text: str) -> list[str]:
    assert text.endswith("\r\n")
    body = text[: -len("\r\n")]
    assert "\n" not in body.replace("\r\n", "")  # every line ends CRLF, no bare LF
    return body.split("\r\n")


def test_rtp_mpeg_ts_is_what_ffprobe_opens() -> None:
    text = lines(session_sdp(record()))
    origin = text[1].split(" ")
    assert text[0] == "v=0"
    assert origin[0] == "o=-" and origin[1].isdigit()
    assert origin[2] == "1700000000250"  # updated_at in ms: every update is a new version
    assert origin[3:] == ["IN", "IP4", "0.0.0.0"]
    assert text[2:] == [
        "s=Jazz night",
        "c=IN IP4 239.1.2.3/127",
        "t=0 0",
        "a=tool:mdns",
        "a=recvonly",
        "a=keywds:jazz live",
        "m=video 5004 RTP/AVP 33",
        "a=rtpmap:33 MP2T/90000",
    ]


def test_session_id_is_stable_and_version_follows_updates() -> None:
    first = lines(session_sdp(record()))[1].split(" ")
    later = lines(session_sdp(record(updated_at=1_700_000_100.0)))[1].split(" ")
    assert first[1] == later[1]
    assert int(later[2]) > int(first[2])


def test_raw_udp_mpeg_ts_uses_payload_33_not_the_mime_subtype() -> None:
    text = lines(session_sdp(record(stream_type="udp")))
    assert text[-1] == "m=video 5004 udp 33"
    assert not any(line.startswith("a=rtpmap") for line in text)


def test_local_scope_gets_a_site_ttl() -> None:
    assert "c=IN IP4 239.1.2.3/15" in lines(session_sdp(record(scope="local")))


def test_ipv6_group_has_no_ttl() -> None:
    text = lines(session_sdp(record(group="ff0e::db8:1")))
    assert "c=IN IP6 ff0e::db8:1" in text
    assert text[1].endswith("IN IP4 0.0.0.0")


def test_ssm_source_filter_and_origin() -> None:
    text = lines(session_sdp(record(group="232.1.1.1", network="ssm", source="192.0.2.10")))
    assert text[1].endswith(" IN IP4 192.0.2.10")
    assert "a=source-filter: incl IN IP4 232.1.1.1 192.0.2.10" in text
    # Session-level attributes come before the media section.
    assert text.index("a=source-filter: incl IN IP4 232.1.1.1 192.0.2.10") < text.index(
        "m=video 5004 RTP/AVP 33"
    )


def test_ssm_ipv6_source_filter() -> None:
    text = lines(session_sdp(record(group="ff3e::8000:1", network="ssm", source="2001:db8::5")))
    assert text[1].endswith(" IN IP6 2001:db8::5")
    assert "a=source-filter: incl IN IP6 ff3e::8000:1 2001:db8::5" in text


def test_asm_with_a_source_has_no_filter() -> None:
    text = lines(session_sdp(record(source="192.0.2.10")))
    assert not any(line.startswith("a=source-filter") for line in text)


def test_description_and_page_url_on_one_line_each() -> None:
    text = lines(session_sdp(record(description="Two\nlines\r\nhere"),
                             page_url="http://mcast.example.org/jazz"))
    assert text[3] == "i=Two lines here"
    assert text[4] == "u=http://mcast.example.org/jazz"


def test_other_mime_gets_a_dynamic_payload() -> None:
    text = lines(session_sdp(record(mime="video/H264")))
    assert text[-2:] == ["m=video 5004 RTP/AVP 96", "a=rtpmap:96 H264/90000"]
    audio = lines(session_sdp(record(mime="audio/opus")))
    # RFC 7587: opus is always declared with two channels.
    assert audio[-2:] == ["m=audio 5004 RTP/AVP 96", "a=rtpmap:96 opus/48000/2"]


def test_static_audio_payload() -> None:
    text = lines(session_sdp(record(mime="audio/MPA")))
    assert text[-2:] == ["m=audio 5004 RTP/AVP 14", "a=rtpmap:14 MPA/90000"]


def test_raw_udp_other_mime_names_the_format() -> None:
    assert lines(session_sdp(record(stream_type="udp", mime="audio/L16")))[-1] == (
        "m=audio 5004 udp L16"
    )


def test_media_kind_from_mime() -> None:
    assert media_kind("video/MP2T") == "video"
    assert media_kind("AUDIO/opus") == "audio"
    assert media_kind("application/octet-stream") == "application"
    assert media_kind("model/gltf+json") == "application"
