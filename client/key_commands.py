"""`mdns keys`: make a domain's Ed25519 key pair, and print the public line to pin it by."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from client.errors import ClientError
from msd.codec import is_domain
from msd.keys import (
    generate_private_key,
    key_line,
    load_private_key,
    public_bytes,
    write_private_key,
)

EPILOG = """\
The private key file is PEM (PKCS#8), mode 0600; every MSD daemon of the domain loads
it (`mdns msd --domain-key-file FILE`). FILE.pub gets the public line, `DOMAIN KEY`:
give it to the domain's URS (it publishes the key to its MSDs and child domains) and,
to pin it, append it to the pinned-keys file of other domains' MSDs (`--pinned-keys`).
See docs/threat-model.md.
"""


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="make and show a domain's Ed25519 keys",
                               description="A domain's signing keys (docs/threat-model.md).",
                               epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = actions.add_parser(
        "generate", help="make a new key pair for a domain",
        description="Write a new Ed25519 private key to FILE (mode 0600, never over an "
                    "existing file) and the public line `DOMAIN KEY` to FILE.pub and stdout.")
    generate.add_argument("--domain", required=True, help="the domain the key speaks for")
    generate.add_argument("--out", type=Path, required=True, metavar="FILE",
                          help="where the private key goes")
    public = actions.add_parser(
        "public", help="print the public line of a private key file",
        description="Print `DOMAIN KEY`, the line a pinned-keys file takes.")
    public.add_argument("--domain", required=True)
    public.add_argument("key_file", type=Path, metavar="FILE")


def run(args: argparse.Namespace, *, out: TextIO) -> int:
    domain = args.domain.lower().rstrip(".")
    if not is_domain(domain):
        raise ClientError(f"--domain {args.domain!r} is not a domain name (lower-case labels "
                          "of a-z, 0-9 and '-', dot-separated)")
    if args.keys_command == "generate":
        key = generate_private_key()
        write_private_key(args.out, key)
        line = key_line(domain, public_bytes(key))
        public_file = args.out.with_name(args.out.name + ".pub")
        try:
            public_file.write_text(line + "\n")
        except OSError as exc:
            raise ClientError(f"cannot write {public_file}: {exc.strerror}") from None
        print(line, file=out)
        return 0
    print(key_line(domain, public_bytes(load_private_key(args.key_file))), file=out)
    return 0
