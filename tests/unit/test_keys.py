"""Domain keys, the key ring's trust levels, signed MSD-to-MSD requests, nonces and rate limits."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from msd.keys import (
    KeyFileError,
    KeyRing,
    Learned,
    TrustLevel,
    append_key_line,
    generate_private_key,
    key_line,
    key_text,
    load_private_key,
    own_word,
    parse_key_lines,
    parse_key_text,
    public_bytes,
    read_key_file,
    write_private_key,
)
from msd.messages import CountReport, Heartbeat, Leave, Peer, Tracer
from msd.ratelimit import RateLimit, TokenBuckets, retry_after
from msd.relay import (
    AUTH_HEADER,
    KEY_HEADER,
    NONCE_HEADER,
    SENDER_HEADER,
    SIGNATURE_HEADER,
    TIME_HEADER,
    NotAuthentic,
    RelayAuth,
)
from msd.replay import NonceCache, Refusal

NOW = 1_760_000_000_000
HIERARCHY = b"h" * 32


def _key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


OWN, PARENT, CHILD, GRANDPARENT, STRANGER = (_key(i) for i in range(1, 6))


def raw(key: Ed25519PrivateKey) -> bytes:
    return public_bytes(key)


def ring(*, pinned: dict[str, bytes] | None = None, known: dict[str, bytes] | None = None,
         tofu: bool = True, max_keys: int = 100, on_learn: Any = None) -> KeyRing:
    return KeyRing(domain="cise.ufl.edu", own=raw(OWN), pinned=pinned, known=known, tofu=tofu,
                   max_keys=max_keys, on_learn=on_learn)


def report(sender: str, key: bytes, *, parent: str = "cise.ufl.edu") -> CountReport:
    return CountReport(sender=sender, msd_id="m", term=1, parent=parent, count=1,
                       address=Peer(domain=sender, host="10.0.0.9", port=1, key=key))


# --- key files --------------------------------------------------------------------------------


def test_a_private_key_file_is_0600_never_overwritten_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "domain.key"
    key = generate_private_key()
    write_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert raw(load_private_key(path)) == raw(key)
    with pytest.raises(KeyFileError, match="exists; remove it first"):
        write_private_key(path, generate_private_key())
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"readable by others .*chmod 600"):
        load_private_key(path)
    path.chmod(0o600)
    path.write_text("not a key")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        load_private_key(path)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_private_key(tmp_path / "missing.key")


def test_key_lines_round_trip_and_say_which_line_is_wrong(tmp_path: Path) -> None:
    text = f"# pinned by the administrator\n{key_line('ufl.edu', raw(PARENT))}\n\n" \
           f"CISE.ufl.edu. {key_text(raw(CHILD))}  # a comment\n"
    assert parse_key_lines(text, source="f") == {"ufl.edu": raw(PARENT),
                                                 "cise.ufl.edu": raw(CHILD)}
    for bad, match in (("ufl.edu", "f:1: expected 'domain public-key', got 1 words"),
                       ("ufl edu x", "got 3 words"),
                       ("ufl_edu " + key_text(raw(CHILD)), "f:1: 'ufl_edu' is not a domain"),
                       ("ufl.edu AAAA", "a public key is 32 bytes, this one 3"),
                       ("ufl.edu !!!!", "is not base64")):
        with pytest.raises(KeyFileError, match=match):
            parse_key_lines(bad, source="f")
    path = tmp_path / "known"
    append_key_line(path, "ufl.edu", raw(PARENT), note="urs")
    append_key_line(path, "ufl.edu", raw(CHILD))  # the last line of a domain wins
    assert read_key_file(path) == {"ufl.edu": raw(CHILD)}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        parse_key_text(key_text(b"short"))


# --- the ring -----------------------------------------------------------------------------------


def test_first_use_pins_a_key_and_a_different_one_later_is_refused() -> None:
    keys = ring()
    first = report("lab.cise.ufl.edu", raw(CHILD))
    verifier = keys.verifier(first)  # unknown: the key it names itself with
    assert verifier is not None and verifier.public_bytes_raw() == raw(CHILD)
    assert keys.absorb(first, introducer=False) == [("lab.cise.ufl.edu", Learned.NEW)]
    assert keys.level("lab.cise.ufl.edu") is TrustLevel.SELF
    impostor = report("lab.cise.ufl.edu", raw(STRANGER))
    verifier = keys.verifier(impostor)  # the pinned key, not the one it claims
    assert verifier is not None and verifier.public_bytes_raw() == raw(CHILD)
    assert keys.absorb(impostor, introducer=False) == [("lab.cise.ufl.edu", Learned.CONFLICT)]
    assert keys.get("lab.cise.ufl.edu") == raw(CHILD)
    assert keys.status()["learned"] == {"new": 1, "known": 0, "replaced": 0, "conflict": 1,
                                        "refused": 0}


def test_a_better_source_replaces_a_first_use_key_and_nothing_replaces_a_pin() -> None:
    keys = ring(pinned={"edu": raw(GRANDPARENT)})
    assert keys.learn("ufl.edu", raw(STRANGER), TrustLevel.SELF) is Learned.NEW
    assert keys.learn("ufl.edu", raw(PARENT), TrustLevel.INTRODUCED) is Learned.REPLACED
    assert keys.learn("ufl.edu", raw(STRANGER), TrustLevel.INTRODUCED) is Learned.CONFLICT
    assert keys.learn("ufl.edu", raw(PARENT), TrustLevel.URS) is Learned.KNOWN
    assert keys.level("ufl.edu") is TrustLevel.URS
    assert keys.learn("edu", raw(STRANGER), TrustLevel.URS) is Learned.CONFLICT
    assert keys.learn("cise.ufl.edu", raw(STRANGER), TrustLevel.URS) is Learned.CONFLICT
    assert keys.get("edu") == raw(GRANDPARENT) and keys.get("cise.ufl.edu") == raw(OWN)


def test_a_parents_heartbeat_introduces_its_ancestors_no_further_than_its_own_trust() -> None:
    keys = ring()
    keys.learn("ufl.edu", raw(PARENT), TrustLevel.URS)
    beat = Heartbeat(sender="ufl.edu", msd_id="m", term=1, generation=1, assignments=(),
                     ancestors=(Peer(domain="edu", host="10.0.0.1", port=1, key=raw(GRANDPARENT)),
                                Peer(domain="ufl.edu", host="10.0.0.2", port=1, key=raw(PARENT))))
    assert keys.absorb(beat, introducer=False) == []  # not our parent: nothing learnt
    assert keys.absorb(beat, introducer=True) == [("edu", Learned.NEW)]
    assert keys.level("edu") is TrustLevel.INTRODUCED
    # A parent known only by its own word introduces at that level, not above it.
    other = ring()
    other.learn("ufl.edu", raw(PARENT), TrustLevel.SELF)
    other.absorb(beat, introducer=True)
    assert other.level("edu") is TrustLevel.SELF


def test_a_tracer_names_its_orphan_and_a_leave_names_nobody() -> None:
    keys = ring()
    keys.learn("edu", raw(GRANDPARENT), TrustLevel.INTRODUCED)
    tracer = Tracer(sender="edu", msd_id="m", term=1, dead="ufl.edu", hops=(),
                    orphan=Peer(domain="lab.cise.ufl.edu", host="10.0.0.3", port=1,
                                key=raw(CHILD)))
    assert own_word(tracer) is None  # the orphan is not the sender
    assert keys.absorb(tracer, introducer=False) == [("lab.cise.ufl.edu", Learned.NEW)]
    leave = Leave(sender="stranger.edu", msd_id="m", term=1, parent="cise.ufl.edu")
    assert keys.verifier(leave) is None  # no key known, none named: UnknownSender


def test_without_trust_on_first_use_only_pins_count() -> None:
    keys = ring(tofu=False, pinned={"ufl.edu": raw(PARENT)},
                known={"lab.cise.ufl.edu": raw(CHILD)})
    assert keys.get("lab.cise.ufl.edu") is None  # what an earlier run learnt is ignored
    assert keys.verifier(report("lab.cise.ufl.edu", raw(CHILD))) is None
    assert keys.learn("lab.cise.ufl.edu", raw(CHILD), TrustLevel.URS) is Learned.REFUSED
    assert keys.verifier(report("ufl.edu", raw(STRANGER))) is not None


def test_the_ring_is_bounded_and_forgets_first_use_keys_first() -> None:
    learnt: list[tuple[str, TrustLevel]] = []
    keys = ring(max_keys=3, on_learn=lambda d, k, level: learnt.append((d, level)))
    assert keys.learn("a.edu", raw(CHILD), TrustLevel.URS) is Learned.NEW
    assert keys.learn("b.edu", raw(CHILD), TrustLevel.SELF) is Learned.NEW
    assert keys.learn("c.edu", raw(CHILD), TrustLevel.SELF) is Learned.NEW  # b.edu made room
    assert keys.get("b.edu") is None and len(keys) == 3
    assert keys.learn("d.edu", raw(CHILD), TrustLevel.SELF) is Learned.NEW  # c.edu went
    keys.learn("c.edu", raw(CHILD), TrustLevel.INTRODUCED)  # d.edu went
    keys.learn("e.edu", raw(CHILD), TrustLevel.INTRODUCED)
    assert keys.learn("f.edu", raw(CHILD), TrustLevel.SELF) is Learned.REFUSED  # none to drop
    assert learnt[:2] == [("a.edu", TrustLevel.URS), ("b.edu", TrustLevel.SELF)]
    assert ("cise.ufl.edu", TrustLevel.PINNED) not in learnt  # pins are not written back


def test_a_pinned_file_that_contradicts_the_own_key_is_refused() -> None:
    with pytest.raises(KeyFileError, match="another key than the daemon's own"):
        ring(pinned={"cise.ufl.edu": raw(STRANGER)})


# --- signed requests between MSDs ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


def auth(domain: str, key: Ed25519PrivateKey, clock: Clock, *, tofu: bool = True) -> RelayAuth:
    keys = KeyRing(domain=domain, own=raw(key), tofu=tofu)
    return RelayAuth(hierarchy_key=HIERARCHY, domain=domain, signer=key, keyring=keys,
                     clock_ms=clock)


def test_a_signed_request_passes_once_and_every_alteration_is_refused_by_name() -> None:
    clock = Clock()
    origin, owner = auth("lab.cise.ufl.edu", CHILD, clock), auth("edu", GRANDPARENT, clock)
    body = b'{"keyword": "jazz"}'
    headers = origin.headers("POST", "/msd/probe", body)
    assert owner.check("POST", "/msd/probe", headers, body) == "lab.cise.ufl.edu"
    assert owner.keyring.level("lab.cise.ufl.edu") is TrustLevel.SELF  # first use, learnt
    with pytest.raises(NotAuthentic, match="replayed") as caught:
        owner.check("POST", "/msd/probe", headers, body)
    assert caught.value.reason == "replayed"

    def refused(reason: str, headers: dict[str, str], *, body: bytes = body,
                path: str = "/msd/probe") -> None:
        with pytest.raises(NotAuthentic) as caught:
            owner.check("POST", path, headers, body)
        assert caught.value.reason == reason, caught.value

    fresh = origin.headers("POST", "/msd/probe", body)
    refused("bad_hmac", fresh, body=body + b" ")
    refused("bad_hmac", fresh, path="/msd/remote-register")
    refused("bad_hmac", fresh | {AUTH_HEADER: "0" * 64})
    refused("unsigned", {k: v for k, v in fresh.items() if k != NONCE_HEADER})
    refused("unsigned", fresh | {SENDER_HEADER: "Not A Domain"})
    # An insider (the hierarchy key) signing in another domain's name, whose key we hold:
    impostor = auth("lab.cise.ufl.edu", STRANGER, clock)
    refused("forged", impostor.headers("POST", "/msd/probe", body))
    stranger_sig = impostor.headers("POST", "/msd/probe", body)[SIGNATURE_HEADER]
    refused("forged", fresh | {SIGNATURE_HEADER: stranger_sig})
    clock.now += 31_000
    refused("stale", fresh)
    clock.now = NOW
    assert owner.check("POST", "/msd/probe", fresh, body) == "lab.cise.ufl.edu"


def test_pinned_only_refuses_a_sender_it_has_no_pin_for() -> None:
    clock = Clock()
    origin = auth("lab.cise.ufl.edu", CHILD, clock)
    strict = auth("edu", GRANDPARENT, clock, tofu=False)
    headers = origin.headers("POST", "/msd/reply", b"{}")
    with pytest.raises(NotAuthentic, match=r"no key is pinned for lab\.cise\.ufl\.edu"):
        strict.check("POST", "/msd/reply", headers, b"{}")
    tofu = auth("edu", GRANDPARENT, clock)
    with pytest.raises(NotAuthentic, match="names none"):
        tofu.check("POST", "/msd/reply", headers | {KEY_HEADER: "AAAA"}, b"{}")
    assert TIME_HEADER in headers


def test_nonces_are_admitted_once_within_the_window_and_memory_is_bounded() -> None:
    cache = NonceCache(window_ms=1_000, max_entries=3)
    assert cache.admit("a", "n1", sent_at_ms=NOW, now_ms=NOW) is None
    assert cache.admit("a", "n1", sent_at_ms=NOW, now_ms=NOW) is Refusal.REPLAYED
    assert cache.admit("b", "n1", sent_at_ms=NOW, now_ms=NOW) is None  # per sender
    assert cache.admit("a", "n2", sent_at_ms=NOW - 1_001, now_ms=NOW) is Refusal.STALE
    assert cache.admit("a", "n2", sent_at_ms=NOW + 1_001, now_ms=NOW) is Refusal.FROM_THE_FUTURE
    for i in range(5):
        cache.admit("c", f"x{i}", sent_at_ms=NOW, now_ms=NOW)
    assert len(cache) == 3
    assert cache.admit("z", "late", sent_at_ms=NOW + 2_500, now_ms=NOW + 2_500) is None
    assert len(cache) == 1  # everything admitted over two windows ago is forgotten


# --- rate limits --------------------------------------------------------------------------------


def test_a_token_bucket_allows_its_burst_then_its_rate_per_address() -> None:
    buckets = TokenBuckets(RateLimit(rate=2, burst=3), max_clients=2)
    assert [buckets.take("10.0.0.1", now=0.0) for _ in range(3)] == [None, None, None]
    wait = buckets.take("10.0.0.1", now=0.0)
    assert wait == pytest.approx(0.5) and retry_after(wait) == "1"
    assert buckets.take("10.0.0.2", now=0.0) is None  # another address, its own bucket
    assert buckets.take("10.0.0.1", now=0.5) is None  # one token back after 1/rate s
    assert buckets.take("10.0.0.1", now=0.5) is not None
    assert buckets.refused == 2
    buckets.take("10.0.0.3", now=1.0)  # a third address: the least recently seen goes
    assert len(buckets) == 2
    off = TokenBuckets(RateLimit(rate=0, burst=1))
    assert all(off.take("x", now=0.0) is None for _ in range(100))
    for rate, burst in ((-1, 1), (float("nan"), 1), (1, 0)):
        with pytest.raises(ValueError):
            RateLimit(rate=rate, burst=burst)


def test_the_urs_document_names_the_parent_key_and_is_checked_for_ours() -> None:
    from msd.trust import UrsKeys

    keys = ring()
    keys.learn("ufl.edu", raw(STRANGER), TrustLevel.SELF)  # an impostor was heard first
    urs = UrsKeys(keys, own=raw(OWN))
    document = {"public_key": key_text(raw(OWN)), "parent": "ufl.edu",
                "parent_designated": {"address": "10.0.0.2", "port": 1,
                                      "public_key": key_text(raw(PARENT))}}
    urs.update(document)
    assert keys.get("ufl.edu") == raw(PARENT) and keys.level("ufl.edu") is TrustLevel.URS
    assert urs.own_mismatch == 0
    urs.update(document | {"public_key": key_text(raw(STRANGER))})
    urs.update(document | {"public_key": key_text(raw(STRANGER))})
    assert urs.own_mismatch == 2  # counted on every poll, logged once
    urs.update(document | {"parent_designated": {"public_key": "not a key"}})
    urs.update(document | {"parent": "void"})
    urs.update({"parent": "ufl.edu", "parent_designated": None})
    assert keys.get("ufl.edu") == raw(PARENT)


def test_mdns_keys_generate_writes_a_0600_key_and_its_public_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from client.cli import main

    out = tmp_path / "ufl.key"
    assert main(["keys", "generate", "--domain", "UFL.edu.", "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert (tmp_path / "ufl.key.pub").read_text().strip() == line
    assert parse_key_lines(line, source="pub") == {"ufl.edu": raw(load_private_key(out))}
    assert main(["keys", "public", "--domain", "ufl.edu", str(out)]) == 0
    assert capsys.readouterr().out.strip() == line
    assert main(["keys", "generate", "--domain", "ufl.edu", "--out", str(out)]) == 1
    assert "exists; remove it first" in capsys.readouterr().err
    assert main(["keys", "generate", "--domain", "ufl edu", "--out", str(tmp_path / "x")]) == 1
    assert "is not a domain name" in capsys.readouterr().err
