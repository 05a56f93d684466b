"""The URS application: its lifecycle (database, HTTP client, purge task) and how to serve it.

Serve on a socket bound beforehand (the harness and tests bind port 0 first, then read
the port back):

    sock = bind_socket("127.0.0.1", 0)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, sock=sock, stop=stop))
    ...                       # the URS answers on sock.getsockname()
    stop.set(); await task    # drains, cancels the purge task, disposes the engine

or, holding the runner yourself:

    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    await web.SockSite(runner, sock).start()
    ...
    await runner.cleanup()
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from msd.http_limits import GuardedSite
from urs.api import CONTEXT, UrsContext, add_routes
from urs.bootstrap import BootstrapService, ParentLocator
from urs.errors import StoreError
from urs.indexing import MsdIndexer
from urs.metrics import UrsMetrics
from urs.search import UrsSearch
from urs.settings import UrsSettings
from urs.store_fast import open_store

log = logging.getLogger(__name__)

# Requests in flight get this long to finish when the URS stops.
SHUTDOWN_GRACE_S = 5.0


def create_app(
    settings: UrsSettings,
    *,
    clock: Callable[[], float] = time.time,
    parent_locator: ParentLocator | None = None,
) -> web.Application:
    """A URS for one domain; the database opens when the app starts and closes at cleanup.

    `clock` gives Unix seconds (inject a fake one to test expiry); `parent_locator` finds
    the parent domain's URS (default: DNS through urs.locate).
    """
    # aiohttp refuses larger bodies itself (413), chunked ones included.
    app = web.Application(client_max_size=settings.max_body_bytes)
    context = UrsContext(settings=settings, clock=clock, metrics=UrsMetrics(),
                         locator=parent_locator)
    context.metrics.watch_connections(context.connections.counts)
    app[CONTEXT] = context
    add_routes(app)
    app.cleanup_ctx.append(_lifecycle)
    return app


async def purge_expired(app: web.Application) -> int:
    """Delete the expired sessions now; return how many went (the purge task calls this)."""
    context = app[CONTEXT]
    count = await context.store.purge_expired(now=context.clock())
    if count:
        context.metrics.purged.inc(count)
        log.info("purged %d expired session(s) of %s", count, context.settings.domain)
    return count


def make_runner(app: web.Application, *,
                shutdown_grace_s: float = SHUTDOWN_GRACE_S) -> web.AppRunner:
    """A runner with the URS's limits on slow and idle connections (msd.http_limits)."""
    limits = app[CONTEXT].settings.http_limits
    return web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_grace_s,
                         **limits.runner_options())


async def start_site(runner: web.AppRunner, sock: socket.socket) -> None:
    """Serve a set-up runner on a bound socket, every connection through the URS's guard."""
    await GuardedSite(runner, sock, guard=runner.app[CONTEXT].connections).start()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound before serving so a port of 0 can be read back."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


async def serve(
    settings: UrsSettings,
    *,
    stop: asyncio.Event,
    sock: socket.socket | None = None,
    clock: Callable[[], float] = time.time,
    parent_locator: ParentLocator | None = None,
    shutdown_grace_s: float = SHUTDOWN_GRACE_S,
) -> None:
    """Run a URS until `stop` is set, on `sock` (or settings.host:port), then shut down cleanly."""
    app = create_app(settings, clock=clock, parent_locator=parent_locator)
    runner = make_runner(app, shutdown_grace_s=shutdown_grace_s)
    await runner.setup()
    try:
        sock = sock if sock is not None else bind_socket(settings.host, settings.port)
        await start_site(runner, sock)
        log.info("URS of %s serving on %s", settings.domain, sock.getsockname())
        await stop.wait()
    finally:
        await runner.cleanup()


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    context = app[CONTEXT]
    settings = context.settings
    store = await open_store(settings.database_url)  # SQLite: urs.store_fast
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=settings.parent_timeout_s)
        ) as http:
            context.store_ = store
            context.bootstrap_ = BootstrapService(
                settings,
                store=store,
                clock=context.clock,
                http=http,
                metrics=context.metrics,
                locator=context.locator,
            )
            context.indexer_ = MsdIndexer(settings, store=store, clock=context.clock,
                                          http=http)
            context.search_ = UrsSearch(settings, store=store, indexer=context.indexer_,
                                        http=http, clock=context.clock)
            purge = asyncio.create_task(_purge_loop(app), name=f"urs-purge {settings.domain}")
            try:
                yield
            finally:
                await _cancel(purge)
                await context.bootstrap_.close()
                context.bootstrap_ = None
                context.indexer_ = None
                context.search_ = None
                context.store_ = None
    finally:
        await store.close()


async def _purge_loop(app: web.Application) -> None:
    interval = app[CONTEXT].settings.purge_interval_s
    metrics: UrsMetrics = app[CONTEXT].metrics
    while True:
        await asyncio.sleep(interval)
        try:
            await purge_expired(app)
        except StoreError as exc:
            metrics.purge_failures.inc()
            log.warning("purge failed, retrying in %g s: %s", interval, exc)
        except Exception:
            # The purge must outlive its bugs: expired rows are already invisible to readers.
            metrics.purge_failures.inc()
            log.exception("purge failed, retrying in %g s", interval)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        # Swallow only the cancellation we asked for; ours, if any, goes on.
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


__all__ = ["UrsContext", "bind_socket", "create_app", "make_runner", "purge_expired", "serve",
           "start_site"]
