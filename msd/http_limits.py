"""Limits on HTTP clients, shared by the URS and the MSD: slow and greedy connections, bodies.

aiohttp bounds a request's line, header fields and count, and its body size
(`client_max_size`); what it leaves open is time. A client that opens connections and
dribbles a header a byte a minute (slowloris) would hold them for aiohttp's keep-alive
timeout, about an hour by default. Here:

- a connection must deliver its first request head within `header_timeout_s`, or it is
  answered `408 Request Timeout` and closed (counted as `slow_headers`);
- idle keep-alive connections close after `keepalive_timeout_s` (aiohttp's own timer,
  which also bounds the head of every later request on the connection);
- one address holds at most `max_connections_per_ip` connections; more are closed at once
  (counted as `too_many_connections`);
- a body must arrive within `body_timeout_s` (`read_body`: `BodyTimeout`, a 408 for the
  caller to send), and no larger than the app's limit (`BodyTooLarge`, a 413); a client
  that hangs up halfway is `ClientGone`, counted, not a server error.

`GuardedSite` serves an `aiohttp.web.AppRunner` on a bound socket with these checks; the
runner's cleanup closes it like any site.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections import Counter
from typing import Any, cast

from aiohttp import web

from msd.errors import MsdError

_HEAD_END = b"\r\n\r\n"
REQUEST_TIMEOUT_REPLY = (b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                         b"Content-Type: text/plain\r\nContent-Length: 47\r\n\r\n"
                         b"the request head did not arrive in time; retry\n")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HttpLimits:
    """Every time and connection limit of one HTTP server, with its unit."""

    header_timeout_s: float = 10.0  # connect → complete first request head
    body_timeout_s: float = 10.0  # handler starts reading → whole body read
    keepalive_timeout_s: float = 75.0  # idle keep-alive connection (longer than clients' 15 s)
    max_connections_per_ip: int = 256
    max_line_bytes: int = 8190  # request line and each header line
    max_headers: int = 64

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
            if not 0 < getattr(self, name) <= 3600:
                raise ValueError(f"{name} must be within (0, 3600] seconds")
        if not 1 <= self.max_connections_per_ip <= 100_000:
            raise ValueError("max_connections_per_ip must be 1..100000")
        if not 256 <= self.max_line_bytes <= 65536 or not 8 <= self.max_headers <= 1024:
            raise ValueError("max_line_bytes must be 256..65536 and max_headers 8..1024")

    def runner_options(self) -> dict[str, Any]:
        """Keyword arguments for `web.AppRunner` (handed to aiohttp's request handler)."""
        return {"keepalive_timeout": self.keepalive_timeout_s,
                "max_line_size": self.max_line_bytes, "max_field_size": self.max_line_bytes,
                "max_headers": self.max_headers}


class BodyTimeout(MsdError):
    """The request body did not arrive in time (a slow client): 408."""


class BodyTooLarge(MsdError):
    """The request body is larger than the server takes: 413."""


class ClientGone(MsdError):
    """The client closed the connection before its body arrived."""


async def read_body(request: web.Request, *, limit: int, timeout_s: float) -> bytes:
    """The whole body, within `limit` bytes and `timeout_s` seconds."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read()  # aiohttp stops at client_max_size, chunked or not
    except TimeoutError:
        raise BodyTimeout(f"the body did not arrive within {timeout_s:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"body larger than {limit} bytes") from None
    except ConnectionError:
        raise ClientGone() from None
    if len(raw) > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    return raw


class ConnectionGuard:
    """Counts and bounds connections per address and the time to the first request head."""

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.counts: Counter[str] = Counter()  # slow_headers, too_many_connections
        self._open: Counter[str] = Counter()  # open connections per address

    def __repr__(self) -> str:
        return f"<ConnectionGuard open={sum(self._open.values())} {dict(self.counts)}>"

    def protocol(self, inner: asyncio.Protocol) -> asyncio.Protocol:
        return _Guarded(self, inner)


class _Guarded(asyncio.Protocol):
    """Passes everything to aiohttp's handler, watching the connection on the way."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._address = ""
        self._admitted = False
        self._head_seen = False
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's does not subclass asyncio.Transport.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        guard = self._guard
        if guard._open[self._address] >= guard.limits.max_connections_per_ip:
            guard.counts["too_many_connections"] += 1
            transport.abort()  # never handed to aiohttp, which then never hears of it
            return
        guard._open[self._address] += 1
        self._admitted = True
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(guard.limits.header_timeout_s, self._too_slow)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if not self._head_seen:
            # The first head ends at an empty line; it may straddle two reads.
            if _HEAD_END in self._tail + data:
                self._head_seen = True
                self._cancel_timer()
            else:
                self._tail = (self._tail + data)[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._cancel_timer()
        guard = self._guard
        guard._open[self._address] -= 1
        if guard._open[self._address] <= 0:
            del guard._open[self._address]
        self._inner.connection_lost(exc)

    def _too_slow(self) -> None:
        self._timer = None
        transport = self._transport
        if self._head_seen or transport is None or transport.is_closing():
            return
        self._guard.counts["slow_headers"] += 1
        transport.write(REQUEST_TIMEOUT_REPLY)
        transport.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class GuardedSite(web.SockSite):
    """A `web.SockSite` whose connections pass through a ConnectionGuard."""

    __slots__ = ("_guard",)

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, *,
                 guard: ConnectionGuard) -> None:
        super().__init__(runner, sock)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None, "runner.setup() first"
        guard = self._guard
        loop = asyncio.get_running_loop()
        # BaseSite.stop() (and so the runner's cleanup) closes self._server.
        self._server = await loop.create_server(
            lambda: guard.protocol(server()), sock=self._sock, backlog=self._backlog)
