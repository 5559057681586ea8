"""Who is calling, and which policy applies: API keys, tenants, per-request strictness.

Precedence: request header > tenant > global. A request's ``X-Guard-Strictness`` may
only make its policy stricter, unless its tenant has ``allow_loosen``. Keys are compared
by SHA-256 digest in constant time; the keys themselves are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

import msgspec

from ._config import PolicyConfig, ProxyConfig, threshold_of
from .exceptions import AuthenticationFailed, ConfigError, InvalidRequest, PermissionDenied

__all__ = ["Principal", "KeyRing", "bearer", "check_secrets", "request_policy", "STRICTNESS_HEADER"]

STRICTNESS_HEADER = "x-guard-strictness"


class Principal(msgspec.Struct, frozen=True):
    """The caller: a tenant, or "default" (global keys, or no auth configured)."""

    name: str
    policy: PolicyConfig
    allow_loosen: bool = False


class KeyRing:
    def __init__(self, default: Principal, by_digest: dict[bytes, Principal]) -> None:
        self._default = default
        self._by_digest = by_digest

    @classmethod
    def from_config(cls, config: ProxyConfig, environ: Mapping[str, str] = os.environ) -> KeyRing:
        """The keys the config names. A named variable that is unset or empty is a
        ConfigError, never "no keys": that would accept every caller (fail open)."""
        default = Principal("default", config.policy)
        by_digest: dict[bytes, Principal] = {}
        if config.server.api_keys_env:
            keys = [k.strip() for k in _secret(environ, config.server.api_keys_env, "server.api_keys_env").split(",")]
            if not any(keys):
                raise ConfigError(f"server.api_keys_env: ${config.server.api_keys_env} holds no key")
            for key in filter(None, keys):
                by_digest[_digest(key)] = default
        for tenant in config.tenants:
            principal = Principal(tenant.name, tenant.policy, tenant.allow_loosen)
            if tenant.key_sha256 is not None:
                by_digest[bytes.fromhex(tenant.key_sha256)] = principal
            else:
                key = _secret(environ, tenant.key_env or "", f"tenants.{tenant.name}.key_env").strip()
                by_digest[_digest(key)] = principal
        return cls(default, by_digest)

    @property
    def required(self) -> bool:
        return bool(self._by_digest)

    def identify(self, presented: str | None) -> Principal:
        """The principal for ``presented``; AuthenticationFailed when keys are required
        and it is not one of them."""
        if not self._by_digest:
            return self._default
        if not presented:
            raise AuthenticationFailed("Missing API key: send it as `Authorization: Bearer <key>`.")
        digest = _digest(presented)
        found = None
        for candidate, principal in self._by_digest.items():
            if hmac.compare_digest(digest, candidate):
                found = principal
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return found


def _secret(environ: Mapping[str, str], name: str, option: str) -> str:
    value = environ.get(name, "")
    if not value.strip():
        raise ConfigError(f"{option}: the environment variable ${name} is unset or empty")
    return value


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def bearer(header: str | None) -> str | None:
    if header and header[:7].lower() == "bearer ":
        return header[7:].strip()
    return None


def request_policy(principal: Principal, strictness_header: str | None) -> PolicyConfig:
    """The principal's policy, made stricter (or, if allowed, looser) by the request."""
    policy = principal.policy
    if strictness_header is None:
        return policy
    value: int | str = strictness_header.strip().lower()
    # isascii: str.isdigit accepts "²" and other digits int() refuses.
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    try:
        requested = threshold_of(value)
    except ValueError as exc:
        raise InvalidRequest(
            f"`X-Guard-Strictness`: {exc}".replace("`strictness`", "the value"), param="X-Guard-Strictness"
        ) from None
    if requested > policy.threshold and not principal.allow_loosen:
        raise PermissionDenied(
            f"`X-Guard-Strictness: {strictness_header.strip()}` would loosen this key's policy "
            f"(threshold {policy.threshold}); this key may only make it stricter."
        )
    requested_policy = msgspec.structs.replace(policy, strictness=value)
    if requested_policy.reasoning_flag_at > policy.reasoning_flag_at and not principal.allow_loosen:
        # A name stricter for FlexGuard may still be looser for ReasoningShield (a key at
        # strictness 70 asking for "loose"): its cut stays where the key has it.
        reasoning = msgspec.structs.replace(policy.reasoning, flag_at=policy.reasoning_flag_at)
        requested_policy = msgspec.structs.replace(requested_policy, reasoning=reasoning)
    return requested_policy


def check_secrets(config: ProxyConfig, environ: Mapping[str, str] = os.environ) -> None:
    """Every secret the config names must be set: a missing one stops the start.

    The proxy keys fail open without theirs, and an upstream or guard would answer 401 to
    every request; either way the start is the moment to say so, naming the variable.
    """
    KeyRing.from_config(config, environ)
    named = [("upstream.api_key_env", config.upstream.api_key_env)]
    named += [(f"upstreams[{i}].api_key_env", route.api_key_env) for i, route in enumerate(config.upstreams)]
    named += [
        (f"guards.{g}.api_key_env", getattr(config.guards, g).api_key_env)
        for g in ("flexguard", "reasoningshield")
        if getattr(config.guards, g).enabled
    ]
    if config.console.enabled:  # the console without its admin key would be open, or shut for good
        named.append(("console.admin_key_env", config.console.admin_key_env))
    for option, name in named:
        if name:
            _secret(environ, name, option)
