"""One-way routed requests between MSDs: each hop passes a request on, the owner answers the origin.

A routed request (`remote-register`, `msd-probe`) travels hop by hop along the tree's
routing tables. Each hop acknowledges at once (202) and passes the request on in the
background; the owner sends its answer straight back to the originating MSD
(`reply_to`, `POST /msd/reply`), and a hop that cannot pass it on sends the error
there instead. So a request to an owner k hops away costs k one-way crossings plus one
for the answer, where waiting at every hop would cost 2k.

Every request and reply between MSDs is signed twice over the same bytes (method, path,
sender, time, nonce and body): an HMAC with the hierarchy key (`X-Mdns-Auth`: only
members of the hierarchy get past the cheap check) and the sending domain's Ed25519 key
(`X-Mdns-Signature`: only that domain can speak for it). A copy sent again is refused by
its nonce, an old one by its time (msd.replay.NonceCache). So nobody outside the
hierarchy can plant records, fake an answer or make an MSD send requests to an address
of their choosing, and no member can do so in another domain's name.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from msd.codec import is_domain
from msd.errors import MsdError
from msd.keys import KeyRing, TrustLevel, key_text, parse_key_text, public_bytes
from msd.messages import Peer
from msd.replay import NonceCache

log = logging.getLogger(__name__)

AUTH_HEADER = "X-Mdns-Auth"  # HMAC-SHA256 (hex) of the signed bytes with the hierarchy key
SENDER_HEADER = "X-Mdns-Sender"  # the sending domain
KEY_HEADER = "X-Mdns-Key"  # its public key (base64), for a receiver that has none yet
SIGNATURE_HEADER = "X-Mdns-Signature"  # Ed25519 (base64) of the signed bytes
TIME_HEADER = "X-Mdns-Time"  # the sender's clock, Unix milliseconds
NONCE_HEADER = "X-Mdns-Nonce"  # 32 random hex digits
SIGNED_PREFIX = b"mdns-relay/1"  # what the bytes are, so no other signed thing passes for them
_NONCE = re.compile(r"[0-9a-f]{16,64}")
_TIME = re.compile(r"[0-9]{1,16}")
SEND_TIMEOUT_S = 2.0  # one hop's acknowledgement
# The owner's answer to the origin, however many hops away; below the clients' own
# 3 s, so a client hears the MSD's 502 (and turns to the shadow) before it gives up.
REPLY_TIMEOUT_S = 2.5
MAX_PENDING = 10_000  # requests of this MSD awaiting their answers
MAX_TASKS = 10_000  # requests being passed on in the background

# An experiment's injected network delay: awaited once per message to or from a domain.
Delay = Callable[[str], Awaitable[None]]


class RoutingFailed(MsdError):
    """A routed request found no way to the owner (a hop is down or has no route)."""


class Overloaded(MsdError):
    """Too many routed requests in flight at this MSD; the caller may try again later."""


class NotAuthentic(MsdError):
    """A request between MSDs is not signed by a member of the hierarchy in its sender's name.

    `reason` is a short label the metrics count by."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def signed_bytes(method: str, path: str, *, sender: str, sent_at_ms: str, nonce: str,
                 body: bytes) -> bytes:
    """What both the HMAC and the Ed25519 signature of a request cover."""
    head = b"\n".join(part.encode() for part in (method.upper(), path, sender, sent_at_ms, nonce))
    return SIGNED_PREFIX + b"\n" + head + b"\n" + body


@dataclasses.dataclass
class RelayAuth:
    """Signs this MSD's requests to other MSDs and checks theirs (one per daemon)."""

    hierarchy_key: bytes
    domain: str
    signer: Ed25519PrivateKey
    keyring: KeyRing
    clock_ms: Callable[[], int]
    nonces: NonceCache = dataclasses.field(default_factory=NonceCache)

    def __post_init__(self) -> None:
        self._public_text = key_text(public_bytes(self.signer))

    def headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """The authentication headers of one request."""
        sent_at, nonce = str(self.clock_ms()), secrets.token_hex(16)
        data = signed_bytes(method, path, sender=self.domain, sent_at_ms=sent_at, nonce=nonce,
                            body=body)
        return {
            AUTH_HEADER: hmac.new(self.hierarchy_key, data, hashlib.sha256).hexdigest(),
            SENDER_HEADER: self.domain, KEY_HEADER: self._public_text,
            SIGNATURE_HEADER: base64.b64encode(self.signer.sign(data)).decode("ascii"),
            TIME_HEADER: sent_at, NONCE_HEADER: nonce,
        }

    def check(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> str:
        """The sending domain of an authentic request; NotAuthentic (with a reason) if not.

        Cheap checks first (the hierarchy HMAC, the time), the signature next, the nonce
        last, so forged requests cannot use up nonces."""
        sender = headers.get(SENDER_HEADER, "")
        sent_at, nonce = headers.get(TIME_HEADER, ""), headers.get(NONCE_HEADER, "")
        if not (is_domain(sender) and _TIME.fullmatch(sent_at) and _NONCE.fullmatch(nonce)):
            raise NotAuthentic("unsigned", f"{path}: not signed by an MSD of the hierarchy "
                               f"({SENDER_HEADER}, {TIME_HEADER} and {NONCE_HEADER} needed)")
        data = signed_bytes(method, path, sender=sender, sent_at_ms=sent_at, nonce=nonce,
                            body=body)
        expected = hmac.new(self.hierarchy_key, data, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(headers.get(AUTH_HEADER, "").encode(), expected.encode()):
            raise NotAuthentic("bad_hmac", f"{path}: not authenticated by the hierarchy key")
        now = self.clock_ms()
        window = self.nonces.window_ms
        if not now - window <= int(sent_at) <= now + window:
            raise NotAuthentic("stale", f"{path}: sent at {sent_at} ms, more than "
                               f"{window} ms from this MSD's clock")
        verifier, claimed = self._verifier(sender, headers.get(KEY_HEADER, ""))
        try:
            signature = base64.b64decode(headers.get(SIGNATURE_HEADER, ""), validate=True)
            verifier.verify(signature, data)
        except (InvalidSignature, binascii.Error, ValueError):
            raise NotAuthentic("forged", f"{path}: not signed by the key of {sender}") from None
        refusal = self.nonces.admit(sender, nonce, sent_at_ms=int(sent_at), now_ms=now)
        if refusal is not None:
            raise NotAuthentic(str(refusal).replace(" ", "_"),
                               f"{path}: refused as {refusal} (nonce {nonce[:16]}…)")
        if claimed is not None:
            self.keyring.learn(sender, claimed, TrustLevel.SELF)
        return sender

    def _verifier(self, sender: str, claimed_text: str) -> tuple[Ed25519PublicKey, bytes | None]:
        raw = self.keyring.get(sender)
        if raw is not None:
            return Ed25519PublicKey.from_public_bytes(raw), None
        if not self.keyring.tofu:
            raise NotAuthentic("unknown_sender", f"no key is pinned for {sender}")
        try:
            claimed = parse_key_text(claimed_text)
            return Ed25519PublicKey.from_public_bytes(claimed), claimed
        except ValueError:
            raise NotAuthentic("unknown_sender", f"no key is known for {sender} and it names "
                               f"none ({KEY_HEADER})") from None


class Relay:
    """Sends routed requests, passes them on, and matches the owners' answers to requests."""

    def __init__(
        self, *, http: aiohttp.ClientSession, auth: RelayAuth, own_address: Callable[[], str],
        delay: Delay | None = None,
    ) -> None:
        self._http = http
        self._auth = auth
        self._own_address = own_address  # "host:port" of this MSD, where answers come back
        self._delay = delay
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.late_replies = 0

    async def originate(self, peer: Peer, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send a routed request to its first hop and wait for the owner's answer."""
        if len(self._pending) >= MAX_PENDING:
            raise Overloaded(f"{MAX_PENDING} routed requests already await answers here")
        request = secrets.token_hex(12)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request] = future
        body = body | {"reply_to": self._own_address(), "request": request}

        async def first_hop() -> None:
            try:
                await self.send(peer, path, body)
            except RoutingFailed as exc:
                if not future.done():
                    future.set_exception(exc)

        self.spawn(first_hop(), name=f"{path} to {peer.domain}")
        try:
            return await asyncio.wait_for(future, REPLY_TIMEOUT_S)
        except TimeoutError:
            raise RoutingFailed(f"no answer to {path} via {peer.domain} within "
                                f"{REPLY_TIMEOUT_S:g} s") from None
        finally:
            self._pending.pop(request, None)

    def pass_on(self, peer: Peer, path: str, body: dict[str, Any]) -> None:
        """Forward a routed request to the next hop; a failure goes to the origin."""

        async def forward() -> None:
            try:
                await self.send(peer, path, body)
            except RoutingFailed as exc:
                await self.answer(body, error=str(exc))

        self.spawn(forward(), name=f"{path} to {peer.domain}")

    async def answer(
        self, body: dict[str, Any], *, result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Send the owner's result (or a hop's error) straight to the request's origin."""
        reply_to, request = str(body["reply_to"]), str(body["request"])
        host, _, port = reply_to.rpartition(":")
        origin = Peer(domain=str(body.get("hops", ["?"])[0]), host=host, port=int(port))
        reply: dict[str, Any] = {"request": request}
        reply |= {"error": error} if error is not None else {"result": result}
        try:
            await self.send(origin, "/msd/reply", reply)
        except RoutingFailed as exc:
            log.warning("could not answer %s at %s: %s", request, reply_to, exc)

    def resolve(self, reply: dict[str, Any]) -> bool:
        """An answer arrived; False if nobody waits for it (late, or not ours)."""
        future = self._pending.get(str(reply.get("request")))
        if future is None or future.done():
            self.late_replies += 1
            return False
        if "error" in reply:
            future.set_exception(RoutingFailed(str(reply["error"])))
        else:
            result = reply.get("result")
            if not isinstance(result, dict):
                future.set_exception(RoutingFailed("the owner's answer had no result"))
            else:
                future.set_result(result)
        return True

    async def send(self, peer: Peer, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a signed body to another MSD; its JSON answer (any 2xx)."""
        url = f"http://{peer.host}:{peer.port}{path}"
        data = json.dumps(body).encode()
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_S)
        for attempt in (1, 2):
            # Signed afresh for each try: the nonce of the first may have been used.
            headers = {"Content-Type": "application/json"} | self._auth.headers("POST", path, data)
            try:
                if self._delay is not None:
                    await self._delay(peer.domain)  # the request crosses the network
                async with self._http.post(url, data=data, headers=headers,
                                           timeout=timeout) as response:
                    answer: dict[str, Any] = await response.json()
                    if self._delay is not None:
                        await self._delay(peer.domain)  # and so does the answer
                    if not 200 <= response.status < 300:
                        raise RoutingFailed(f"{peer.domain} answered {response.status} to "
                                            f"{path}: {answer.get('error', answer)}")
                    return answer
            except aiohttp.ServerDisconnectedError:
                # A pooled keep-alive connection the peer closed just then; every routed
                # request is idempotent, so one fresh try is safe.
                if attempt == 2:
                    raise RoutingFailed(f"{peer.domain} at {peer.host}:{peer.port} "
                                        f"disconnected twice on {path}") from None
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise RoutingFailed(f"{peer.domain} at {peer.host}:{peer.port} did not answer "
                                    f"{path}: {exc or type(exc).__name__}") from None
        raise AssertionError("unreachable")

    def spawn(self, job: Coroutine[Any, Any, None], *, name: str) -> None:
        """Run a job in the background, kept until it ends (bounded)."""
        if len(self._tasks) >= MAX_TASKS:
            job.close()
            raise Overloaded(f"{MAX_TASKS} routed requests already in flight here")
        task = asyncio.create_task(job, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        """Cancel what is still in flight (at shutdown)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RoutingFailed("the MSD is shutting down"))
