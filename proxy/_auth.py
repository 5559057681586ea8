"""Client authentication with proxy API keys.

Keys are compared by SHA-256 digest in constant time; the keys themselves are read from
the environment once and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from .exceptions import AuthenticationFailed

__all__ = ["ProxyKeys"]


class ProxyKeys:
    def __init__(self, digests: frozenset[bytes]) -> None:
        self._digests = digests

    @classmethod
    def from_env(cls, variable: str | None) -> ProxyKeys:
        if not variable:
            return cls(frozenset())
        keys = [k.strip() for k in os.environ.get(variable, "").split(",") if k.strip()]
        return cls(frozenset(hashlib.sha256(k.encode()).digest() for k in keys))

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, presented: str | None) -> None:
        """Raise AuthenticationFailed unless ``presented`` is one of the keys."""
        if not self.enabled:
            return
        if not presented:
            raise AuthenticationFailed("Missing API key: send it as `Authorization: Bearer <key>`.")
        digest = hashlib.sha256(presented.encode()).digest()
        if not any(hmac.compare_digest(digest, d) for d in self._digests):
            raise AuthenticationFailed("Incorrect API key provided.")


def bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None
