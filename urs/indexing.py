"""The URS hands each session it stores to its domain's designated MSD, which indexes it.

So registering is one call: the URS stores the session, pushes the record to the
designated MSD (`POST /sessions {"record": ...}` with the domain's MSD key) and answers
the client with the URI, the owner token and whether the directory has it. The push is
best effort: with no designated MSD, no MSD key or an MSD that does not answer in
time, the URS still answers 201 and says `"indexed": false` with the reason, and the
client can ask the MSD itself (`POST /sessions {"id"}` at the MSD, as `mdns register`
does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:  # clients import this module for the header's name only
    from msd.schema import SessionRecord
    from urs.settings import UrsSettings
    from urs.store import Designated, SessionStore

log = logging.getLogger(__name__)

PUSH_TIMEOUT_S = 1.0
# How long the designated MSD's entry is reused without reading the database again; a
# failed push forgets it at once, and a stale one costs only a fallback by the client.
DESIGNATED_MEMO_S = 1.0
INDEXED_HEADER = "X-Mdns-Indexed"  # on PUT /<id>: whether the designated MSD has the update


class MsdIndexer:
    """Pushes stored sessions to the domain's designated MSD."""

    def __init__(
        self, settings: UrsSettings, *, store: SessionStore, clock: Callable[[], float],
        http: aiohttp.ClientSession,
    ) -> None:
        self._settings = settings
        self._store = store
        self._clock = clock
        self._http = http
        self.pushed = 0
        self.failed = 0
        self._designated: Designated | None = None
        self._memo_until = 0.0

    async def designated(self) -> Designated | None:
        now = self._clock()
        if self._designated is None or now >= self._memo_until:
            self._designated = await self._store.get_designated(self._settings.domain, now=now)
            self._memo_until = now + DESIGNATED_MEMO_S
        return self._designated

    async def push(self, record: SessionRecord, *, wait: bool = False) -> dict[str, Any]:
        """`{"indexed": true, ...the MSD's answer}` or `{"indexed": false, "reason": ...}`."""
        if self._settings.msd_key is None:
            return {"indexed": False, "reason": "this URS has no MSD key"}
        designated = await self.designated()
        if designated is None:
            return {"indexed": False, "reason": "the domain has no designated MSD right now"}
        url = f"http://{_host(designated.address)}:{designated.port}/sessions"
        body = {"record": record.model_dump(mode="json"), "wait": wait}
        headers = {"Authorization": f"Bearer {self._settings.msd_key}"}
        try:
            async with self._http.post(
                url, json=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=PUSH_TIMEOUT_S * (5 if wait else 1)),
            ) as response:
                answer = await response.json()
                if response.status != 200 or not isinstance(answer, dict):
                    raise ValueError(f"{response.status} {answer}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.failed += 1
            self._designated = None
            reason = f"the designated MSD at {url} did not index it: {exc or type(exc).__name__}"
            log.warning("%s: %s", record.uri, reason)
            return {"indexed": False, "reason": reason}
        self.pushed += 1
        return {"indexed": True} | answer


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
