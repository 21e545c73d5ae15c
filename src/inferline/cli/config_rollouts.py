"""The config file's ``rollouts:``: a prompt version behind a label, or a route, rolled
out to a share of its traffic and decided by online scorers, SLOs and a sequential test.

    rollouts:
      - name: reply-v2
        prompt: reply            # or  route: bot
        label: production        # prompt rollouts (default production)
        baseline: 1              # the version (or route) now serving
        candidate: 2
        share: 0.2
        sticky: user             # user | session | request
        scorers: [json_schema:person.json, {scorer: "judge:rubric@2/large", sample: 0.2}]
        slo: {error_rate: 0.05, latency_p95_s: 10}
        policy: {alpha: 0.05, beta: 0.2, delta: 0.1, margin: 0.05, min_samples: 10,
                 max_samples: 400}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferline.cli.config_fields import fail, mapping, value
from inferline.evals.rollout import RolloutSpec, Slo
from inferline.evals.scorer_specs import ScorerContext, build_scorer
from inferline.evals.sequential import Policy
from inferline.evals.targets import parse_target

_KEYS = {"name", "prompt", "route", "label", "baseline", "candidate", "share", "sticky",
         "scorers", "slo", "policy"}  # fmt: skip
_POLICY = {"alpha": float, "beta": float, "delta": float, "margin": float,
           "min_samples": int, "max_samples": int}  # fmt: skip


def parse_rollouts(
    raw: Any, base_dir: Path, routable: set[str], routes: set[str]
) -> list[RolloutSpec]:
    """Every ``rollouts:`` entry, checked (scorers built once to check their arguments)."""
    specs: list[RolloutSpec] = []
    for index, entry in enumerate(raw or []):
        place = f"rollouts[{index}]"
        spec = _rollout(mapping(entry, place, _KEYS), place, base_dir, routable, routes)
        if spec.name in {s.name for s in specs}:
            raise fail(f"{place}.name", f"the rollout {spec.name!r} is named twice")
        specs.append(spec)
    return specs


def _rollout(
    entry: dict[str, Any], place: str, base_dir: Path, routable: set[str], routes: set[str]
) -> RolloutSpec:
    name = value(entry, "name", str, place)
    if ("prompt" in entry) == ("route" in entry):
        raise fail(place, "name either a prompt or a route")
    kind = "prompt" if "prompt" in entry else "route"
    subject = value(entry, kind, str, place)
    if kind == "route":
        if subject not in routes:
            raise fail(f"{place}.route", f"{subject!r} is not a route of this file")
        baseline, candidate = (value(entry, k, str, place, subject if k == "baseline" else ...)
                               for k in ("baseline", "candidate"))  # fmt: skip
        for key, target in (("baseline", baseline), ("candidate", candidate)):
            if target not in routable:
                raise fail(f"{place}.{key}", f"{target!r} is not a route or model of this file")
    else:
        baseline, candidate = (str(value(entry, k, int, place)) for k in ("baseline", "candidate"))
    if baseline == candidate:
        raise fail(f"{place}.candidate", "the candidate is the baseline")
    share = value(entry, "share", float, place, 0.1)
    if not 0 < share < 1:
        raise fail(f"{place}.share", "a share is between 0 and 1")
    sticky = value(entry, "sticky", str, place, "user")
    if sticky not in ("user", "session", "request"):
        raise fail(f"{place}.sticky", "one of user, session, request")
    return RolloutSpec(
        name, kind, subject, baseline, candidate, share,
        label=value(entry, "label", str, place, "production"), sticky=sticky,
        scorers=_scorers(entry.get("scorers"), f"{place}.scorers", base_dir),
        slo=_slo(entry.get("slo") or {}, f"{place}.slo"),
        policy=_policy(entry.get("policy") or {}, f"{place}.policy"),
    )  # fmt: skip


def _scorers(raw: Any, place: str, base_dir: Path) -> tuple[tuple[str, float], ...]:
    if not isinstance(raw, list) or not raw:
        raise fail(place, "a rollout needs at least one scorer (what 'worse' means)")
    out = []
    for index, item in enumerate(raw):
        where = f"{place}[{index}]"
        if isinstance(item, str):
            spec, share = item, 1.0
        else:
            entry = mapping(item, where, {"scorer", "sample"})
            spec, share = (
                value(entry, "scorer", str, where),
                value(entry, "sample", float, where, 1.0),
            )
        if not 0 < share <= 1:
            raise fail(f"{where}.sample", "a share of answers in (0, 1]")
        try:
            if spec.startswith("judge:"):  # built by the server, with its registry
                parse_target(f"prompt:{spec.removeprefix('judge:')}")
            else:
                build_scorer(spec, ScorerContext(base_dir=base_dir))
        except Exception as exc:  # the scorer's own message, placed
            raise fail(where, str(exc)) from None
        out.append((spec, share))
    return tuple(out)


def _slo(raw: Any, place: str) -> Slo:
    entry = mapping(raw, place, {"error_rate", "latency_p95_s"})
    return Slo(value(entry, "error_rate", float, place, None),
               value(entry, "latency_p95_s", float, place, None))  # fmt: skip


def _policy(raw: Any, place: str) -> Policy:
    entry = mapping(raw, place, set(_POLICY))
    values: dict[str, Any] = {
        k: value(entry, k, kind, place) for k, kind in _POLICY.items() if k in entry
    }
    try:
        return Policy(**values)
    except ValueError as exc:
        raise fail(place, str(exc)) from None
