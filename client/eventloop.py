"""The event loop of mdns's long-running processes: uvloop where it is installed.

The daemons (`mdns up`, `mdns msd`, `mdns urs`, `mdns dns`) and the benchmark's load
generator run on it: the same asyncio code answers ~38 % more HTTP requests per
CPU-second (docs/bench.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None (asyncio's own loop) where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(main: Coroutine[Any, Any, None]) -> None:
    """Run a server's main coroutine to its end on uvloop where it exists."""
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(main)
