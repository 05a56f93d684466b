"""mcast URIs: `mcast.<domain>/<id>`, the bookmarkable name of a multicast session."""

from __future__ import annotations

import dataclasses
import re

from client.errors import ClientError

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ID = re.compile(r"^[a-z0-9_-][a-z0-9._-]{0,62}$")


@dataclasses.dataclass(frozen=True)
class McastUri:
    """A parsed `mcast.<domain>/<id>`."""

    domain: str
    id: str

    @property
    def host(self) -> str:
        return f"mcast.{self.domain}"

    def __str__(self) -> str:
        return f"{self.host}/{self.id}"


def parse_uri(text: str) -> McastUri:
    """Accept `mcast.<domain>/<id>`, optionally written as an http:// or mcast:// URL."""
    raw = text.strip()
    for scheme in ("http://", "https://", "mcast://"):
        if raw.lower().startswith(scheme):
            raw = raw[len(scheme):]
            break
    host, sep, session_id = raw.partition("/")
    host = host.lower().rstrip(".")
    if ":" in host:
        host = host.split(":", 1)[0]
    if not sep or not session_id:
        raise ClientError(f"{text!r} is not an mcast URI: expected mcast.<domain>/<id>")
    if not host.startswith("mcast."):
        raise ClientError(f"{text!r}: the host must be mcast.<domain>, e.g. mcast.ufl.edu/gators")
    domain = host.removeprefix("mcast.")
    labels = domain.split(".")
    if not domain or len(domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ClientError(f"{text!r}: {domain!r} is not a valid domain name")
    session_id = session_id.rstrip("/")
    if not _ID.match(session_id):
        raise ClientError(
            f"{text!r}: the id must be 1-63 characters of a-z, 0-9, '-', '_' and '.'"
        )
    return McastUri(domain=domain, id=session_id)
