"""Every rule of msd/schema.py, by name: what passes, what fails, and which field is blamed."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from msd.schema import (
    KEYWORDS_MAX,
    RESERVED_IDS,
    TTL_DEFAULT,
    TTL_MAX,
    TTL_MIN,
    Network,
    Scope,
    Session,
    SessionRecord,
    StreamType,
    field_errors,
    session_fields,
    session_from_json,
)

BASE: dict[str, Any] = {
    "id": "jazz-night",
    "title": "Jazz night",
    "keywords": ["jazz", "live"],
    "group": "239.1.2.3",
    "port": 5004,
}


def valid(**changes: Any) -> Session:
    return Session.model_validate(BASE | changes)


def errors(**changes: Any) -> list[tuple[str, str]]:
    """The (field, message) pairs a session with these changes is refused with."""
    with pytest.raises(ValidationError) as caught:
        Session.model_validate({k: v for k, v in (BASE | changes).items() if v is not ...})
    return [(e.field, e.message) for e in field_errors(caught.value)]


def only_error(**changes: Any) -> tuple[str, str]:
    found = errors(**changes)
    assert len(found) == 1, found
    return found[0]


def test_minimal_session_gets_the_defaults() -> None:
    session = valid()
    assert session.scope is Scope.GLOBAL
    assert session.network is Network.ASM
    assert session.stream_type is StreamType.RTP
    assert session.mime == "video/MP2T"
    assert session.ttl == TTL_DEFAULT == 3600
    assert session.description == ""
    assert session.source is None and session.fallback_ip is None


# --- id ------------------------------------------------------------------------------


@pytest.mark.parametrize("good", ["a", "0", "jazz.night_2-b", "x" * 63, "a."])
def test_id_accepts_the_charset(good: str) -> None:
    assert valid(id=good).id == good


@pytest.mark.parametrize("bad", ["Jazz", "jazz night", "jazz/night", "jäzz", "a%2f", ""])
def test_id_charset(bad: str) -> None:
    field, message = only_error(id=bad)
    assert field == "id"
    assert "a-z" in message


def test_id_length() -> None:
    assert only_error(id="x" * 64)[0] == "id"


@pytest.mark.parametrize("reserved", sorted(RESERVED_IDS))
def test_id_reserved(reserved: str) -> None:
    field, message = only_error(id=reserved)
    assert field == "id" and "reserved" in message


@pytest.mark.parametrize("bad", [".hidden", ".", ".."])
def test_id_leading_dot(bad: str) -> None:
    field, message = only_error(id=bad)
    assert field == "id" and "'.'" in message


def test_id_required() -> None:
    assert only_error(id=...) == ("id", "this field is required")


def test_id_surrounding_whitespace_is_stripped() -> None:
    assert valid(id="  jazz  ").id == "jazz"


# --- title, description and the free-text fields -------------------------------------


def test_title_required_and_not_blank() -> None:
    assert only_error(title=...)[0] == "title"
    assert only_error(title="   ")[0] == "title"


def test_title_length() -> None:
    assert valid(title="t" * 200).title == "t" * 200
    assert only_error(title="t" * 201)[0] == "title"


@pytest.mark.parametrize("field", ["title", "place", "application", "cli_args"])
def test_single_line_fields_refuse_control_characters(field: str) -> None:
    name, message = only_error(**{field: "one\ntwo"})
    assert name == field and "control characters" in message


def test_description_may_span_lines_but_not_hold_other_controls() -> None:
    assert valid(description="line one\nline two\tend").description == "line one\nline two\tend"
    name, message = only_error(description="nul\x00byte")
    assert name == "description" and "control characters" in message


def test_description_length() -> None:
    assert only_error(description="d" * 4001)[0] == "description"


@pytest.mark.parametrize(("field", "limit"), [("place", 200), ("application", 64),
                                              ("cli_args", 1024)])
def test_optional_text_lengths(field: str, limit: int) -> None:
    assert getattr(valid(**{field: "x" * limit}), field) == "x" * limit
    assert only_error(**{field: "x" * (limit + 1)})[0] == field


# --- keywords ------------------------------------------------------------------------


def test_keywords_required_and_not_empty() -> None:
    assert only_error(keywords=...)[0] == "keywords"
    assert only_error(keywords=[])[0] == "keywords"


def test_keywords_count() -> None:
    many = [f"k{i}" for i in range(KEYWORDS_MAX + 1)]
    assert len(valid(keywords=many[:KEYWORDS_MAX]).keywords) == KEYWORDS_MAX
    assert only_error(keywords=many)[0] == "keywords"


def test_keyword_length() -> None:
    assert valid(keywords=["k" * 64]).keywords == ["k" * 64]
    field, message = only_error(keywords=["k" * 65])
    assert field == "keywords" and "1-64" in message


@pytest.mark.parametrize("bad", ["two words", 'say"what', "(group", "near:29", "tab\there"])
def test_keyword_forbidden_characters(bad: str) -> None:
    field, message = only_error(keywords=[bad])
    assert field == "keywords" and "one word" in message


def test_keyword_blank() -> None:
    assert only_error(keywords=["   "])[0] == "keywords"


def test_keyword_not_a_string() -> None:
    assert only_error(keywords=[5])[0] == "keywords.0"


def test_keywords_lower_cased_and_deduplicated_in_order() -> None:
    assert valid(keywords=["Jazz", "LIVE", "jazz", " live ", "Straße"]).keywords == [
        "jazz", "live", "strasse",
    ]


# --- group and port ------------------------------------------------------------------


def test_group_ipv4_and_ipv6_normalised() -> None:
    assert valid(group="224.0.1.1").group == "224.0.1.1"
    assert valid(group="FF0E:0::1").group == "ff0e::1"


@pytest.mark.parametrize("bad", ["10.1.2.3", "192.0.2.1", "2001:db8::1"])
def test_group_must_be_multicast(bad: str) -> None:
    field, message = only_error(group=bad)
    assert field == "group" and "not a multicast address" in message


@pytest.mark.parametrize("bad", ["garbage", "239.1.2", "239.1.2.3.4", "ff0e::1::2", ""])
def test_group_garbage(bad: str) -> None:
    field, message = only_error(group=bad)
    assert field == "group" and "not an IPv4 or IPv6 address" in message


def test_port_bounds() -> None:
    assert valid(port=1).port == 1
    assert valid(port=65535).port == 65535
    assert only_error(port=0)[0] == "port"
    assert only_error(port=65536)[0] == "port"
    assert only_error(port="http")[0] == "port"
    assert only_error(port=5004.5)[0] == "port"


def test_port_refuses_booleans() -> None:
    assert only_error(port=True) == ("port", "must be a number, not true or false")


# --- source, network, fallback -------------------------------------------------------


def test_source_required_for_ssm() -> None:
    assert only_error(network="ssm") == ("source", "source is required when network is ssm")
    assert valid(network="ssm", source="192.0.2.10").source == "192.0.2.10"


@pytest.mark.parametrize("bad", ["239.9.9.9", "0.0.0.0", "::", "not-an-ip"])
def test_source_must_be_unicast(bad: str) -> None:
    assert only_error(network="ssm", source=bad)[0] == "source"


def test_source_same_family_as_group() -> None:
    field, message = only_error(network="ssm", source="2001:db8::1")
    assert field == "source" and "both be IPv4 or both be IPv6" in message
    assert valid(group="ff3e::8000:1", network="ssm", source="2001:db8::1").source == "2001:db8::1"


def test_fallback_pair() -> None:
    assert only_error(fallback_ip="192.0.2.7")[0] == "fallback_port"
    assert only_error(fallback_port=6000)[0] == "fallback_ip"
    session = valid(fallback_ip="192.0.2.7", fallback_port=6000)
    assert (session.fallback_ip, session.fallback_port) == ("192.0.2.7", 6000)


def test_fallback_ip_unicast_and_port_bounds() -> None:
    assert only_error(fallback_ip="239.1.1.1", fallback_port=6000)[0] == "fallback_ip"
    assert only_error(fallback_ip="192.0.2.7", fallback_port=0)[0] == "fallback_port"


# --- enums ---------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "bad"), [("scope", "planet"), ("network", "bsm"),
                                            ("stream_type", "tcp"), ("scope", "GLOBAL")])
def test_enums(field: str, bad: str) -> None:
    name, message = only_error(**{field: bad})
    assert name == field and "Input should be" in message


# --- place and coordinates -----------------------------------------------------------


@pytest.mark.parametrize(("lat", "lon", "field"), [(90.1, 0, "lat"), (-91, 0, "lat"),
                                                   (0, 180.5, "lon"), (0, -181, "lon")])
def test_lat_lon_bounds(lat: float, lon: float, field: str) -> None:
    assert only_error(lat=lat, lon=lon)[0] == field


def test_lat_lon_edges_accepted() -> None:
    session = valid(lat=-90, lon=180, place="South Pole")
    assert (session.lat, session.lon) == (-90, 180)


def test_lat_lon_pair() -> None:
    assert only_error(lat=29.6) == ("lon", "lat and lon go together: give both or neither")
    assert only_error(lon=-82.3)[0] == "lat"


def test_lat_lon_must_be_finite_numbers() -> None:
    assert only_error(lat=float("nan"), lon=0)[0] == "lat"
    assert only_error(lat=0, lon=float("inf"))[0] == "lon"
    assert only_error(lat=True, lon=0)[0] == "lat"


# --- mime and ttl --------------------------------------------------------------------


@pytest.mark.parametrize("good", ["video/MP2T", "audio/L16", "application/vnd.foo+json"])
def test_mime_accepts_type_subtype(good: str) -> None:
    assert valid(mime=good).mime == good


@pytest.mark.parametrize("bad", ["video", "video/", "/mp2t", "video/mp2t; rate=1", "vi deo/x"])
def test_mime_syntax(bad: str) -> None:
    field, message = only_error(mime=bad)
    assert field == "mime" and "type/subtype" in message


def test_ttl_bounds_and_default() -> None:
    assert valid().ttl == 3600
    assert valid(ttl=TTL_MIN).ttl == 10
    assert valid(ttl=TTL_MAX).ttl == 7 * 24 * 3600
    assert only_error(ttl=TTL_MIN - 1)[0] == "ttl"
    assert only_error(ttl=TTL_MAX + 1)[0] == "ttl"
    assert only_error(ttl=False)[0] == "ttl"


# --- the shape of the errors ---------------------------------------------------------


def test_unknown_field() -> None:
    assert only_error(colour="blue") == (
        "colour", "unknown field (see the schema for the allowed fields)"
    )


def test_every_broken_rule_is_reported() -> None:
    found = dict(errors(id="BAD", port=0, group="x"))
    assert set(found) == {"id", "port", "group"}


def test_not_an_object_is_blamed_on_the_body() -> None:
    with pytest.raises(ValidationError) as caught:
        session_from_json(["not", "an", "object"])
    assert [e.field for e in field_errors(caught.value)] == ["body"]


def test_record_adds_uri_and_lifetime() -> None:
    record = SessionRecord.model_validate(
        BASE | {"uri": "mcast.example.org/jazz-night", "domain": "example.org",
                "expires_at": 10.0, "updated_at": 5.0}
    )
    assert record.uri == "mcast.example.org/jazz-night"
    assert session_fields()[0] == "id" and "uri" not in session_fields()
