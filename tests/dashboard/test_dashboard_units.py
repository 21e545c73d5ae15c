"""The dashboard's pieces without a browser: sessions and roles, CSRF tokens, the trace
timeline, escaping in the templates."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from inferline.dashboard.auth import COOKIE, Session, Sessions, csrf_ok
from inferline.dashboard.render import _ENV
from inferline.dashboard.timeline import timeline
from inferline.tenants.service import Identity


class FakeTenants:
    """Two keys: an admin token and a reviewer key, which can be revoked."""

    def __init__(self) -> None:
        self.live = {"key_r"}
        self.requires_auth = True

    def identify(self, token: str) -> Identity | None:
        if token == "admin":
            return Identity(is_admin=True)
        if token == "rev" and "key_r" in self.live:
            return Identity(key=SimpleNamespace(id="key_r", name="Rita", role="reviewer"))  # type: ignore[arg-type]
        if token == "user":
            return Identity(key=SimpleNamespace(id="key_u", name="", role="user"))  # type: ignore[arg-type]
        return None

    def has_key(self, key_id: str) -> bool:
        return key_id in self.live or key_id == "key_u"


def _request(cookie: str | None) -> Any:
    return SimpleNamespace(cookies={COOKIE: cookie} if cookie else {})


def test_sessions_roles_and_revocation() -> None:
    tenants = FakeTenants()
    sessions = Sessions(tenants)  # type: ignore[arg-type]
    assert sessions.open("nope") is None
    cookie, session = sessions.open("rev") or ("", None)
    assert session is not None and (session.role, session.name) == ("reviewer", "Rita")
    assert session.may("viewer") and session.may("reviewer") and not session.may("admin")
    assert sessions.of(_request(cookie)) is session
    assert sessions.of(_request("forged")) is None and sessions.of(_request(None)) is None
    tenants.live.clear()  # the key is revoked: its session ends
    assert sessions.of(_request(cookie)) is None
    _, viewer = sessions.open("user") or ("", None)
    assert viewer is not None and (viewer.role, viewer.name) == ("viewer", "key_u")
    tenants.requires_auth = False  # a server without keys: everyone is admin
    assert sessions.of(_request(None)).role == "admin"  # type: ignore[union-attr]


def test_csrf_tokens() -> None:
    session = Session("admin", "admin")
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None) and not csrf_ok(session, session.csrf + "x")
    assert Session("admin", "admin").csrf != session.csrf


def test_a_trace_as_a_timeline() -> None:
    trace = {
        "timings": {"total_s": 1.0, "queue_s": 0.1, "prefill_s": 0.2, "decode_s": 0.5},
        "attempts": [{"attempt": 1, "target": "small", "status": "ok", "started_at": 0.05,
                      "duration_s": 0.8}],
        "decision": {"checks": [
            {"check": "pii", "on": "input", "duration_s": 0.05, "fired": False},
            {"check": "judge", "on": "output", "duration_s": 0.15, "fired": True}]},
    }  # fmt: skip
    bars = {b["label"]: b for b in timeline(trace)}
    assert (bars["queue"]["start_s"], bars["prefill"]["start_s"], bars["decode"]["start_s"]) == (
        0.0, 0.1, pytest_approx(0.3))  # fmt: skip
    assert bars["attempt 1: small (ok)"]["width_pct"] == 80.0
    assert bars["check judge (fired)"]["start_s"] == 0.85  # output checks end the request
    assert bars["check pii (passed)"]["start_s"] == 0.0


def pytest_approx(value: float) -> Any:
    import pytest

    return pytest.approx(value)


def test_templates_escape_untrusted_text() -> None:
    html = _ENV.get_template("error.html").render(
        session=Session("viewer", "<i>me</i>"), nav=[], path="/ui",
        message='<script>alert(1)</script>',
    )  # fmt: skip
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;i&gt;me&lt;/i&gt;" in html


def test_a_prompt_versions_scores_from_experiments_and_rollouts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from inferline.dashboard.pages import version_scores
    from inferline.store import connect, migrate
    from inferline.store.experiments import ExperimentStore
    from inferline.store.rollouts import RolloutStore

    engine = connect(f"sqlite:///{tmp_path / 'p.db'}")
    migrate(engine)
    store = ExperimentStore(engine)
    config = {"targets": ["prompt:reply@1", "prompt:reply@2", "bot"], "scorers": ["exact"],
              "repetitions": 1, "params": {}}  # fmt: skip
    store.create({"id": "exp_1", "name": None, "dataset": "d", "dataset_version": 1,
                  "config": config})  # fmt: skip
    for n, (target, passed) in enumerate([("prompt:reply@1", True), ("prompt:reply@1", False),
                                          ("prompt:reply@2", True), ("bot", True)]):  # fmt: skip
        store.add_result({"experiment_id": "exp_1", "target": target, "item_key": f"i{n}",
                          "repetition": 0, "request_id": None, "status_code": 200, "error": None,
                          "output": "x", "latency_s": 0.1, "cost_usd": 0.0, "prompt_tokens": 1,
                          "completion_tokens": 1, "scores": {}, "scoring_cost_usd": 0.0,
                          "passed": passed, "confidence": None})  # fmt: skip
    rollouts = RolloutStore(engine)
    row = {"name": "r", "kind": "prompt", "subject": "reply", "label": "production",
           "baseline": "1", "candidate": "2", "share": 0.2, "config": {}}  # fmt: skip
    rollouts.ensure(row, {})
    for arm, passed in (("baseline", True), ("candidate", False), ("candidate", True)):
        rollouts.add_sample("r", {"arm": arm, "status_code": 200, "passed": passed})
    scores = version_scores(engine, "reply")
    assert scores[1] == [{"source": "experiment exp_1", "n": 2, "pass_rate": 0.5},
                         {"source": "rollout r (baseline)", "n": 1, "pass_rate": 1.0}]  # fmt: skip
    assert scores[2][1] == {"source": "rollout r (candidate)", "n": 2, "pass_rate": 0.5}
    assert version_scores(engine, "other") == {}


def test_the_cache_outcome_is_on_the_timeline() -> None:
    trace = {"timings": {"total_s": 0.01}, "cache": "exact", "attempts": [], "decision": None}
    (bar,) = timeline(trace)
    assert bar["label"] == "cache lookup: exact" and bar["kind"] == "cache"
