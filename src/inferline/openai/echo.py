"""``echo`` on legacy completions: the prompt before each choice's text, and with
``logprobs`` the prompt tokens' logprobs before the generated ones (what
lm-evaluation-harness reads to score a continuation).

With ``echo: true, logprobs: k`` the engine is asked for prompt logprobs
(`SamplingParams.prompt_logprobs`); the first prompt token has no logprob (``null`` in
``token_logprobs`` and ``top_logprobs``, as OpenAI returns). The prompt tokens' texts
concatenate to the echoed prompt, so ``text_offset`` indexes the choice's ``text``:
``text[text_offset[i]:text_offset[i + 1]]`` is token ``i``. ``max_tokens: 0`` (only with
``echo``) runs the prompt with ``max_tokens: 1`` and drops the sampled token: the choice
is the prompt alone, ``finish_reason: length``, no completion tokens in ``usage``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inferline.core.outputs import CompletionOutput, Logprob, RequestOutput
from inferline.openai.schemas import CompletionRequest


@dataclass(frozen=True)
class EchoOptions:
    """What a completions body asked of its choices beyond the generated text.

    ``prompts`` are the body's prompts (``None`` for a token-id prompt), the fallback for
    a generator that does not report its prompt's text.
    """

    echo: bool = False
    drop_output: bool = False  # max_tokens: 0
    prompts: tuple[str | None, ...] = ()

    def prompt_text(self, prompt_index: int, output: RequestOutput) -> str:
        """The text echoed for one prompt: the generator's (its tokens' text) if it has it."""
        if output.prompt is not None:
            return output.prompt
        if prompt_index < len(self.prompts):
            return self.prompts[prompt_index] or ""
        return ""


def echo_options(body: CompletionRequest) -> EchoOptions:
    """The body's ``echo`` and ``max_tokens: 0``, with its text prompts."""
    prompt = body.prompt
    if isinstance(prompt, str):
        prompts: tuple[str | None, ...] = (prompt,)
    elif prompt and isinstance(prompt[0], int):
        prompts = (None,)
    else:
        prompts = tuple(p if isinstance(p, str) else None for p in prompt)
    return EchoOptions(body.echo, body.echo and body.max_tokens == 0, prompts)


def generated_logprobs(logprobs: list[Logprob], text_offset_start: int) -> dict[str, Any]:
    """``choices[i].logprobs`` of generated tokens (offsets from ``text_offset_start``)."""
    offsets, position = [], text_offset_start
    for lp in logprobs:
        offsets.append(position)
        position += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{text: value for _, text, value in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def prompt_logprobs(prompt: str, entries: list[Logprob | None]) -> dict[str, Any]:
    """The prompt's part of ``logprobs``: the first token (text only) and the scored rest."""
    rest = [e for e in entries[1:] if e is not None]
    first_text = prompt[: len(prompt) - sum(len(e.token) for e in rest)]
    scored = generated_logprobs(rest, len(first_text))
    return {
        "tokens": [first_text, *scored["tokens"]],
        "token_logprobs": [None, *scored["token_logprobs"]],
        "top_logprobs": [None, *scored["top_logprobs"]],
        "text_offset": [0, *scored["text_offset"]],
    }


def joined(first: dict[str, Any] | None, second: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two ``logprobs`` objects one after the other (either may be missing)."""
    if first is None or second is None:
        return first if second is None else second
    return {key: first[key] + second[key] for key in first}


@dataclass(frozen=True)
class EchoedChoice:
    """A choice's ``text``, ``logprobs`` and ``finish_reason`` with the echo applied."""

    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None


def echoed_choice(
    options: EchoOptions,
    prompt_index: int,
    output: RequestOutput,
    completion: CompletionOutput,
    *,
    text: str,
    logprobs: list[Logprob] | None,
    with_prompt: bool = True,
    offset: int = 0,
) -> EchoedChoice:
    """``text`` and ``logprobs`` (all of a choice, or a stream's new part) with the prompt
    before them when ``with_prompt`` (the whole body, or a stream's first chunk);
    ``offset`` is how many characters of the choice the client already has."""
    prefix = options.prompt_text(prompt_index, output) if options.echo and with_prompt else ""
    finish = completion.finish_reason
    if options.drop_output:
        text, logprobs = "", [] if logprobs is not None else None
        finish = "length" if finish is not None else None
    generated = None if logprobs is None else generated_logprobs(logprobs, offset + len(prefix))
    prompt_part = None
    if prefix and logprobs is not None and output.prompt_logprobs is not None:
        prompt_part = prompt_logprobs(prefix, output.prompt_logprobs)
    return EchoedChoice(prefix + text, joined(prompt_part, generated), finish)


def echoed_usage(usage: dict[str, Any], options: EchoOptions) -> dict[str, Any]:
    """``usage`` without the dropped token of ``max_tokens: 0``."""
    if not options.drop_output:
        return usage
    return {**usage, "completion_tokens": 0, "total_tokens": usage["prompt_tokens"]}
