"""Who may call, and how often: API keys with roles, and per-key rate limits.

Protocol-neutral: the HTTP middleware and the gRPC interceptor each pull the credential out of
their request (``Authorization: Bearer KEY`` or ``X-API-Key``; gRPC metadata ``authorization``
or ``x-api-key``) and ask the same ``Guard``.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field

__all__ = ["ROLES", "AccessDenied", "Caller", "Guard", "credential"]

ROLES = ("scorer", "reviewer")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a key's label (never the key) and its role."""

    key: str  # "anonymous" when the server has no keys; else "key<N>" / "reviewer<N>"
    role: str  # "scorer" or "reviewer"


class AccessDenied(Exception):
    """A missing or wrong key (``rate_limited`` False) or a spent rate limit (True)."""

    def __init__(self, reason: str, rate_limited: bool = False, retry_after: int = 1) -> None:
        super().__init__(reason)
        self.reason, self.rate_limited, self.retry_after = reason, rate_limited, retry_after


@dataclass
class _Bucket:
    tokens: float
    updated: float = field(default_factory=time.monotonic)


def credential(authorization: str | None, api_key: str | None) -> str:
    """The key a request presents: ``Bearer KEY`` in Authorization, else the API-key header."""
    auth = authorization or ""
    scheme, _, key = auth.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else (api_key or "")  # RFC 9110: any case


class Guard:
    """API keys (constant-time, no hint of which part was wrong) with roles, and per-key rate
    limits. Without keys every caller is an anonymous reviewer (a server on loopback)."""

    def __init__(
        self,
        api_keys: tuple[str, ...] = (),
        reviewer_keys: tuple[str, ...] = (),
        rate_limit: float | None = None,
        rate_burst: int = 20,
    ) -> None:
        self.keys = [(k.encode(), f"key{i}", "scorer") for i, k in enumerate(api_keys)]
        self.keys += [(k.encode(), f"reviewer{i}", "reviewer") for i, k in enumerate(reviewer_keys)]
        self.rate, self.burst = rate_limit, rate_burst
        self.buckets: dict[str, _Bucket] = {}

    def identify(self, given: str) -> Caller:
        """Who presents ``given``; AccessDenied for a missing or wrong key. Spends nothing."""
        if not self.keys:
            return Caller("anonymous", "reviewer")
        # Compare with every key, without stopping early, so timing says nothing.
        # a header's bytes arrive as latin-1 text (surrogates from a raw \xff): compare them
        raw = given.encode("utf-8", "surrogateescape")
        match = [hmac.compare_digest(raw, k) for k, _, _ in self.keys]
        if not any(match):
            raise AccessDenied("missing or invalid API key")
        _, label, role = self.keys[match.index(True)]
        return Caller(label, role)

    def check(self, given: str) -> Caller:
        """The caller of ``given`` (``identify``), with one request spent from its rate limit."""
        caller = self.identify(given)
        if self.rate:
            now = time.monotonic()
            bucket = self.buckets.setdefault(caller.key, _Bucket(float(self.burst), now))
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens < 1:
                wait = (1 - bucket.tokens) / self.rate
                raise AccessDenied("rate limit exceeded", True, max(1, round(wait)))
            bucket.tokens -= 1
        return caller
