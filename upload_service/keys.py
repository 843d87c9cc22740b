"""``python -m upload_service.keys NAME [NAME ...]``: new API keys and their ``QA_API_KEYS`` pairs.

Prints, per client, a fresh random key (hand it to the client; it is shown once and stored nowhere)
and the ``name=<sha256 hex>`` pair the service keeps instead, then the whole ``QA_API_KEYS`` value.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys

from upload_service.core.auth import parse_api_keys


def new_key() -> str:
    """256 random bits, URL-safe: fits a header and a shell variable as it is."""
    return secrets.token_urlsafe(32)


def pair(name: str, key: str) -> str:
    """The ``QA_API_KEYS`` entry for a client's key: ``name=<sha256 hex of the key>``."""
    return f"{name}={hashlib.sha256(key.encode('utf-8')).hexdigest()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m upload_service.keys", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", metavar="NAME", help="a client's name: letters, digits, '.', '_', '-'")
    args = parser.parse_args(argv)
    pairs = []
    for name in args.names:
        key = new_key()
        pairs.append(pair(name, key))
        print(f"{name}: key {key}")
    try:
        parse_api_keys(",".join(pairs))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"QA_API_KEYS={','.join(pairs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
