"""Server-sent events: reading the upstream's stream, writing the client's.

The reader yields each event's ``data`` as raw bytes so that chunks the proxy does not
change are forwarded byte for byte, never re-serialised. It yields them a network read
at a time: under load one read carries many events, and the relay releases each read's
events in one write to the client rather than one write per event.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable

__all__ = ["iter_sse_batches", "encode_data", "DONE", "DONE_EVENT"]

DONE = b"[DONE]"
DONE_EVENT = b"data: [DONE]\n\n"


async def iter_sse_batches(byte_stream: AsyncIterable[bytes]) -> AsyncGenerator[list[bytes], None]:
    """Yield, per network read that completes any, the data of its events (multi-line
    data joined with newlines); never an empty list.

    Comments (``: ping``), ``event:``/``id:``/``retry:`` fields and blank events are
    skipped; lines may end in LF, CRLF or CR and may be split across network chunks.
    """
    buffer = b""
    data_lines: list[bytes] = []
    async for piece in byte_stream:
        buffer += piece
        pos = 0
        events: list[bytes] = []
        has_cr = b"\r" in buffer  # almost never: then lines are cut at LF alone
        while True:
            cut, width = _next_line_end(buffer, pos) if has_cr else (buffer.find(b"\n", pos), 1)
            if cut < 0:
                break
            line, pos = buffer[pos:cut], cut + width
            if not line:
                if data_lines:
                    events.append(b"\n".join(data_lines))
                    data_lines = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data_lines.append(value[1:] if value.startswith(b" ") else value)
        buffer = buffer[pos:]
        if events:
            yield events
    # A stream that ends without the final blank line still delivers its last event.
    if buffer.endswith(b"\r"):
        buffer = buffer[:-1]
    if buffer.startswith(b"data:"):
        value = buffer[5:]
        data_lines.append(value[1:] if value.startswith(b" ") else value)
    if data_lines:
        yield [b"\n".join(data_lines)]


def _next_line_end(buffer: bytes, pos: int) -> tuple[int, int]:
    lf = buffer.find(b"\n", pos)
    cr = buffer.find(b"\r", pos)
    if cr < 0 or (0 <= lf < cr):
        return lf, 1
    if cr == len(buffer) - 1:
        return -1, 0  # a CR at the end may be the first half of a CRLF
    return cr, 2 if buffer[cr + 1 : cr + 2] == b"\n" else 1


def encode_data(data: bytes) -> bytes:
    """One SSE event carrying ``data`` (a JSON document without newlines)."""
    return b"data: " + data + b"\n\n"
