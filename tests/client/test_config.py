"""`UpstreamConfig` validation: names the field, keeps secrets out of its repr."""

from __future__ import annotations

from typing import Any

import pytest

from inferline.client import UpstreamConfig, UpstreamTimeouts
from inferline.core import InvalidParameterError


def test_defaults_and_model_name() -> None:
    config = UpstreamConfig("gpt", "https://api.example.com/v1/")
    assert config.model == "gpt" and config.base_url == "https://api.example.com/v1"
    assert config.timeouts == UpstreamTimeouts(5, 30, 30, 600)
    assert config.max_connections == 100 and config.api_key is None and config.can_continue
    assert UpstreamConfig("gpt", "http://localhost:8000/v1", model="gpt-4o").model == "gpt-4o"


def test_repr_hides_the_key_and_header_values() -> None:
    config = UpstreamConfig(
        "gpt", "https://api.example.com/v1", api_key="sk-secret-123", headers={"x-org": "org-9876"}
    )
    assert "sk-secret-123" not in repr(config) and "org-9876" not in repr(config)
    assert set(config.secrets) == {"sk-secret-123", "org-9876"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"base_url": "ftp://example.com/v1"}, "base_url"),
        ({"base_url": "file:///etc/passwd"}, "base_url"),
        ({"base_url": "example.com/v1"}, "base_url"),
        ({"base_url": "https://user:pass@example.com/v1"}, "base_url"),
        ({"base_url": "https://example.com/v1?x=1"}, "base_url"),
        ({"base_url": "https://example.com:port/v1"}, "base_url"),
        ({"name": ""}, "name"),
        ({"api_key": ""}, "api_key"),
        ({"max_connections": 0}, "max_connections"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"headers": {"Host": "evil.example"}}, "headers"),
        ({"headers": {"x-a": "b\r\nHost: evil"}}, "headers"),
        ({"headers": {"bad name": "x"}}, "headers"),
    ],
)
def test_invalid_fields_are_named(fields: dict[str, Any], param: str) -> None:
    values: dict[str, Any] = {"name": "gpt", "base_url": "https://example.com/v1", **fields}
    with pytest.raises(InvalidParameterError) as info:
        UpstreamConfig(**values)
    assert info.value.param == param


@pytest.mark.parametrize("name", ["connect_s", "first_token_s", "idle_s", "total_s"])
def test_timeouts_must_be_positive(name: str) -> None:
    with pytest.raises(InvalidParameterError) as info:
        UpstreamTimeouts(**{name: 0})
    assert info.value.param == name
