"""The one exception root of the urs package."""


class UrsError(Exception):
    """Something in the URL Registration Server went wrong; the message says what to fix."""
