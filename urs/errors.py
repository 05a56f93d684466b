"""The one exception root of the urs package, and the errors the URS raises below it."""

from __future__ import annotations


class UrsError(Exception):
    """Something in the URL Registration Server went wrong; the message says what to fix."""


class SettingsError(UrsError):
    """A URS setting is out of range; the message names the setting and its bounds."""


class StoreError(UrsError):
    """The session database could not be reached or refused the operation."""


class IdTakenError(UrsError):
    """The id is already registered in this domain and has not expired; choose another."""


class SessionNotFoundError(UrsError):
    """No session has this id in this domain, or it has expired."""


class TokenRejectedError(UrsError):
    """The owner token is missing or does not match the one issued at registration."""


class TermConflictError(UrsError):
    """A designated MSD with a higher election term holds an unexpired entry."""

    def __init__(self, message: str, *, current_term: int) -> None:
        super().__init__(message)
        self.current_term = current_term


class ParentLookupError(UrsError):
    """The parent domain's URS could not be found or did not answer in time."""
