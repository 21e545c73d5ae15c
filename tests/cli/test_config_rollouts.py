"""The config file's ``rollouts:`` checked whole, with errors naming their place."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inferline.cli.config_rollouts import parse_rollouts
from inferline.core.errors import InvalidParameterError


def _parse(entry: dict, tmp_path: Path) -> list:  # type: ignore[type-arg]
    return parse_rollouts([entry], tmp_path, {"bot", "bot-v2", "local"}, {"bot", "bot-v2"})


def test_a_prompt_and_a_route_rollout(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text('{"type": "object"}')
    prompt = {"name": "p", "prompt": "reply", "baseline": 1, "candidate": 2, "share": 0.2,
              "scorers": ["json_schema:s.json", {"scorer": "judge:rubric@1/bot", "sample": 0.2}],
              "policy": {"min_samples": 20, "delta": 0.05},
              "slo": {"error_rate": 0.05}}  # fmt: skip
    (spec,) = _parse(prompt, tmp_path)
    assert (spec.kind, spec.baseline, spec.candidate, spec.label) == (
        "prompt",
        "1",
        "2",
        "production",
    )
    assert spec.scorers == (("json_schema:s.json", 1.0), ("judge:rubric@1/bot", 0.2))
    assert (spec.policy.min_samples, spec.policy.delta, spec.slo.error_rate) == (20, 0.05, 0.05)
    route = {"name": "r", "route": "bot", "candidate": "bot-v2", "scorers": ["regex:^\\{"]}
    (spec,) = _parse(route, tmp_path)
    assert (spec.kind, spec.subject, spec.baseline, spec.candidate, spec.share) == (
        "route", "bot", "bot", "bot-v2", 0.1)  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"route": "bot"}, "either a prompt or a route"),
        ({"share": 1.5}, "rollouts[0].share: a share is between 0 and 1"),
        ({"candidate": 1}, "the candidate is the baseline"),
        ({"scorers": []}, "at least one scorer"),
        ({"scorers": ["bleu"]}, "rollouts[0].scorers[0]: unknown scorer"),
        ({"scorers": ["json_schema:nope.json"]}, "nope.json"),
        ({"policy": {"alpha": 0.7}}, "rollouts[0].policy: alpha and beta"),
        ({"sticky": "key"}, "one of user, session, request"),
        ({"colour": 1}, "unknown key 'colour'"),
    ],
)
def test_mistakes_name_their_place(change: dict, message: str, tmp_path: Path) -> None:  # type: ignore[type-arg]
    entry = {"name": "p", "prompt": "reply", "baseline": 1, "candidate": 2,
             "scorers": ["regex:x"], **change}  # fmt: skip
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        _parse(entry, tmp_path)


def test_a_route_rollout_names_routes_of_the_file(tmp_path: Path) -> None:
    entry = {"name": "r", "route": "nope", "candidate": "bot-v2", "scorers": ["regex:x"]}
    with pytest.raises(InvalidParameterError, match="'nope' is not a route"):
        _parse(entry, tmp_path)
    entry = {"name": "r", "route": "bot", "candidate": "gpt", "scorers": ["regex:x"]}
    with pytest.raises(InvalidParameterError, match="'gpt' is not a route or model"):
        _parse(entry, tmp_path)
