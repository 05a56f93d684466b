"""The one exception root of the client package."""


class ClientError(Exception):
    """A client operation failed; the message is one line that says what went wrong."""
