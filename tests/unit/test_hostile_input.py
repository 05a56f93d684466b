"""Every decoder under property tests: whatever the bytes, an answer or its own named error.

The codec has its own in test_codec.py; here SAP, SDP, the SAP bridge, the URS's and the
MSD's JSON request parsers, the query language and the key files, each fed random input
and mutations of valid input, plus the time-bounded fuzz run (`mdns fuzz`) itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from client.cli import main
from client.fuzz import build_targets, fuzz
from client.sap_ingest import IngestError, session_from_sdp
from msd.api import _hops, _object, _reply_path, _search
from msd.errors import MsdError
from msd.keys import KeyFileError, parse_key_lines
from msd.query import QUERY_MAX_CHARS, QueryError, parse
from msd.sap import SapError, announcement, encode
from msd.sap import decode as sap_decode
from msd.schema import Session
from msd.sessions import parse_record
from urs.api import RequestRejected, parse_json_body
from urs.bootstrap import DesignatedUpdate, MemberUpdate
from urs.sdp_parse import SdpError
from urs.sdp_parse import parse as sdp_parse

FAST = settings(max_examples=300, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SECOND = 1.0  # no single input may take this long: a generous bound, not a benchmark

SDP = (b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=Jazz night\r\nc=IN IP4 239.1.2.3/127\r\n"
       b"t=0 0\r\na=keywds:jazz live\r\nm=video 5004 RTP/AVP 33\r\na=rtpmap:33 MP2T/90000\r\n")
SESSION = {"id": "jazz-night", "title": "Jazz", "keywords": ["jazz", "live"],
           "group": "239.1.2.3", "port": 5004, "lat": 29.6, "lon": -82.3}
ROUTED = {"keyword": "jazz", "shadow": True, "near": [29.6, -82.3], "within_km": 50,
          "hops": ["ufl.edu"], "reply_to": "127.0.0.1:9000", "request": "ab12",
          "record": {"uri": "mcast.ufl.edu/x", "domain": "ufl.edu", **SESSION, "id": "x",
                     "expires_at": 4_000_000_000}}


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """`seed` with a few random edits: flips, insertions, deletions, repeats, cuts."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.integers(0, 4))
        if op == 0 and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == 1:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == 2:
            del data[at:at + draw(st.integers(1, 32))]
        elif op == 3:
            data[at:at] = bytes(data[at:at + 8]) * draw(st.integers(2, 200))
        else:
            data = data[:at]
    return bytes(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)


def _within_a_second(call: Any, *args: Any) -> Any:
    began = time.perf_counter()
    try:
        return call(*args)
    finally:
        assert time.perf_counter() - began < SECOND


# --- SAP, SDP and the bridge between them -------------------------------------------------------


def _sap_pipeline(data: bytes) -> None:
    try:
        packet = sap_decode(data)
        session_from_sdp(sdp_parse(packet.payload), ttl=600)
    except (SapError, SdpError, IngestError):
        pass


@FAST
@given(st.one_of(
    st.binary(max_size=2000),
    mutated(encode(announcement(SDP, origin=ipaddress.ip_address("10.0.0.1")))),
    mutated(encode(announcement(SDP, origin=ipaddress.ip_address("10.0.0.1"), compressed=True))),
))
def test_sap_packets_become_a_session_or_a_named_error(data: bytes) -> None:
    _within_a_second(_sap_pipeline, data)


@FAST
@given(st.one_of(st.binary(max_size=3000), mutated(SDP),
                 st.text(max_size=2000).map(lambda t: ("v=0\r\n" + t).encode())))
def test_sdp_documents_parse_or_raise_sdp_errors(data: bytes) -> None:
    with contextlib.suppress(SdpError):
        _within_a_second(sdp_parse, data)


def test_a_compression_bomb_stops_at_the_limit() -> None:
    bomb = encode(announcement(b"v=0\r\n" + b"a" * 5_000_000, compressed=True,
                               origin=ipaddress.ip_address("10.0.0.1")))
    assert len(bomb) < 8192  # a legal packet size, five megabytes inflated
    with pytest.raises(SapError, match="inflates past"):
        _within_a_second(sap_decode, bomb)


# --- the JSON request parsers -------------------------------------------------------------------


def _urs_body(data: bytes) -> None:
    try:
        body = parse_json_body(data)
    except RequestRejected as exc:
        assert exc.status == 400 and exc.reason == "bad_json"
        return
    for model in (Session, DesignatedUpdate, MemberUpdate):
        with contextlib.suppress(ValidationError):
            model.model_validate(body)


@FAST
@given(st.one_of(st.binary(max_size=2000), mutated(json.dumps(SESSION).encode()),
                 json_values.map(lambda v: json.dumps(v).encode()),
                 st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)))
def test_urs_bodies_are_json_and_a_model_or_a_named_refusal(data: bytes) -> None:
    _within_a_second(_urs_body, data)


def _msd_body(data: bytes) -> None:
    try:
        body = _object(data)
    except MsdError:
        return
    for check in (_search, _reply_path, _hops, lambda b: parse_record(b.get("record"))):
        with contextlib.suppress(MsdError):
            check(body)


@FAST
@given(st.one_of(st.binary(max_size=2000), mutated(json.dumps(ROUTED).encode()),
                 json_values.map(lambda v: json.dumps({"keyword": v, "near": v, "hops": v,
                                                       "reply_to": v, "record": v,
                                                       "within_km": v}).encode())))
def test_msd_bodies_are_checked_field_by_field_without_a_crash(data: bytes) -> None:
    _within_a_second(_msd_body, data)


def test_msd_search_fields_take_only_what_they_say() -> None:
    for body, match in (({"keyword": "x" * 65}, "keyword must be 1-64"),
                        ({"keyword": "jazz", "near": "12", "within_km": 5}, "near must be"),
                        ({"keyword": "jazz", "near": [1, True], "within_km": 5}, "near must"),
                        ({"keyword": "jazz", "near": [1, "9" * 40], "within_km": 5}, "near"),
                        ({"keyword": "jazz", "near": [91, 0], "within_km": 5}, "LAT -90..90"),
                        ({"keyword": "jazz", "near": [1, 1], "within_km": "inf"}, "within_km")):
        with pytest.raises(MsdError, match=match):
            _search(body)
    for body in ({"reply_to": "h:" + "9" * 50, "request": "r", "hops": ["a"]},
                 {"reply_to": "h:１２", "request": "r", "hops": ["a"]},
                 {"reply_to": "x" * 70 + ":1", "request": "r", "hops": ["a"]}):
        with pytest.raises(MsdError, match="reply_to"):
            _reply_path(body)
    with pytest.raises(MsdError, match="hops"):
        _hops({"hops": ["a" * 300]})


# --- the query language and the key files -------------------------------------------------------

_WORDS = st.sampled_from(["jazz", "AND", "OR", "NOT", "(", ")", "-", '"', "near:1,2",
                          'near:"Paris, France"', "within:5", "scope:local", "type:rtp",
                          "mime:a/b", ":", "near:", "within:1e999", "é", "\t"])


@FAST
@given(st.one_of(st.text(max_size=QUERY_MAX_CHARS + 50),
                 st.lists(_WORDS, max_size=400).map(" ".join),
                 st.integers(1, 600).map(lambda n: "(" * n + "jazz" + ")" * n),
                 st.integers(1, 600).map(lambda n: "NOT " * n + "jazz")))
def test_queries_parse_or_raise_query_errors(text: str) -> None:
    with contextlib.suppress(QueryError):
        _within_a_second(parse, text)


@FAST
@given(st.one_of(st.text(max_size=2000),
                 mutated(b"ufl.edu 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n# c\n").map(
                     lambda b: b.decode("utf-8", "replace"))))
def test_key_files_parse_or_name_the_line(text: str) -> None:
    try:
        keys = _within_a_second(lambda: parse_key_lines(text, source="f"))
    except KeyFileError as exc:
        assert str(exc).startswith("f:")
    else:
        assert all(len(key) == 32 for key in keys.values())


# --- the time-bounded fuzz run ------------------------------------------------------------------


def test_the_fuzz_run_covers_every_decoder_and_finds_nothing(capsys: Any) -> None:
    report = fuzz(seconds=2.0, targets=[t.name for t in build_targets()], seed=7)
    assert report["crashes"] == 0 and report["hangs"] == 0, report
    assert set(report["targets"]) == {"codec", "sap", "sdp", "urs-json", "msd-json", "query",
                                      "keys"}
    assert all(t["inputs"] > 10 for t in report["targets"].values())
    assert main(["fuzz", "--seconds", "0.5", "--target", "query", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["inputs"] > 0 and list(printed["targets"]) == ["query"]
