"""The serve config file: models of every kind, routes, and errors that name the place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inferline.cli.config_file import load_config, parse_config
from inferline.core.errors import InvalidParameterError

GATEWAY = """
models:
  - name: small
    kind: llm
    source: smollm2-135m
    weight_format: int8
    price: {input_per_mtok: 0.05, output_per_mtok: 0.05, cached_input_per_mtok: 0.01,
            machine_per_hour: 2.5}
  - name: partner
    kind: openai
    base_url: http://127.0.0.1:9001/v1
    model: served-name
    api_key_env: PARTNER_KEY
    timeouts: {connect_s: 2, first_token_s: 10, idle_s: 5, total_s: 120}
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}
  - name: embed
    kind: sentence-embeddings
routes:
  - name: support-bot
    strategy: fallback
    targets: [partner, small]
    retry: {attempts: 2, backoff_ms: 200, max_backoff_ms: 5000}
    deadline_s: 30
  - name: ab
    strategy: weighted
    targets: [{name: small, weight: 3}, {name: partner, weight: 1}]
  - name: answers
    strategy: cascade
    targets: [small, partner]
    checks: [{kind: logprob_mean, threshold: -0.5}]
"""


def test_the_example_of_the_issue_is_read(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(GATEWAY)
    config = load_config(path, {"PARTNER_KEY": "sk-secret"})
    (small,) = config.local
    assert small.engine == {"weight_format": "int8"} and small.target.price.input_per_mtok == 0.05
    assert small.target.price.cached_per_mtok == 0.01
    assert small.target.price.machine_per_hour == 2.5
    (partner,) = config.upstreams
    assert partner.client.api_key == "sk-secret" and partner.client.model == "served-name"
    assert partner.client.timeouts.idle_s == 5 and not partner.target.can_continue
    assert "sk-secret" not in repr(partner)  # never in a log line
    assert [p.name for p in config.predictors] == ["embed"]
    bot, ab, answers = config.routes
    assert [t.name for t in bot.targets] == ["partner", "small"] and bot.deadline_s == 30
    assert bot.retry.attempts == 2 and bot.retry.max_backoff_ms == 5000
    assert [t.weight for t in ab.targets] == [3.0, 1.0]
    assert answers.checks[0].threshold == -0.5


def document(**changes: Any) -> dict[str, Any]:
    import yaml

    doc: dict[str, Any] = yaml.safe_load(GATEWAY)
    for path, value in changes.items():
        node: Any = doc
        keys = path.split("__")
        for key in keys[:-1]:
            node = node[int(key)] if key.isdigit() else node[key]
        last = keys[-1]
        if value is None:
            node.pop(int(last) if last.isdigit() else last)
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return doc


@pytest.mark.parametrize(
    ("changes", "place", "words"),
    [
        ({"routes__0__targets__1": "parnter"}, "routes[0].targets[1]", "unknown model 'parnter'"),
        ({"routes__0__targets__1": "embed"}, "routes[0].targets[1]", "unknown model 'embed'"),
        ({"routes__0__strategy": "random"}, "routes[0].strategy", "strategy must be one of"),
        ({"routes__0__retry": {"attempts": "two"}}, "routes[0].retry.attempts", "an integer"),
        ({"routes__0__retry": {"tries": 2}}, "routes[0].retry.tries", "unknown key"),
        ({"routes__0__deadline_s": -1}, "routes[0].deadline_s", "positive"),
        ({"routes__0__name": "small"}, "routes[0].name", "already used"),
        ({"routes__2__checks": []}, "routes[2].checks", "at least one check"),
        ({"routes__2__checks": [{"kind": "vibes"}]}, "routes[2].checks[0].kind", "one of"),
        ({"models__1__base_url": "ftp://x"}, "models[1].base_url", "http"),
        ({"models__1__api_key_env": "NOT_SET"}, "models[1].api_key_env", "not set"),
        ({"models__1__timeouts": {"idle_s": 0}}, "models[1].timeouts.idle_s", "must be > 0"),
        ({"models__1__price": {"input_per_mtok": -1}}, "models[1].price", "negative"),
        ({"models__1__price": {"machine_per_hour": 1}}, "models[1]", "needs a local engine"),
        ({"models__0__source": None}, "models[0].source", "required"),
        ({"models__0__kv_cache_gib": "lots"}, "models[0].kv_cache_gib", "a number"),
        ({"models__0__kind": "gguf"}, "models[0].kind", "is not one of"),
        ({"models__2__name": "small"}, "models[2].name", "used twice"),
    ],
)
def test_mistakes_are_named_by_their_place(changes: dict[str, Any], place: str, words: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        parse_config(document(**changes), Path("."), {"PARTNER_KEY": "k"})
    assert info.value.param is not None and info.value.param.startswith(place), info.value
    assert words in str(info.value), info.value


def test_config_check_command(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
    from inferline.cli.main import main

    path = tmp_path / "gateway.yaml"
    path.write_text(GATEWAY)
    monkeypatch.setenv("PARTNER_KEY", "sk-secret")
    assert main(["config", "check", str(path)]) == 0
    out = capsys.readouterr()
    assert "route support-bot: fallback over partner, small" in out.out
    assert "sk-secret" not in out.out + out.err
    path.write_text(GATEWAY.replace("[partner, small]", "[parnter, small]"))
    assert main(["config", "check", str(path)]) == 2
    assert "routes[0].targets[0]: unknown model 'parnter'" in capsys.readouterr().err


CHECKED = [
    {"on": "input", "kind": "classifier", "model": "embed", "examples": ["wipe the database"],
     "above": 0.8, "action": "abstain"},
    {"on": "input", "kind": "pattern", "detectors": ["credit_card"], "action": "block"},
    {"on": "output", "kind": "logprob", "min_mean": -1.5, "min_token": -6, "action": "escalate"},
    {"on": "output", "kind": "logprob", "min_mean": -2.5, "action": "abstain"},
    {"on": "tool_call", "tools": ["refund"], "action": "review", "deadline_s": 60},
]  # fmt: skip


def test_route_checks_split_between_the_cascade_and_the_guard() -> None:
    changes = {
        "routes__2__checks": CHECKED,
        "routes__2__abstain_text": "Ask a person.",
        "reviews": {"webhook_url": "https://hooks.example/r", "webhook_secret_env": "S"},
    }
    config = parse_config(document(**changes), Path("."), {"PARTNER_KEY": "k", "S": "shh"})
    answers = config.routes[2]
    assert [(c.kind, c.threshold) for c in answers.checks] == [
        ("logprob_mean", -1.5), ("logprob_min", -6.0)]  # fmt: skip
    (guard,) = config.guards
    assert guard.route == "answers" and guard.abstain_text == "Ask a person."
    assert [(c.name, c.on, c.action) for c in guard.checks] == [
        ("classifier-0", "input", "abstain"), ("pattern-1", "input", "block"),
        ("logprob-3", "output", "abstain"), ("tool-4", "tool_call", "review")]  # fmt: skip
    assert guard.checks[3].deadline_s == 60 and guard.checks[3].tools == ("refund",)
    assert config.reviews.webhook_url == "https://hooks.example/r"
    assert "shh" not in repr(config.reviews)


@pytest.mark.parametrize(
    ("check", "place", "words"),
    [
        ({"on": "input", "kind": "logprob", "min_mean": -1, "action": "abstain"},
         "routes[0].checks[0].kind", "a check on input is one of"),
        ({"on": "input", "kind": "length", "max_chars": 9, "action": "escalate"},
         "routes[0].checks[0].action", "escalate takes output checks"),
        ({"on": "output", "kind": "pattern", "detectors": ["iban"], "action": "escalate"},
         "routes[0].checks[0].pattern", "no detectors"),
        ({"on": "input", "kind": "pattern", "detectors": ["passport"], "action": "block"},
         "routes[0].checks[0].detectors", "unknown detectors"),
        ({"on": "input", "kind": "classifier", "model": "small", "label": "x", "above": 0.5,
          "action": "abstain"}, "route 'support-bot': check", "not a one-pass model"),
        ({"on": "output", "kind": "logprob", "action": "abstain"},
         "routes[0].checks[0]", "needs min_mean"),
        ({"on": "tool_call", "action": "review", "deadline_s": 0},
         "routes[0].checks[0].deadline_s", "positive"),
        ({"on": "output", "kind": "judge", "route": "nowhere", "rubric": "ok?", "below": 0.5,
          "action": "abstain"}, "route 'support-bot': check", "not a route or text model"),
        ({"on": "output", "kind": "agreement", "below": 2, "action": "abstain"},
         "routes[0].checks[0]", "below in (0, 1]"),
    ],
)  # fmt: skip
def test_check_mistakes_are_named(check: dict[str, Any], place: str, words: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        parse_config(document(routes__0__checks=[check]), Path("."), {"PARTNER_KEY": "k"})
    assert info.value.param is not None and info.value.param.startswith(place), info.value
    assert words in str(info.value), info.value


def test_a_webhook_needs_its_secret() -> None:
    doc = document(reviews={"webhook_url": "https://hooks.example/r"})
    with pytest.raises(InvalidParameterError, match="signed"):
        parse_config(doc, Path("."), {"PARTNER_KEY": "k"})
    doc = document(routes__0__abstain_text="x")
    with pytest.raises(InvalidParameterError, match="only routes with checks"):
        parse_config(doc, Path("."), {"PARTNER_KEY": "k"})


def test_a_bare_yaml_on_key_means_on() -> None:
    import yaml

    doc = document()
    doc["routes"][0]["checks"] = yaml.safe_load(
        "- {on: tool_call, tools: [refund], action: review}\n"
        "- {on: output, kind: logprob, min_mean: -1, action: abstain}"
    )  # YAML 1.1 reads the key `on` as true
    (guard,) = parse_config(doc, Path("."), {"PARTNER_KEY": "k"}).guards
    assert [c.on for c in guard.checks] == ["tool_call", "output"]
