"""The one exception root of the msd package."""

from __future__ import annotations


class MsdError(Exception):
    """Something in a multicast session directory went wrong; the message says what to fix."""


class ChannelError(MsdError):
    """A UDP channel was misused or misconfigured (bad address, unsupported group, not started)."""
