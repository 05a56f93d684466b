"""The damping settings (α, β and the quiet period) reach every daemon the commands start."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from client.cli import build_parser, main
from msd.daemon import MsdSettings
from msd.keys import generate_private_key, write_private_key
from vdns.msds import MsdLaunch, _Daemon


def _domain_key(tmp_path: Path) -> Path:
    path = tmp_path / "domain.key"
    if not path.exists():
        write_private_key(path, generate_private_key())
    return path


def _launch(tmp_path: Path, *, in_process: bool) -> MsdLaunch:
    key = tmp_path / "key"
    key.write_text("secret")
    return MsdLaunch(urs_url="http://127.0.0.1:9", msd_key_file=key, hierarchy_key_file=key,
                     domain_key_file=_domain_key(tmp_path), log_dir=tmp_path, alpha=2.5,
                     beta=3.5, refresh_every=37, in_process=in_process)


def test_mdns_msd_passes_the_quiet_period_to_the_daemon(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import msd.daemon

    captured: dict[str, Any] = {}

    async def run_daemon(**settings: Any) -> None:
        captured.update(settings)

    monkeypatch.setattr(msd.daemon, "run_daemon", run_daemon)
    key = tmp_path / "key"
    key.write_text("secret")
    assert main(["msd", "--urs", "http://127.0.0.1:9", "--msd-key-file", str(key),
                 "--hierarchy-key-file", str(key), "--domain-key-file", str(_domain_key(tmp_path)),
                 "--refresh-every", "37"]) == 0
    assert MsdSettings(**captured).refresh_every == 37


async def test_a_launched_process_gets_the_settings_on_its_command_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    argv: list[str] = []

    async def spawn(*args: str, **_kwargs: Any) -> None:
        argv.extend(args)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
    await _Daemon(_launch(tmp_path, in_process=False), index=0, domain="d.test").start()
    args = build_parser().parse_args(argv[argv.index("msd"):])
    assert (args.alpha, args.beta, args.refresh_every) == (2.5, 3.5, 37)


async def test_an_in_process_daemon_gets_the_settings(tmp_path: Path) -> None:
    daemon = _Daemon(_launch(tmp_path, in_process=True), index=0, domain="d.test")
    await daemon.start()
    try:
        assert daemon.daemon is not None
        settings = daemon.daemon.settings
        assert (settings.alpha, settings.beta, settings.refresh_every) == (2.5, 3.5, 37)
    finally:
        await daemon.kill()


@pytest.mark.parametrize("command", [["up", "configs/demo"], ["experiment", "scale"]])
def test_up_and_scale_take_the_quiet_period(command: list[str]) -> None:
    assert build_parser().parse_args([*command, "--refresh-every", "25"]).refresh_every == 25
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--refresh-every", "0"])
