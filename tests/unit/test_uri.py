"""Parsing bookmarks and --dns arguments: good forms accepted, bad ones named."""

from __future__ import annotations

import pytest

from client.errors import ClientError
from client.uri import parse_uri
from urs.locate import LocateError, parse_dns_server


@pytest.mark.parametrize(
    "text",
    ["mcast.ufl.edu/gators", "http://mcast.ufl.edu/gators", "mcast://mcast.ufl.edu/gators/",
     "MCAST.UFL.EDU/gators", "mcast.ufl.edu:8080/gators"],
)
def test_uri_forms(text: str) -> None:
    uri = parse_uri(text)
    assert (uri.domain, uri.id) == ("ufl.edu", "gators")
    assert str(uri) == "mcast.ufl.edu/gators"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ufl.edu/gators", "must be mcast.<domain>"),
        ("mcast.ufl.edu", "expected mcast.<domain>/<id>"),
        ("mcast.ufl.edu/", "expected mcast.<domain>/<id>"),
        ("mcast.ufl..edu/x", "not a valid domain"),
        ("mcast.ufl.edu/Gators", "the id must be"),
        ("mcast.ufl.edu/a/b", "the id must be"),
        ("mcast.ufl.edu/..", "the id must be"),
    ],
)
def test_bad_uri_is_named(text: str, message: str) -> None:
    with pytest.raises(ClientError, match=message):
        parse_uri(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:2000", ("127.0.0.1", 2000)), ("127.0.0.1", ("127.0.0.1", 53)),
     ("[::1]:5300", ("::1", 5300)), ("::1", ("::1", 53))],
)
def test_dns_server_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_dns_server(text) == expected


@pytest.mark.parametrize("text", ["localhost:53", "127.0.0.1:0", "127.0.0.1:x", "[::1]5300"])
def test_bad_dns_server_is_named(text: str) -> None:
    with pytest.raises(LocateError):
        parse_dns_server(text)
