"""The DNS server's health checks of its domain's URS replicas: GET /health, then observe.

The shell around `vdns.replicas.ReplicaSet`: every `interval_s` it asks each replica's
`GET /health` at once, each within `timeout_s`, and tells the set what it heard (the load
the replica reports, or why the check failed). A refused connection marks the replica
down at once; a timeout or a bad answer counts as one failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp

from vdns.replicas import Health, ReplicaSet

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
CHECK_TIMEOUT_S = 0.8
MAX_HEALTH_BYTES = 16 * 1024


class ReplicaMonitor:
    """Polls every replica of a set until closed; `checks` counts the rounds done."""

    def __init__(self, replicas: ReplicaSet, *, domain: str,
                 interval_s: float = CHECK_INTERVAL_S, timeout_s: float = CHECK_TIMEOUT_S) -> None:
        if not 0 < timeout_s <= interval_s:
            raise ValueError("need 0 < timeout_s <= interval_s")
        self.replicas = replicas
        self.domain = domain
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.checks = 0
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ReplicaMonitor {self.domain} checks={self.checks} {self.replicas!r}>"

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"URS health checks of {self.domain}")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check_once(self, http: aiohttp.ClientSession) -> None:
        """One round: every replica at once."""
        await asyncio.gather(*(self._check(http, index)
                               for index in range(len(self.replicas.states))))
        self.checks += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        # No keep-alive: a check must open a connection, which is what a client will do.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            while True:
                started = loop.time()
                try:
                    await self.check_once(http)
                except Exception:  # a bug must not end the checks; the log has it
                    log.exception("%s: URS health check round failed", self.domain)
                await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))

    async def _check(self, http: aiohttp.ClientSession, index: int) -> None:
        replica = self.replicas.states[index].replica
        now = asyncio.get_running_loop().time
        url = f"http://{replica}/health"
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                allow_redirects=False) as response:
                body = await response.content.read(MAX_HEALTH_BYTES)
                if response.status != 200:
                    raise ValueError(f"answered {response.status}")
                load = _load(body)
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            self._failed(index, now(), f"cannot connect: {exc.os_error}", refused=refused)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self._failed(index, now(), f"{type(exc).__name__}: {exc}"[:200], refused=False)
        else:
            state = self.replicas.states[index]
            if state.health is Health.DOWN:
                log.warning("%s: URS replica %s is up again", self.domain, replica)
            self.replicas.observe(index, ok=True, now=now(), in_flight=load[0], rate=load[1])

    def _failed(self, index: int, now: float, error: str, *, refused: bool) -> None:
        state = self.replicas.states[index]
        was = state.health
        self.replicas.observe(index, ok=False, now=now, refused=refused, error=error)
        if state.health is not was:
            log.warning("%s: URS replica %s is %s: %s", self.domain, state.replica,
                        state.health.value, error)


def _load(body: bytes) -> tuple[int, float]:
    """(in flight, rate) from a /health answer; a healthy answer without load reads as idle."""
    data: Any = json.loads(body)
    if not isinstance(data, dict) or data.get("status") != "ok":
        raise ValueError("not a healthy /health answer")
    load = data.get("load") or {}
    in_flight, rate = load.get("in_flight", 0), load.get("rate", 0.0)
    if not isinstance(in_flight, int) or not isinstance(rate, int | float):
        raise ValueError("load is not numbers")
    return in_flight, float(rate)
