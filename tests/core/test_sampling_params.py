import dataclasses

import pytest

from inferline.core import InvalidParameterError, Registry, SamplingParams


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", 2.5),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -2),
        ("min_p", 1.5),
        ("presence_penalty", 3.0),
        ("frequency_penalty", -2.5),
        ("repetition_penalty", 0.0),
        ("max_tokens", 0),
        ("n", 0),
        ("logprobs", 21),
        ("stop", [""]),
        ("stop_token_ids", [-1]),
    ],
)
def test_invalid_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidParameterError) as info:
        SamplingParams(**{field: value})  # type: ignore[arg-type]
    assert info.value.param == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_stop_accepts_a_single_string_and_lists() -> None:
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")  # type: ignore[arg-type]


def test_greedy_when_temperature_zero_or_top_k_one() -> None:
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(temperature=1.0, top_k=1).is_greedy
    assert not SamplingParams(temperature=0.5).is_greedy


def test_registry_rejects_duplicates_and_lists_known_names() -> None:
    registry: Registry[int] = Registry("thing")
    registry.add("a", 1)
    with pytest.raises(KeyError):
        registry.add("a", 2)
    with pytest.raises(KeyError, match="known: a"):
        registry.get("b")
    assert registry.names() == ["a"] and "a" in registry


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logit_bias": {1: 100.5}}, "logit_bias"),
        ({"logit_bias": {1: -101}}, "logit_bias"),
        ({"logit_bias": {-1: 1}}, "logit_bias"),
        ({"logit_bias": {"x": 1}}, "logit_bias"),
        ({"logit_bias": dict.fromkeys(range(301), 1.0)}, "logit_bias"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
        ({"unset_fields": ("seed",)}, "unset_fields"),
    ],
)
def test_bias_min_tokens_and_unset_fields_are_validated(
    fields: dict[str, object], param: str
) -> None:
    with pytest.raises(InvalidParameterError) as info:
        SamplingParams(**fields)  # type: ignore[arg-type]
    assert info.value.param == param


def test_logit_bias_is_stored_as_sorted_pairs() -> None:
    params = SamplingParams(logit_bias={7: -1, 2: 100})  # type: ignore[arg-type]
    assert params.logit_bias == ((2, 100.0), (7, -1.0))
    assert SamplingParams(logit_bias=[(3, 1)]).logit_bias == ((3, 1.0),)  # type: ignore[list-item]
    assert SamplingParams(max_tokens=None, min_tokens=100).min_tokens == 100  # no cap to pass
    hash(params)


def test_model_defaults_fill_only_the_unset_fields() -> None:
    defaults = {"temperature": 0.3, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.1}
    params = SamplingParams(temperature=0.9, unset_fields=("top_k", "top_p", "min_p"))
    applied = params.with_defaults(defaults)
    assert applied.temperature == 0.9  # the request's value wins
    assert (applied.top_k, applied.top_p) == (20, 0.8)
    assert applied.repetition_penalty == 1.0  # set by the request (not in unset_fields)
    assert applied.min_p == 0.0 and applied.unset_fields == ("min_p",)  # no default for it
    assert SamplingParams().with_defaults(defaults) == SamplingParams()  # nothing unset
    # a field changed after the mapping (a check's dataclasses.replace) counts as set
    changed = dataclasses.replace(params, top_k=5)
    assert changed.with_defaults(defaults).top_k == 5
