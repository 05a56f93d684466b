"""The query language of msd/query.py: grammar, every error by name, evaluation and ranking."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from geopy.distance import geodesic
from hypothesis import given, settings
from hypothesis import strategies as st

from msd.errors import MsdError
from msd.matching import Hit, evaluate
from msd.query import (
    FILTERS,
    GRAMMAR,
    QUERY_MAX_CHARS,
    QUERY_MAX_DEPTH,
    QUERY_MAX_KEYWORDS,
    WITHIN_DEFAULT_KM,
    WITHIN_MAX_KM,
    And,
    Expr,
    Keyword,
    Not,
    Or,
    Query,
    QueryError,
    format_expr,
    parse,
    positive_keywords,
)
from msd.schema import Scope, SessionRecord, StreamType

# Database off: property tests must leave no .hypothesis directory behind.
FAST = settings(max_examples=300, database=None, deadline=None)

GAINESVILLE_FL = (29.65163, -82.32483)
GAINESVILLE_GA = (34.29788, -83.82407)

a, b, c, d = (Keyword(w) for w in "abcd")


def expr(text: str) -> Expr:
    return parse(text).expr


def refused(text: str) -> str:
    with pytest.raises(QueryError) as caught:
        parse(text)
    return str(caught.value)


# --- the boolean expression ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("a", a),
        ("a b", And((a, b))),
        ("a AND b", And((a, b))),
        ("a b c", And((a, b, c))),
        ("a OR b", Or((a, b))),
        ("a OR b OR c", Or((a, b, c))),
        # NOT > AND > OR
        ("a OR b c", Or((a, And((b, c))))),
        ("a b OR c", Or((And((a, b)), c))),
        ("a AND b OR c AND d", Or((And((a, b)), And((c, d))))),
        ("a NOT b", And((a, Not(b)))),
        ("NOT b a", And((Not(b), a))),
        ("a OR NOT b c", Or((a, And((Not(b), c))))),
        ("a NOT b OR c", Or((And((a, Not(b))), c))),
        # parentheses group
        ("(a OR b) c", And((Or((a, b)), c))),
        ("a (b OR c)", And((a, Or((b, c))))),
        ("a NOT (b OR c)", And((a, Not(Or((b, c)))))),
        ("((a))", a),
        ("a (b c)", And((a, And((b, c))))),
        ("NOT NOT a", Not(Not(a))),
        # case-insensitive operators; '-' is NOT
        ("a and b or c", Or((And((a, b)), c))),
        ("a Or b", Or((a, b))),
        ("a nOt b", And((a, Not(b)))),
        ("a -b", And((a, Not(b)))),
        ("a -(b OR c)", And((a, Not(Or((b, c)))))),
        ("a --b", And((a, Not(Not(b))))),
        # spacing
        ("  a\tb\n", And((a, b))),
        ("(a)(b)", And((a, b))),
    ],
)
def test_grammar(text: str, tree: Expr) -> None:
    assert expr(text) == tree


def test_keywords_are_normalised_like_the_schema() -> None:
    assert expr("JAZZ") == Keyword("jazz")
    assert expr("Straße") == Keyword("strasse")  # case folding, as the schema stores it
    assert expr("hip-hop") == Keyword("hip-hop")  # '-' inside a word is part of it
    assert expr("a" * 64) == Keyword("a" * 64)


def test_quotes_make_operator_words_and_dashes_keywords() -> None:
    assert expr('"or" jazz') == And((Keyword("or"), Keyword("jazz")))
    assert expr('"NOT"') == Keyword("not")
    assert expr('"-5"') == Keyword("-5")
    assert expr('-"-5" jazz') == And((Not(Keyword("-5")), Keyword("jazz")))
    assert expr('(" jazz ")') == Keyword("jazz")


@pytest.mark.parametrize(
    "text", ["a", "a b OR c", "NOT (a OR b) c", '"or" -"-x" y', "a (b c) OR (d OR a)"]
)
def test_format_expr_reads_back_to_the_same_tree(text: str) -> None:
    tree = expr(text)
    assert expr(format_expr(tree)) == tree


def test_positive_keywords_are_the_ones_to_fetch() -> None:
    assert positive_keywords(parse("jazz blues NOT rock")) == ["jazz", "blues"]
    assert positive_keywords(parse("a OR a b a")) == ["a", "b"]
    assert positive_keywords(parse("NOT (NOT a) b")) == ["a", "b"]  # twice negated: fetched
    assert positive_keywords(parse("a -(b OR NOT c)")) == ["a", "c"]
    assert positive_keywords(parse("a -(b c)")) == ["a"]


# --- filters --------------------------------------------------------------------------------------


def test_no_filters_gives_the_defaults() -> None:
    assert parse("jazz") == Query(Keyword("jazz"))
    assert parse("jazz").within_km == WITHIN_DEFAULT_KM == 100


@pytest.mark.parametrize(
    ("text", "near"),
    [
        ("jazz near:29.6,-82.3", (29.6, -82.3)),
        ("near:29.6,-82.3 jazz", (29.6, -82.3)),
        ("jazz near:+90,180", (90.0, 180.0)),
        ("jazz near:-90,-180", (-90.0, -180.0)),
        ("jazz near:.5,0.", (0.5, 0.0)),
        ('jazz near:"29.6, -82.3"', (29.6, -82.3)),
        ('jazz near:"Gainesville, FL"', "Gainesville, FL"),
        ('jazz NEAR:" Paris, France "', "Paris, France"),
        ("jazz near:Gainesville", "Gainesville"),
        ("jazz near:Gainesville,FL", "Gainesville,FL"),
    ],
)
def test_near(text: str, near: tuple[float, float] | str) -> None:
    assert parse(text).near == near
    assert parse(text).expr == Keyword("jazz")


@pytest.mark.parametrize(
    ("text", "km"),
    [("within:50", 50.0), ("within:50km", 50.0), ("within:2.5 ", 2.5), ("within:0.001", 0.001),
     ("WITHIN:7KM", 7.0), (f"within:{WITHIN_MAX_KM}", WITHIN_MAX_KM)],
)
def test_within(text: str, km: float) -> None:
    assert parse(f"jazz near:1,2 {text}").within_km == km


def test_scope_type_and_mime() -> None:
    query = parse("jazz scope:LOCAL type:udp mime:video/MP2T")
    assert (query.scope, query.stream_type, query.mime) == (Scope.LOCAL, StreamType.UDP,
                                                             "video/MP2T")
    assert parse("jazz scope:global type:RTP").stream_type is StreamType.RTP
    assert parse("jazz scope:global").scope is Scope.GLOBAL


# --- every error, by name -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # empty
        ("", "the query is empty"),
        ("   \t", "the query is empty"),
        # unbalanced parentheses
        ("(jazz", "'(' at column 1 is never closed"),
        ("((a) b", "'(' at column 1 is never closed"),
        ("jazz)", "')' at column 5 has no matching '('"),
        ("(a))(b", "')' at column 4 has no matching '('"),
        ("()", "empty parentheses at column 1"),
        ("jazz ( )", "empty parentheses at column 6"),
        # dangling operators
        ("jazz OR", "OR at column 6 needs a term after it"),
        ("jazz AND", "AND at column 6 needs a term after it"),
        ("jazz NOT", "NOT at column 6 needs a term after it"),
        ("NOT", "NOT at column 1 needs a term after it"),
        ("OR jazz", "OR at column 1 needs a term before it"),
        ("jazz (AND a)", "AND at column 7 needs a term before it"),
        ("jazz AND OR blues", "AND at column 6 needs a term after it"),
        ("(jazz OR) a", "OR at column 7 needs a term after it"),
        ("jazz -", "'-' at column 6 must stand right before a keyword"),
        ("(jazz -)", "'-' at column 7 must stand right before a keyword"),
        # filters
        ("jazz xyz:1", "unknown filter 'xyz:' at column 6; the filters are near:, within:"),
        ("jazz http://example.org", "unknown filter 'http:' at column 6"),
        ("jazz :x", "':' (keywords have none) at column 6"),
        ("near:1,2 jazz near:3,4", "filter near: is given twice (columns 1 and 15)"),
        ("jazz scope:local SCOPE:global", "filter scope: is given twice (columns 6 and 18)"),
        ("(jazz near:1,2)", "filter near: at column 7 applies to the whole query"),
        ("jazz OR near:1,2", "filter near: at column 9 cannot be joined with AND, OR or NOT"),
        ("near:1,2 AND jazz", "filter near: at column 1 cannot be joined with AND, OR or NOT"),
        ("NOT near:1,2 jazz", "filter near: at column 5 cannot be joined with AND, OR or NOT"),
        ("-near:1,2 jazz", "filter near: at column 2 cannot be joined"),
        ("jazz near:", "filter near: at column 6 needs a value, e.g. near:29.6,-82.3"),
        ('jazz near:""', "filter near: at column 6 needs a value"),
        ("jazz scope:", "filter scope: at column 6 needs a value, e.g. scope:local"),
        # bad coordinates
        ("jazz near:91,0", "filter near: at column 6: latitude 91 is outside -90..90"),
        ("jazz near:-90.5,0", "latitude -90.5 is outside -90..90"),
        ("jazz near:0,181", "filter near: at column 6: longitude 181 is outside -180..180"),
        ("jazz near:0,-180.01", "longitude -180.01 is outside -180..180"),
        ("jazz near:29.6", "filter near: at column 6 must be LAT,LON in decimal degrees"),
        ("jazz near:1,2,3", "must be LAT,LON in decimal degrees"),
        ("jazz near:1..2,3", "must be LAT,LON in decimal degrees"),
        ("jazz near:" + "9" * 400 + ",0", "latitude 999"),
        (f'jazz near:"{"x" * 201}"', "a place name has at most 200 characters"),
        # bad within
        ("jazz near:1,2 within:0", "filter within: at column 15 must be kilometres, 0 < KM <="),
        ("jazz near:1,2 within:-5", "must be kilometres"),
        ("jazz near:1,2 within:20037.6", "must be kilometres, 0 < KM <= 20037.5"),
        ("jazz near:1,2 within:abc", "must be kilometres"),
        ("jazz near:1,2 within:nan", "must be kilometres"),
        ("jazz near:1,2 within:inf", "must be kilometres"),
        ("jazz near:1,2 within:5mi", "must be kilometres"),
        ("jazz within:5", "filter within: at column 6 needs near:"),
        # scope, type, mime
        ("jazz scope:regional", "scope: at column 6 must be global or local; got 'regional'"),
        ("jazz type:tcp", "filter type: at column 6 must be rtp or udp; got 'tcp'"),
        ("jazz mime:video", "filter mime: at column 6 must be type/subtype, e.g. mime:video/MP2T"),
        # quotes
        ('"jazz', "the quote at column 1 is never closed"),
        ('jazz"x"', "the quote at column 5 must start a new term"),
        ('"a"b', "put a space after the closing quote at column 3"),
        ('"jazz night"', "the quoted keyword at column 1 has spaces"),
        ('jazz ""', "empty quotes at column 6"),
        ('"a:b"', "keyword 'a:b' at column 1 must be one word"),
        ('"a(b"', "must be one word: no spaces, quotes, parentheses or ':'"),
        # keywords and limits
        ("a" * 65, f"the keyword at column 1 is longer than {64} characters"),
        ("jazz\x00", "control character U+0000 at column 5"),
        ("a " * 600, f"the query has 1200 characters; the limit is {QUERY_MAX_CHARS}"),
        # no keyword that is not negated
        ("NOT jazz", "needs at least one keyword that is not negated"),
        ("-jazz", "needs at least one keyword that is not negated"),
        ("NOT (a OR b)", "needs at least one keyword that is not negated"),
        ("near:1,2", "needs at least one keyword that is not negated"),
        ("scope:local type:rtp", "needs at least one keyword that is not negated"),
        ("a OR NOT b", "'NOT b' matches sessions without any keyword of the query"),
        ("a OR (NOT b NOT c)", "'NOT b NOT c' matches sessions without any keyword"),
        ("NOT (a NOT b)", "'NOT (a NOT b)' matches sessions without any keyword"),
    ],
)
def test_errors(text: str, message: str) -> None:
    assert message in refused(text)


def test_length_limit_is_inclusive() -> None:
    fits = ("a " * QUERY_MAX_CHARS)[:QUERY_MAX_CHARS]
    with pytest.raises(QueryError, match="more than 32 keywords"):
        parse(fits)  # the length passes; the keyword count is what stops it
    assert "limit is 1024" in refused(fits + "a")


def test_keyword_limit() -> None:
    words = [f"k{i}" for i in range(QUERY_MAX_KEYWORDS)]
    assert positive_keywords(parse(" ".join(words))) == words
    message = refused(" ".join([*words, "extra"]))
    assert f"more than {QUERY_MAX_KEYWORDS} keywords (the next is at column " in message
    assert message.endswith("split the search into several queries")


def test_depth_limit() -> None:
    deepest = "(" * QUERY_MAX_DEPTH + "a" + ")" * QUERY_MAX_DEPTH
    assert expr(deepest) == a
    assert expr("NOT " * QUERY_MAX_DEPTH + "a") is not None  # an even number of NOTs
    too_deep = "(" * (QUERY_MAX_DEPTH + 1) + "a" + ")" * (QUERY_MAX_DEPTH + 1)
    assert "nests deeper than 16 levels of parentheses and NOT at column 17" in refused(too_deep)
    assert "nests deeper than 16" in refused("a " + "NOT " * (QUERY_MAX_DEPTH + 1) + "b")
    assert "nests deeper than 16" in refused("a " + "-" * (QUERY_MAX_DEPTH + 1) + "b")


def test_every_error_is_an_msd_error() -> None:
    assert issubclass(QueryError, MsdError)


def test_grammar_help_states_every_filter_and_limit() -> None:
    for name in FILTERS:
        assert f"{name}:" in GRAMMAR
    for number in ("1024", "32 keywords", "16 levels", "20037.5", "default 100"):
        assert number in GRAMMAR
    for line in GRAMMAR.splitlines():
        assert len(line) <= 92  # fits a terminal beside argparse's indent


# --- properties -----------------------------------------------------------------------------------

# Characters that mean something to the tokenizer, plus letters, so random text reaches the parser.
_QUERY_ALPHABET = st.sampled_from([*'()"-: ,.\t', "AND", "OR", "NOT", "near:", "within:",
                                   "scope:", "a", "b", "1", "9", "é", "ß"])


@FAST
@given(st.one_of(st.text(max_size=300), st.lists(_QUERY_ALPHABET, max_size=120).map("".join)))
def test_any_text_parses_or_raises_query_error(text: str) -> None:
    started = time.monotonic()
    try:
        query = parse(text)
    except QueryError as error:
        assert str(error)
    else:
        assert positive_keywords(query)
        assert expr(format_expr(query.expr)) == query.expr
    assert time.monotonic() - started < 5  # generous: a hang, not a benchmark


def _exprs() -> st.SearchStrategy[Expr]:
    # Normalised words, as parse() produces them.
    words = st.sampled_from(["a", "b", "c", "or", "-x", "é"]).map(Keyword)
    return st.recursive(
        words,
        lambda inner: st.one_of(
            inner.map(Not),
            st.lists(inner, min_size=2, max_size=3).map(lambda parts: And(tuple(parts))),
            st.lists(inner, min_size=2, max_size=3).map(lambda parts: Or(tuple(parts))),
        ),
        max_leaves=12,
    )


@FAST
@given(_exprs())
def test_format_then_parse_is_the_identity(tree: Expr) -> None:
    try:
        parsed = expr(format_expr(tree))
    except QueryError as error:
        # Only the fetchability rule may refuse a well-formed tree of this size.
        assert "not negated" in str(error) or "matches sessions without" in str(error)
        assert evaluate(Query(tree), {"all": [_session("u", [])]})  # indeed it matches ∅
    else:
        assert parsed == Query(tree).expr


# --- evaluation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeSession:
    uri: str
    title: str
    keywords: Sequence[str]
    scope: str = "global"
    stream_type: str = "rtp"
    mime: str = "video/MP2T"
    lat: float | None = None
    lon: float | None = None


def _session(uri: str, keywords: Sequence[str], *, title: str | None = None, scope: str = "global",
             stream_type: str = "rtp", mime: str = "video/MP2T", lat: float | None = None,
             lon: float | None = None) -> FakeSession:
    return FakeSession(uri, title or uri, keywords, scope, stream_type, mime, lat, lon)


SETS = {"none": ["c"], "a": ["a"], "b": ["b"], "ab": ["a", "b"]}
ALL = {"any": [_session(uri, words) for uri, words in SETS.items()]}


def uris(text: str, sessions: dict[str, list[FakeSession]] | None = None) -> list[str]:
    return sorted(hit.session.uri for hit in evaluate(parse(text), sessions or ALL))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a", ["a", "ab"]),
        ("a b", ["ab"]),
        ("a OR b", ["a", "ab", "b"]),
        ("a NOT b", ["a"]),
        ("a -b", ["a"]),
        ("(a OR b) NOT (a b)", ["a", "b"]),
        ("b NOT NOT a", ["ab"]),
        ("a OR b NOT a", ["a", "ab", "b"]),
        ("(a OR c) NOT b", ["a", "none"]),
    ],
)
def test_truth_tables(text: str, expected: list[str]) -> None:
    assert uris(text) == expected


def test_not_uses_the_sessions_own_keywords_and_answers_are_deduplicated() -> None:
    both = _session("both", ["Jazz", "BLUES"])  # as a plain object might spell them
    answers = {"jazz": [both, _session("j", ["jazz"])], "blues": [both]}
    hits = evaluate(parse("jazz OR blues"), answers)
    assert [hit.session.uri for hit in hits] == ["both", "j"]
    assert hits[0].matched == ("jazz", "blues")
    assert [h.session.uri for h in evaluate(parse("jazz NOT blues"), answers)] == ["j"]
    assert evaluate(parse("jazz"), {}) == []


def test_ranking_keywords_then_distance_then_title() -> None:
    sessions = [
        _session("one-far", ["a"], title="Zeta", lat=3.0, lon=0.0),
        _session("two-far", ["a", "b"], title="Alpha", lat=2.0, lon=0.0),
        _session("two-near", ["a", "b"], title="Beta", lat=1.0, lon=0.0),
        _session("one-near-b", ["a"], title="Beta", lat=0.5, lon=0.0),
        _session("one-near-a", ["a"], title="alpha", lat=0.5, lon=0.0),
    ]

    def fake_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
        return abs(lat1 - lat2) * 100

    hits = evaluate(parse("a OR b near:0,0 within:1000"), {"a": sessions}, geodesic_km=fake_km)
    assert [h.session.uri for h in hits] == [
        "two-near", "two-far", "one-near-a", "one-near-b", "one-far"]
    assert [h.distance_km for h in hits] == [100, 200, 50, 50, 300]
    assert [h.matched for h in hits][:3] == [("a", "b"), ("a", "b"), ("a",)]
    # without near: no distance; keyword count, then title
    plain = evaluate(parse("a OR b"), {"a": sessions})
    assert [h.session.uri for h in plain] == [
        "two-far", "two-near", "one-near-a", "one-near-b", "one-far"]
    assert {h.distance_km for h in plain} == {None}


def test_within_is_inclusive_and_sessions_without_coordinates_are_left_out() -> None:
    sessions = [
        _session("edge", ["a"], lat=1.0, lon=0.0),
        _session("beyond", ["a"], lat=1.01, lon=0.0),
        _session("nowhere", ["a"]),
    ]

    def fake_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
        return abs(lat1 - lat2) * 100

    answers = {"a": sessions}
    near = evaluate(parse("a near:0,0 within:100"), answers, geodesic_km=fake_km)
    assert [h.session.uri for h in near] == ["edge"]
    default = evaluate(parse("a near:0,0"), answers, geodesic_km=fake_km)  # 100 km by default
    assert [h.session.uri for h in default] == ["edge"]
    assert uris("a", answers) == ["beyond", "edge", "nowhere"]


def test_near_with_the_real_geodesic() -> None:
    fl = _session("fl", ["jazz"], lat=GAINESVILLE_FL[0], lon=GAINESVILLE_FL[1])
    ga = _session("ga", ["jazz"], lat=GAINESVILLE_GA[0], lon=GAINESVILLE_GA[1])
    apart = float(geodesic(GAINESVILLE_FL, GAINESVILLE_GA).km)
    assert 500 < apart < 560
    answers = {"jazz": [ga, fl]}
    hits = evaluate(parse("jazz near:29.6,-82.3 within:600"), answers)
    assert [h.session.uri for h in hits] == ["fl", "ga"]
    assert hits[0].distance_km == pytest.approx(
        geodesic((29.6, -82.3), GAINESVILLE_FL).km, rel=1e-9)
    assert hits[0].distance_km is not None and hits[0].distance_km < 10
    assert [h.session.uri for h in evaluate(parse("jazz near:29.6,-82.3"), answers)] == ["fl"]

    def geopy_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
        return float(geodesic((lat1, lon1), (lat2, lon2)).km)

    query = parse(f"jazz near:{GAINESVILLE_FL[0]},{GAINESVILLE_FL[1]} within:{apart + 1:.3f}")
    far = evaluate(query, answers, geodesic_km=geopy_km)
    assert far[1].distance_km == pytest.approx(apart)


def test_filters_on_scope_type_and_mime() -> None:
    sessions = [
        _session("g-rtp-ts", ["a"]),
        _session("l-udp-ts", ["a"], scope="local", stream_type="udp"),
        _session("g-rtp-mp4", ["a"], mime="video/mp4"),
    ]
    answers = {"a": sessions}
    assert uris("a scope:local", answers) == ["l-udp-ts"]
    assert uris("a scope:global", answers) == ["g-rtp-mp4", "g-rtp-ts"]
    assert uris("a type:udp", answers) == ["l-udp-ts"]
    assert uris("a type:rtp", answers) == ["g-rtp-mp4", "g-rtp-ts"]
    assert uris("a mime:VIDEO/mp2t", answers) == ["g-rtp-ts", "l-udp-ts"]  # case-insensitive
    assert uris("a mime:video/MP4 type:rtp scope:global", answers) == ["g-rtp-mp4"]


def test_a_place_must_be_geocoded_before_evaluating() -> None:
    with pytest.raises(ValueError, match="resolve_near"):
        evaluate(parse('jazz near:"Paris, France"'), ALL)


def test_schema_records_are_sessions() -> None:
    record = SessionRecord.model_validate({
        "id": "jazz-night", "title": "Jazz night", "keywords": ["Jazz", "live"],
        "group": "239.1.2.3", "port": 5004, "scope": "local", "stream_type": "udp",
        "lat": 29.65, "lon": -82.32, "uri": "mcast.ufl.edu/jazz-night", "domain": "ufl.edu",
        "expires_at": 1.0, "updated_at": 0.0,
    })
    hits: list[Hit[SessionRecord]] = evaluate(
        parse("jazz live near:29.6,-82.3 within:10 scope:local type:udp mime:video/mp2t"),
        {"jazz": [record], "live": [record]},
    )
    assert [(h.session.uri, h.matched) for h in hits] == [
        ("mcast.ufl.edu/jazz-night", ("jazz", "live"))]
