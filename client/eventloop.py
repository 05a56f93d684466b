"""The event loop of mdns's long-running processes: uvloop where it is installed.

The daemons (`mdns up`, `mdns msd`) and the benchmark's load generator run on it: the
same asyncio code answers ~38 % more HTTP requests per CPU-second (docs/bench.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None (asyncio's own loop) where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
