"""`mdns fuzz`: random and mutated inputs at every decoder for a fixed time; count what happens.

Targets (each takes bytes, and must either accept them or raise its own error class):

- codec: msd.codec.decode; half the mutated inputs get a valid hierarchy tag and
  signature again, so the body parser and the signature check see them (CodecError);
- sap: msd.sap.decode, urs.sdp_parse.parse of its payload, then the SAP bridge's
  session_from_sdp (SapError, SdpError, IngestError);
- sdp: urs.sdp_parse.parse (SdpError);
- urs-json: urs.api.parse_json_body, then the session, designated and member models
  (RequestRejected, ValidationError);
- msd-json: the MSD's body parser, then its search, reply-path, hops and record checks
  (MsdError);
- query: msd.query.parse (QueryError);
- keys: msd.keys.parse_key_lines, a pinned-keys file (KeyFileError).

Inputs are random bytes, and mutations (bit flips, byte changes, insertions, deletions,
repeats, truncations, splices) of valid seeds; the query target also strings random
tokens of its language together. Any other exception is a crash; an input that takes
longer than `--hang` seconds (SIGALRM) is a hang. Both are reported with the input.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TextIO

MAX_INPUT_BYTES = 70_000  # past every decoder's limit, so the limits themselves are fuzzed


class Hang(Exception):
    """An input took longer than the hang limit."""


@dataclasses.dataclass
class Target:
    name: str
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]
    seeds: list[bytes]
    prepare: Callable[[bytes], bytes] = lambda data: data  # e.g. make the tag valid again
    generate: Callable[[random.Random], bytes] | None = None  # a grammar's own inputs


@dataclasses.dataclass
class Tally:
    inputs: int = 0
    accepted: int = 0
    rejected: Counter[str] = dataclasses.field(default_factory=Counter)
    slowest_s: float = 0.0
    crashes: list[dict[str, str]] = dataclasses.field(default_factory=list)
    hangs: list[dict[str, str]] = dataclasses.field(default_factory=list)


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fuzz = commands.add_parser(
        "fuzz", help="fuzz every decoder for a fixed time and report",
        description="Throw random and mutated inputs at the control-message codec, SAP, SDP, "
                    "the JSON request parsers, the query language and the key files for "
                    "--seconds; report inputs, rejections by error, crashes and hangs. Exit "
                    "status 1 if anything crashed or hung.")
    fuzz.add_argument("--seconds", type=float, default=10.0, help="the budget (default 10)")
    fuzz.add_argument("--target", action="append", choices=sorted(_TARGET_NAMES),
                      help="only these targets (repeatable; default all)")
    fuzz.add_argument("--seed", type=int, default=0)
    fuzz.add_argument("--hang", type=float, default=1.0, metavar="SECONDS",
                      help="an input taking longer than this is a hang (default 1)")
    fuzz.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, *, out: TextIO) -> int:
    from client.errors import ClientError

    if not 0 < args.seconds <= 86_400 or not 0 < args.hang <= 60:
        raise ClientError("--seconds must be within (0, 86400] and --hang within (0, 60]")
    report = fuzz(seconds=args.seconds, targets=args.target or sorted(_TARGET_NAMES),
                  seed=args.seed, hang_s=args.hang)
    print(json.dumps(report, indent=2) if args.json else format_report(report), file=out)
    return 0 if report["crashes"] == 0 and report["hangs"] == 0 else 1


def fuzz(*, seconds: float, targets: Sequence[str], seed: int = 0,
         hang_s: float = 1.0) -> dict[str, Any]:
    """Fuzz `targets` in turn, a slice at a time, until `seconds` have passed."""
    rng = random.Random(seed)
    chosen = [t for t in build_targets() if t.name in targets]
    tallies = {t.name: Tally() for t in chosen}
    start = time.monotonic()
    deadline = start + seconds
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        while time.monotonic() < deadline:
            for target in chosen:
                slice_end = min(deadline, time.monotonic() + 0.05)
                while time.monotonic() < slice_end:
                    _one(target, _input(target, rng), tallies[target.name], hang_s=hang_s)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.monotonic() - start
    per_target = {name: {"inputs": t.inputs, "accepted": t.accepted,
                         "rejected": dict(t.rejected.most_common()),
                         "slowest_ms": round(t.slowest_s * 1000, 2),
                         "crashes": t.crashes[:10], "hangs": t.hangs[:10]}
                  for name, t in tallies.items()}
    return {"seconds": round(elapsed, 1), "seed": seed, "hang_s": hang_s,
            "inputs": sum(t.inputs for t in tallies.values()),
            "crashes": sum(len(t.crashes) for t in tallies.values()),
            "hangs": sum(len(t.hangs) for t in tallies.values()),
            "targets": per_target}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"fuzzed {report['inputs']:,} inputs in {report['seconds']} s (seed "
             f"{report['seed']}): {report['crashes']} crashes, {report['hangs']} hangs"]
    for name, t in report["targets"].items():
        top = ", ".join(f"{k} {v:,}" for k, v in list(t["rejected"].items())[:4])
        lines.append(f"  {name:9} {t['inputs']:>9,} inputs, {t['accepted']:>7,} accepted, "
                     f"slowest {t['slowest_ms']} ms; {top}")
        for problem in (*t["crashes"], *t["hangs"]):
            lines.append(f"    ! {problem['error']} on {problem['input'][:120]}")
    return "\n".join(lines)


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang()


def _one(target: Target, data: bytes, tally: Tally, *, hang_s: float) -> None:
    tally.inputs += 1
    began = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, hang_s)
    try:
        target.run(data)
    except Hang:
        tally.hangs.append({"error": f"no answer within {hang_s:g} s", "input": data.hex()})
    except target.allowed as exc:
        tally.rejected[type(exc).__name__] += 1
    except Exception as exc:  # what fuzzing looks for
        tally.crashes.append({"error": f"{type(exc).__name__}: {exc}"[:300], "input": data.hex()})
    else:
        tally.accepted += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    tally.slowest_s = max(tally.slowest_s, time.perf_counter() - began)


def _input(target: Target, rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.1:
        return rng.randbytes(rng.choice((rng.randrange(0, 64), rng.randrange(0, 2048))))
    if target.generate is not None and roll < 0.4:
        return target.generate(rng)
    data = rng.choice(target.seeds)
    for _ in range(rng.choice((1, 1, 2, 3, 8))):
        data = _mutate(data, rng, target.seeds)
    data = data[:MAX_INPUT_BYTES]
    return target.prepare(data) if rng.random() < 0.5 else data


_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01", b"\xfe", b"\x20", b"\x0a",
                b"\x0d\x0a", b"\x00\x00", b"\xff\xff", b"\"", b"\\", b"{", b"[", b":", b"=")


def _mutate(data: bytes, rng: random.Random, seeds: Sequence[bytes]) -> bytes:
    if not data:
        return rng.randbytes(rng.randrange(1, 16))
    at = rng.randrange(len(data))
    op = rng.randrange(9)
    if op == 0:  # flip a bit
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1:]
    if op == 1:  # any byte
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
    if op == 2:  # an interesting one
        return data[:at] + rng.choice(_INTERESTING) + data[at + 1:]
    if op == 3:  # insert random bytes
        return data[:at] + rng.randbytes(rng.randrange(1, 32)) + data[at:]
    if op == 4:  # delete a range
        return data[:at] + data[at + rng.randrange(1, 64):]
    if op == 5:  # repeat a range, sometimes many times
        piece = data[at:at + rng.randrange(1, 64)]
        return data[:at] + piece * rng.choice((2, 3, 50, 1000)) + data[at:]
    if op == 6:  # truncate
        return data[:at]
    if op == 7:  # splice with another seed
        other = rng.choice(seeds)
        return data[:at] + other[rng.randrange(len(other) or 1):]
    return data + data[:at]  # grow


# --- the targets ----------------------------------------------------------------------------

_TARGET_NAMES = ("codec", "sap", "sdp", "urs-json", "msd-json", "query", "keys")


def build_targets() -> list[Target]:
    """Every target with its seeds (imports here: the CLI's other commands need none)."""
    return [_codec(), _sap(), _sdp(), _urs_json(), _msd_json(), _query(), _keys()]


_SDP_SEEDS = [
    b"v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=Jazz night\r\ni=live from the club\r\n"
    b"c=IN IP4 239.1.2.3/127\r\nt=0 0\r\na=keywds:jazz live\r\na=cat:music.jazz\r\n"
    b"m=video 5004 RTP/AVP 33\r\na=rtpmap:33 MP2T/90000\r\n",
    b"v=0\no=alice 2890844526 2890842807 IN IP6 ff15::1\ns=SSM\nc=IN IP6 ff3e::1234\nt=0 0\n"
    b"a=source-filter: incl IN IP6 ff3e::1234 2001:db8::1\nm=audio 49170 RTP/AVP 0 8 96\n",
    b"v=0\r\no=- 3 3 IN IP4 0.0.0.0\r\ns=x\r\nc=IN IP4 239.255.0.1/15/3\r\nt=0 0\r\n"
    b"m=video 5004 udp 33\r\na=recvonly\r\n",
]


def _codec() -> Target:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from msd.codec import HEADER_BYTES, SIGNATURE_BYTES, TAG_BYTES, CodecError, decode, encode
    from msd.keys import KeyRing, public_bytes
    from msd.messages import Assignment, CountReport, Heartbeat, Peer, Tracer

    hierarchy = bytes(range(32))
    signer, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    key = public_bytes(signer)
    ring = KeyRing(domain="ufl.edu", own=key, pinned={"cise.ufl.edu": key})
    peer = Peer(domain="cise.ufl.edu", host="10.0.0.3", port=9000, key=key)
    sender, msd_id, sent_at = "cise.ufl.edu", "m1", 1_760_000_000_000
    seeds = [encode(message, key=hierarchy, signer=signer) for message in (
        Heartbeat(sender=sender, msd_id=msd_id, term=3, seq=7, sent_at_ms=sent_at,
                  ancestors=(peer,), generation=2, assignments=(
                      Assignment(child="lab.cise.ufl.edu", start=0, end=2**127),)),
        CountReport(sender=sender, msd_id=msd_id, term=3, seq=8, sent_at_ms=sent_at,
                    parent="ufl.edu", count=4, address=peer),
        Tracer(sender=sender, msd_id=msd_id, term=3, seq=9, sent_at_ms=sent_at, orphan=peer,
               dead="ufl.edu", hops=("edu",)),
    )]

    def retag(data: bytes) -> bytes:
        # A valid frame, tag and signature around the mutated body: the parser must hold.
        import hmac

        body = data[HEADER_BYTES:len(data) - SIGNATURE_BYTES - TAG_BYTES][:0xFFFF]
        head = data[:4].ljust(4, b"\0") + len(body).to_bytes(2, "big")
        signed = head + body
        # One in four signed by a stranger: the signature check must refuse, not crash.
        sealed = signed + (stranger if data and data[-1] % 4 == 0 else signer).sign(signed)
        return sealed + hmac.digest(hierarchy, sealed, "sha256")[:TAG_BYTES]

    return Target("codec", lambda data: decode(data, key=hierarchy, verifier=ring.verifier),
                  (CodecError,), seeds, prepare=retag)


def _sap() -> Target:
    import ipaddress

    from client.sap_ingest import IngestError, session_from_sdp
    from msd.sap import SapError, announcement, decode, encode
    from urs.sdp_parse import SdpError, parse

    origin = ipaddress.ip_address("10.0.0.1")
    seeds = [encode(announcement(sdp, origin=origin, compressed=compressed))
             for sdp in _SDP_SEEDS for compressed in (False, True)]

    def run(data: bytes) -> object:
        packet = decode(data)
        return session_from_sdp(parse(packet.payload), ttl=600)

    return Target("sap", run, (SapError, SdpError, IngestError), seeds)


def _sdp() -> Target:
    from urs.sdp_parse import SdpError, parse

    return Target("sdp", parse, (SdpError,), list(_SDP_SEEDS))


def _urs_json() -> Target:
    from pydantic import ValidationError

    from msd.schema import Session
    from urs.api import RequestRejected, parse_json_body
    from urs.bootstrap import DesignatedUpdate, MemberUpdate

    seeds = [json.dumps(seed).encode() for seed in (
        {"id": "jazz-night", "title": "Jazz", "keywords": ["jazz", "live"], "group": "239.1.2.3",
         "port": 5004, "lat": 29.6, "lon": -82.3, "place": "Gainesville, FL", "ttl": 600},
        {"id": "ssm", "title": "S", "keywords": ["a"], "group": "232.1.1.1", "port": 1,
         "network": "ssm", "source": "10.0.0.1", "fallback_ip": "10.0.0.2",
         "fallback_port": 80, "mime": "video/MP2T", "scope": "local"},
        {"address": "192.0.2.10", "port": 7000, "term": 3, "ttl": 30},
        {"address": "127.0.0.1", "port": 7000, "pid": 42, "role": "backup", "ttl": 3},
    )]

    def run(data: bytes) -> object:
        body = parse_json_body(data)
        for model in (Session, DesignatedUpdate, MemberUpdate):
            with contextlib.suppress(ValidationError):
                model.model_validate(body)
        return body

    return Target("urs-json", run, (RequestRejected, ValidationError), seeds)


def _msd_json() -> Target:
    from msd.api import _hops, _object, _reply_path, _search
    from msd.errors import MsdError
    from msd.sessions import parse_record

    record = {"uri": "mcast.ufl.edu/x", "domain": "ufl.edu", "id": "x", "title": "X",
              "keywords": ["jazz"], "group": "239.1.1.1", "port": 5004,
              "expires_at": 4_000_000_000}
    seeds = [json.dumps(seed).encode() for seed in (
        {"keyword": "jazz", "shadow": False, "near": [29.6, -82.3], "within_km": 50},
        {"keyword": "jazz", "shadow": True, "origin": "ufl.edu", "record": record,
         "hops": ["ufl.edu", "edu"], "reply_to": "127.0.0.1:9000", "request": "ab12"},
        {"key": "0123456789abcdef0123456789abcdef", "keyword": "x", "hops": ["a"]},
    )]

    def run(data: bytes) -> object:
        body = _object(data)
        for check in (_search, _reply_path, _hops, lambda b: parse_record(b.get("record"))):
            with contextlib.suppress(MsdError):
                check(body)
        return body

    return Target("msd-json", run, (MsdError,), seeds)


_QUERY_WORDS = ("jazz", "blues", "live", "AND", "OR", "NOT", "and", "(", ")", "-", '"', "-jazz",
                '"or"', "near:29.6,-82.3", 'near:"Gainesville, FL"', "near:", "near:x,y",
                "within:50", "within:50km", "within:-1", "within:1e309", "scope:local",
                "scope:", "type:rtp", "mime:video/MP2T", "mime:/", ":", "é", "\u0000",
                "((((", "))))", "NOT NOT NOT", "near:90,180", "near:91,0")


def _query() -> Target:
    from msd.query import QueryError, parse

    def generate(rng: random.Random) -> bytes:
        words = [rng.choice(_QUERY_WORDS) for _ in range(rng.choice((1, 3, 10, 40, 300)))]
        return " ".join(words).encode("utf-8")

    seeds = [b"jazz near:29.6,-82.3", b"jazz OR blues NOT (radio OR podcast) scope:global",
             b'lecture -recorded near:"Paris, France" within:20 type:rtp']
    return Target("query", lambda data: parse(data.decode("utf-8", "replace")), (QueryError,),
                  seeds, generate=generate)


def _keys() -> Target:
    from msd.keys import KeyFileError, parse_key_lines

    seeds = [b"ufl.edu 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n# a comment\n"
             b"cise.ufl.edu Aq3yVhKcS0kj7V3e9XyZwq0jBv9rKq5vX3Fj2L9aP1o=  # learnt\n"]
    return Target("keys", lambda data: parse_key_lines(data.decode("utf-8", "replace"),
                                                        source="fuzz"),
                  (KeyFileError,), seeds)
