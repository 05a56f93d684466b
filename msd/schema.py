"""The session schema every part of mDNS shares: URS, MSD and client (pydantic 2).

The JSON field names are the public contract. Every limit is stated here, once, and
every rule produces a message that says what to fix.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# Limits (all explicit, all documented in docs/schema.md).
ID_MAX = 63
TITLE_MAX = 200
DESCRIPTION_MAX = 4000
KEYWORDS_MAX = 10
KEYWORD_MAX = 64
PLACE_MAX = 200
APPLICATION_MAX = 64
CLI_ARGS_MAX = 1024
MIME_MAX = 255
TTL_MIN = 10
TTL_MAX = 7 * 24 * 3600
TTL_DEFAULT = 3600

# Paths the URS serves itself; a session may not take them as its id.
RESERVED_IDS = frozenset({"sessions", "bootstrap", "health", "metrics", "search", "static", "msd"})

_ID = re.compile(r"^[a-z0-9._-]{1,63}$")
# RFC 6838 restricted-name, type "/" subtype.
_MIME = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
)
# Characters the query language gives a meaning to, and whitespace, cannot be in a keyword.
_KEYWORD_FORBIDDEN = re.compile(r'[\s"():]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A description may span lines; other control characters (NUL above all, which PostgreSQL
# text cannot hold) are refused.
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The error type of a rule that spans several fields; its context names the field to fix.
TOGETHER = "together"


class Scope(StrEnum):
    """Who may find a session: the whole hierarchy, or only its own domain."""

    GLOBAL = "global"
    LOCAL = "local"


class Network(StrEnum):
    """Any-source or source-specific multicast."""

    ASM = "asm"
    SSM = "ssm"


class StreamType(StrEnum):
    """How the payload travels: RTP packets (RTP/AVP) or raw UDP datagrams."""

    RTP = "rtp"
    UDP = "udp"


def _together(field: str, message: str) -> PydanticCustomError:
    # A model-level rule would otherwise be reported against the whole body; naming the
    # field lets a form put the message beside the right input.
    return PydanticCustomError(TOGETHER, message, {"field": field})


def _single_line(value: str, *, what: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"{what} must not contain control characters (newlines, tabs, NUL)")
    return value


class Session(BaseModel):
    """What a content host registers: the parameters behind one `mcast.<domain>/<id>` URI."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    id: Annotated[str, Field(description="URS identifier: 1-63 of a-z 0-9 - _ .")]
    title: Annotated[str, Field(min_length=1, max_length=TITLE_MAX)]
    description: Annotated[str, Field(max_length=DESCRIPTION_MAX)] = ""
    keywords: Annotated[list[str], Field(min_length=1, max_length=KEYWORDS_MAX)]
    group: Annotated[str, Field(description="multicast group: IPv4 224.0.0.0/4 or IPv6 ff00::/8")]
    port: Annotated[int, Field(ge=1, le=65535)]
    source: str | None = None
    fallback_ip: str | None = None
    fallback_port: Annotated[int | None, Field(ge=1, le=65535)] = None
    scope: Scope = Scope.GLOBAL
    place: Annotated[str | None, Field(max_length=PLACE_MAX)] = None
    lat: Annotated[float | None, Field(ge=-90, le=90, allow_inf_nan=False)] = None
    lon: Annotated[float | None, Field(ge=-180, le=180, allow_inf_nan=False)] = None
    network: Network = Network.ASM
    stream_type: StreamType = StreamType.RTP
    application: Annotated[str | None, Field(max_length=APPLICATION_MAX)] = None
    cli_args: Annotated[str | None, Field(max_length=CLI_ARGS_MAX)] = None
    mime: Annotated[str, Field(max_length=MIME_MAX)] = "video/MP2T"
    ttl: Annotated[int, Field(ge=TTL_MIN, le=TTL_MAX)] = TTL_DEFAULT

    @field_validator("port", "fallback_port", "ttl", "lat", "lon", mode="before")
    @classmethod
    def _not_boolean(cls, value: object) -> object:
        # pydantic's lax mode reads JSON true as 1: a port of 1 from a typo is worse than an error.
        if isinstance(value, bool):
            raise ValueError("must be a number, not true or false")
        return value

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _ID.fullmatch(value):
            raise ValueError(
                f"id must be 1-{ID_MAX} characters of a-z, 0-9, '-', '_' and '.' (lower case)"
            )
        if value.startswith("."):
            raise ValueError("id must not start with '.' (browsers rewrite '.' and '..' in paths)")
        if value in RESERVED_IDS:
            raise ValueError(f"id {value!r} is reserved by the URS; choose another")
        return value

    @field_validator("title", "place", "application", "cli_args")
    @classmethod
    def _check_single_line(cls, value: str | None) -> str | None:
        return None if value is None else _single_line(value, what="this field")

    @field_validator("description")
    @classmethod
    def _check_description(cls, value: str) -> str:
        if _CONTROL_BUT_LINES.search(value):
            raise ValueError(
                "description must not contain control characters other than newlines and tabs"
            )
        return value

    @field_validator("keywords")
    @classmethod
    def _check_keywords(cls, value: list[str]) -> list[str]:
        seen: list[str] = []
        for raw in value:
            keyword = raw.strip().casefold()
            if not 1 <= len(keyword) <= KEYWORD_MAX:
                raise ValueError(f"each keyword must be 1-{KEYWORD_MAX} characters, got {raw!r}")
            if _KEYWORD_FORBIDDEN.search(keyword) or _CONTROL.search(keyword):
                raise ValueError(
                    f"keyword {raw!r} must be one word: no spaces, quotes, parentheses or ':'"
                )
            if keyword not in seen:
                seen.append(keyword)
        return seen

    @field_validator("group")
    @classmethod
    def _check_group(cls, value: str) -> str:
        address = _ip(value, what="group")
        if not address.is_multicast:
            raise ValueError(
                f"group {value} is not a multicast address (IPv4 224.0.0.0/4 or IPv6 ff00::/8)"
            )
        return str(address)

    @field_validator("source", "fallback_ip")
    @classmethod
    def _check_unicast(cls, value: str | None) -> str | None:
        if value is None:
            return None
        address = _ip(value, what="address")
        if address.is_multicast or address.is_unspecified:
            raise ValueError(f"{value} must be a unicast address, not multicast or unspecified")
        return str(address)

    @field_validator("mime")
    @classmethod
    def _check_mime(cls, value: str) -> str:
        if not _MIME.fullmatch(value):
            raise ValueError(f"mime must be type/subtype, e.g. video/MP2T; got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_together(self) -> Self:
        group = ipaddress.ip_address(self.group)
        if self.network is Network.SSM and self.source is None:
            raise _together("source", "source is required when network is ssm")
        if self.source is not None and ipaddress.ip_address(self.source).version != group.version:
            raise _together("source", "source and group must both be IPv4 or both be IPv6")
        if (self.fallback_ip is None) != (self.fallback_port is None):
            missing = "fallback_ip" if self.fallback_ip is None else "fallback_port"
            raise _together(
                missing, "fallback_ip and fallback_port go together: give both or neither"
            )
        if (self.lat is None) != (self.lon is None):
            missing = "lat" if self.lat is None else "lon"
            raise _together(missing, "lat and lon go together: give both or neither")
        return self


class SessionRecord(Session):
    """A session as a URS serves it: its parameters plus its URI and lifetime."""

    uri: str
    domain: str
    expires_at: Annotated[float, Field(description="Unix time (seconds) when it stops resolving")]
    updated_at: float


class FieldError(BaseModel):
    """One broken rule of a request: which field, and what to fix."""

    field: str
    message: str


def field_errors(error: ValidationError) -> list[FieldError]:
    """Flatten pydantic's error list into the public `{"field", "message"}` shape."""
    out: list[FieldError] = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"]) or "body"
        if item["type"] == TOGETHER:
            location = str((item.get("ctx") or {}).get("field", location))
        message = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (see the schema for the allowed fields)"
        elif item["type"] == "missing":
            message = "this field is required"
        out.append(FieldError(field=location, message=message))
    return out


def _ip(value: str, *, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IPv4 or IPv6 address") from None


def session_fields() -> list[str]:
    """The JSON field names of a session, in schema order."""
    return list(Session.model_fields)


def session_from_json(data: Any) -> Session:
    """Validate a decoded JSON object as a session (raises pydantic.ValidationError)."""
    return Session.model_validate(data)
