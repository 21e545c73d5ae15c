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

    Each feed's bytes are scanned for line ends once, in bulk; the complete lines are
    decoded together. Invariant: ``_pending`` (the start of an unfinished line) holds no
    line end, so a long line arriving in many pieces costs linear time.
    """

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event_bytes = max_event_bytes
        self._pending: list[bytes] = []
        self._num_pending = 0
        self._skip_lf = False  # the last line ended with "\r": a leading "\n" is its end
        self._start: bytes | None = b""  # the stream's first bytes until the BOM is decided
        self._data: list[str] = []
        self._num_data_bytes = 0
        self._event = ""
        self._last_id: str | None = None

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Adds ``data``; returns the events it completed, in order. Raises `SSEError`."""
        if self._start is not None:
            data = self._without_bom(data)
        if self._skip_lf and data:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        if b"\r" in data:
            self._skip_lf = data[-1:] == b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = data.rfind(b"\n")
        if end < 0:
            self._keep(data)
            return []
        lines = self._decoded(data[:end])
        self._pending, self._num_pending = [], 0
        events = self._take_lines(lines)
        self._keep(data[end + 1 :])
        return events

    def _without_bom(self, data: bytes) -> bytes:
        """Drops a leading byte-order mark; undecided (b"") while the stream is a prefix of one."""
        assert self._start is not None
        data = self._start + data
        if len(data) < len(_BOM) and _BOM.startswith(data):
            self._start = data
            return b""
        self._start = None
        return data.removeprefix(_BOM)

    def _keep(self, piece: bytes) -> None:
        if piece:
            self._pending.append(piece)
            self._num_pending += len(piece)
        if self._num_pending + self._num_data_bytes > self.max_event_bytes:
            raise SSEError(f"an event is larger than {self.max_event_bytes} bytes")

    def _decoded(self, head: bytes) -> list[str]:
        if self._pending:
            head = b"".join(self._pending) + head
        try:
            return head.decode("utf-8").split("\n")
        except UnicodeDecodeError as exc:
            raise SSEError(f"an event-stream line is not UTF-8: {exc}") from None

    def _take_lines(self, lines: list[str]) -> list[SSEEvent]:
        events = []
        for line in lines:
            if not line:
                event = self._dispatch()
                if event is not None:
                    events.append(event)
            elif line.startswith("data: "):  # the usual line, first
                self._data.append(line[6:])
                self._num_data_bytes += len(line)
            elif not line.startswith(":"):  # ":" starts a comment (keep-alive)
                self._take_field(line)
        return events

    def _take_field(self, line: str) -> None:
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._num_data_bytes += len(line)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value

    def _dispatch(self) -> SSEEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = SSEEvent("\n".join(self._data), self._event or "message", self._last_id)
        self._data, self._num_data_bytes, self._event = [], 0, ""
        return event
