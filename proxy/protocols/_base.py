"""What the pipeline needs from an API: the adapter interface, and the parsed upstream event.

One pipeline serves every generation API (chat completions, the Responses API, legacy
completions); an adapter per API does three things and decides nothing:

1. ``parse`` turns the client's body into an ``ApiRequest``: the texts to screen, the
   query the answer is judged against, and the body sent upstream (always streamed).
2. ``read`` turns one upstream SSE event into an ``UpstreamEvent``: per output (a chat
   choice, a completion choice, the one Response), its new reasoning, content and tool
   text, and whether it finished; with the event's raw bytes, which go out unchanged
   unless ``render`` must change them (hidden reasoning, the verdict on a finish). What
   the proxy does not know is dropped here, before anything is released, and named
   (``UpstreamEvent.dropped``).
   The token counts of its usage are read here too, into ``TokenUsage`` whatever the
   API calls them.
3. ``writer`` makes the ``ResponseWriter`` of one response: it formats the pipeline's
   released, stopped and ended events, and errors, in the API's own shape, streamed
   (``frame``) or as one JSON body (``builder``), and holds that response's state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ..pipeline._report import TokenUsage

if TYPE_CHECKING:
    from .._config import PolicyConfig, ServerConfig
    from ..pipeline._report import Decision, StageReport
    from ._continued import ChatSource, ContinuedWriter, TextSource
    from ._ids import ResponseIds
    from ._inventory import ExtraFields, Piece

__all__ = [
    "Adapter",
    "ApiRequest",
    "CountedUsage",
    "OutputDelta",
    "UpstreamEvent",
    "JsonBuilder",
    "ReportView",
    "ResponseWriter",
    "Turn",
    "token_usage",
    "turns_of",
]


class OutputDelta(msgspec.Struct, array_like=True):
    """What one event adds to one output."""

    index: int
    reasoning: str = ""
    content: str = ""  # may hold inline <think>…</think>: the pipeline splits it
    # The answer's other text, not part of content: refusal, tool-call and function-call
    # names and arguments, audio transcripts; screened with the answer.
    tools: str = ""
    finish: str | None = None  # the output's finish reason, when it ended here


class UpstreamEvent(msgspec.Struct):
    """One upstream SSE event, parsed."""

    data: bytes
    kind: str = ""  # the SSE event type (the Responses API names each event)
    doc: Any = None  # the decoded JSON where the adapter needed it
    outputs: list[OutputDelta] = msgspec.field(default_factory=list)
    done: bool = False  # the stream's own end marker ([DONE])
    usage: Any = None
    id: str = ""
    model: str = ""
    created: int = 0
    tokens: TokenUsage | None = None  # ``usage``'s token counts, whatever the API names them
    usage_only: bool = False  # carries usage and nothing else (hidden unless asked for)
    # What the adapter removed because the proxy does not know it (labels, for metrics).
    dropped: tuple[str, ...] = ()


class Turn(msgspec.Struct, array_like=True, frozen=True):
    """One message of a conversation, in the format FlexGuard was trained on: a user or
    tool message alone (prompt mode), an assistant turn with the user turn before it
    (response mode)."""

    label: str  # e.g. "messages[2] (tool)": named in the annotation when it flags
    text: str  # prompt mode: the text; response mode: the assistant's
    user: str | None = None  # response mode: the user turn it answered


class ApiRequest(Protocol):
    """A parsed client request, whatever its API."""

    body: dict[str, Any]
    model: str
    stream: bool
    n: int  # outputs the client expects
    include_usage: bool

    def screened_prompt(self, scope: str) -> str:
        """What FlexGuard screens in prompt mode under ``[policy.prompt] screen``."""
        ...

    def query(self, index: int = 0) -> str:
        """The user's question that output ``index`` answers (the guards' query)."""
        ...

    def conversation(self, screen_system: bool) -> list[Turn]:
        """Every text the model reads, as FlexGuard checks in the trained formats (``screen = "all"``)."""
        ...

    def upstream_body(self) -> bytes:
        """The body sent upstream: the client's, always streamed, usage reported."""
        ...

    def continuation_source(self) -> ChatSource | TextSource | str:
        """What a steered continuation renders its prompt from, or why this request
        cannot be continued."""
        ...


ReportView = dict[int, dict[str, "StageReport"]]


class CountedUsage(msgspec.Struct, frozen=True):
    """The usage of an answer a guard stopped before the upstream sent its own: what the
    proxy knows, never a guess. The prompt's tokens are unknown (null, with the total);
    the output tokens are the text-bearing deltas the upstream sent for every output,
    released or not (vLLM sends one token per delta; the inline ``<think>`` tags are not
    counted)."""

    output_tokens: int

    def chat(self) -> dict[str, Any]:
        """As chat and legacy completions name it."""
        return {"prompt_tokens": None, "completion_tokens": self.output_tokens, "total_tokens": None}

    def responses(self) -> dict[str, Any]:
        """As the Responses API names it."""
        return {"input_tokens": None, "output_tokens": self.output_tokens, "total_tokens": None}


def token_usage(usage: Any, input_key: str, output_key: str) -> TokenUsage | None:
    """The token counts of an upstream's ``usage`` object, under the API's key names."""
    if not isinstance(usage, dict):
        return None

    def count(key: str) -> int | None:
        value = usage.get(key)
        return value if type(value) is int else None

    return TokenUsage(input_tokens=count(input_key), output_tokens=count(output_key), total_tokens=count("total_tokens"))


class JsonBuilder(ABC):
    """Accumulates released events into the API's single JSON answer."""

    @abstractmethod
    def add(self, event: UpstreamEvent) -> None: ...

    @abstractmethod
    def stop(self, index: int, refusal: str | None, results: dict[str, Any], closing: str = "") -> None:
        """A guard stopped output ``index``: ``closing`` (text its content must end
        first, such as an open reasoning block's tag) then ``refusal`` end it."""

    @abstractmethod
    def build(self, ids: ResponseIds, usage: Any, extra: dict[str, Any], results: dict[int, dict[str, Any]]) -> bytes: ...


class ResponseWriter(ABC):
    """One response's writing: made per response by ``Adapter.writer``, it holds what
    that response has said so far (where the API needs it) and the prompt's report,
    which the pipeline has decided before anything is written."""

    end_of_stream: bytes = b""

    def __init__(self, prompt: StageReport) -> None:
        self.prompt = prompt

    def render(self, event: UpstreamEvent, hide: dict[int, str] | None, finished: ReportView) -> bytes:
        """The bytes released for ``event`` (empty: nothing to send): its own, unless
        reasoning is hidden (``hide``: each output's answer text in this event) or an
        output finishes in it (``finished``: its stages, whose verdict it carries)."""
        return event.data

    def decode_rendered(self, event: UpstreamEvent, data: bytes) -> UpstreamEvent:
        """The event as ``render`` changed it, for the JSON builder."""
        return event

    # -- streaming ------------------------------------------------------------------

    @abstractmethod
    def frame(self, data: bytes, event: UpstreamEvent | None = None) -> bytes:
        """One SSE event carrying ``data``."""

    @abstractmethod
    def opening(self, ids: ResponseIds) -> list[bytes]:
        """What goes out before the first upstream event (framed)."""

    @abstractmethod
    def stopped(
        self,
        ids: ResponseIds,
        decision: Decision,
        choices: ReportView,
        refusal: str | None,
        closing: dict[int, str] | None = None,
    ) -> list[bytes]:
        """The framed events that end a stream a guard stopped (``closing``: text that
        goes first in a choice's content, before its refusal)."""

    @abstractmethod
    def error_event(self, ids: ResponseIds, error: dict[str, Any]) -> bytes:
        """The framed event that ends a stream an error stopped (``error``: the OpenAI
        error object)."""

    @abstractmethod
    def shutdown_ending(self, ids: ResponseIds, unfinished: list[int]) -> list[bytes]:
        """The framed events that end a stream cut by the shutdown deadline."""

    # -- JSON -----------------------------------------------------------------------

    @abstractmethod
    def builder(self) -> JsonBuilder: ...


class Adapter(ABC):
    """One API's parsing and reading, and the writer of each of its responses."""

    name: str  # "chat", "responses", "completions": labels logs and spans
    path: str  # the upstream path, below base_url
    id_prefix: str  # of ids the proxy makes itself

    @abstractmethod
    def parse(self, raw: bytes, policy: PolicyConfig, server: ServerConfig, extra: ExtraFields) -> ApiRequest:
        """The request, every field checked against the inventory (``extra``: the fields
        the operator allows beyond it); InvalidRequest names what is refused."""

    @abstractmethod
    def read(self, data: bytes) -> UpstreamEvent: ...

    def stream_reader(self) -> Callable[[bytes], UpstreamEvent]:
        """How one upstream stream is read, event by event: ``read``, where an event stands
        alone. An API whose events refer to earlier ones returns a reader that keeps that
        state; the relay holds it, one per request, so the adapter itself keeps none."""
        return self.read

    @abstractmethod
    def writer(self, prompt: StageReport) -> ResponseWriter:
        """A new response's writer; ``prompt`` is the request's prompt report."""

    @abstractmethod
    def continued_writer(
        self, ids: ResponseIds, index: int, inline: bool, reasoning_event: UpstreamEvent | None, kept: str
    ) -> ContinuedWriter:
        """How a steered continuation of output ``index`` is written as this API's
        upstream events (``inline``: its reasoning came inside the content;
        ``reasoning_event``: the last event that carried reasoning; ``kept``: the
        reasoning the rollback kept)."""

    def rolled_back(self, read: Callable[[bytes], UpstreamEvent], writer: ContinuedWriter, shown: str) -> None:
        """A steer rolled the reasoning back to ``shown`` (what the client has of it): a
        stream reader that keeps the text of earlier events (``stream_reader``) forgets
        what came after. Readers of events that stand alone keep nothing to forget."""
        return None


def turns_of(pieces: Sequence[Piece], screen_system: bool) -> list[Turn]:
    """Turns from the texts a request gives the model: user and tool text in prompt mode,
    assistant text (and client-supplied reasoning) in response mode after the last user
    turn before it, the operator's text (system prompts, tool and schema definitions) only
    when asked."""
    turns: list[Turn] = []
    last_user = ""
    for piece in pieces:
        if not piece.text:
            continue
        if piece.role == "user":
            last_user = piece.text
            turns.append(Turn(piece.label, piece.text))
        elif piece.role == "tool":
            turns.append(Turn(piece.label, piece.text))
        elif piece.role == "assistant":
            turns.append(Turn(piece.label, piece.text, last_user))
        elif screen_system:
            turns.append(Turn(piece.label, piece.text))
    return turns
