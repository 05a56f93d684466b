"""The search query language: a pure tokenizer and parser (docs/query.md).

msd.matching evaluates a parsed query over the sessions found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from msd.errors import MsdError
from msd.schema import KEYWORD_MAX, PLACE_MAX, Scope, StreamType

# Limits (docs/query.md): each bounds the work one query can cause.
QUERY_MAX_CHARS = 1024
QUERY_MAX_KEYWORDS = 32  # keyword occurrences in the boolean expression
QUERY_MAX_DEPTH = 16  # nesting of parentheses and NOT
WITHIN_DEFAULT_KM = 100.0
WITHIN_MAX_KM = 20_037.5  # half the Earth's circumference: every point is within it
FILTERS = ("near", "within", "scope", "type", "mime")

GRAMMAR = """\
query    := (expr | filter)+          ; terms separated by spaces
expr     := and_expr ("OR" and_expr)*
and_expr := unary (["AND"] unary)*    ; adjacent terms are ANDed
unary    := ("NOT" | "-") unary | "(" expr ")" | keyword | '"' keyword '"'
filter   := near:LAT,LON | near:PLACE | near:"PLACE, REGION" | within:KM
          | scope:local|global | type:rtp|udp | mime:TYPE/SUBTYPE

NOT binds tightest, then AND, then OR; parentheses group. Operators are case-insensitive;
-jazz is NOT jazz. Quote a keyword that is an operator word or starts with '-' ("or").
Keywords match as sessions store them: case-folded, 1-64 characters, one word.
Filters apply to the whole query: each at most once, outside parentheses, not negated.
  near:29.6,-82.3          decimal degrees (lat -90..90, lon -180..180)
  near:"Gainesville, FL"   a city from the offline gazetteer: city[, state or country]
  within:50  within:50km   kilometres from near:, 0 < KM <= 20037.5; default 100
  scope:local|global  type:rtp|udp  mime:video/MP2T (case-insensitive)
A query needs a keyword that is not negated: sessions are fetched per keyword and NOT only
removes those whose own keywords contain the word. Ranking: query keywords matched, then
distance, then title. Limits: 1024 characters, 32 keywords, 16 levels of ( and NOT.

Examples:
  jazz near:29.6,-82.3
  jazz OR blues NOT (radio OR podcast) scope:global
  lecture -recorded near:"Paris, France" within:20 type:rtp
"""


class QueryError(MsdError):
    """A search query is malformed; the message says what to fix and at which column."""


@dataclass(frozen=True, slots=True)
class Keyword:
    """True for a session whose own keyword list contains `word`."""
    word: str


@dataclass(frozen=True, slots=True)
class And:
    """True when every part is."""
    parts: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """True when any part is."""
    parts: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """True when its part is not."""
    part: Expr


Expr = Keyword | And | Or | Not


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: the boolean expression over keywords and the filters beside it."""
    expr: Expr
    near: tuple[float, float] | str | None = None  # (lat, lon), or a place to geocode
    within_km: float = WITHIN_DEFAULT_KM
    scope: Scope | None = None
    stream_type: StreamType | None = None
    mime: str | None = None


_Kind = Literal["word", "quoted", "(", ")", "AND", "OR", "NOT", "filter"]


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    text: str
    column: int  # 1-based, as people count
    name: str = ""  # a filter's name


_OPERATORS: dict[str, _Kind] = {"and": "AND", "or": "OR", "not": "NOT"}
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_COORDINATES = re.compile(rf"\s*({_NUMBER})\s*,\s*({_NUMBER})\s*")
_LOOKS_NUMERIC = re.compile(r"[\d\s+\-.,]+")  # meant as coordinates, so checked as such
_WITHIN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:km)?", re.IGNORECASE)
# RFC 6838 restricted-name, type "/" subtype, as msd/schema.py checks it.
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")
_KEYWORD_FORBIDDEN = re.compile(r'[\s"():]')
_EXAMPLES = {"near": "29.6,-82.3", "within": "50", "scope": "local", "type": "rtp",
             "mime": "video/MP2T"}


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        char, column = text[i], i + 1
        if char.isspace():
            i += 1
        elif char in "()":
            tokens.append(_Token("(" if char == "(" else ")", char, column))
            i += 1
        elif char == "-":
            if i + 1 == n or text[i + 1].isspace() or text[i + 1] == ")":
                raise QueryError(f"'-' at column {column} must stand right before a keyword "
                                 "or '(' (write -jazz for NOT jazz)")
            tokens.append(_Token("NOT", "-", column))
            i += 1
        elif char == '"':
            value, i = _quoted(text, i)
            tokens.append(_Token("quoted", value, column))
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in '()"':
                i += 1
            word = text[start:i]
            if ":" in word:
                name, _, value = word.partition(":")
                if name.casefold() not in FILTERS:
                    known = ", ".join(f + ":" for f in FILTERS)
                    what = f"unknown filter '{name}:'" if name else "':' (keywords have none)"
                    raise QueryError(f"{what} at column {column}; the filters are {known}")
                if not value and i < n and text[i] == '"':
                    value, i = _quoted(text, i)
                tokens.append(_Token("filter", value, column, name.casefold()))
            else:
                kind = _OPERATORS.get(word.casefold(), "word")
                tokens.append(_Token(kind, word.upper() if kind != "word" else word, column))
            if i < n and text[i] == '"':
                raise QueryError(f"the quote at column {i + 1} must start a new term; "
                                 "put a space before it")
    return tokens


def _quoted(text: str, start: int) -> tuple[str, int]:
    end = text.find('"', start + 1)
    if end < 0:
        raise QueryError(f"the quote at column {start + 1} is never closed; add a closing '\"'")
    after = end + 1
    if after < len(text) and not text[after].isspace() and text[after] != ")":
        raise QueryError(f"put a space after the closing quote at column {end + 1}")
    return text[start + 1 : end], after


def _check_structure(tokens: list[_Token]) -> None:
    """Balance parentheses and keep filters outside the boolean expression."""
    opened: list[_Token] = []
    for index, token in enumerate(tokens):
        if token.kind == "(":
            opened.append(token)
        elif token.kind == ")":
            if not opened:
                raise QueryError(f"')' at column {token.column} has no matching '('")
            opened.pop()
        elif token.kind == "filter":
            where = f"filter {token.name}: at column {token.column}"
            if opened:
                raise QueryError(f"{where} applies to the whole query: move it out of the ( )")
            before = tokens[index - 1].kind if index else None
            after = tokens[index + 1].kind if index + 1 < len(tokens) else None
            if before in ("AND", "OR", "NOT") or after in ("AND", "OR"):
                raise QueryError(f"{where} cannot be joined with AND, OR or NOT: "
                                 "filters always apply to the whole query")
    if opened:
        raise QueryError(f"'(' at column {opened[-1].column} is never closed; add a ')'")


class _Parser:
    """Recursive descent over the tokens of the boolean expression (filters removed)."""

    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens, self.at, self.keywords = tokens, 0, 0

    def peek(self) -> _Token | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def or_expr(self, depth: int) -> Expr:
        parts = [self.and_expr(depth)]
        while (token := self.peek()) is not None and token.kind == "OR":
            self.at += 1
            parts.append(self.and_expr(depth))
        return parts[0] if len(parts) == 1 else Or(tuple(parts))

    def and_expr(self, depth: int) -> Expr:
        parts = [self.unary(depth)]
        while (token := self.peek()) is not None and token.kind not in ("OR", ")"):
            self.at += token.kind == "AND"  # an explicit AND; otherwise it is implicit
            parts.append(self.unary(depth))
        return parts[0] if len(parts) == 1 else And(tuple(parts))

    def unary(self, depth: int) -> Expr:
        token = self.peek()
        if token is not None and token.kind in ("NOT", "(") and depth >= QUERY_MAX_DEPTH:
            raise QueryError(f"the query nests deeper than {QUERY_MAX_DEPTH} levels of "
                             f"parentheses and NOT at column {token.column}; simplify it")
        if token is not None and token.kind == "NOT":
            self.at += 1
            return Not(self.unary(depth + 1))
        return self.primary(depth)

    def primary(self, depth: int) -> Expr:
        token, before = self.peek(), self.tokens[self.at - 1] if self.at else None
        if token is None or token.kind in ("AND", "OR", ")"):
            if before is not None and before.kind in ("AND", "OR", "NOT"):
                raise QueryError(f"{before.text} at column {before.column} needs a term after it")
            if before is not None and before.kind == "(" and token and token.kind == ")":
                raise QueryError(f"empty parentheses at column {before.column}; "
                                 "put a keyword inside or remove them")
            assert token is not None  # callers stop at the end unless an operator came before
            raise QueryError(f"{token.text} at column {token.column} needs a term before it")
        self.at += 1
        if token.kind == "(":
            expr = self.or_expr(depth + 1)
            self.at += 1  # the ')' that _check_structure guarantees
            return expr
        self.keywords += 1
        if self.keywords > QUERY_MAX_KEYWORDS:
            raise QueryError(f"more than {QUERY_MAX_KEYWORDS} keywords (the next is at column "
                             f"{token.column}); split the search into several queries")
        return Keyword(_keyword(token))


def _keyword(token: _Token) -> str:
    word, where = token.text.strip().casefold(), f"at column {token.column}"
    if not word:
        raise QueryError(f"empty quotes {where}; put a keyword inside or remove them")
    if token.kind == "quoted" and any(c.isspace() for c in word):
        raise QueryError(f"the quoted keyword {where} has spaces, but a keyword is one word; "
                         "drop the quotes to search for each word")
    if _KEYWORD_FORBIDDEN.search(word):
        raise QueryError(f"keyword {token.text!r} {where} must be one word: "
                         "no spaces, quotes, parentheses or ':'")
    if len(word) > KEYWORD_MAX:
        raise QueryError(f"the keyword {where} is longer than {KEYWORD_MAX} characters")
    return word


def _filter(token: _Token) -> tuple[str, Any]:
    """The Query field a filter sets, and its checked value."""
    value, where = token.text.strip(), f"filter {token.name}: at column {token.column}"
    if not value:
        raise QueryError(f"{where} needs a value, e.g. {token.name}:{_EXAMPLES[token.name]}")
    if token.name == "near" and _LOOKS_NUMERIC.fullmatch(value):
        return "near", _coordinates(value, where=where)
    if token.name == "near":
        if len(value) > PLACE_MAX:
            raise QueryError(f"{where}: a place name has at most {PLACE_MAX} characters")
        return "near", value
    if token.name == "within":
        match = _WITHIN.fullmatch(value)
        km = float(match.group(1)) if match else -1.0
        if not 0 < km <= WITHIN_MAX_KM:
            raise QueryError(f"{where} must be kilometres, 0 < KM <= {WITHIN_MAX_KM} "
                             f"(e.g. within:50); got {value!r}")
        return "within_km", km
    if token.name == "scope":
        return "scope", _choice(Scope, value, where=where)
    if token.name == "type":
        return "stream_type", _choice(StreamType, value, where=where)
    if not _MIME.fullmatch(value):
        raise QueryError(f"{where} must be type/subtype, e.g. mime:video/MP2T; got {value!r}")
    return "mime", value


E = TypeVar("E", Scope, StreamType)


def _choice(enum: type[E], value: str, *, where: str) -> E:
    try:
        return enum(value.casefold())
    except ValueError:
        allowed = " or ".join(member.value for member in enum)
        raise QueryError(f"{where} must be {allowed}; got {value!r}") from None


def _coordinates(value: str, *, where: str) -> tuple[float, float]:
    match = _COORDINATES.fullmatch(value)
    if match is None:
        raise QueryError(f"{where} must be LAT,LON in decimal degrees (e.g. near:29.6,-82.3) "
                         f"or a place name; got {value!r}")
    lat, lon = float(match.group(1)), float(match.group(2))
    if not -90 <= lat <= 90:
        raise QueryError(f"{where}: latitude {match.group(1)} is outside -90..90")
    if not -180 <= lon <= 180:
        raise QueryError(f"{where}: longitude {match.group(2)} is outside -180..180")
    return lat, lon


def parse(text: str) -> Query:
    """Parse a search query; raise QueryError saying what to fix and where."""
    if len(text) > QUERY_MAX_CHARS:
        raise QueryError(f"the query has {len(text)} characters; the limit is {QUERY_MAX_CHARS}")
    for index, char in enumerate(text):
        if not char.isspace() and (ord(char) < 0x20 or ord(char) == 0x7F):
            raise QueryError(f"control character U+{ord(char):04X} at column {index + 1}")
    tokens = _tokenize(text)
    if not tokens:
        raise QueryError("the query is empty; give at least one keyword, e.g. jazz")
    _check_structure(tokens)
    fields: dict[str, Any] = {}
    seen: dict[str, _Token] = {}
    for token in (t for t in tokens if t.kind == "filter"):
        if token.name in seen:
            raise QueryError(f"filter {token.name}: is given twice (columns "
                             f"{seen[token.name].column} and {token.column}); give it once")
        seen[token.name] = token
        key, value = _filter(token)
        fields[key] = value
    if "within" in seen and "near" not in seen:
        raise QueryError(f"filter within: at column {seen['within'].column} needs near: "
                         '(near:LAT,LON or near:"place")')
    terms = [t for t in tokens if t.kind != "filter"]
    if not terms:
        raise QueryError("the query needs at least one keyword that is not negated "
                         "(e.g. jazz near:29.6,-82.3): filters only narrow a keyword search")
    expr = _Parser(terms).or_expr(0)  # _check_structure left no stray ')'
    _check_fetchable(expr)
    return Query(expr, **fields)


def _check_fetchable(expr: Expr) -> None:
    # A session is found only through one of its keywords: a query that a session without
    # any of the query's keywords satisfies would need the whole directory (docs/query.md).
    if not matches(expr, frozenset()):
        return
    if not positive_keywords(Query(expr)):
        raise QueryError("the query needs at least one keyword that is not negated "
                         "(e.g. 'jazz NOT blues'): sessions are fetched per keyword and "
                         "NOT only removes some of them")
    culprit = expr
    while isinstance(culprit, Or):  # descend to the alternative that needs no keyword
        culprit = next(p for p in culprit.parts if matches(p, frozenset()))
    raise QueryError(f"{format_expr(culprit)!r} matches sessions without any keyword of the "
                     "query, which a per-keyword search cannot find; give every alternative "
                     "a keyword that is not negated (e.g. 'rock NOT blues')")


def format_expr(expr: Expr) -> str:
    """The canonical text of an expression; parse() reads it back to the same tree."""
    if isinstance(expr, Keyword):
        word = expr.word
        return f'"{word}"' if word in _OPERATORS or word.startswith("-") else word
    if isinstance(expr, Not):
        inner = format_expr(expr.part)
        return f"NOT ({inner})" if isinstance(expr.part, And | Or) else f"NOT {inner}"
    joiner, wrap = (" ", And | Or) if isinstance(expr, And) else (" OR ", Or)
    return joiner.join(f"({format_expr(p)})" if isinstance(p, wrap) else format_expr(p)
                       for p in expr.parts)


def positive_keywords(query: Query) -> list[str]:
    """The keywords to fetch: those under an even number of NOTs, in query order."""
    found: dict[str, None] = {}

    def walk(expr: Expr, *, negated: bool) -> None:
        if isinstance(expr, Keyword):
            if not negated:
                found.setdefault(expr.word)
        elif isinstance(expr, Not):
            walk(expr.part, negated=not negated)
        else:
            for part in expr.parts:
                walk(part, negated=negated)

    walk(query.expr, negated=False)
    return list(found)


def matches(expr: Expr, words: frozenset[str]) -> bool:
    """Whether a session with these (case-folded) keywords satisfies the expression."""
    if isinstance(expr, Keyword):
        return expr.word in words
    if isinstance(expr, Not):
        return not matches(expr.part, words)
    if isinstance(expr, And):
        return all(matches(part, words) for part in expr.parts)
    return any(matches(part, words) for part in expr.parts)
