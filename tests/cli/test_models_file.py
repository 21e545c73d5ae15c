"""The one-pass entries of `inferline serve --config`: parsing and errors naming the place."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferline.cli.config_file import load_config, parse_config
from inferline.core.errors import InvalidParameterError

GOOD = """
models:
  - name: embed
    kind: sentence-embeddings
    batching: {max_batch_size: 16, max_wait_ms: 2.5, adaptive: false}
  - name: risk
    kind: onnx
    source: models/risk.onnx
    options: {threads: 2}
"""


def test_a_good_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(GOOD)
    embed, risk = load_config(path, {}).predictors
    assert embed.batching.max_batch_size == 16 and embed.batching.adaptive is False
    assert embed.batching.max_wait_ms == 2.5
    assert risk.source == str(tmp_path / "models" / "risk.onnx")  # relative to the file
    assert risk.options == {"threads": 2} and risk.batching.max_batch_size == 32


@pytest.mark.parametrize(
    ("document", "param"),
    [
        ({}, "models"),
        ({"models": [{"name": "a", "kind": "magic"}]}, "models[0].kind"),
        ({"models": [{"name": "a", "kind": "onnx"}]}, "models[0].source"),
        ({"models": [{"kind": "noop"}]}, "models[0].name"),
        ({"models": [{"name": "a", "kind": "noop", "colour": 1}]}, "models[0].colour"),
        (
            {"models": [{"name": "a", "kind": "noop", "batching": {"max_wait_ms": "5"}}]},
            "models[0].batching.max_wait_ms",
        ),
        (
            {"models": [{"name": "a", "kind": "noop", "batching": {"max_batch_size": 0}}]},
            "models[0].batching.max_batch_size",
        ),
        (
            {"models": [{"name": "a", "kind": "noop", "batching": {"max_batch_size": 2.5}}]},
            "models[0].batching.max_batch_size",
        ),
        ({"models": [{"name": "a", "kind": "noop"}, {"name": "a", "kind": "noop"}]}, "models"),
    ],
)
def test_mistakes_name_their_place(document, param) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidParameterError) as error:
        parse_config(document, Path("."), {})
    assert error.value.param is not None and error.value.param.startswith(param), error.value


def test_invalid_yaml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("models: [\n")
    with pytest.raises(InvalidParameterError, match="not valid YAML"):
        load_config(path, {})
