"""What the system tests share: a throwaway network namespace holding only loopback."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator

import pytest

_numbers = itertools.count()


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace with only `lo`, up, and a multicast route on it: players and
    senders that cannot pin their interface run here, where no datagram can leave the
    host (there is no other interface). Deleted afterwards, also on failure."""
    name = f"mdnst{os.getpid()}n{next(_numbers)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", name, "route", "add", "224.0.0.0/4", "dev", "lo"],
                       check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
