"""``echo`` on legacy completions: request mapping, bodies and stream chunks, hand-checked.

The outputs are built by hand: a prompt "Hello world" of two tokens ("Hello", " world")
followed by one generated token " again".
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from inferline.core.errors import InvalidParameterError
from inferline.core.outputs import CompletionOutput, Logprob, RequestMetrics, RequestOutput
from inferline.core.protocols import GenerationRequest
from inferline.core.sampling_params import SamplingParams
from inferline.openai.echo import EchoOptions, echo_options
from inferline.openai.responses import CompletionChunker, text_completion
from inferline.openai.sampling import completion_sampling_params
from inferline.openai.schemas import CompletionRequest
from inferline.openai.upstream import upstream_call

HEADER = {"id": "cmpl-1", "created": 0, "model": "m"}
WORLD = Logprob(2, " world", -2.5, ((3, " there", -1.0), (2, " world", -2.5)))
AGAIN = Logprob(4, " again", -0.7, ((4, " again", -0.7),))


def body(**fields) -> CompletionRequest:  # type: ignore[no-untyped-def]
    return CompletionRequest(model="m", prompt=fields.pop("prompt", "Hello world"), **fields)


def output(
    *, prompt_logprobs: bool = True, logprobs: bool = True, prompt: str | None = "Hello world"
) -> RequestOutput:
    completion = CompletionOutput(
        0,
        text=" again",
        token_ids=[4],
        text_delta=" again",
        token_ids_delta=[4],
        logprobs=[AGAIN] if logprobs else None,
        finish_reason="length",
    )
    return RequestOutput(
        "r",
        prompt,
        [1, 2],
        [completion],
        True,
        RequestMetrics(0.0),
        prompt_logprobs=[None, WORLD] if prompt_logprobs else None,
    )


def test_sampling_asks_for_prompt_logprobs_only_with_echo() -> None:
    assert completion_sampling_params(body(echo=True, logprobs=2)).prompt_logprobs == 2
    assert completion_sampling_params(body(echo=True)).prompt_logprobs is None
    assert completion_sampling_params(body(logprobs=2)).prompt_logprobs is None
    params = completion_sampling_params(body(echo=True, logprobs=1, max_tokens=0))
    assert params.max_tokens == 1  # sampled, then dropped by the response


def test_max_tokens_zero_needs_echo() -> None:
    with pytest.raises(InvalidParameterError) as raised:
        completion_sampling_params(body(max_tokens=0))
    assert raised.value.param == "max_tokens"
    with pytest.raises(ValidationError):
        body(max_tokens=-1)


def test_echo_with_logprobs_body() -> None:
    got = text_completion(HEADER, [output()], 1, echo_options(body(echo=True, logprobs=2)))
    (choice,) = got["choices"]
    assert choice["text"] == "Hello world again"
    assert choice["logprobs"] == {
        "tokens": ["Hello", " world", " again"],
        "token_logprobs": [None, -2.5, -0.7],
        "top_logprobs": [None, {" there": -1.0, " world": -2.5}, {" again": -0.7}],
        "text_offset": [0, 5, 11],
    }
    assert choice["finish_reason"] == "length"
    assert got["usage"]["completion_tokens"] == 1


def test_offsets_index_the_text() -> None:
    got = text_completion(HEADER, [output()], 1, echo_options(body(echo=True, logprobs=2)))
    (choice,) = got["choices"]
    text, lp = choice["text"], choice["logprobs"]
    ends = [*lp["text_offset"][1:], len(text)]
    assert [text[a:b] for a, b in zip(lp["text_offset"], ends, strict=True)] == lp["tokens"]


def test_echo_with_max_tokens_zero_is_the_prompt_alone() -> None:
    options = echo_options(body(echo=True, logprobs=1, max_tokens=0))
    got = text_completion(HEADER, [output()], 1, options)
    (choice,) = got["choices"]
    assert choice["text"] == "Hello world"
    assert choice["logprobs"]["tokens"] == ["Hello", " world"]
    assert choice["logprobs"]["token_logprobs"] == [None, -2.5]
    assert choice["logprobs"]["text_offset"] == [0, 5]
    assert choice["finish_reason"] == "length"
    assert got["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 0,
        "total_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_echo_without_logprobs() -> None:
    options = echo_options(body(echo=True))
    got = text_completion(HEADER, [output(prompt_logprobs=False, logprobs=False)], 1, options)
    assert got["choices"][0]["text"] == "Hello world again"
    assert got["choices"][0]["logprobs"] is None


def test_a_split_character_belongs_to_the_token_completing_it() -> None:
    # "Ü" is two byte-level tokens: the first adds no text, the second the whole character
    u_second = Logprob(7, "Ü", -3.0)
    bang = Logprob(8, "!", -0.25)
    out = output(prompt="Ü!")
    out.prompt_logprobs = [None, u_second, bang]
    got = text_completion(HEADER, [out], 1, echo_options(body(prompt="Ü!", echo=True, logprobs=0)))
    lp = got["choices"][0]["logprobs"]
    assert lp["tokens"][:3] == ["", "Ü", "!"]
    assert lp["text_offset"] == [0, 0, 1, 2]
    assert got["choices"][0]["text"] == "Ü! again"


def test_token_prompts_echo_the_generators_text() -> None:
    options = echo_options(body(prompt=[1, 2], echo=True))
    assert options.prompts == (None,)
    got = text_completion(HEADER, [output(prompt_logprobs=False)], 1, options)
    assert got["choices"][0]["text"] == "Hello world again"
    # a generator that does not report the text of a token prompt: nothing to echo
    assert EchoOptions(True, False, (None,)).prompt_text(0, output(prompt=None)) == ""
    assert echo_options(body(prompt=["a", "b"], echo=True)).prompts == ("a", "b")


def test_stream_echoes_in_the_first_chunk_and_offsets_continue() -> None:
    chunker = CompletionChunker(HEADER, 1, False, echo_options(body(echo=True, logprobs=2)))
    first = output()
    first.outputs[0].finish_reason = None
    (chunk,) = chunker.chunks(0, first)
    assert chunk["choices"][0]["text"] == "Hello world again"
    assert chunk["choices"][0]["logprobs"]["text_offset"] == [0, 5, 11]
    more = Logprob(5, "!", -0.1)
    second = output()
    completion = second.outputs[0]
    completion.text, completion.text_delta, completion.logprobs = " again!", "!", [AGAIN, more]
    completion.token_ids, completion.token_ids_delta = [4, 5], [5]
    (chunk,) = chunker.chunks(0, second)
    assert chunk["choices"][0]["text"] == "!"
    assert chunk["choices"][0]["logprobs"] == {
        "tokens": ["!"],
        "token_logprobs": [-0.1],
        "top_logprobs": [{}],
        "text_offset": [17],
    }
    assert chunk["choices"][0]["finish_reason"] == "length"


def test_stream_with_max_tokens_zero() -> None:
    options = echo_options(body(echo=True, logprobs=1, max_tokens=0, stream=True))
    chunker = CompletionChunker(HEADER, 1, True, options)
    (chunk,) = chunker.chunks(0, output())
    assert chunk["choices"][0]["text"] == "Hello world"
    assert chunk["choices"][0]["logprobs"]["tokens"] == ["Hello", " world"]
    assert chunk["choices"][0]["finish_reason"] == "length"
    assert chunker.final([output()])["usage"]["completion_tokens"] == 0  # type: ignore[index]


def test_without_echo_nothing_changes() -> None:
    got = text_completion(HEADER, [output()], 1, echo_options(body(logprobs=2)))
    (choice,) = got["choices"]
    assert choice["text"] == " again"
    assert choice["logprobs"]["tokens"] == [" again"]
    assert choice["logprobs"]["text_offset"] == [0]


def test_remote_upstreams_refuse_prompt_logprobs() -> None:
    request = GenerationRequest("r", prompt="hi", params=SamplingParams(prompt_logprobs=1))
    with pytest.raises(InvalidParameterError) as raised:
        upstream_call(request, "gpt")
    assert raised.value.param == "echo"
