"""The keep-alive loop on its own: failures do not end it, a re-registration's token is kept."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

import client.register
from client.errors import ClientError
from client.register import Registration, keep_alive

URI = "mcast.mit.edu/radio"


async def test_a_failed_round_is_reported_and_a_new_token_is_used_from_then_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens: list[str | None] = []
    answers: list[ClientError | tuple[Registration, dict[str, Any]]] = [
        ClientError("cannot reach the URS"),  # the round fails: report, go on
        (Registration(URI, "new-token", created=True), {"routed": []}),  # it had expired
        (Registration(URI, "new-token", created=False),
         {"routed": [{"keyword": "radio", "shadow": False, "error": "no route"}]}),
    ]
    done = asyncio.Event()

    async def register_everywhere(
        http: aiohttp.ClientSession, **kwargs: Any
    ) -> tuple[Registration, dict[str, Any]]:
        tokens.append(kwargs["token"])
        answer = answers.pop(0)
        if not answers:
            done.set()
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(client.register, "register_everywhere", register_everywhere)
    reports: list[str] = []
    async with aiohttp.ClientSession() as http:
        task = asyncio.create_task(keep_alive(
            http, domain="mit.edu", session={"id": "radio"}, token="old-token",
            dns_server=None, interval_s=0.01, report=reports.append))
        async with asyncio.timeout(5):
            await done.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert tokens == ["old-token", "old-token", "new-token"]
    assert "refresh of 'radio' failed" in reports[0] and "cannot reach the URS" in reports[0]
    assert reports[1] == f"{URI} had expired and is registered again; new owner token: new-token"
    assert "1 keyword record(s)" in reports[2]
