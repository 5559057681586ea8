"""proxy.protocols._sse: reading the upstream's SSE stream, writing the client's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest

from proxy.protocols._sse import DONE, DONE_EVENT, encode_data, iter_sse_batches


async def _pieces(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def _collect(pieces: Iterable[bytes]) -> list[bytes]:
    return [data async for batch in iter_sse_batches(_pieces(pieces)) for data in batch]


def events(*pieces: bytes) -> list[bytes]:
    return asyncio.run(_collect(pieces))


# One stream exercising every line end, comments, non-data fields, multi-line data,
# a data field without the optional space, a blank event and [DONE].
MIXED_STREAM = (
    b": ping\r\n"
    b"event: message\r\n"
    b"id: 1\r\n"
    b'data: {"a":1}\r\n'
    b"\r\n"
    b"data: line1\n"
    b"data: line2\n"
    b"\n"
    b"data:nospace\r"
    b"\r"
    b"retry: 10\n"
    b"\n"
    b": only a comment\r\n\r\n"
    b"data: cr\r\n"
    b"data: crlf\r"
    b"\r\n"
    b"data: [DONE]\n"
    b"\n"
)
MIXED_EVENTS = [b'{"a":1}', b"line1\nline2", b"nospace", b"cr\ncrlf", b"[DONE]"]


def test_mixed_stream_in_one_piece() -> None:
    assert events(MIXED_STREAM) == MIXED_EVENTS


def test_mixed_stream_split_at_every_byte_position() -> None:
    async def run() -> None:
        for cut in range(len(MIXED_STREAM) + 1):
            got = await _collect([MIXED_STREAM[:cut], MIXED_STREAM[cut:]])
            assert got == MIXED_EVENTS, f"split at {cut}"

    asyncio.run(run())


def test_mixed_stream_split_at_every_pair_of_positions() -> None:
    stream = MIXED_STREAM

    async def run() -> None:
        for i in range(len(stream) + 1):
            for j in range(i, len(stream) + 1):
                got = await _collect([stream[:i], stream[i:j], stream[j:]])
                assert got == MIXED_EVENTS, f"split at {i}, {j}"

    asyncio.run(run())


def test_mixed_stream_one_byte_at_a_time() -> None:
    assert events(*(MIXED_STREAM[i : i + 1] for i in range(len(MIXED_STREAM)))) == MIXED_EVENTS


@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_each_line_ending_alone(end: bytes) -> None:
    stream = b"data: a" + end + b"data: b" + end + end + b"data: c" + end + end
    assert events(stream) == [b"a\nb", b"c"]


def test_cr_at_end_of_piece_followed_by_lf_is_one_line_end() -> None:
    # If the CR and LF were read as two line ends, the LF would be a blank line and
    # dispatch "a" early, splitting the event in two.
    assert events(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [b"a\nb"]


def test_cr_at_end_of_piece_followed_by_cr_is_a_blank_line() -> None:
    assert events(b"data: a\r", b"\rdata: b\r\r") == [b"a", b"b"]


def test_multi_line_data_joined_with_newline() -> None:
    assert events(b'data: {\ndata: "x": 1\ndata: }\n\n') == [b'{\n"x": 1\n}']


def test_only_one_leading_space_is_removed() -> None:
    assert events(b"data:  two\n\ndata:\n\n") == [b" two", b""]


def test_comments_and_other_fields_are_skipped() -> None:
    stream = b": keepalive\nevent: completion\nid: 42\nretry: 1000\ndata: x\n\n"
    assert events(stream) == [b"x"]


def test_event_without_data_is_not_yielded() -> None:
    assert events(b"event: ping\n\n: hi\n\n\n\n") == []


def test_data_is_yielded_as_raw_bytes_unchanged() -> None:
    raw = b'{"choices":[{"delta":{"content":"caf\xc3\xa9 \\u00e9"}}] , "x" : 1 }'
    assert events(b"data: " + raw + b"\n\n") == [raw]


@pytest.mark.parametrize(
    "tail",
    [b"data: last", b"data: last\n", b"data: last\r\n", b"data: last\r"],
    ids=["no-line-end", "lf", "crlf", "cr"],
)
def test_last_event_without_trailing_blank_line_is_delivered(tail: bytes) -> None:
    assert events(b"data: first\n\n" + tail) == [b"first", b"last"]


def test_last_multi_line_event_without_trailing_blank_line() -> None:
    assert events(b"data: a\ndata: b") == [b"a\nb"]


def test_unfinished_non_data_line_at_end_is_ignored() -> None:
    assert events(b"data: a\n\n: trailing comment") == [b"a"]


def test_empty_stream_and_empty_pieces() -> None:
    assert events() == []
    assert events(b"", b"data: x", b"", b"\n", b"", b"\n", b"") == [b"x"]


def test_done_marker_is_yielded_like_any_data() -> None:
    assert events(b"data: {}\n\n" + DONE_EVENT) == [b"{}", DONE]


def test_encode_data_writes_one_event() -> None:
    assert encode_data(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_data(DONE) == DONE_EVENT


def test_encode_data_round_trips_through_the_reader() -> None:
    docs = [b'{"a":1}', b"{}", DONE]
    assert events(b"".join(encode_data(d) for d in docs)) == docs


def test_events_come_a_network_read_at_a_time():
    async def batches() -> list[list[bytes]]:
        pieces = [b"data: a\n\ndata: b\n\ndata: c", b"\n\n", b": ping\n\n", b"data: d\n\ndata: [DONE]\n\n"]
        return [batch async for batch in iter_sse_batches(_pieces(pieces))]

    # A read that completes no event yields nothing (never an empty batch).
    assert asyncio.run(batches()) == [[b"a", b"b"], [b"c"], [b"d", DONE]]
