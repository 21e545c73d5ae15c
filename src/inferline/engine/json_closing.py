"""Closing constrained JSON before ``max_tokens``: where the text stands, and a greedy plan.

`JsonScan` follows partial JSON byte by byte (inside a string? which brackets are open? is
a value expected?), so a plan step costs O(1) rather than a rescan of the output. With a
marker (``<tool_call>``), the scan restarts after each occurrence: only the current call's
JSON matters. `closing_plan` walks a copy of the grammar state: the grammar's forced tokens
when it has some, else the shortest closer for the position (close the string, the object,
the array, or write the smallest value), until the grammar accepts.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

# What to try, by where the text stands (each must be one token to be used).
IN_STRING = ('"', '"}', '"]', '"}}', "a")
IN_OBJECT = ("}", "}}", "]}", '"')
IN_ARRAY = ("]", "]}", "0", '"')
VALUE = ("0", '""', "null", "false", "[]", "{}", '"', "[", "{")
CLOSERS = {*IN_STRING, *IN_OBJECT, *IN_ARRAY, *VALUE}

_QUOTE, _BACKSLASH, _OPENERS, _CLOSERS = 0x22, 0x5C, b"{[", b"}]"
_SPACES = b" \t\r\n"


class JsonScan:
    """The position in partial JSON, updated as bytes arrive."""

    __slots__ = ("in_string", "escaped", "stack", "last", "marker", "recent")

    def __init__(self, marker: bytes = b"") -> None:
        self.marker = marker
        self.recent = b""  # the bytes that may end in a marker
        self._restart()

    def _restart(self) -> None:
        self.in_string = self.escaped = False
        self.stack = bytearray()  # open brackets, innermost last
        self.last = 0  # the last byte outside strings that is not whitespace

    def copy(self) -> JsonScan:
        """An independent copy (for planning ahead)."""
        other = JsonScan(self.marker)
        other.in_string, other.escaped, other.last = self.in_string, self.escaped, self.last
        other.stack, other.recent = bytearray(self.stack), self.recent
        return other

    def feed(self, data: bytes) -> None:
        """Advances over ``data``; a marker in it restarts the scan after the marker."""
        if self.marker:
            window = self.recent + data
            at = window.rfind(self.marker)
            if at >= 0:
                self._restart()
                data = window = window[at + len(self.marker) :]
            keep = len(self.marker) - 1
            self.recent = window[len(window) - keep :] if keep else b""
        for byte in data:
            self._step(byte)

    def _step(self, byte: int) -> None:
        if self.in_string:
            if self.escaped:
                self.escaped = False
            elif byte == _BACKSLASH:
                self.escaped = True
            elif byte == _QUOTE:
                self.in_string, self.last = False, _QUOTE
            return
        if byte == _QUOTE:
            self.in_string = True
        elif byte in _OPENERS:
            self.stack.append(byte)
        elif byte in _CLOSERS and self.stack:
            self.stack.pop()
        if byte not in _SPACES:
            self.last = byte

    def closers(self) -> tuple[str, ...]:
        """The candidate closing texts for this position, best first."""
        if self.in_string:
            return IN_STRING
        innermost = self.stack[-1:] or b""
        if self.last in b":[" and innermost or (self.last == ord(",") and innermost == b"["):
            return VALUE
        return IN_OBJECT if innermost == b"{" else IN_ARRAY


class PlanTokens(Protocol):
    """What planning needs from the grammar compiler."""

    eos_token_id: int
    single_tokens: dict[str, int]

    def token_bytes(self, token_ids: list[int]) -> bytes:
        """The bytes of ``token_ids``."""
        ...


def closing_plan(
    matcher: Any, scan: JsonScan, tokens: PlanTokens, limit: int, first: int | None = None
) -> list[int] | None:
    """Tokens that complete the output (after ``first``, if given); None if not found
    within ``limit`` tokens or ``first`` is not allowed."""
    state, scan = matcher.deep_copy(), scan.copy()
    if first is not None:
        if state.validate_tokens([first]) != 1:
            return None
        state.consume_token(first)
        scan.feed(tokens.token_bytes([first]))
    plan: list[int] = []
    while not state.is_accepting():
        if len(plan) >= limit or state.is_stopped():
            return None
        step = state.compute_ff_tokens() or _closing_token(state, scan, tokens)
        if not step:
            return None
        state.consume_tokens(step)
        scan.feed(tokens.token_bytes(step))
        plan += step
    return plan if len(plan) <= limit else None


def _closing_token(state: Any, scan: JsonScan, tokens: PlanTokens) -> list[int]:
    for candidate in scan.closers():
        token = tokens.single_tokens.get(candidate)
        if token is not None and state.validate_tokens([token]) == 1:
            return [token]
    return _first_allowed(state.compute_bitmask(), tokens.eos_token_id)


def _first_allowed(bitmask: bytes, eos_token_id: int) -> list[int]:
    """The lowest allowed token other than EOS ([] if none), found byte-wise."""
    packed = np.frombuffer(bitmask, dtype=np.uint8)
    for byte_index in np.flatnonzero(packed)[:2]:
        bits = int(packed[byte_index])
        for bit in range(8):
            token = int(byte_index) * 8 + bit
            if bits >> bit & 1 and token != eos_token_id:
                return [token]
    return []
