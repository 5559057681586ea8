"""A guard served by an OpenAI-compatible server (``vllm serve``), over HTTP.

Checks go straight to an httpx transport, as the proxy's upstream requests do, not
through ``httpx.AsyncClient``: the client's cookie jar, redirect and auth layers do
nothing for a guard call, and with httpx's own pool its per-request connection
bookkeeping grows with the pool, which a guard with many checks in flight makes large.
The proxy passes the transport it chose for the upstream
(``open_backend(config, transport=...)``); without one, httpx's own.

Retries (tenacity, exponential backoff) on connection errors, HTTP 429 and 5xx, at most
``max_retries`` times; the guard's check deadline bounds them all. httpx's errors are
translated into the project's in one place, :func:`_translate`.

The body is JSON encoded by msgspec with each message's content taken as the guard
encoded it (``ChatMessage.content_json``, kept incrementally for text that grows) or,
for the system prompts, encoded once per backend.

The API key is read from the environment variable ``config.api_key_env`` and sent as a
Bearer token; it never appears in an exception message (server error bodies are scrubbed
of it too, in case a server echoes headers).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from typing import Any

import httpx
import msgspec
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from .._config import GuardModelConfig
from ..exceptions import GuardBackendError, GuardTimeout, GuardUnreachable
from ._base import ChatMessage, ChatPrompt, Generation

__all__ = ["OpenAIBackend"]

_BODY_EXCERPT = 200
_MAX_BODY = 1 << 22  # a guard answer is a few KB; more is a broken server
_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder().decode


class _StatusError(Exception):
    """A non-2xx answer, kept apart from httpx's so the retry predicate stays simple."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _unreachable(exc: BaseException) -> str | None:
    """Why no connection could be made (refused, no route, a name that does not
    resolve), or None. The OS error behind the transport's decides: httpx-aiohttp
    reports every aiohttp connection error, a refused connection too, as ConnectTimeout."""
    cause: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore/aiohttp -> OSError: a few links at most
        if cause is None:
            return None
        if isinstance(cause, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "no route to the host"
        cause = cause.__cause__ or cause.__context__
    return None


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _StatusError):
        return exc.status == 429 or exc.status >= 500
    # Connection refused/reset and broken responses; timeouts are left to the deadline.
    if _unreachable(exc) is not None:
        return True
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.TimeoutException)


class OpenAIBackend:
    """POST ``{base_url}/chat/completions`` with the model card's sampling."""

    def __init__(
        self,
        config: GuardModelConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        backoff_s: float = 0.25,
    ) -> None:
        self.config = config
        self._api_key = os.environ.get(config.api_key_env) if config.api_key_env else None
        base = config.base_url.rstrip("/")
        self._completions_url = httpx.URL(f"{base}/chat/completions")
        self._models_url = httpx.URL(f"{base}/models")
        # vLLM serves /tokenize beside /v1, not under it.
        self._tokenize_url = httpx.URL(f"{base.removesuffix('/v1')}/tokenize")
        # No host header: httpx adds it from the URL, which a replica transport may rewrite.
        self._headers: list[tuple[bytes, bytes]] = [
            (b"user-agent", b"guardproxy-guard"),
            (b"accept", b"application/json"),
        ]
        if self._api_key:
            self._headers.append((b"authorization", f"Bearer {self._api_key}".encode()))
        # The pool waits at most the connect timeout; the check's deadline bounds the rest.
        self._timeout = httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s).as_dict()
        # The backend owns its transport, the proxy's or its own, and closes it.
        self._transport = transport or httpx.AsyncHTTPTransport(
            # The server batches concurrent checks, so let them all reach it.
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            trust_env=False,
        )
        self._backoff_s = backoff_s
        self._encoded: dict[str, msgspec.Raw] = {}
        self._model_json = msgspec.Raw(_ENCODE(config.model))

    def _content(self, message: ChatMessage) -> msgspec.Raw:
        if message.content_json is not None:
            return msgspec.Raw(message.content_json)
        if message.role != "system":
            return msgspec.Raw(_ENCODE(message.content))
        # System prompts are the same few long strings: encoded once. The key's hash is
        # cached on the string object, which guards.system_prompt hands out each time.
        raw = self._encoded.get(message.content)
        if raw is None:
            raw = self._encoded[message.content] = msgspec.Raw(_ENCODE(message.content))
        return raw

    def request_body(self, prompt: ChatPrompt) -> dict[str, Any]:
        """The JSON body of one check (public so tests can see what is sent)."""
        return _DECODE(self.encode_body(prompt))  # type: ignore[no-any-return]

    def encode_body(self, prompt: ChatPrompt) -> bytes:
        body: dict[str, Any] = {
            "model": self._model_json,
            "messages": [{"role": m.role, "content": self._content(m)} for m in prompt.messages],
            "temperature": 0,
            "max_tokens": prompt.max_tokens,
            # Keep <think> and friends: the parser needs the whole output.
            "skip_special_tokens": False,
        }
        if prompt.chat_template_kwargs:
            body["chat_template_kwargs"] = prompt.chat_template_kwargs
        if prompt.regex is not None:
            body["structured_outputs"] = {"regex": prompt.regex}
        return _ENCODE(body)

    async def generate(self, prompt: ChatPrompt) -> Generation:
        body = self.encode_body(prompt)
        try:
            try:
                data: Any = await self._post(body)
            except Exception as exc:
                if not (_retryable(exc) and self.config.max_retries):
                    raise
                data = await self._retry(body)
            return _generation(data)
        except (
            httpx.HTTPError,
            _StatusError,
            msgspec.DecodeError,
            ValueError,
            LookupError,
            TypeError,
            AttributeError,
        ) as exc:
            raise self._translate(exc) from exc

    async def _retry(self, body: bytes) -> Any:
        """The retries after a failed first attempt. tenacity comes in only here: nearly
        every check succeeds at once, and its per-call state was a visible part of a
        check's CPU. Backoff b, 2b, 4b, 4b, ... as if tenacity had run from the start."""
        await asyncio.sleep(self._backoff_s)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_retries),
            wait=wait_exponential(multiplier=2 * self._backoff_s, max=4 * self._backoff_s),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        return await retrying(self._post, body)

    async def _send(self, method: str, url: httpx.URL, body: bytes | None = None) -> tuple[int, bytes]:
        headers = self._headers if body is None else [*self._headers, (b"content-type", b"application/json")]
        request = httpx.Request(method, url, headers=headers, content=body, extensions={"timeout": self._timeout})
        response = await self._transport.handle_async_request(request)
        try:
            parts: list[bytes] = []
            size = 0
            async for piece in response.aiter_raw():
                parts.append(piece)
                size += len(piece)
                if size > _MAX_BODY:
                    raise _StatusError(response.status_code, "answer larger than 4 MiB")
        finally:
            await response.aclose()
        return response.status_code, b"".join(parts)

    async def _post(self, body: bytes) -> Any:
        status, raw = await self._send("POST", self._completions_url, body)
        if status >= 400:
            raise _StatusError(status, raw[:_BODY_EXCERPT].decode("utf-8", "replace"))
        return _DECODE(raw)

    def _translate(self, exc: BaseException) -> GuardBackendError:
        """The one place where lower-level errors become the project's."""
        where = f"guard server {self.config.base_url}"
        unreachable = _unreachable(exc)
        if unreachable is not None:
            return GuardUnreachable(f"{where}: {unreachable}")
        if isinstance(exc, httpx.TimeoutException):
            return GuardTimeout(f"{where}: {type(exc).__name__}")
        if isinstance(exc, _StatusError):
            return GuardBackendError(f"{where} answered HTTP {exc.status}: {self._scrub(exc.body)}")
        if isinstance(exc, httpx.HTTPError):
            return GuardBackendError(f"{where}: {type(exc).__name__}: {self._scrub(str(exc))}")
        return GuardBackendError(f"{where}: malformed chat completion ({type(exc).__name__})")

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def added_tokens(self) -> frozenset[str]:
        # No tokenizer on this side of the wire: the guards' static list applies.
        return frozenset()

    async def served_max_model_len(self) -> int | None:
        """The context the server serves the model with: vLLM lists ``max_model_len``
        for each model in GET /models; None where the server does not say."""
        status, raw = await self._send("GET", self._models_url)
        if status != 200:
            return None
        for model in _DECODE(raw).get("data") or []:
            if isinstance(model, dict) and model.get("id") == self.config.model:
                length = model.get("max_model_len")
                return length if isinstance(length, int) and length > 0 else None
        return None

    async def count_prompt_tokens(self, prompt: ChatPrompt) -> int | None:
        """The tokens of ``prompt`` as the server renders it (vLLM's POST /tokenize with
        the chat messages); None where the server has no such endpoint."""
        body: dict[str, Any] = {
            "model": self._model_json,
            "messages": [{"role": m.role, "content": self._content(m)} for m in prompt.messages],
            "add_generation_prompt": True,
        }
        if prompt.chat_template_kwargs:
            body["chat_template_kwargs"] = prompt.chat_template_kwargs
        status, raw = await self._send("POST", self._tokenize_url, _ENCODE(body))
        if status != 200:
            return None
        count = _DECODE(raw).get("count")
        return count if isinstance(count, int) and count > 0 else None

    async def ready(self) -> bool:
        return await self.why_not_ready() is None

    async def why_not_ready(self) -> str | None:
        """What keeps this server from answering checks, or None: it answers GET /models
        and lists the configured model (a server that serves the model under another
        name answers every check with HTTP 404)."""
        try:
            status, raw = await self._send("GET", self._models_url)
        except (httpx.HTTPError, _StatusError) as exc:
            return f"unreachable ({_unreachable(exc) or type(exc).__name__ + ': ' + self._scrub(str(exc))})"
        if status != 200:
            return f"GET /models answered HTTP {status}: {self._scrub(raw[:_BODY_EXCERPT].decode('utf-8', 'replace'))}"
        try:
            data = _DECODE(raw)["data"]
            served = [m["id"] for m in data]
        except (msgspec.DecodeError, ValueError, LookupError, TypeError):
            return "GET /models did not answer with a model list"
        if self.config.model in served:
            return None
        listed = ", ".join(map(str, served[:5])) + (", ..." if len(served) > 5 else "")
        return (
            f"serves {listed or 'no model'}, not the configured model {self.config.model}: "
            f"set the guard's model to the served name, or serve it with --served-model-name {self.config.model}"
        )

    async def aclose(self) -> None:
        await self._transport.aclose()


def _generation(data: Any) -> Generation:
    """The full guard output from a chat completion, reasoning included."""
    choice = data["choices"][0]
    message = choice["message"]
    content = message.get("content") or ""
    # A server started with a reasoning parser returns the think block apart
    # (`reasoning` since late 2025, `reasoning_content` before); put it back so that the
    # parser sees the output the model produced.
    reasoning = message.get("reasoning") or message.get("reasoning_content")
    text = f"<think>{reasoning}</think>\n{content}" if reasoning is not None else content
    if not isinstance(text, str):
        raise TypeError("content is not a string")
    usage = data.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return Generation(
        text=text,
        prompt_tokens=usage.get("prompt_tokens"),
        cached_tokens=details.get("cached_tokens"),
        finish_reason=choice.get("finish_reason"),
        completion_tokens=usage.get("completion_tokens"),
    )
