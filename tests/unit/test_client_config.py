"""The home domain of `mdns search`: --home, $MDNS_HOME, the config file, the DNS search domain."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from client.cli import main
from client.config import (
    HOME_ENV,
    RESOLV_CONF_ENV,
    config_path,
    domain_name,
    home_domain,
    load_config,
    search_domain,
)
from client.errors import ClientError

NO_NAME = "box"  # a host name without a domain part: the resolver's fallback finds nothing


class Host:
    """A host's settings in a folder: environment, config file, resolv.conf."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.resolv_conf = root / "resolv.conf"
        self.environ = {"XDG_CONFIG_HOME": str(root / "config"),
                        RESOLV_CONF_ENV: str(self.resolv_conf)}

    @property
    def config(self) -> Path:
        return self.root / "config" / "mdns" / "client.json"

    def write_config(self, data: object) -> None:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(data))

    def home(self, flag: str | None = None, *, hostname: str = NO_NAME) -> str:
        return home_domain(flag, environ=self.environ, hostname=hostname)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_each_source_wins_over_the_ones_after_it(host: Host) -> None:
    host.resolv_conf.write_text("nameserver 127.0.0.53\nsearch cise.ufl.edu ufl.edu\n")
    assert host.home(hostname="box.mit.edu") == "cise.ufl.edu"  # resolv.conf over host name
    host.write_config({"home": "mit.edu", "dns": "127.0.0.1:15300"})
    assert host.home() == "mit.edu"  # the config file over resolv.conf
    host.environ[HOME_ENV] = "edu"
    assert host.home() == "edu"  # $MDNS_HOME over the config file
    assert host.home("ufl.edu") == "ufl.edu"  # --home over everything
    host.environ[HOME_ENV] = ""  # set but empty is unset, as shells use it
    assert host.home() == "mit.edu"


def test_the_config_file_is_under_xdg_config_home_else_dot_config(
    host: Host, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert config_path(host.environ) == host.config
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert config_path({}) == tmp_path / "user" / ".config" / "mdns" / "client.json"
    assert config_path({"XDG_CONFIG_HOME": ""}) == config_path({})
    assert load_config(host.config) == {}  # no file, no settings
    host.write_config({"home": "ufl.edu"})
    assert load_config(host.config) == {"home": "ufl.edu"}


def test_the_host_search_domain_follows_the_resolver_rules() -> None:
    assert search_domain("search cise.ufl.edu ufl.edu\n") == "cise.ufl.edu"
    assert search_domain("domain ufl.edu\n") == "ufl.edu"
    assert search_domain("domain mit.edu\nsearch ufl.edu\n") == "ufl.edu"  # the last line wins
    assert search_domain("search ufl.edu\ndomain mit.edu\n") == "mit.edu"
    assert search_domain("search UFL.EDU.\n") == "ufl.edu"  # case and the root dot
    assert search_domain("# search mit.edu\n; domain edu\nsearch ufl.edu # a comment\n") \
        == "ufl.edu"
    assert search_domain("search . ufl.edu\n") == "ufl.edu"  # the root is no home domain
    assert search_domain("nameserver 10.0.0.1\noptions ndots:2\n") is None
    assert search_domain("nameserver 10.0.0.1\n", hostname="box.cise.ufl.edu") == "cise.ufl.edu"
    assert search_domain("search\n", hostname="box") is None  # a keyword alone is ignored
    assert search_domain("search ufl.edu\n", hostname="box.mit.edu") == "ufl.edu"
    assert search_domain("\x00\xff garbage") is None


def test_a_resolv_conf_without_nameservers_still_names_the_search_domain(host: Host) -> None:
    # dnspython refuses such a file ("no nameservers"); the search line is all we need.
    host.resolv_conf.write_text("search ufl.edu\n")
    assert host.home() == "ufl.edu"


def test_the_host_name_is_the_last_resort(host: Host) -> None:
    host.resolv_conf.write_text("nameserver 127.0.0.53\n")
    assert host.home(hostname="box.mit.edu") == "mit.edu"
    host.resolv_conf.unlink()  # no resolver configuration at all
    assert host.home(hostname="box.mit.edu") == "mit.edu"


def test_no_home_anywhere_is_a_clear_error(host: Host) -> None:
    with pytest.raises(ClientError) as missing:
        host.home()
    message = str(missing.value)
    for hint in ("--home D", f"{HOME_ENV}=D", '{"home": "D"}', str(host.config),
                 f"cannot read {host.resolv_conf}", "'box'"):
        assert hint in message, (hint, message)
    host.resolv_conf.write_text("nameserver 127.0.0.53\n")
    with pytest.raises(ClientError, match=f"{host.resolv_conf} has no search or domain line"):
        host.home()


@pytest.mark.parametrize(("setting", "error"), [
    ({"flag": "ufl edu"}, "--home 'ufl edu' is not a domain name"),
    ({"env": "-bad-.edu"}, r"\$MDNS_HOME '-bad-.edu' is not a domain name"),
    ({"config": {"home": 5}}, '"home" must be a domain name in quotes'),
    ({"config": {"home": ""}}, "is not a domain name"),
    ({"config": ["ufl.edu"]}, "expected a JSON object"),
    ({"config_text": "{home: ufl.edu"}, "not a readable JSON object"),
])
def test_a_bad_setting_is_named_not_skipped(
    host: Host, setting: dict[str, object], error: str
) -> None:
    host.resolv_conf.write_text("search fallback.edu\n")
    if "env" in setting:
        host.environ[HOME_ENV] = str(setting["env"])
    if "config" in setting:
        host.write_config(setting["config"])
    if "config_text" in setting:
        host.write_config({})
        host.config.write_text(str(setting["config_text"]))
    flag = setting.get("flag")
    with pytest.raises(ClientError, match=error):
        host.home(flag if isinstance(flag, str) else None)


def test_domain_names() -> None:
    assert domain_name(" Cise.UFL.edu. ") == "cise.ufl.edu"
    assert domain_name("a" * 63 + ".edu") is not None
    for bad in ("", ".", "a..b", "a b", "a" * 64 + ".edu", "-a.edu", "a-.edu", "x/y"):
        assert domain_name(bad) is None, bad


def test_mdns_search_without_a_home_says_how_to_give_one(
    host: Host, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in host.environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv(HOME_ENV, raising=False)
    monkeypatch.setattr(socket, "gethostname", lambda: NO_NAME)
    assert main(["search", "jazz"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("mdns: no home domain: give --home D") and str(host.config) in error
