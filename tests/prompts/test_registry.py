"""The prompt registry on a real SQLite file: immutable numbered versions, labels that move
(and are kept moving), references by number, label or default, sandboxed templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferline.core.errors import InvalidParameterError, NotFoundError
from inferline.prompts import PromptRegistry, PromptSpec
from inferline.store import connect, migrate
from inferline.store.prompts import PromptStore


@pytest.fixture
def registry(tmp_path: Path) -> PromptRegistry:
    database = connect(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(database)
    return PromptRegistry(PromptStore(database))


def spec(system: str = "You answer {{ product }} questions.", **more: object) -> PromptSpec:
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": "{{ question }}"}]  # fmt: skip
    return PromptSpec.model_validate({"id": "support", "messages": messages, **more})


def test_versions_are_numbered_and_an_equal_push_changes_nothing(registry: PromptRegistry) -> None:
    first = registry.push(spec(route="bot", params={"temperature": 0.2}))
    again = registry.push(spec(route="bot", params={"temperature": 0.2}, message="same"))
    second = registry.push(spec("Be brief about {{ product }}.", route="bot"))
    assert (first["version"], first["created"]) == (1, True)
    assert (again["version"], again["created"]) == (1, False)
    assert (second["version"], second["created"]) == (2, True)
    assert first["variables"] == ["product", "question"]


def test_references_by_number_label_and_default(registry: PromptRegistry) -> None:
    registry.push(spec(route="bot"))
    registry.push(spec("Be brief about {{ product }}.", route="bot"))
    values = {"product": "Acme", "question": "Why?"}
    assert registry.resolve("support", None, values).version == 2  # no label: the latest
    registry.store.move_label("support", "production", 1)
    resolved = registry.resolve("support", None, values)  # production by default
    assert (resolved.version, resolved.label) == (1, "production")
    assert resolved.messages[0]["content"] == "You answer Acme questions."
    assert registry.resolve("support", "2", values).label is None
    registry.store.move_label("support", "production", 2)
    assert registry.resolve("support", "production", values).version == 2
    moves = registry.store.label_moves("support")
    assert [(m["from_version"], m["to_version"]) for m in moves] == [(None, 1), (1, 2)]


def test_bad_references_and_variables(registry: PromptRegistry) -> None:
    registry.push(spec(defaults={"product": "Acme"}))
    with pytest.raises(NotFoundError):
        registry.resolve("nope", None, {})
    with pytest.raises(NotFoundError):
        registry.resolve("support", "staging", {"question": "x"})
    with pytest.raises(NotFoundError):
        registry.resolve("support", "9", {"question": "x"})
    with pytest.raises(InvalidParameterError, match="question"):
        registry.resolve("support", None, {})  # product has a default; question has none
    extra = registry.resolve("support", None, {"question": "x", "unused": 1})  # ignored
    assert extra.messages[1]["content"] == "x"


def test_templates_are_sandboxed_and_checked(registry: PromptRegistry) -> None:
    with pytest.raises(InvalidParameterError, match="not a valid template"):
        registry.push(spec("{% if %}"))
    registry.push(spec("{{ product.__class__.__mro__ }}"))
    with pytest.raises(InvalidParameterError, match="unsafe|not safely|access"):
        registry.resolve("support", None, {"product": "x", "question": "q"})
    with pytest.raises(InvalidParameterError, match="params may set"):
        registry.push(spec(params={"model": "x"}))
    with pytest.raises(InvalidParameterError, match="temperature"):
        registry.push(spec(params={"temperature": 9}))


def test_a_diff_shows_what_changed(registry: PromptRegistry) -> None:
    registry.push(spec(params={"temperature": 0.2}))
    registry.push(spec("Be brief about {{ product }}.", params={"temperature": 0.0}))
    diff = registry.diff("support", 1, 2)
    assert "-You answer {{ product }} questions." in diff
    assert "+Be brief about {{ product }}." in diff and '+    "temperature": 0.0' in diff


def test_probe_renders_differ_only_in_the_variables_and_the_warning_needs_a_halving(
    registry: PromptRegistry,
) -> None:
    from inferline.prompts.registry import prefix_warning, probe_renders

    first, second = probe_renders(spec())
    assert first[0]["content"] == "You answer 1111 questions."
    assert second[0]["content"] == "You answer 2222 questions."
    registry.push(spec(), prefix_tokens=60)
    latest = registry.store.version("support")
    assert prefix_warning(latest, 31) is None and prefix_warning(None, 1) is None
    assert "down from 60 in version 1" in (prefix_warning(latest, 29) or "")
    pushed = registry.push(spec("{{ product }} first, then the rules."), prefix_tokens=5)
    assert pushed["warning"] and "5 tokens" in registry.diff("support", 1, 2)
