"""Evaluating a parsed query over per-keyword answers: match, filter, deduplicate, rank (pure)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from msd.geo import distance_km
from msd.query import Query, matches, positive_keywords


class SessionLike(Protocol):
    """What evaluate() reads of a session (msd.schema.SessionRecord offers it)."""
    @property
    def uri(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def keywords(self) -> Sequence[str]: ...
    @property
    def scope(self) -> str: ...
    @property
    def stream_type(self) -> str: ...
    @property
    def mime(self) -> str: ...
    @property
    def lat(self) -> float | None: ...
    @property
    def lon(self) -> float | None: ...


S = TypeVar("S", bound=SessionLike)


@dataclass(frozen=True, slots=True)
class Hit(Generic[S]):
    """One search result: the session, the query keywords it carries, its distance."""
    session: S
    matched: tuple[str, ...]
    distance_km: float | None


def evaluate(
    query: Query,
    sessions_by_keyword: Mapping[str, Iterable[S]],
    *,
    geodesic_km: Callable[[float, float, float, float], float] | None = None,
) -> list[Hit[S]]:
    """Combine per-keyword answers: dedupe by uri, match, filter, rank (docs/query.md)."""
    if isinstance(query.near, str):
        raise ValueError("geocode the near: place first (msd.gazetteer.resolve_near)")
    distance = geodesic_km or distance_km  # WGS-84, geopy's geodesic
    wanted = positive_keywords(query)
    candidates: dict[str, S] = {}
    for sessions in sessions_by_keyword.values():
        for session in sessions:
            candidates.setdefault(session.uri, session)
    hits: list[Hit[S]] = []
    for session in candidates.values():
        words = frozenset(word.strip().casefold() for word in session.keywords)
        if not matches(query.expr, words) or not _passes_filters(query, session):
            continue
        km: float | None = None
        if query.near is not None:
            if session.lat is None or session.lon is None:
                continue
            km = distance(query.near[0], query.near[1], session.lat, session.lon)
            if km > query.within_km:
                continue
        hits.append(Hit(session, tuple(w for w in wanted if w in words), km))
    hits.sort(key=lambda hit: (-len(hit.matched), hit.distance_km or 0.0,
                               hit.session.title.casefold(), hit.session.uri))
    return hits


def _passes_filters(query: Query, session: SessionLike) -> bool:
    if query.scope is not None and str(session.scope).casefold() != query.scope.value:
        return False
    if query.stream_type and str(session.stream_type).casefold() != query.stream_type.value:
        return False
    return query.mime is None or session.mime.casefold() == query.mime.casefold()
