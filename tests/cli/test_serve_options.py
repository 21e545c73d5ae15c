"""`inferline serve` option handling that needs no model."""

from __future__ import annotations

import argparse

import pytest

from inferline.cli.main import main
from inferline.cli.serve import _api_keys, _is_loopback


def test_api_keys_from_flags_env_and_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nk-file-1\n\nk-file-2\n")
    monkeypatch.setenv("INFERLINE_API_KEY", "k-env")
    args = argparse.Namespace(api_key=["k-flag"], api_key_file=keys_file)
    assert _api_keys(args) == ("k-flag", "k-env", "k-file-1", "k-file-2")


def test_loopback_detection() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0")


def test_public_bind_without_a_key_is_refused(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("INFERLINE_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "without an API key" in capsys.readouterr().err


@pytest.mark.parametrize("since", ["10x", "ten minutes"])
def test_logs_rejects_bad_durations(since, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    assert main(["logs", "--since", since, "--database-url", url]) == 2
    assert "--since" in capsys.readouterr().err


def test_logs_lists_nothing_on_a_new_database(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["logs", "--database-url", f"sqlite:///{tmp_path / 'db.sqlite'}"]) == 0
    assert "status" in capsys.readouterr().out
