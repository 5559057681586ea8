"""Every error body the proxy writes, and the errors of the layers around it turned into its own.

``error_body`` is the one function that writes an error's OpenAI-shaped body
(``{"error": {"message", "type", "param", "code"}}``), whoever answers: the app's exception
handlers, the response writers (a whole answer, or the error event that ends a stream),
the shutdown deadline, the console's listener split and uvicorn's HTTP protocol.

What the layers around the proxy raise is translated here, once: Litestar's HTTP
exceptions (a path or method no route serves, a body over the size limit) by
``from_http_exception``, and a guard that could not answer by ``guard_error_class``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .exceptions import (
    AuthenticationFailed,
    BodyTooLarge,
    GuardOverloaded,
    GuardUnavailable,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    ProxyError,
    RateLimited,
    UnsupportedMediaType,
    UpstreamHTTPError,
)
from .pipeline._guardset import GuardOverloadedError
from .protocols._wire import decode_json, encode

if TYPE_CHECKING:
    from litestar.exceptions import HTTPException

    from guards import GuardError

__all__ = ["error_body", "error_object", "from_http_exception", "guard_error_class"]

_MAX_UPSTREAM_MESSAGE = 1000

_NOT_FOUND = (
    "Not found. This proxy guards POST /v1/chat/completions, /v1/responses, /v1/completions "
    "and /v1/moderations, forwards the /v1 paths its config lists, and serves GET /v1/models, "
    "/healthz, /readyz and /metrics."
)

# Litestar's statuses as the proxy's errors; a status not listed keeps its number, as an
# invalid request (4xx) or a server error (5xx).
_BY_STATUS: dict[int, type[ProxyError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    405: MethodNotAllowed,
    413: BodyTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
}


def error_object(exc: ProxyError) -> dict[str, Any]:
    """The OpenAI error object of ``exc`` (what goes under ``"error"``)."""
    return {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}


def error_body(exc: ProxyError) -> bytes:
    """The body of an error answer, always OpenAI-shaped.

    An upstream's own error passes unchanged when it already has the OpenAI shape;
    otherwise its text becomes the message (an HTML 500 page, a FastAPI ``detail``,
    vLLM's older top-level ``message``).
    """
    if isinstance(exc, UpstreamHTTPError):
        return _upstream_error_body(exc)
    return encode({"error": error_object(exc)})


def _upstream_error_body(exc: UpstreamHTTPError) -> bytes:
    try:
        doc = decode_json(exc.body)
    except Exception:  # not JSON (or not UTF-8): its text is the message
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict) and isinstance(doc["error"].get("message"), str):
        return exc.body
    message: Any = None
    if isinstance(doc, dict):
        message = doc.get("message") or doc.get("detail") or doc.get("error")
    if not isinstance(message, str):
        message = exc.body.decode("utf-8", "replace").strip() if doc is None else encode(doc).decode()
    text = f"The upstream answered HTTP {exc.status_code}: {message[:_MAX_UPSTREAM_MESSAGE] or '(empty body)'}"
    return encode({"error": {"message": text, "type": "upstream_error", "param": None, "code": "upstream_error"}})


def from_http_exception(exc: HTTPException) -> ProxyError:
    """Litestar's HTTP exception (raised before a route runs, or by reading the body) as
    the proxy's error of the same status."""
    status = exc.status_code
    cls = _BY_STATUS.get(status)
    if cls is NotFound:
        error: ProxyError = NotFound(_NOT_FOUND)
    elif cls is BodyTooLarge:
        error = BodyTooLarge("The request body is larger than the proxy accepts.")
    elif cls is not None:
        error = cls(str(exc.detail))
    elif status >= 500:
        error = ProxyError(str(exc.detail), code="server_error")
    else:
        error = InvalidRequest(str(exc.detail))
    error.status_code = status
    return error


def guard_error_class(error: GuardError | str | None) -> type[GuardUnavailable]:
    """The proxy's error for a guard that could not answer: an outage (503), never a
    policy decision. ``GuardOverloaded`` where the guards' bounded queue was full, else
    ``GuardUnavailable``. ``error``: the guard error, or its kind as a ``Decision``
    records it (the class name, never the text)."""
    kind = error if isinstance(error, str) or error is None else type(error).__name__
    return GuardOverloaded if kind == GuardOverloadedError.__name__ else GuardUnavailable
