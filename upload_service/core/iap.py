"""Identity-Aware Proxy: the verified e-mail address in its signed header is the client.

IAP signs every request it lets through with ``X-Goog-IAP-JWT-Assertion``, an ES256 JWT whose
audience names the protected backend and whose ``email`` is the signed-in user
(https://cloud.google.com/iap/docs/signed-headers-howto). The service checks the signature against
IAP's published keys, the audience, the issuer and the expiry; anything else is a 401.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request

from google.auth import exceptions as auth_exceptions
from google.auth import jwt

_LOGGER = logging.getLogger(__name__)

HEADER = "x-goog-iap-jwt-assertion"
ISSUER = "https://cloud.google.com/iap"

# IAP rotates its keys slowly; an unknown key id triggers a refetch at most this often.
_CERTS_TTL_SECS = 3600.0
_REFETCH_AFTER_SECS = 60.0


class IapVerifier:
    """Checks IAP assertions for one audience; IAP's public keys are fetched once and cached.

    Args:
        audience: the expected ``aud`` (``/projects/NUMBER/global/backendServices/ID``, or
            ``/projects/NUMBER/locations/REGION/services/NAME`` for IAP on Cloud Run).
        certs_url: where the keys are published (a JSON object, PEM public key by key id).
        timeout: seconds for fetching the keys.
    """

    def __init__(self, audience: str, certs_url: str, timeout: float = 5.0):
        self.audience = audience
        self._certs_url = certs_url
        self._timeout = timeout
        self._certs: dict[str, str] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def _keys(self, kid: str | None) -> dict[str, str]:
        with self._lock:
            age = time.monotonic() - self._fetched_at
            if age > _CERTS_TTL_SECS or (kid not in self._certs and age > _REFETCH_AFTER_SECS):
                with urllib.request.urlopen(self._certs_url, timeout=self._timeout) as response:  # noqa: S310
                    self._certs = json.loads(response.read())
                self._fetched_at = time.monotonic()
            return self._certs

    def email(self, assertion: str) -> str:
        """The verified e-mail address in an assertion.

        Raises:
            ValueError: the assertion is malformed, forged, expired, or for another audience.
            OSError: IAP's keys could not be fetched.
        """
        try:
            header = jwt.decode_header(assertion)
            if header.get("alg") != "ES256":
                raise ValueError(f"alg {header.get('alg')!r} is not ES256")
            claims = jwt.decode(assertion, certs=self._keys(header.get("kid")), audience=self.audience)
        except (auth_exceptions.GoogleAuthError, KeyError, TypeError) as exc:
            raise ValueError(str(exc)) from exc
        if claims.get("iss") != ISSUER:
            raise ValueError(f"issuer {claims.get('iss')!r} is not {ISSUER}")
        email = claims.get("email")
        if not isinstance(email, str) or "@" not in email:
            raise ValueError("no e-mail address in the assertion")
        return email.lower()

    def close(self) -> None:
        """Nothing to release (the app closes every shared client at shutdown)."""
