"""`JsonScan`: the position in partial JSON, byte by byte, restarting after a marker."""

from __future__ import annotations

import pytest

from inferline.engine.json_closing import IN_ARRAY, IN_OBJECT, IN_STRING, VALUE, JsonScan


@pytest.mark.parametrize(
    ("text", "closers", "stack"),
    [
        ('{"a": "x', IN_STRING, b"{"),
        ('{"a": "x\\"', IN_STRING, b"{"),  # an escaped quote does not close the string
        ('{"a": "x\\\\"', IN_OBJECT, b"{"),  # an escaped backslash does
        ('{"a": ', VALUE, b"{"),
        ('{"a": [1, ', VALUE, b"{["),
        ('{"a": [1', IN_ARRAY, b"{["),
        ('{"a": {"b": "}"}', IN_OBJECT, b"{"),  # brackets inside strings do not count
        ('{"a": 1, ', IN_OBJECT, b"{"),  # after a comma in an object: a key, not a value
        ('{"é": "ü', IN_STRING, b"{"),
    ],
)
def test_positions(text: str, closers: tuple[str, ...], stack: bytes) -> None:
    scan = JsonScan()
    for i in range(0, len(text.encode()), 3):  # in pieces, splitting UTF-8 characters too
        scan.feed(text.encode()[i : i + 3])
    assert scan.closers() == closers
    assert bytes(scan.stack) == stack


def test_a_marker_restarts_the_scan_even_when_split() -> None:
    scan = JsonScan(b"<tool_call>")
    for piece in [
        b'Text with {"open": [',
        b"<tool",
        b"_call>\n",
        b'{"name": "f", "arguments": {"x": ',
    ]:
        scan.feed(piece)
    assert bytes(scan.stack) == b"{{" and scan.closers() == VALUE
    copy = scan.copy()
    copy.feed(b'1}}\n</tool_call>\n<tool_call>\n{"a')
    assert bytes(copy.stack) == b"{" and copy.closers() == IN_STRING
    assert bytes(scan.stack) == b"{{"  # the copy is independent
