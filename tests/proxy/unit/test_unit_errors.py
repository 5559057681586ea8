"""proxy._errors: one body for every error, Litestar's and the guards' errors as the proxy's own."""

from __future__ import annotations

import json

import pytest
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotFoundException,
    ServiceUnavailableException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

import proxy.exceptions as exceptions
from guards import GuardBackendError, GuardError, GuardTimeout, GuardUnreachable, VerdictParseError
from proxy._errors import error_body, error_object, from_http_exception, guard_error_class
from proxy.exceptions import (
    BodyTooLarge,
    ConfigError,
    GuardOverloaded,
    GuardUnavailable,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ProxyError,
    ShuttingDown,
    UpstreamHTTPError,
)
from proxy.pipeline._guardset import GuardOverloadedError


def _error_classes() -> list[type[ProxyError]]:
    found = [getattr(exceptions, name) for name in exceptions.__all__]
    return [c for c in found if isinstance(c, type) and issubclass(c, ProxyError) and c not in (ProxyError, UpstreamHTTPError)]


def _instance(cls: type[ProxyError]) -> ProxyError:
    try:
        return cls("what went wrong")
    except TypeError:  # a class whose message is fixed
        return cls()


@pytest.mark.parametrize("cls", _error_classes(), ids=lambda c: c.__name__)
def test_every_proxy_error_has_the_openai_shape(cls: type[ProxyError]) -> None:
    exc = _instance(cls)
    body = json.loads(error_body(exc))
    assert set(body) == {"error"}
    assert body["error"] == error_object(exc)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and body["error"]["type"] and body["error"]["code"]
    assert 400 <= exc.status_code < 600


def test_config_error_is_not_an_http_answer() -> None:
    assert not issubclass(ConfigError, ProxyError)
    assert "ConfigError" in exceptions.__all__


def test_an_upstream_error_body_keeps_the_openai_shape() -> None:
    own = b'{"error": {"message": "no such model", "type": "invalid_request_error", "code": "x"}}'
    assert error_body(UpstreamHTTPError(404, own, "application/json")) == own
    html = json.loads(error_body(UpstreamHTTPError(500, b"<h1>boom</h1>", "text/html")))["error"]
    assert html["message"] == "The upstream answered HTTP 500: <h1>boom</h1>"
    assert html["type"] == "upstream_error" and html["code"] == "upstream_error"


@pytest.mark.parametrize(
    ("raised", "cls", "status", "code"),
    [
        (NotFoundException(), NotFound, 404, "not_found"),
        (MethodNotAllowedException(), MethodNotAllowed, 405, "method_not_allowed"),
        (RequestEntityTooLarge(), BodyTooLarge, 413, "request_too_large"),
        (ValidationException("bad path parameter"), InvalidRequest, 400, "invalid_request"),
        (HTTPException(status_code=418), InvalidRequest, 418, "invalid_request"),
        (ServiceUnavailableException(), ProxyError, 503, "server_error"),
    ],
)
def test_litestar_exceptions_become_the_proxys_own(raised: HTTPException, cls: type[ProxyError], status: int, code: str) -> None:
    error = from_http_exception(raised)
    assert type(error) is cls
    assert error.status_code == status and error.code == code
    assert json.loads(error_body(error))["error"]["code"] == code


def test_litestar_404_names_what_the_proxy_serves() -> None:
    message = from_http_exception(NotFoundException()).message
    assert "/v1/chat/completions" in message and "/healthz" in message


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        (GuardOverloadedError("no free slot"), GuardOverloaded),
        ("GuardOverloadedError", GuardOverloaded),  # a Decision records the kind by name
        (GuardUnreachable("connection refused"), GuardUnavailable),
        (GuardTimeout("slow"), GuardUnavailable),
        (GuardBackendError("HTTP 500"), GuardUnavailable),
        (VerdictParseError("garbled", "???"), GuardUnavailable),
        (GuardError("a bug in a backend"), GuardUnavailable),
        ("GuardTimeout", GuardUnavailable),
        (None, GuardUnavailable),
    ],
)
def test_a_guard_error_is_an_outage(error: GuardError | str | None, cls: type[GuardUnavailable]) -> None:
    assert guard_error_class(error) is cls
    made = cls("x")
    assert made.status_code == 503 and made.retry_after_s == 1.0


def test_fixed_messages() -> None:
    assert ShuttingDown().code == "shutting_down" and ShuttingDown().status_code == 503
    assert ShuttingDown().retry_after_s is None  # as before: no Retry-After on the shutdown answer
    assert InternalError().code == "internal_error" and InternalError().status_code == 500


def test_the_docstring_tree_names_every_error() -> None:
    tree = exceptions.__doc__ or ""
    for name in exceptions.__all__:
        assert f" {name} " in tree or f" {name}\n" in tree, name
