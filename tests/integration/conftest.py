"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.test_msd_tree import _settled, _start, _wait
from vdns.harness import Hierarchy


@pytest.fixture
async def scenario3(tmp_path: Path) -> AsyncIterator[Hierarchy]:
    """The dissertation's chain of 10 domains, real daemons in-process, settled."""
    hierarchy = await _start(tmp_path, "scenario3")
    await _wait(hierarchy, lambda s: _settled(s, expected=10), timeout=30)
    yield hierarchy
    await hierarchy.close()
