"""``--generation-config`` and a ``kind: llm`` entry's ``generation_config`` reach the
engine's config (no model needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from inferline.cli.config_models import parse_llm
from inferline.cli.engine_factory import engine_config
from inferline.cli.main import add_engine_arguments


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_flag_defaults_to_auto_and_can_turn_it_off(tmp_path: Path) -> None:
    assert engine_config(parse(), tmp_path).generation_config == "auto"
    assert engine_config(parse("--generation-config", "none"), tmp_path).generation_config == "none"


def test_a_model_entry_may_set_it(tmp_path: Path) -> None:
    entry = {"name": "small", "kind": "llm", "source": "smollm2-135m", "generation_config": "none"}
    spec = parse_llm(entry, "models[0]", tmp_path)
    options = argparse.Namespace(**{**vars(parse()), **spec.engine})
    assert engine_config(options, tmp_path).generation_config == "none"
