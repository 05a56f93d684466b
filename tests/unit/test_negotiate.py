"""Content negotiation of the URS: q-values, specificity, and the default for programs."""

from __future__ import annotations

from urs.negotiate import negotiate

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
OFFERS = ("application/json", "application/sdp", "text/html")


def test_negotiate_honours_q_values() -> None:
    assert negotiate(None, OFFERS) == "application/json"
    assert negotiate("*/*", OFFERS) == "application/json"
    assert negotiate(BROWSER_ACCEPT, OFFERS) == "text/html"
    assert negotiate("application/sdp", OFFERS) == "application/sdp"
    assert negotiate("text/html;q=0.5, application/json;q=0.9", OFFERS) == "application/json"
    assert negotiate("text/*, */*;q=0.1", OFFERS) == "text/html"
    assert negotiate("text/html;q=0, */*", OFFERS) == "application/json"
    assert negotiate("image/png", OFFERS) is None
    assert negotiate("text/html;q=bogus, application/sdp", OFFERS) == "application/sdp"


def test_no_offers() -> None:
    assert negotiate(None, ()) is None
