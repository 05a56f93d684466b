"""The one exception root of the vdns package."""


class VdnsError(Exception):
    """Something in the virtual DNS harness went wrong; the message says what to fix."""


class MdsFormatError(VdnsError):
    """A .mds domain file is malformed; the message names the file, the line and the rule."""
