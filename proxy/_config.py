"""The proxy's configuration: typed structures loaded from TOML and validated at start.

Every option and its default is documented in config.example.toml; a test keeps the two
in step. Secrets never live here: options ending in ``_env`` name environment variables.
"""

from __future__ import annotations

import fnmatch
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

from guards import FLEXGUARD_CATEGORIES, GuardModelConfig

from .exceptions import ConfigError
from .protocols._inventory import NEVER_FORWARDED, ExtraFields

__all__ = [
    "CheckSchedule",
    "ProxyConfig",
    "ServerConfig",
    "UpstreamConfig",
    "UpstreamRoute",
    "Timeouts",
    "PolicyConfig",
    "PromptStage",
    "ReasoningStage",
    "AnswerStage",
    "GuardsConfig",
    "TelemetryConfig",
    "ConsoleConfig",
    "AuditConfig",
    "EndpointsConfig",
    "TenantConfig",
    "CategoryPolicy",
    "threshold_of",
    "Action",
    "ReasoningAction",
    "load_config",
    "parse_config",
    "STRICTNESS_THRESHOLDS",
    "REASONING_FLAG_AT",
]

Action = Literal["block", "rewrite", "flag"]
# The reasoning stage can also steer: roll the reasoning back to its last passing check
# and let the model go on from there with a steering text (pipeline/_steer.py).
ReasoningAction = Literal["block", "rewrite", "flag", "steer"]
DEFAULT_STEER_TEXT = (
    " Wait, this line of thought could cause harm. I should not go into dangerous details; let me think about how to help safely."
)
Strictness = int | str

# FlexGuard card, Option A: flagged when risk_score >= threshold.
STRICTNESS_THRESHOLDS: dict[str, int] = {"strict": 20, "moderate": 40, "loose": 60}
# ReasoningShield's Judgment at and above which a named strictness flags, when
# [policy.reasoning] flag_at is unset. Its authors count 0.5 as harmful (the card's F1 is
# measured so): strict and moderate flag 0.5, loose only 1. A numeric strictness is on
# FlexGuard's scale alone and leaves ReasoningShield at the authors' 0.5.
REASONING_FLAG_AT: dict[str, float] = {"strict": 0.5, "moderate": 0.5, "loose": 1.0}


class _Struct(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Timeouts(_Struct):
    """Upstream timeouts in seconds; ``read_s = 0`` means no limit (a long reasoning
    stream may legitimately pause between tokens)."""

    connect_s: float = 5.0
    read_s: float = 300.0
    write_s: float = 30.0
    pool_s: float = 10.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "read_s", "write_s", "pool_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0")


class ServerConfig(_Struct):
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    # A request's header block: at most this many fields and bytes (request line
    # included), else 431, counted as the block arrives (ops/_http11.py).
    max_header_count: int = 100
    max_header_bytes: int = 64 * 1024
    # Proxy API keys: comma-separated in this environment variable. Unset: no client auth.
    api_keys_env: str | None = None
    # Streams in flight get this long to finish on shutdown before they are ended.
    shutdown_grace_s: float = 30.0
    # A request body must arrive within this many seconds (else 408): a client sending a
    # byte a second must not hold a connection and a request slot open for ever.
    body_read_timeout_s: float = 30.0
    # JSON bodies nested deeper than this are refused (400) before the proxy walks them.
    max_json_depth: int = 64
    # Inputs in one POST /v1/moderations (400 above it): each is one FlexGuard check.
    max_moderation_inputs: int = 64
    # Guard calls in flight per guard model, for the whole process; more wait in a
    # queue of at most `guard_queue` calls, each for at most `guard_queue_timeout_s`.
    # Past either bound a check fails as `guard_overloaded` (HTTP 503 with Retry-After):
    # bounded work, never thousands of pending connections. Verdicts from the verdict
    # cache take no slot.
    guard_concurrency: int = 256
    guard_queue: int = 1024
    guard_queue_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError("`port` must be in 1..65535")
        for name in (
            "max_body_bytes",
            "max_header_count",
            "max_header_bytes",
            "max_json_depth",
            "max_moderation_inputs",
            "guard_concurrency",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0")
        for name in ("body_read_timeout_s", "guard_queue_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0")
        if self.guard_queue < 0:
            raise ValueError("`guard_queue` must be >= 0")


class UpstreamConfig(_Struct):
    base_url: str = "http://127.0.0.1:8000/v1"
    # Replicas of the upstream (base_url: the first). Requests go to the healthy one
    # with the fewest outstanding requests (upstream/_replicas.py).
    base_urls: list[str] = msgspec.field(default_factory=list)
    # Replica health checks: GET <base>/models this often; out after this many failures.
    health_interval_s: float = 5.0
    unhealthy_after: int = 2
    # "config": send the key from `api_key_env`; "passthrough": forward the client's
    # Authorization header (then proxy keys go in `X-Guardproxy-Key`).
    auth: Literal["config", "passthrough"] = "config"
    api_key_env: str | None = None
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    max_connections: int = 1000
    # "aiohttp": httpx over aiohttp's transport (more concurrent streams at less CPU per
    # request; it has no write timeout). "httpx": httpx's own.
    http_transport: Literal["aiohttp", "httpx"] = "aiohttp"
    # Request fields this upstream takes beyond the inventory, added to [endpoints]'s.
    allow_fields: list[str] = msgspec.field(default_factory=list)
    unscreened_fields: list[str] = msgspec.field(default_factory=list)
    # How a steered generation goes on (pipeline/_steer.py). "completions": the prompt
    # rendered by the upstream's POST /tokenize, then /completions on its token ids and
    # the raw reasoning prefix (any chat template; vLLM). "chat": chat completions with
    # the prefix as a final assistant message and continue_final_message (templates that
    # leave a prefilled reasoning block open). "none": the upstream cannot continue, so a
    # steer falls back to steer_fallback.
    continuation: Literal["completions", "chat", "none"] = "completions"

    def __post_init__(self) -> None:
        check_field_paths(self.allow_fields, self.unscreened_fields)
        # base_urls stays as written (empty: one replica, base_url), so that a config
        # rebuilt from this one (the serve flags) can still set base_url.
        self.base_urls = [u.rstrip("/") for u in self.base_urls]
        self.base_url = (self.base_urls[0] if self.base_urls else self.base_url).rstrip("/")
        for url in self.replica_urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"`{'base_urls' if self.base_urls else 'base_url'}` must start with http:// or https://")
        if len(set(self.replica_urls)) != len(self.replica_urls):
            raise ValueError("`base_urls` lists a replica twice")
        if self.health_interval_s <= 0 or self.unhealthy_after < 1:
            raise ValueError("`health_interval_s` must be > 0 and `unhealthy_after` >= 1")

    @property
    def replica_urls(self) -> list[str]:
        """Every replica's base URL; the first is base_url."""
        return self.base_urls or [self.base_url]


# The keys of [upstream] that say where an upstream is: with [[upstreams]] they belong in
# each entry, and every other key of [upstream] is the entries' shared default.
_WHERE_KEYS = ("base_url", "base_urls")


class UpstreamRoute(UpstreamConfig, kw_only=True):
    """One named upstream of ``[[upstreams]]``: the requests whose ``model`` it serves.

    ``models`` holds exact names or globs (``qwen3-*``). An exact name wins over any
    glob; among globs, the first entry that matches.
    """

    name: str
    models: list[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.name.strip():
            raise ValueError("`name` must not be empty")
        if not self.models or any(not m.strip() for m in self.models):
            raise ValueError(f"upstream {self.name!r}: `models` must list at least one name or glob")

    @property
    def exact_models(self) -> list[str]:
        return [m for m in self.models if not _is_glob(m)]

    @property
    def model_globs(self) -> list[re.Pattern[str]]:
        return [re.compile(fnmatch.translate(m)) for m in self.models if _is_glob(m)]


def check_field_paths(*lists: list[str]) -> None:
    """Allowed extra request fields: dotted names, never a chat template."""
    for paths in lists:
        for path in paths:
            parts = path.split(".")
            if not all(p.strip() and p == p.strip() for p in parts):
                raise ValueError(f'{path!r} is not a field name or a dotted path such as "chat_template_kwargs.enable_thinking"')
            if NEVER_FORWARDED.intersection(parts):
                raise ValueError(f"{path!r}: a chat template is never forwarded (it decides what the model reads)")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class PromptStage(_Struct):
    enabled: bool = True
    action: Action = "block"
    # "parallel": check while the upstream starts (output held until the verdict; a
    # blocked prompt cancels the upstream). "before": check first, call after.
    mode: Literal["parallel", "before"] = "parallel"
    # What is screened. "all": every text the model will read, each in the format
    # FlexGuard was trained on (protocols/_inventory.py lists them per API).
    # "last_user": the last user message only, which lets an earlier turn, a tool
    # description or any other message past the guards. "conversation" is the older
    # name of "all".
    screen: Literal["all", "last_user", "conversation"] = "all"
    # With screen = "all": also screen the operator's text: system and developer
    # prompts (instructions, on the Responses API), tool and structured-output
    # definitions. Off trusts everything the client sends there.
    screen_system: bool = True
    # Content-part types that carry no text the guards could read (images, audio,
    # files): forwarded unscreened. Any other part without a string `text` is refused
    # with 400; an empty list refuses all media.
    unscreened_parts: list[str] = msgspec.field(
        default_factory=lambda: ["image_url", "input_image", "input_audio", "audio", "file", "input_file", "video_url"]
    )


class CheckSchedule(_Struct):
    """Where the checks of a growing text fall (the positions: pipeline/_monitor.py).

    fixed: a check every ``check_every_tokens`` new tokens. growing: the first check at
    ``first_check_tokens``, then an interval of ``growth - 1`` times the tokens already
    checked, at least ``first_check_tokens`` and at most ``max_interval_tokens``: the
    checks of a long text grow with the logarithm of its length up to the cap, then
    linearly at one per ``max_interval_tokens``. ``schedule`` unset: fixed when
    ``check_every_tokens`` is set, else the stage's default.
    """

    schedule: Literal["fixed", "growing"] | None = None
    check_every_tokens: int | None = None
    first_check_tokens: int = 8
    growth: float = 1.25
    max_interval_tokens: int = 256

    def __post_init__(self) -> None:
        if self.schedule is None:
            self.schedule = "fixed" if self.check_every_tokens is not None else self._default_schedule()
        if self.check_every_tokens is None:
            self.check_every_tokens = self._default_every()
        if self.check_every_tokens < 1:
            raise ValueError("`check_every_tokens` must be >= 1")
        if self.first_check_tokens < 1:
            raise ValueError("`first_check_tokens` must be >= 1")
        if not self.growth > 1:
            raise ValueError("`growth` must be > 1")
        if self.max_interval_tokens < self.first_check_tokens:
            raise ValueError("`max_interval_tokens` must be >= `first_check_tokens`")

    def _default_schedule(self) -> Literal["fixed", "growing"]:
        return "fixed"

    def _default_every(self) -> int:
        return 32

    @property
    def every(self) -> int:
        """``check_every_tokens``, always set once loaded."""
        assert self.check_every_tokens is not None
        return self.check_every_tokens


class ReasoningStage(CheckSchedule):
    """Growing by default: a long trace needs fewer checks than at a fixed interval for
    a similar abort delay, and an early first check releases checked reasoning sooner."""

    enabled: bool = True
    # block / rewrite stop the upstream at once and end with finish_reason
    # content_filter (rewrite adds the refusal message); flag only annotates; steer
    # stops the upstream, rolls the reasoning back to its last passing check and asks
    # the upstream to go on from there after `steer_text`.
    action: ReasoningAction = "rewrite"
    # immediate: forward at once; checked: forward reasoning covered by a passing
    # check; hidden: never forward reasoning.
    release: Literal["immediate", "checked", "hidden"] = "checked"
    # Steering: at most `max_steers` continuations per request; a flag after that (or
    # where the upstream cannot continue) ends the request by `steer_fallback`.
    max_steers: int = 2
    # Written into the model's reasoning, in its own voice, where the rollback cut it.
    steer_text: str = DEFAULT_STEER_TEXT
    steer_fallback: Literal["rewrite", "block"] = "rewrite"
    # Send the steering text to the client as reasoning: the answer rests on it.
    show_steer_text: bool = True
    # Also screen the final answer with ReasoningShield (its card: it moderates answers too).
    screen_answer: bool = False
    # The lowest ReasoningShield Judgment that flags (0.5 or 1), for reasoning and for
    # answers it screens. None: from the named strictness (REASONING_FLAG_AT).
    flag_at: float | None = None

    def _default_schedule(self) -> Literal["fixed", "growing"]:
        return "growing"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flag_at is not None and self.flag_at not in (0.5, 1.0):
            raise ValueError("`flag_at` must be 0.5 or 1")
        if self.max_steers < 0:
            raise ValueError("`max_steers` must be >= 0")
        if not self.steer_text.strip():
            raise ValueError("`steer_text` must not be empty")
        if self.action == "steer" and self.release == "immediate":
            # The rollback must be invisible: the client may only have seen checked text.
            raise ValueError(
                '`action = "steer"` needs `release = "checked"` or `"hidden"`: reasoning released '
                "before its check could not be rolled back"
            )


class AnswerStage(CheckSchedule):
    enabled: bool = True
    action: Action = "rewrite"
    # final: hold the answer until its final check passed; checked: release text once
    # a check covering it passed; immediate: forward at once, check alongside.
    release: Literal["final", "checked", "immediate"] = "checked"

    def _default_every(self) -> int:
        return 64


class CategoryPolicy(_Struct):
    """Per FlexGuard category (VIO, ILG, SEX, INF, DIS, MIS, JAIL)."""

    # A threshold for this category instead of the strictness's, e.g. {JAIL = 20}.
    thresholds: dict[str, int] = msgspec.field(default_factory=dict)
    # Flagged whenever FlexGuard names the category, whatever the score.
    always_block: list[str] = msgspec.field(default_factory=list)
    # Never flagged for this category (another category may still flag the text).
    always_allow: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        for where, codes in (
            ("thresholds", list(self.thresholds)),
            ("always_block", self.always_block),
            ("always_allow", self.always_allow),
        ):
            unknown = [c for c in codes if c not in FLEXGUARD_CATEGORIES]
            if unknown:
                raise ValueError(f"`{where}`: unknown category {unknown[0]!r} (one of {', '.join(FLEXGUARD_CATEGORIES)})")
        for code, value in self.thresholds.items():
            if not 0 <= value <= 100:
                raise ValueError(f"`thresholds.{code}` must be in 0..100")
        both = set(self.always_block) & set(self.always_allow)
        if both:
            raise ValueError(f"{sorted(both)[0]} is in both `always_block` and `always_allow`")


class PolicyConfig(_Struct):
    # "strict" (20), "moderate" (40), "loose" (60) or a threshold 0-100 (for example
    # one found by `guardproxy calibrate`). Flagged when risk_score >= threshold.
    strictness: Strictness = "moderate"
    # false: shadow mode. Every check runs and is reported as what it would have done
    # (would_block, would_rewrite, ...), but nothing is blocked, rewritten or held back.
    enforce: bool = True
    on_guard_error: Literal["block", "allow"] = "block"
    refusal_message: str = "I can't help with that request."
    prompt: PromptStage = msgspec.field(default_factory=PromptStage)
    reasoning: ReasoningStage = msgspec.field(default_factory=ReasoningStage)
    answer: AnswerStage = msgspec.field(default_factory=AnswerStage)
    categories: CategoryPolicy = msgspec.field(default_factory=CategoryPolicy)

    def __post_init__(self) -> None:
        threshold_of(self.strictness)

    @property
    def threshold(self) -> int:
        return threshold_of(self.strictness)

    @property
    def reasoning_flag_at(self) -> float:
        """The lowest ReasoningShield Judgment that flags under this policy."""
        if self.reasoning.flag_at is not None:
            return self.reasoning.flag_at
        if isinstance(self.strictness, str):
            return REASONING_FLAG_AT[self.strictness]
        return 0.5  # a number is FlexGuard's threshold: ReasoningShield keeps the authors' cut


def threshold_of(strictness: Strictness) -> int:
    if isinstance(strictness, bool):
        raise ValueError("`strictness` must be strict, moderate, loose or 0-100")
    if isinstance(strictness, int):
        if not 0 <= strictness <= 100:
            raise ValueError("`strictness` as a number must be in 0..100")
        return strictness
    try:
        return STRICTNESS_THRESHOLDS[strictness]
    except KeyError:
        raise ValueError(f"`strictness` must be one of {', '.join(STRICTNESS_THRESHOLDS)} or 0-100, not {strictness!r}") from None


def _default_flexguard() -> GuardModelConfig:
    return GuardModelConfig(model="FlexGuard-Qwen3-8B", base_url="http://127.0.0.1:8001/v1")


def _default_reasoningshield() -> GuardModelConfig:
    return GuardModelConfig(model="ReasoningShield-3B", base_url="http://127.0.0.1:8002/v1")


class GuardsConfig(_Struct):
    flexguard: GuardModelConfig = msgspec.field(default_factory=_default_flexguard)
    reasoningshield: GuardModelConfig = msgspec.field(default_factory=_default_reasoningshield)
    # The verdict cache (guards/_cache.py): the verdicts on whole texts (prompts, system
    # prompts, earlier turns), keyed by the exact guard input, shared by every request of
    # the process; at most `cache_entries` (0: no cache), none older than `cache_ttl_s`.
    cache_entries: int = 10000
    cache_ttl_s: float = 600.0

    def __post_init__(self) -> None:
        if self.cache_entries < 0:
            raise ValueError("`cache_entries` must be >= 0 (0: no verdict cache)")
        if not 0 < self.cache_ttl_s < math.inf:
            raise ValueError("`cache_ttl_s` must be > 0")
        # One model config type serves both guards; a cap the guard has no output for
        # would be ignored, so it is refused.
        if self.flexguard.max_analysis_tokens is not None:
            raise ValueError("`guards.flexguard.max_analysis_tokens`: FlexGuard has no analysis; use max_thinking_tokens")


_PASSTHROUGH_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


class EndpointsConfig(_Struct):
    """What the proxy serves besides the guarded generation APIs."""

    # Forwarded to the upstream unchanged and NOT screened: "METHOD /v1/path", where a
    # path segment `{name}` matches any one segment. Batches and files stay off by
    # default: a batch would run generations past the guards.
    passthrough: list[str] = msgspec.field(default_factory=lambda: ["POST /v1/embeddings", "GET /v1/models/{id}"])
    # POST /v1/responses with `background: true`: refused unless allowed, because a
    # background response runs on after its stream is closed (the proxy cannot stop it).
    allow_background_responses: bool = False
    # Request fields beyond the ones each API's inventory lists, for every upstream
    # (each [[upstreams]] entry may add its own): dotted paths such as "top_k" or
    # "chat_template_kwargs.enable_thinking" (that key of that object, no other).
    # allow_fields: forwarded, every string in them screened (prompt mode).
    # unscreened_fields: forwarded unscreened, for fields the model does not read.
    allow_fields: list[str] = msgspec.field(default_factory=list)
    unscreened_fields: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        check_field_paths(self.allow_fields, self.unscreened_fields)
        for entry in self.passthrough:
            method, _, path = entry.partition(" ")
            if method not in _PASSTHROUGH_METHODS or not path.startswith("/v1/"):
                raise ValueError(
                    f'`passthrough`: {entry!r} is not "METHOD /v1/path" (METHOD one of {", ".join(_PASSTHROUGH_METHODS)})'
                )
            if path.rstrip("/") in ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/moderations"):
                raise ValueError(f"`passthrough`: {path} is guarded and cannot be forwarded unscreened")


class TelemetryConfig(_Struct):
    # Traces: "none" (the default, no cost), "console" (spans printed as JSON) or "otlp"
    # (OTLP over HTTP to otlp_endpoint; needs `pip install 'guardproxy[otlp]'`).
    traces: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    service_name: str = "guardproxy"
    # Prometheus text format at GET /metrics.
    metrics: bool = True
    # One structured JSON log line per request with its decision.
    log_requests: bool = True
    # Include message text (prompts, answers) in logs and span attributes. Off by default.
    log_message_text: bool = False


class ConsoleConfig(_Struct):
    """The decisions console at ``/console`` (proxy/console): off by default."""

    enabled: bool = False
    # The environment variable holding the console's admin key (distinct from the proxy
    # keys, which get 403 there). Unset or empty while enabled: the start is refused.
    admin_key_env: str = "GUARDPROXY_ADMIN_KEY"
    # Decision records kept in memory for the console (the newest; older ones drop out).
    keep: int = 2000
    # Console requests (page and API) per client address per minute; more get 429.
    requests_per_minute: int = 600
    # A listener of its own for the console (then the proxy's port does not serve it),
    # on `host` (unset: server.host). Unset: the console is on the proxy's port.
    port: int | None = None
    host: str | None = None

    def __post_init__(self) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError("`port` must be in 1..65535")
        if (self.port is not None or self.host is not None) and not self.enabled:
            raise ValueError("`port` and `host` are the console's listener: set `enabled = true` too")
        if self.keep < 1:
            raise ValueError("`keep` must be >= 1")
        if self.requests_per_minute < 1:
            raise ValueError("`requests_per_minute` must be >= 1")
        if not self.admin_key_env.strip():
            raise ValueError("`admin_key_env` must name an environment variable")


class AuditConfig(_Struct):
    """The audit log: one JSON line per decision record (and per label), written off the
    request path, rotated by size."""

    # The JSONL file; unset: no audit log.
    path: str | None = None
    # Rotate when the file would grow past this; keep this many rotated files (.1 .. .N).
    max_bytes: int = 100 * 1024 * 1024
    keep_files: int = 5
    # Which records keep the screened texts (prompt, reasoning, answer): none, those a
    # check flagged (or a guard error stopped), or all. Never keys or headers.
    capture: Literal["none", "flagged", "all"] = "none"
    # Regular expressions whose matches are replaced by "[REDACTED]" in captured texts.
    redact: list[str] = msgspec.field(default_factory=list)
    # Records waiting for the disk; past this they are dropped (counted and logged), so
    # that a slow or full disk never holds a request.
    queue: int = 10_000

    def __post_init__(self) -> None:
        if self.max_bytes < 4096:
            raise ValueError("`max_bytes` must be >= 4096")
        if self.keep_files < 0:
            raise ValueError("`keep_files` must be >= 0")
        if self.queue < 1:
            raise ValueError("`queue` must be >= 1")
        for pattern in self.redact:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"`redact`: {pattern!r} is not a valid regular expression ({exc})") from None


class TenantConfig(_Struct):
    """An API key with its own policy: the global [policy] with this tenant's changes."""

    name: str
    # The key's SHA-256 as hex (`printf %s "$KEY" | sha256sum`), or the name of an
    # environment variable holding the key itself. One of the two.
    key_sha256: str | None = None
    key_env: str | None = None
    # May a request header (X-Guard-Strictness) loosen this tenant's policy?
    allow_loosen: bool = False
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError("a tenant needs exactly one of `key_sha256` and `key_env`")
        if self.key_sha256 is not None:
            digest = self.key_sha256.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("`key_sha256` must be 64 hex digits")
            self.key_sha256 = digest


class ProxyConfig(_Struct):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    upstream: UpstreamConfig = msgspec.field(default_factory=UpstreamConfig)
    # Several upstreams chosen by the request's model; [upstream] then holds their shared
    # settings (auth, timeouts, transport, health checks) and no base_url.
    upstreams: list[UpstreamRoute] = msgspec.field(default_factory=list)
    endpoints: EndpointsConfig = msgspec.field(default_factory=EndpointsConfig)
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)
    guards: GuardsConfig = msgspec.field(default_factory=GuardsConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)
    console: ConsoleConfig = msgspec.field(default_factory=ConsoleConfig)
    audit: AuditConfig = msgspec.field(default_factory=AuditConfig)
    tenants: list[TenantConfig] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        p = self.policy
        if (p.prompt.enabled or p.answer.enabled) and not self.guards.flexguard.enabled:
            raise ValueError("prompt or answer screening needs `guards.flexguard` enabled")
        if p.reasoning.enabled and not self.guards.reasoningshield.enabled:
            raise ValueError("reasoning screening needs `guards.reasoningshield` enabled")
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError("`upstreams`: two entries have the same name")
        owner: dict[str, str] = {}
        for route in self.upstreams:
            for model in route.exact_models:
                if owner.setdefault(model, route.name) != route.name:
                    raise ValueError(f"`upstreams`: model {model!r} is listed by both {owner[model]!r} and {route.name!r}")

    def extra_fields(self, route: UpstreamConfig) -> ExtraFields:
        """The request fields an upstream takes beyond the inventory: [endpoints]'s and its own."""
        e = self.endpoints
        return ExtraFields(
            frozenset(e.allow_fields + route.allow_fields), frozenset(e.unscreened_fields + route.unscreened_fields)
        )

    def routes(self) -> list[UpstreamRoute]:
        """The upstreams requests are routed to: ``[[upstreams]]``, or ``[upstream]``
        alone as "default", serving every model."""
        if self.upstreams:
            return self.upstreams
        return [UpstreamRoute(**msgspec.structs.asdict(self.upstream), name="default", models=["*"])]


def parse_config(data: bytes | str, *, source: str = "config") -> ProxyConfig:
    """Decode and validate TOML; a bad key or value raises ConfigError naming it."""
    try:
        raw = msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    if isinstance(raw, dict) and isinstance(raw.get("tenants"), list):
        base = raw.get("policy", {})
        for tenant in raw["tenants"]:
            if isinstance(tenant, dict):
                tenant["policy"] = _merged(base, tenant.get("policy", {}))
    if isinstance(raw, dict) and isinstance(raw.get("upstreams"), list):
        _share_upstream_defaults(raw, source)
    try:
        return msgspec.convert(raw, ProxyConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{source}: {_keypath(str(exc))}") from exc


def _share_upstream_defaults(raw: dict[str, Any], source: str) -> None:
    """Lay [upstream]'s settings under each [[upstreams]] entry.

    ``auth`` stays in [upstream] alone: the proxy reads the caller's key before it knows
    the model, so every upstream must take the same kind of credentials.
    """
    shared = raw.get("upstream", {})
    if not isinstance(shared, dict):
        return  # msgspec names the type error
    for key in _WHERE_KEYS:
        if key in shared:
            raise ConfigError(
                f"{source}: `upstream.{key}`: with [[upstreams]], each entry names its own base_url(s); "
                "[upstream] holds only their shared settings"
            )
    for i, entry in enumerate(raw["upstreams"]):
        if isinstance(entry, dict):
            if "auth" in entry:
                raise ConfigError(
                    f"{source}: `upstreams[{i}].auth`: set auth once, in [upstream]: the caller's key is read "
                    "before the model is known, so every upstream takes the same kind"
                )
            raw["upstreams"][i] = _merged(shared, entry)


def _merged(base: Any, override: Any) -> Any:
    """``override`` laid over ``base``, table by table (a tenant changes only what it names)."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return override
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(base.get(key), value) if key in base else value
    return out


def load_config(path: str | os.PathLike[str]) -> ProxyConfig:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from exc
    return parse_config(data, source=str(p))


def _keypath(message: str) -> str:
    # msgspec says "... - at `$.policy.answer.release`"; users think in TOML keys.
    return message.replace("`$.", "`").replace("`$`", "the top level")
