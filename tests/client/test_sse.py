"""The incremental event-stream parser: any split of the bytes gives the same events."""

from __future__ import annotations

import pytest

from inferline.client.sse import SSEError, SSEEvent, SSEParser

STREAM = (
    b"\xef\xbb\xbf: keep-alive comment\r\n"
    b"data: first\r\n"
    b"data:second line\r\r\n"
    b"event: error\n"
    b"id: 7\n"
    b'data: {"error": {"message": "boom"}}\n'
    b"\n"
    b"retry: 100\n"
    b"\n"  # no data: nothing dispatched
    b"data: caf\xc3\xa9\n"
    b"\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("first\nsecond line"),
    SSEEvent('{"error": {"message": "boom"}}', "error", "7"),
    SSEEvent("caf\u00e9", "message", "7"),
    SSEEvent("[DONE]", "message", "7"),
]


def feed_in_pieces(data: bytes, size: int) -> list[SSEEvent]:
    parser = SSEParser()
    events = []
    for start in range(0, len(data), size):
        events += parser.feed(data[start : start + size])
    return events


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 10_000])
def test_same_events_whatever_the_split(size: int) -> None:
    assert feed_in_pieces(STREAM, size) == EXPECTED


def test_events_come_out_as_soon_as_they_are_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a") == []
    assert parser.feed(b"bc\n") == []
    assert parser.feed(b"\n") == [SSEEvent("abc")]
    assert parser.feed(b"data: x\r") == []  # the "\r" ends the line; "\n" may follow
    assert parser.feed(b"\n\r\n") == [SSEEvent("x")]


def test_a_lone_cr_line_end_then_data() -> None:
    assert feed_in_pieces(b"data: a\r\rdata: b\r\r", 1) == [SSEEvent("a"), SSEEvent("b")]


def test_unterminated_event_is_dropped() -> None:
    assert feed_in_pieces(b"data: complete\n\ndata: cut", 4) == [SSEEvent("complete")]


def test_data_without_space_and_field_without_colon() -> None:
    assert feed_in_pieces(b"data:x\ndata\n\n", 1) == [SSEEvent("x\n")]


def test_not_utf8_is_an_error() -> None:
    with pytest.raises(SSEError, match="UTF-8"):
        SSEParser().feed(b"data: \xff\xfe\n\n")


def test_an_oversized_event_is_an_error() -> None:
    parser = SSEParser(max_event_bytes=100)
    parser.feed(b"data: " + b"x" * 50 + b"\n")
    with pytest.raises(SSEError, match="larger"):
        parser.feed(b"data: " + b"y" * 60)
