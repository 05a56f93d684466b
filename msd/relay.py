"""One-way routed requests between MSDs: each hop passes a request on, the owner answers the origin.

A routed request (`remote-register`, `msd-probe`) travels hop by hop along the tree's
routing tables. Each hop acknowledges at once (202) and passes the request on in the
background; the owner sends its answer straight back to the originating MSD
(`reply_to`, `POST /msd/reply`), and a hop that cannot pass it on sends the error
there instead. So a request to an owner k hops away costs k one-way crossings plus one
for the answer, where waiting at every hop would cost 2k.

Every request and reply between MSDs carries an HMAC of its body with the hierarchy
key (`X-Mdns-Auth`): nobody outside the hierarchy can plant records, fake an answer or
make an MSD send requests to an address of their choosing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp

from msd.errors import MsdError
from msd.messages import Peer

log = logging.getLogger(__name__)

AUTH_HEADER = "X-Mdns-Auth"
SEND_TIMEOUT_S = 2.0  # one hop's acknowledgement
# The owner's answer to the origin, however many hops away; below the clients' own
# 3 s, so a client hears the MSD's 502 (and turns to the shadow) before it gives up.
REPLY_TIMEOUT_S = 2.5
MAX_PENDING = 10_000  # requests of this MSD awaiting their answers
MAX_TASKS = 10_000  # requests being passed on in the background

# An experiment's injected network delay: awaited once per message to or from a domain.
Delay = Callable[[str], Awaitable[None]]


class RoutingFailed(MsdError):
    """A routed request found no way to the owner (a hop is down or has no route)."""


class Overloaded(MsdError):
    """Too many routed requests in flight at this MSD; the caller may try again later."""


def sign(body: bytes, *, key: bytes) -> str:
    """The HMAC that authenticates a body between MSDs of one hierarchy."""
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def authentic(body: bytes, signature: str, *, key: bytes) -> bool:
    return hmac.compare_digest(signature, sign(body, key=key))


class Relay:
    """Sends routed requests, passes them on, and matches the owners' answers to requests."""

    def __init__(
        self, *, http: aiohttp.ClientSession, key: bytes, own_address: Callable[[], str],
        delay: Delay | None = None,
    ) -> None:
        self._http = http
        self._key = key
        self._own_address = own_address  # "host:port" of this MSD, where answers come back
        self._delay = delay
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.late_replies = 0

    async def originate(self, peer: Peer, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send a routed request to its first hop and wait for the owner's answer."""
        if len(self._pending) >= MAX_PENDING:
            raise Overloaded(f"{MAX_PENDING} routed requests already await answers here")
        request = secrets.token_hex(12)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request] = future
        body = body | {"reply_to": self._own_address(), "request": request}

        async def first_hop() -> None:
            try:
                await self.send(peer, path, body)
            except RoutingFailed as exc:
                if not future.done():
                    future.set_exception(exc)

        self.spawn(first_hop(), name=f"{path} to {peer.domain}")
        try:
            return await asyncio.wait_for(future, REPLY_TIMEOUT_S)
        except TimeoutError:
            raise RoutingFailed(f"no answer to {path} via {peer.domain} within "
                                f"{REPLY_TIMEOUT_S:g} s") from None
        finally:
            self._pending.pop(request, None)

    def pass_on(self, peer: Peer, path: str, body: dict[str, Any]) -> None:
        """Forward a routed request to the next hop; a failure goes to the origin."""

        async def forward() -> None:
            try:
                await self.send(peer, path, body)
            except RoutingFailed as exc:
                await self.answer(body, error=str(exc))

        self.spawn(forward(), name=f"{path} to {peer.domain}")

    async def answer(
        self, body: dict[str, Any], *, result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Send the owner's result (or a hop's error) straight to the request's origin."""
        reply_to, request = str(body["reply_to"]), str(body["request"])
        host, _, port = reply_to.rpartition(":")
        origin = Peer(domain=str(body.get("hops", ["?"])[0]), host=host, port=int(port))
        reply: dict[str, Any] = {"request": request}
        reply |= {"error": error} if error is not None else {"result": result}
        try:
            await self.send(origin, "/msd/reply", reply)
        except RoutingFailed as exc:
            log.warning("could not answer %s at %s: %s", request, reply_to, exc)

    def resolve(self, reply: dict[str, Any]) -> bool:
        """An answer arrived; False if nobody waits for it (late, or not ours)."""
        future = self._pending.get(str(reply.get("request")))
        if future is None or future.done():
            self.late_replies += 1
            return False
        if "error" in reply:
            future.set_exception(RoutingFailed(str(reply["error"])))
        else:
            result = reply.get("result")
            if not isinstance(result, dict):
                future.set_exception(RoutingFailed("the owner's answer had no result"))
            else:
                future.set_result(result)
        return True

    async def send(self, peer: Peer, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a signed body to another MSD; its JSON answer (any 2xx)."""
        url = f"http://{peer.host}:{peer.port}{path}"
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", AUTH_HEADER: sign(data, key=self._key)}
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_S)
        for attempt in (1, 2):
            try:
                if self._delay is not None:
                    await self._delay(peer.domain)  # the request crosses the network
                async with self._http.post(url, data=data, headers=headers,
                                           timeout=timeout) as response:
                    answer: dict[str, Any] = await response.json()
                    if self._delay is not None:
                        await self._delay(peer.domain)  # and so does the answer
                    if not 200 <= response.status < 300:
                        raise RoutingFailed(f"{peer.domain} answered {response.status} to "
                                            f"{path}: {answer.get('error', answer)}")
                    return answer
            except aiohttp.ServerDisconnectedError:
                # A pooled keep-alive connection the peer closed just then; every routed
                # request is idempotent, so one fresh try is safe.
                if attempt == 2:
                    raise RoutingFailed(f"{peer.domain} at {peer.host}:{peer.port} "
                                        f"disconnected twice on {path}") from None
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise RoutingFailed(f"{peer.domain} at {peer.host}:{peer.port} did not answer "
                                    f"{path}: {exc or type(exc).__name__}") from None
        raise AssertionError("unreachable")

    def spawn(self, job: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run a job in the background, kept until it ends (bounded)."""
        if len(self._tasks) >= MAX_TASKS:
            job.close()
            raise Overloaded(f"{MAX_TASKS} routed requests already in flight here")
        task = asyncio.create_task(job, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel what is still in flight (at shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RoutingFailed("the MSD is shutting down"))
