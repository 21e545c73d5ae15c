"""An incremental server-sent events parser (the WHATWG event-stream format).

Bytes go in as they arrive, in pieces of any size; complete events come out. Lines end
with ``\\n``, ``\\r\\n`` or ``\\r`` (a ``\\r`` at the end of one read and the ``\\n`` at
the start of the next are one line end); ``:`` starts a comment; several ``data:`` lines
of one event are joined with ``\\n``; a blank line ends an event. An event not ended by a
blank line when the body ends is dropped, as the format says.
"""

from __future__ import annotations

from typing import NamedTuple

_BOM = b"\xef\xbb\xbf"
DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEError(ValueError):
    """The bytes are not an event stream: a line is not UTF-8, or an event is too large."""


class SSEEvent(NamedTuple):
    """One dispatched event: its data (lines joined with ``\\n``), type and id."""

    data: str
    event: str = "message"
    id: str | None = None


class SSEParser:
    """Feeds on bytes, returns the events they complete.

    Invariant: ``_buffer[:_scanned]`` holds no line end, so each byte is scanned once
    however the stream is split.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._buffer = bytearray()
        self._scanned = 0
        self._skip_lf = False  # the last line ended with "\r": a leading "\n" is its end
        self._at_start = True
        self._data: list[str] = []
        self._num_data_bytes = 0
        self._event = ""
        self._last_id: str | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Adds ``data``; returns the events it completed, in order. Raises `SSEError`."""
        self._buffer += data
        if self._at_start:
            self._strip_bom()
        events = []
        while (line := self._next_line()) is not None:
            event = self._take_line(line)
            if event is not None:
                events.append(event)
        if len(self._buffer) + self._num_data_bytes > self.max_event_bytes:
            raise SSEError(f"an event is larger than {self.max_event_bytes} bytes")
        return events

    def _strip_bom(self) -> None:
        """Drops a leading byte-order mark; undecided while the buffer is a prefix of one."""
        size = min(len(self._buffer), len(_BOM))
        if self._buffer[:size] != _BOM[:size]:
            self._at_start = False
        elif size == len(_BOM):
            del self._buffer[:size]
            self._at_start = False

    def _next_line(self) -> bytes | None:
        buffer = self._buffer
        if self._skip_lf and buffer:
            self._skip_lf = False
            if buffer[:1] == b"\n":
                del buffer[:1]
        if self._at_start:
            return None  # not sure yet whether the stream starts with a BOM
        end = _find_line_end(buffer, self._scanned)
        if end < 0:
            self._scanned = len(buffer)
            return None
        line = bytes(buffer[:end])
        if buffer[end : end + 2] == b"\r\n":
            del buffer[: end + 2]
        else:
            self._skip_lf = buffer[end : end + 1] == b"\r"
            del buffer[: end + 1]
        self._scanned = 0
        return line

    def _take_line(self, raw: bytes) -> SSEEvent | None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SSEError(f"an event-stream line is not UTF-8: {exc}") from None
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._num_data_bytes += len(raw)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent("\n".join(self._data), self._event or "message", self._last_id)
        self._data, self._num_data_bytes, self._event = [], 0, ""
        return event


def _find_line_end(buffer: bytearray, start: int) -> int:
    """The index of the first ``\\r`` or ``\\n`` at or after ``start``, or -1."""
    lf, cr = buffer.find(b"\n", start), buffer.find(b"\r", start)
    if lf < 0 or cr < 0:
        return max(lf, cr)
    return min(lf, cr)
