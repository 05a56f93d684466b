"""The client's settings: its config file, and the home domain a search starts from."""

# The order is documented in docs/sessions.md ("The home domain"); keep the two in step.

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client.errors import ClientError

CONFIG_NAME = "client.json"
HOME_ENV = "MDNS_HOME"
RESOLV_CONF = Path("/etc/resolv.conf")
RESOLV_CONF_ENV = "MDNS_RESOLV_CONF"  # another resolv.conf, for tests and odd hosts
RESOLV_CONF_MAX = 64 * 1024  # bytes read of it: a resolv.conf is a few lines
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_CONFIG_HOME/mdns/client.json`, else `~/.config/mdns/client.json`."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mdns" / CONFIG_NAME


def load_config(path: Path) -> dict[str, Any]:
    """The config file's JSON object; {} if there is no file."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClientError(f"{path}: not a readable JSON object ({exc})") from None
    if not isinstance(data, dict):
        raise ClientError(f"{path}: expected a JSON object such as {{\"home\": \"ufl.edu\"}}")
    return data


def domain_name(value: str) -> str | None:
    """The value as a lower-case domain name without the root dot, or None if it is not one."""
    name = value.strip().lower().removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    return name


def search_domain(text: str, *, hostname: str = "") -> str | None:
    """The first search domain of a resolv.conf, by the resolver's rules; else None.

    `search A B …` and `domain A` each replace the list (the last line wins); `#` and `;`
    start comments. With neither line, the resolver searches the host name's domain
    (`box.ufl.edu` → `ufl.edu`), so that is the answer then.
    """
    found: list[str] | None = None
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] in ("search", "domain"):
            found = words[1:] if words[0] == "search" else words[1:2]
    if found is None:
        _, dot, parent = hostname.partition(".")
        found = [parent] if dot else []
    for candidate in found:
        name = domain_name(candidate)
        if name is not None:
            return name
    return None


def home_domain(
    flag: str | None, *, environ: Mapping[str, str] = os.environ, hostname: str | None = None,
) -> str:
    """The home domain: `--home`, else `$MDNS_HOME`, else the config file's "home", else the
    host's DNS search domain (`$MDNS_RESOLV_CONF`, else /etc/resolv.conf).

    `hostname` defaults to this host's name, the resolver's fallback when resolv.conf names
    no search domain.
    """
    if flag:
        return _checked(flag, where="--home")
    if environ.get(HOME_ENV):
        return _checked(environ[HOME_ENV], where=f"${HOME_ENV}")
    path = config_path(environ)
    home = load_config(path).get("home")
    if home is not None:
        if not isinstance(home, str):
            raise ClientError(f'{path}: "home" must be a domain name in quotes, got {home!r}')
        return _checked(home, where=f'"home" in {path}')
    resolv_conf = Path(environ.get(RESOLV_CONF_ENV) or RESOLV_CONF)
    try:
        with resolv_conf.open("rb") as file:
            text = file.read(RESOLV_CONF_MAX).decode("utf-8", errors="replace")
        why = f"{resolv_conf} has no search or domain line naming one"
    except OSError as exc:
        # No resolver configuration means no search domain, not an error of its own.
        text, why = "", f"cannot read {resolv_conf}: {exc.strerror or exc}"
    name = socket.gethostname() if hostname is None else hostname
    found = search_domain(text, hostname=name)
    if found is not None:
        return found
    raise ClientError(
        f"no home domain: give --home D, set {HOME_ENV}=D, or put {{\"home\": \"D\"}} in "
        f"{path}. The host has no DNS search domain either ({why}, and its name {name!r} "
        "has no domain part)")


def _checked(value: str, *, where: str) -> str:
    name = domain_name(value)
    if name is None:
        raise ClientError(f"{where} {value!r} is not a domain name (e.g. ufl.edu)")
    return name
