"""A guard served by an OpenAI-compatible server (``vllm serve``), over HTTP.

One ``httpx.AsyncClient`` per backend (one connection pool per guard server). Retries
(tenacity, exponential backoff) on connection errors, HTTP 429 and 5xx, at most
``max_retries`` times; the guard's check deadline bounds them all. httpx's errors are
translated into the project's in one place, :func:`_translate`.

The API key is read from the environment variable ``config.api_key_env`` and sent as a
Bearer token; it never appears in an exception message (server error bodies are scrubbed
of it too, in case a server echoes headers).
"""

from __future__ import annotations

import os
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from .._config import GuardModelConfig
from ..exceptions import GuardBackendError, GuardTimeout
from ._base import ChatPrompt, Generation

__all__ = ["OpenAIBackend"]

_BODY_EXCERPT = 200


class _StatusError(Exception):
    """A non-2xx answer, kept apart from httpx's so the retry predicate stays simple."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, _StatusError):
        return exc.status == 429 or exc.status >= 500
    # Connection refused/reset and broken responses; timeouts are left to the deadline.
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
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            # httpx's default pool (100) would queue checks beyond it; the server
            # batches concurrent checks, so let them all reach it.
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            transport=transport,
            trust_env=False,
        )
        self._backoff_s = backoff_s

    def request_body(self, prompt: ChatPrompt) -> dict[str, Any]:
        """The JSON body of one check (public so tests can see what is sent)."""
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": [{"role": m.role, "content": m.content} for m in prompt.messages],
            "temperature": 0,
            "max_tokens": prompt.max_tokens,
            # Keep <think> and friends: the parser needs the whole output.
            "skip_special_tokens": False,
        }
        if prompt.chat_template_kwargs:
            body["chat_template_kwargs"] = prompt.chat_template_kwargs
        if prompt.regex is not None:
            body["structured_outputs"] = {"regex": prompt.regex}
        return body

    async def generate(self, prompt: ChatPrompt) -> Generation:
        body = self.request_body(prompt)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=wait_exponential(multiplier=self._backoff_s, max=4 * self._backoff_s),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            data: Any = await retrying(self._post, body)
            return _generation(data)
        except (
            httpx.HTTPError,
            _StatusError,
            ValueError,
            LookupError,
            TypeError,
            AttributeError,
        ) as exc:
            raise self._translate(exc) from exc

    async def _post(self, body: dict[str, Any]) -> Any:
        response = await self._client.post("chat/completions", json=body)
        if response.status_code >= 400:
            raise _StatusError(response.status_code, response.text[:_BODY_EXCERPT])
        return response.json()

    def _translate(self, exc: BaseException) -> GuardBackendError:
        """The one place where lower-level errors become the project's."""
        where = f"guard server {self.config.base_url}"
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

    async def ready(self) -> bool:
        return await self.why_not_ready() is None

    async def why_not_ready(self) -> str | None:
        """What keeps this server from answering checks, or None: it answers GET /models
        and lists the configured model (a server that serves the model under another
        name answers every check with HTTP 404)."""
        try:
            response = await self._client.get("models")
        except httpx.HTTPError as exc:
            return f"unreachable ({type(exc).__name__}: {self._scrub(str(exc))})"
        if response.status_code != 200:
            return f"GET /models answered HTTP {response.status_code}: {self._scrub(response.text[:_BODY_EXCERPT])}"
        try:
            data = response.json()["data"]
            served = [m["id"] for m in data]
        except (ValueError, LookupError, TypeError):
            return "GET /models did not answer with a model list"
        if self.config.model in served:
            return None
        listed = ", ".join(map(str, served[:5])) + (", ..." if len(served) > 5 else "")
        return (
            f"serves {listed or 'no model'}, not the configured model {self.config.model}: "
            f"set the guard's model to the served name, or serve it with --served-model-name {self.config.model}"
        )

    async def aclose(self) -> None:
        await self._client.aclose()


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
