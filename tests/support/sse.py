"""Read a proxy stream at the wire level, to assert it is well-formed SSE."""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = ["raw_stream", "responses_events", "WireStream"]


class WireStream:
    def __init__(self, status: int, headers: httpx.Headers, events: list[str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.events = events
        self.body = body

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [json.loads(e) for e in self.events if e != "[DONE]"]

    def assert_well_formed(self) -> None:
        assert self.body.endswith(b"\n\n"), self.body[-200:]
        assert self.events and self.events[-1] == "[DONE]", self.events[-3:]
        assert self.events.count("[DONE]") == 1
        for chunk in self.chunks:
            assert "error" in chunk or chunk["object"] == "chat.completion.chunk"

    def text(self, field: str = "content", index: int = 0) -> str:
        out = []
        for chunk in self.chunks:
            for choice in chunk.get("choices", []):
                if choice["index"] == index and choice.get("delta", {}).get(field):
                    out.append(choice["delta"][field])
        return "".join(out)

    def finish_reasons(self) -> list[str]:
        return [c["finish_reason"] for ch in self.chunks for c in ch.get("choices", []) if c.get("finish_reason")]


def raw_stream(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> WireStream:
    body = dict(body, stream=True)
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers or {}) as r:
            raw = r.read()
    events = []
    for block in raw.decode().split("\n\n"):
        lines = [line[6:] if line.startswith("data: ") else line[5:] for line in block.split("\n") if line.startswith("data:")]
        if lines:
            events.append("\n".join(lines))
    return WireStream(r.status_code, r.headers, events, raw)


def responses_events(
    url: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[httpx.Response, list[tuple[str, dict[str, Any]]]]:
    """A streamed Responses request's answer and its SSE events: (the `event:` name, the data)."""
    with httpx.Client(timeout=30) as client:
        r = client.post(f"{url}/v1/responses", json=dict(body, stream=True), headers=headers or {})
    events = []
    for block in r.content.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line)
        if "data" in lines:
            events.append((lines.get("event", ""), json.loads(lines["data"])))
    return r, events
