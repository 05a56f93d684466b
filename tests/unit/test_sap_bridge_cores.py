"""The SAP bridge's pure cores: SDP to session, the table of heard SAP, RFC 2974 timing."""

from __future__ import annotations

import ipaddress
import random
from typing import Any

import pytest

from client.sap_announce import (
    AnnounceSchedule,
    base_interval,
    build_ad,
    sap_group_for,
)
from client.sap_ingest import (
    INGESTED_ID,
    Expire,
    Ignore,
    IngestError,
    Limits,
    Register,
    SapTable,
    keywords_of,
    session_from_sdp,
    session_id,
)
from msd.sap import MessageType, SapPacket, announcement, decode
from msd.schema import Session, SessionRecord
from urs.sdp_parse import parse

SOURCE = ipaddress.ip_address("192.0.2.44")


def sdp(*, version: int = 1, name: str = "Coltrane tribute", group: str = "239.255.77.7/1",
        media: str = "m=video 5004 RTP/AVP 33\r\na=rtpmap:33 MP2T/90000", extra: str = "",
        origin: str = "legacy 4242") -> str:
    return (f"v=0\r\no={origin} {version} IN IP4 192.0.2.44\r\ns={name}\r\n"
            f"i=Blue train\r\nc=IN {'IP6' if ':' in group else 'IP4'} {group}\r\nt=0 0\r\n"
            f"a=keywds:bebop\r\na=cat:Music.Jazz\r\n{extra}{media}\r\n")


def packet(text: str, *, delete: bool = False, origin: Any = SOURCE,
           auth: bytes = b"") -> SapPacket:
    base = announcement(text.encode(), origin=origin, delete=delete)
    return SapPacket(message_type=base.message_type, origin=origin,
                     msg_id_hash=base.msg_id_hash, payload=base.payload, auth=auth)


def new_key(action: object) -> tuple[str, ...]:
    assert isinstance(action, Register), action
    return action.key


def reason(action: object) -> str:
    assert isinstance(action, Ignore), action
    return action.reason


def session(text: str, **options: Any) -> dict[str, Any]:
    return session_from_sdp(parse(text), ttl=3600, **options)


# --- SDP to session ------------------------------------------------------------------------

def test_a_legacy_announcement_becomes_a_valid_session() -> None:
    found = session(sdp())
    Session.model_validate(found)
    assert INGESTED_ID.fullmatch(found["id"])
    assert found | {"id": "x"} == {
        "id": "x", "title": "Coltrane tribute", "description": "Blue train",
        "keywords": ["bebop", "music", "jazz", "coltrane", "tribute", "blue", "train", "sap"],
        "group": "239.255.77.7", "port": 5004, "stream_type": "rtp", "mime": "video/MP2T",
        "scope": "local", "ttl": 3600}


def test_the_id_follows_the_origin_not_the_version() -> None:
    assert session(sdp(version=1))["id"] == session(sdp(version=9, name="Other"))["id"]
    assert session(sdp(origin="someone-else 4242"))["id"] != session(sdp())["id"]
    assert session_id(parse(sdp()).origin) == session(sdp())["id"]


def test_keywords_are_bounded_deduplicated_and_end_with_sap() -> None:
    text = sdp(name="The Art of the Fugue: BWV 1080, the art", extra="a=keywds:Bach fugue\r\n")
    words = keywords_of(parse(text))
    assert words[:3] == ["bebop", "bach", "fugue"]  # a=keywds lines in order, then a=cat
    assert len(words) == 10 and words[-1] == "sap" and len(set(words)) == 10
    assert "the" not in words and "of" not in words


@pytest.mark.parametrize(("media", "stream_type", "mime"), [
    ("m=video 5004 RTP/AVP 33", "rtp", "video/MP2T"),
    ("m=audio 5004 RTP/AVP 14", "rtp", "audio/MPA"),
    ("m=video 5004 RTP/AVP 96\r\na=rtpmap:96 H264/90000", "rtp", "video/H264"),
    ("m=video 5004 RTP/AVP 97", "rtp", "application/octet-stream"),
    ("m=video 5004 udp 33", "udp", "video/MP2T"),
    ("m=video 5004 udp MP2T", "udp", "video/MP2T"),
    ("m=audio 5004 udp L16", "udp", "audio/L16"),
    ("m=weird 5004 udp 33", "udp", "video/MP2T"),
])
def test_transports_and_formats(media: str, stream_type: str, mime: str) -> None:
    found = session(sdp(media=media))
    assert (found["stream_type"], found["mime"]) == (stream_type, mime)


def test_ipv6_scope_ssm_and_media_level_connection() -> None:
    assert session(sdp(group="ff0e::db8:1"))["scope"] == "global"
    assert session(sdp(group="ff05::db8:1"))["scope"] == "local"
    assert session(sdp(group="224.2.1.1/127"))["scope"] == "global"
    assert session(sdp(), scope="global")["scope"] == "global"
    ssm = session(sdp(group="232.1.1.1/64",
                      extra="a=source-filter: incl IN IP4 232.1.1.1 192.0.2.10\r\n"))
    assert (ssm["network"], ssm["source"]) == ("ssm", "192.0.2.10")
    text = ("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=Two media\r\nt=0 0\r\n"
            "m=audio 0 RTP/AVP 0\r\nc=IN IP4 239.1.1.1/1\r\n"
            "m=video 6000 RTP/AVP 33\r\nc=IN IP4 239.1.1.2/1\r\n")
    assert (session(text)["group"], session(text)["port"]) == ("239.1.1.2", 6000)


@pytest.mark.parametrize(("text", "message"), [
    (sdp(group="192.0.2.1"), "multicast"),
    (sdp(media="m=video 5004 TCP 33"), "neither RTP nor raw UDP"),
])
def test_unusable_announcements(text: str, message: str) -> None:
    with pytest.raises(IngestError, match=message):
        session(text)


def test_a_nameless_session_gets_a_title_and_long_names_are_cut() -> None:
    assert session(sdp(name=" "))["title"] == "SAP session 4242"
    assert len(session(sdp(name="x" * 500))["title"]) == 200


# --- the table -----------------------------------------------------------------------------

def test_new_repeat_changed_stale() -> None:
    table = SapTable()
    first = table.heard(packet(sdp()), now=0)
    assert isinstance(first, Register) and first.reason == "new"
    table.registered(first.key, now=0)
    assert table.heard(packet(sdp()), now=300) == Ignore("repeat")
    changed = table.heard(packet(sdp(version=2, name="Renamed")), now=600)
    assert isinstance(changed, Register) and changed.reason == "changed"
    assert changed.session["id"] == first.session["id"] and changed.key == first.key
    assert table.heard(packet(sdp(version=1)), now=900) == Ignore("stale-version")
    assert len(table) == 1


def test_a_refresh_keeps_the_record_alive_a_whole_timeout_past_the_last_announcement() -> None:
    table = SapTable()
    first = table.heard(packet(sdp()), now=0)
    assert isinstance(first, Register) and first.session["ttl"] == 4500  # 3600 s and a quarter
    table.registered(first.key, now=0)
    for now in (300, 600, 900):  # every 300 s: the record (4500 s) outlives now + 3600
        assert table.heard(packet(sdp()), now=now) == Ignore("repeat")
    refresh = table.heard(packet(sdp()), now=1200)
    assert isinstance(refresh, Register) and refresh.reason == "refresh"
    assert table.heard(packet(sdp()), now=1300) == Ignore("repeat")  # already pending
    table.registered(first.key, now=1300)
    # A slower announcer: the measured interval grows, so do the timeout and the ttl.
    action = table.heard(packet(sdp()), now=2300)
    assert isinstance(action, Register) and action.session["ttl"] > 4500


def test_a_failed_registration_is_retried_after_a_pause() -> None:
    table = SapTable()
    key = new_key(table.heard(packet(sdp()), now=0))
    table.failed(key, now=0)
    assert table.heard(packet(sdp()), now=10) == Ignore("repeat")
    retry = table.heard(packet(sdp()), now=40)
    assert isinstance(retry, Register) and retry.reason == "refresh"


def test_deletions() -> None:
    table = SapTable()
    key = new_key(table.heard(packet(sdp()), now=0))
    origin_only = "o=legacy 4242 1 IN IP4 192.0.2.44\r\n"
    assert table.heard(packet("o=nobody 1 1 IN IP4 192.0.2.1\r\n", delete=True),
                       now=1) == Ignore("delete-unknown")
    other = ipaddress.ip_address("198.51.100.1")
    assert table.heard(packet(origin_only, delete=True, origin=other),
                       now=1) == Ignore("delete-wrong-source")
    assert table.heard(packet(origin_only, delete=True, auth=b"sig!"),
                       now=1) == Ignore("delete-unverifiable")
    assert table.heard(packet("garbage", delete=True), now=1) == Ignore("bad-delete")
    deleted = table.heard(packet(sdp(), delete=True), now=2)  # a whole SDP is fine too
    assert isinstance(deleted, Expire) and deleted.key == key and deleted.session["ttl"] == 10
    assert len(table) == 0


def test_an_authenticated_announcement_cannot_be_deleted_unauthenticated() -> None:
    table = SapTable()
    table.heard(packet(sdp(), auth=b"sig!"), now=0)
    assert table.heard(packet(sdp(), delete=True), now=1) == Ignore("delete-unverifiable")


def test_limits_rate_and_size() -> None:
    table = SapTable(limits=Limits(max_sessions=3, new_per_s=1.0, new_burst=2))
    actions = [table.heard(packet(sdp(origin=f"u{i} {i}")), now=0) for i in range(3)]
    assert [type(a) for a in actions] == [Register, Register, Ignore]
    assert actions[2] == Ignore("rate-limited")
    assert isinstance(table.heard(packet(sdp(origin="u3 3")), now=1.0), Register)
    assert table.heard(packet(sdp(origin="u4 4")), now=10) == Ignore("table-full")
    assert table.counters["new"] == 3 and table.counters["rate-limited"] == 1


def test_bad_sdp_unusable_and_own_announcements_are_ignored() -> None:
    table = SapTable()
    assert reason(table.heard(packet("v=0\r\nnonsense\r\n"), now=0)) == "bad-sdp"
    assert reason(table.heard(packet(sdp(group="192.0.2.1")), now=0)) == "unusable"
    own = sdp(extra="a=x-mdns-uri:mcast.example.org/jazz\r\n")
    assert table.heard(packet(own), now=0) == Ignore("mdns-announcement")
    assert len(table) == 0


def test_silent_sessions_are_forgotten_after_their_timeout() -> None:
    table = SapTable()
    first = table.heard(packet(sdp()), now=0)
    assert isinstance(first, Register)
    assert table.forget_silent(now=3600) == []
    assert table.forget_silent(now=3601) == [first.session["id"]]
    assert len(table) == 0


# --- announcing ----------------------------------------------------------------------------

RECORD: dict[str, Any] = {
    "id": "jazz", "title": "Jazz night", "keywords": ["jazz"], "group": "239.255.1.2",
    "port": 5004, "uri": "mcast.example.org/jazz", "domain": "example.org",
    "expires_at": 1_700_003_600.0, "updated_at": 1_700_000_000.0,
}


def record(**changes: Any) -> SessionRecord:
    return SessionRecord.model_validate(RECORD | changes)


@pytest.mark.parametrize(("group", "sap_group"), [
    ("224.2.1.1", "224.2.127.254"), ("232.1.1.1", "224.2.127.254"),
    ("239.255.1.2", "239.255.255.255"), ("239.193.0.1", "239.195.255.255"),
    ("239.1.1.1", "239.255.255.255"), ("224.0.0.200", "224.0.0.255"),
    ("ff0e::1", "ff0e::2:7ffe"), ("ff15::1", "ff05::2:7ffe"), ("ff02::1", "ff02::2:7ffe"),
])
def test_the_sap_group_has_the_session_scope(group: str, sap_group: str) -> None:
    assert sap_group_for(group) == sap_group


def test_an_ad_carries_the_sdp_its_uri_and_a_matching_deletion() -> None:
    ad = build_ad(record(), origin=ipaddress.IPv4Address("127.0.0.1"))
    assert (ad.sap_group, ad.hops) == ("239.255.255.255", 127)
    sent = decode(ad.datagram)
    assert sent.message_type is MessageType.ANNOUNCE and str(sent.origin) == "127.0.0.1"
    description = parse(sent.payload)
    assert description.attribute("x-mdns-uri") == ["mcast.example.org/jazz"]
    deletion = decode(ad.delete_datagram)
    assert deletion.message_type is MessageType.DELETE
    assert deletion.payload.decode() == description.origin.line() + "\r\n"
    assert build_ad(record(scope="local"), origin=sent.origin).hops == 15


def test_base_interval_rfc_2974() -> None:
    assert base_interval(1000) == 300.0
    assert base_interval(500_000) == 1000.0  # 8 * 500 kB / 4000 bit/s
    assert base_interval(500_000, interval_s=0.5) == 0.5


def test_schedule_jitter_changes_and_removals() -> None:
    schedule = AnnounceSchedule(rng=random.Random(1))
    origin = ipaddress.IPv4Address("127.0.0.1")
    ads = [build_ad(record(id=f"s{i}", uri=f"mcast.example.org/s{i}"), origin=origin)
           for i in range(3)]
    assert schedule.update(ads, now=0) == [] and schedule.next_at() == 0
    assert len(schedule.due(now=0)) == 3 and schedule.due(now=0) == []
    next_at = schedule.next_at()
    assert next_at is not None and 200 <= next_at <= 400  # 300 s times 2/3..4/3
    changed = build_ad(record(id="s0", uri="mcast.example.org/s0", title="New"), origin=origin)
    assert schedule.update([changed, *ads[1:]], now=10) == []
    assert schedule.due(now=10) == [changed]
    assert schedule.update([changed], now=20) == ads[1:]
    lab = AnnounceSchedule(interval_s=1.0, rng=random.Random(2))
    lab.update(ads, now=0)
    lab.due(now=0)
    assert all(2 / 3 <= at <= 4 / 3 for at in lab._due.values())
