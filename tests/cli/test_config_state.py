"""The ``state:`` section of the config file and ``serve --redis-url``: where gateway
replicas keep what they share."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from inferline.cli.config_file import parse_config
from inferline.cli.config_state import StateConfig, build_shared_state, build_tenants, state_config
from inferline.core.errors import InvalidParameterError
from inferline.store import KeyStore, connect, migrate
from inferline.tenants.budget import BudgetLedger
from inferline.tenants.limits import LocalLimits

MODELS = [{"name": "m", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "x"}]


def test_no_state_section_shares_nothing() -> None:
    config = parse_config({"models": MODELS}, Path("."), {})
    assert config.state == StateConfig() and build_shared_state(config.state) is None


def test_the_state_section_is_checked() -> None:
    state = {"redis_url_env": "REDIS", "database_url": "sqlite:///x.db", "lease_s": 10}
    config = parse_config({"models": MODELS, "state": state}, Path("."), {"REDIS": "redis://h/1"})
    assert config.state == StateConfig("sqlite:///x.db", "redis://h/1", "inferline", 10.0)
    assert "redis://" not in repr(config.state)  # a URL may carry a password
    for bad, place in (({"redis_url": "http://h"}, "state.redis_url"),
                       ({"lease_s": 0}, "state.lease_s"), ({"colour": 1}, "state.colour"),
                       ({"redis_url_env": "NOPE"}, "state.redis_url_env")):  # fmt: skip
        with pytest.raises(InvalidParameterError, match=place):
            parse_config({"models": MODELS, "state": bad}, Path("."), {})


def test_the_command_line_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text('models: []\nstate: {redis_url: "redis://file/0", lease_s: 9}\n')
    args = argparse.Namespace(config=path, redis_url="redis://flag/0", database_url=None)
    assert state_config(args, {}) == StateConfig(None, "redis://flag/0", "inferline", 9.0)


def test_without_redis_the_tenants_are_this_process_s(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'k.db'}")
    migrate(engine)
    tenants = build_tenants(KeyStore(engine), (), None)
    assert isinstance(tenants.limits, LocalLimits) and isinstance(tenants.ledger, BudgetLedger)
    assert not tenants.is_shared


def test_with_redis_the_tenants_share_it(tmp_path: Path, redis_url: str) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'k.db'}")
    migrate(engine)
    shared = build_shared_state(StateConfig(redis_url=redis_url, lease_s=6))
    tenants = build_tenants(KeyStore(engine), (), shared)
    assert tenants.is_shared and tenants.renew_every_s == 2
