"""`inferline prompts`: YAML files pushed as versions (only when they change), labels moved,
diffs, and a bad file refused before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferline.cli.main import main

PROMPT = """id: support-reply
route: support-bot
params: {temperature: 0.2}
messages:
  - role: system
    content: You answer questions about {{ product }}. Be short.
  - role: user
    content: "{{ question }}"
labels: [staging]
"""


def test_push_label_diff(tmp_path: Path, capsys: Any) -> None:
    database = ["--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}"]
    path = tmp_path / "support.yaml"
    path.write_text(PROMPT)
    assert main(["prompts", "push", str(path), *database]) == 0
    assert main(["prompts", "push", str(path), *database]) == 0
    path.write_text(PROMPT.replace("Be short.", "Be very short."))
    assert main(["prompts", "push", str(path), *database]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[1].split(";")[0] for line in out] == [
        "support-reply v1 (new version)", "support-reply v1 (unchanged)",
        "support-reply v2 (new version)"]  # fmt: skip
    assert main(["prompts", "label", "support-reply", "production", "1", *database]) == 0
    assert main(["prompts", "list", *database]) == 0
    assert main(["prompts", "diff", "support-reply", "1", "2", *database]) == 0
    out = capsys.readouterr().out
    assert "labels {'production': 1, 'staging': 2}" in out
    assert "+You answer questions about {{ product }}. Be very short." in out


def test_a_bad_file_writes_nothing(tmp_path: Path, capsys: Any) -> None:
    database = ["--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}"]
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(PROMPT)
    bad.write_text(PROMPT.replace("role: user", "role: robot"))
    assert main(["prompts", "push", str(good), str(bad), *database]) == 2
    assert "bad.yaml: messages.1.role" in capsys.readouterr().err
    assert main(["prompts", "list", *database]) == 0
    assert capsys.readouterr().out == ""
