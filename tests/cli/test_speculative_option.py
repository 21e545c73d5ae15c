"""``--speculative`` / ``--num-speculative-tokens`` and a ``kind: llm`` entry's
``speculative`` reach the engine's config (no model needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from inferline.cli.config_models import parse_llm
from inferline.cli.engine_factory import engine_config
from inferline.core.errors import InvalidParameterError
from tests.cli.test_generation_config_option import parse


def test_on_by_default_and_the_flags_set_it(tmp_path: Path) -> None:
    default = engine_config(parse(), tmp_path).speculative
    assert default.method == "ngram" and default.num_tokens == 4
    off = engine_config(parse("--speculative", "off"), tmp_path).speculative
    assert not off.enabled
    wide = engine_config(parse("--num-speculative-tokens", "8"), tmp_path).speculative
    assert wide.num_tokens == 8
    with pytest.raises(InvalidParameterError):
        engine_config(parse("--num-speculative-tokens", "0"), tmp_path)


def test_a_model_entry_may_turn_it_off(tmp_path: Path) -> None:
    entry = {"name": "small", "kind": "llm", "source": "smollm2-135m", "speculative": "off"}
    spec = parse_llm(entry, "models[0]", tmp_path)
    options = argparse.Namespace(**{**vars(parse()), **spec.engine})
    assert not engine_config(options, tmp_path).speculative.enabled
