"""HTTP content negotiation for the URS: pick an offered media type from an Accept header."""

from __future__ import annotations

from collections.abc import Sequence

# Enough for any real Accept header; a longer list is cut, not parsed.
ACCEPT_MAX_RANGES = 32


def negotiate(accept: str | None, offers: Sequence[str]) -> str | None:
    """The offer an Accept header prefers: highest q, then most specific match, then offer order.

    No header (or an empty one) means the first offer; None means nothing offered is
    acceptable (every match has q=0, or nothing matches).
    """
    if not accept or not accept.strip():
        return offers[0] if offers else None
    ranges = [_media_range(part) for part in accept.split(",")[:ACCEPT_MAX_RANGES]]
    best: str | None = None
    best_key = (0.0, -1, 0)
    for index, offer in enumerate(offers):
        kind = offer.partition("/")[0]
        # The most specific range that matches decides the offer's quality (RFC 9110 12.5.1).
        specific = {offer: 2, f"{kind}/*": 1, "*/*": 0}
        match: tuple[int, float] | None = None
        for media, quality in ranges:
            rank = specific.get(media)
            if rank is not None and (match is None or rank > match[0]):
                match = (rank, quality)
        if match is None or match[1] <= 0:
            continue
        key = (match[1], match[0], -index)
        if best is None or key > best_key:
            best, best_key = offer, key
    return best


def _media_range(part: str) -> tuple[str, float]:
    media, *params = part.split(";")
    quality = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = min(max(float(value), 0.0), 1.0)
            except ValueError:
                quality = 0.0  # an unreadable weight must not outrank the readable ones
    return media.strip().lower(), quality
