"""Who is calling: API keys kept as SHA-256 hashes, ``QA_API_TOKEN`` as one more client, loopback.

A client is a name. Every upload records the name of the client that made it, and a client sees
only uploads with its own name (docs/upload-service.md "Clients"). With authentication off there
is one client, ``Client(None)``, which sees every upload.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress
import logging
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # config imports this module
    from upload_service.core.config import Settings

_LOGGER = logging.getLogger(__name__)

# The client QA_API_TOKEN stands for.
TOKEN_CLIENT = "default"

# No "@": an IAP identity is an e-mail address, so it can never be mistaken for a key's name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclasses.dataclass(frozen=True)
class Client:
    """The caller of one request.

    Attributes:
        name: the owner recorded on its uploads; None when authentication is off (one client,
            which sees every upload).
    """

    name: str | None

    @property
    def sees_all(self) -> bool:
        return self.name is None


def parse_api_keys(text: str) -> dict[str, bytes]:
    """``QA_API_KEYS``: comma-separated ``name=<sha256 hex of the key>`` pairs.

    Returns:
        ``{name: digest}``.

    Raises:
        ValueError: naming the pair that is not of that form (and never quoting a key).
    """
    keys: dict[str, bytes] = {}
    for number, pair in enumerate((p.strip() for p in text.split(",")), start=1):
        if not pair:
            continue
        name, sep, digest = (part.strip() for part in pair.partition("="))
        if not sep or not _NAME.fullmatch(name) or not _SHA256_HEX.fullmatch(digest):
            raise ValueError(f"pair {number} is not name=<64 hex digits> (a name is letters, digits, '.', '_' or "
                             "'-'; the value is the SHA-256 of the key, which `python -m upload_service.keys NAME` "
                             "prints)")
        if name in keys:
            raise ValueError(f"client {name!r} appears twice")
        keys[name] = bytes.fromhex(digest)
    if not keys:
        raise ValueError("holds no name=<sha256 hex> pair; unset it to configure no keys")
    return keys


@dataclasses.dataclass(frozen=True)
class KeyRing:
    """The configured clients and the digests of their keys."""

    digests: tuple[tuple[str, bytes], ...]

    @staticmethod
    def digest(key: str) -> bytes:
        return hashlib.sha256(key.encode("utf-8")).digest()

    def client_for(self, key: str) -> str | None:
        """The name whose digest matches ``key``'s, or None.

        Every digest is compared, in constant time, so the time taken says nothing about which
        (or whether one) matched.
        """
        supplied = self.digest(key)
        found = None
        for name, digest in self.digests:
            if hmac.compare_digest(supplied, digest):
                found = name
        return found

    def __bool__(self) -> bool:
        return bool(self.digests)


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or ``localhost``) can only be reached from this machine."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_refusal(settings: Settings, host: str) -> str | None:
    """Fail closed: why the service must not serve on ``host`` with these settings, or None.

    No keys (nor IAP) and not ``QA_AUTH=none`` is allowed on loopback only.
    """
    if settings.authenticates or settings.auth == "none" or is_loopback(host):
        return None
    return (f"no API keys are configured and {host} is not a loopback address: set QA_API_KEYS (name=<sha256 of "
            "the key> pairs; python -m upload_service.keys NAME makes one), or QA_AUTH=none to serve everyone "
            "without authentication on purpose")


def warn_about_auth(settings: Settings) -> None:
    """Says at start-up when callers are not authenticated."""
    if settings.authenticates:
        return
    if settings.auth == "none":
        _LOGGER.warning("QA_AUTH=none: authentication is off on purpose. Every caller can upload and sees every "
                        "upload and its answers; set QA_API_KEYS (docs/upload-service.md) to tell clients apart.")
    else:
        # api.deps.identify refuses other callers, however the server was started.
        _LOGGER.warning("no API keys configured: serving callers on this machine (loopback) only, without "
                        "authentication; set QA_API_KEYS to tell clients apart")
