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
