"""Errors of the HTTP side, each mapped to one OpenAI-shaped error response.

    ProxyError                          status, type, code: the OpenAI error body
    ├── InvalidRequest (400)            the client's body or headers are wrong
    │   ├── BodyTooLarge (413)
    │   ├── MethodNotAllowed (405)      a path the proxy serves, with another method
    │   ├── UnsupportedMediaType (415)  a body that is not JSON
    │   └── HeaderFieldsTooLarge (431)  more header fields, or bytes, than the server accepts
    ├── RequestTimeout (408)            the body did not arrive within the read deadline
    ├── AuthenticationFailed (401)      missing or unknown proxy API key
    ├── PermissionDenied (403)          e.g. a header that loosens the policy without the right
    ├── NotFound (404)                  a path the proxy neither guards nor forwards
    │   └── ModelNotFound (404)         a model no upstream serves
    ├── RateLimited (429)               too many console requests from one address
    ├── ContentPolicyViolation (400)    a guard blocked the prompt or the answer
    ├── GuardUnavailable (503)          a guard could not answer: never a policy decision
    │   └── GuardOverloaded (503)       the guards' bounded queue is full
    ├── UpstreamError (502)             the upstream failed
    │   ├── UpstreamHTTPError           it answered with an error status: relayed with that status
    │   ├── UpstreamUnreachable (502)   no connection could be made, or it broke
    │   ├── UpstreamTruncated (502)     the stream ended before every output finished
    │   └── UpstreamTimeout (504)       no answer in time
    ├── ShuttingDown (503)              the shutdown deadline stopped the request
    └── InternalError (500)             a bug in the proxy: the client still gets the OpenAI shape

    ConfigError                         the config is invalid: at start or on a reload, never
                                        an HTTP answer, so not a ProxyError

A class with ``retry_after_s`` gets a ``Retry-After`` header: the OpenAI SDKs retry 408,
429 and 5xx answers and honour it. ``_errors.error_body`` writes every error's body, and
``_errors`` turns the errors of the layers around the proxy (Litestar's HTTP exceptions,
the guards' errors) into these. The app's handlers and the response writers answer
through ``error_response`` (``pipeline/_response``); what answers before the app
(uvicorn's protocol in ``ops/_http11``, the console's listener split) uses the same body.
"""

from __future__ import annotations

__all__ = [
    "ProxyError",
    "InvalidRequest",
    "BodyTooLarge",
    "MethodNotAllowed",
    "UnsupportedMediaType",
    "HeaderFieldsTooLarge",
    "RequestTimeout",
    "AuthenticationFailed",
    "PermissionDenied",
    "NotFound",
    "RateLimited",
    "ContentPolicyViolation",
    "GuardUnavailable",
    "GuardOverloaded",
    "ModelNotFound",
    "UpstreamError",
    "UpstreamHTTPError",
    "UpstreamUnreachable",
    "UpstreamTruncated",
    "UpstreamTimeout",
    "ShuttingDown",
    "InternalError",
    "ConfigError",
]


class ProxyError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None
    retry_after_s: float | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(ProxyError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class BodyTooLarge(InvalidRequest):
    status_code = 413
    code = "request_too_large"


class MethodNotAllowed(InvalidRequest):
    status_code = 405
    code = "method_not_allowed"


class UnsupportedMediaType(InvalidRequest):
    status_code = 415
    code = "unsupported_media_type"


class HeaderFieldsTooLarge(InvalidRequest):
    """Refused by the HTTP protocol (``ops/_http11``) before any app sees the request."""

    status_code = 431
    code = "request_header_fields_too_large"


class RequestTimeout(ProxyError):
    status_code = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class AuthenticationFailed(ProxyError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ProxyError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class NotFound(ProxyError):
    status_code = 404
    error_type = "not_found_error"
    code = "not_found"


class RateLimited(ProxyError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = max(1.0, retry_after_s)


class ModelNotFound(NotFound):
    """A model no upstream serves: OpenAI's own status, type and code for it."""

    error_type = "invalid_request_error"
    code = "model_not_found"


class ContentPolicyViolation(ProxyError):
    status_code = 400
    error_type = "invalid_request_error"
    code = "content_policy_violation"


class GuardUnavailable(ProxyError):
    status_code = 503
    error_type = "server_error"
    code = "guard_unavailable"
    retry_after_s = 1.0


class GuardOverloaded(GuardUnavailable):
    code = "guard_overloaded"


class UpstreamError(ProxyError):
    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"


class UpstreamHTTPError(UpstreamError):
    """The upstream's own error response: relayed with its status, in the OpenAI shape."""

    def __init__(self, status_code: int, body: bytes, content_type: str | None) -> None:
        super().__init__(f"upstream answered HTTP {status_code}")
        self.status_code = status_code
        self.body = body
        self.content_type = content_type


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTruncated(UpstreamError):
    code = "upstream_truncated"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    code = "upstream_timeout"


class ShuttingDown(ProxyError):
    status_code = 503
    code = "shutting_down"

    def __init__(self, message: str = "The proxy is shutting down; retry the request.") -> None:
        super().__init__(message)


class InternalError(ProxyError):
    code = "internal_error"

    def __init__(self, message: str = "The proxy failed to handle the request.") -> None:
        super().__init__(message)


class ConfigError(Exception):
    """Raised at start-up and by a reload (never for a request); the message names the offending key."""
