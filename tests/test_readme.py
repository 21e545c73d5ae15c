"""The README's ```python blocks run as written, so the README cannot drift.

Blocks fenced as ```py need a running server and are not executed here; the end-to-end
tests cover the same calls.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_readme_has_python_examples() -> None:
    assert len(python_blocks()) >= 2


def test_readme_python_blocks_run(capsys) -> None:  # type: ignore[no-untyped-def]
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), {})
    assert "Paris" in capsys.readouterr().out


def test_readme_names_the_commands_ci_runs() -> None:
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "scripts/test" in text and "scripts/test" in ci
    assert "scripts/inferline serve" in text and "scripts/inferline generate" in text
