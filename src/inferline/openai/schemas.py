"""Request bodies of the OpenAI-compatible endpoints (pydantic; unknown fields ignored).

Bounds follow the OpenAI spec; our extensions (``top_k``, ``min_p``, ``repetition_penalty``,
``min_tokens``, ``ignore_eos``, ``stop_token_ids``, ``guided_*``, ``continue_final_message``)
follow vLLM's names. Sampling fields left out (None) take the model's own defaults.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from inferline.core.errors import InvalidParameterError


class LenientModel(BaseModel):
    """Fields OpenAI accepts but we do not use are ignored, not rejected."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(LenientModel):
    """``stream_options``: ``include_usage`` adds a final usage chunk."""

    include_usage: bool = False


class TextPart(LenientModel):
    """A text part of a message's content list."""

    type: Literal["text"]
    text: str


class ChatMessage(LenientModel):
    """One message of a conversation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingFields(LenientModel):
    """Fields shared by chat and completions."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    user: str | None = None
    # OpenAI's: at most 16 string pairs (keys 64 characters, values 512); traces keep them
    metadata: Annotated[dict[Annotated[str, Field(max_length=64)],
                             Annotated[str, Field(max_length=512)]],
                        Field(max_length=16)] | None = None  # fmt: skip
    # OpenAI's: token id (as a string) -> bias added to its logit, at most 300 entries
    logit_bias: (
        Annotated[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]], Field(max_length=300)]
        | None
    ) = None
    # extensions (vLLM names); None: the model's own default (its generation config)
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Probability | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    min_tokens: Annotated[int, Field(ge=0)] = 0
    ignore_eos: bool = False
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    guided_regex: Annotated[str, Field(min_length=1)] | None = None
    guided_choice: (
        Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None
    ) = None
    guided_json: dict[str, Any] | None = None


class PromptRef(LenientModel):
    """A stored prompt (the Responses API's ``prompt``): its id, a version number or label
    (default: the ``production`` label, else the latest), and its variables."""

    id: Annotated[str, Field(min_length=1, max_length=128)]
    version: Annotated[str, Field(min_length=1, max_length=64)] | int | None = None
    variables: dict[str, Any] = Field(default_factory=dict)


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``. With a ``prompt``, ``model`` may come from the prompt's
    route and ``messages`` (then appended after the prompt's) may be empty."""

    model: str = ""
    messages: list[ChatMessage] = Field(default_factory=list)
    prompt: PromptRef | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # vLLM's: the last (assistant) message is a prefix the answer continues
    continue_final_message: bool = False
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _messages_and_model_unless_a_prompt(self) -> ChatCompletionRequest:
        if self.prompt is None and not self.messages:
            raise InvalidParameterError("messages: must have at least one message", "messages")
        if self.prompt is None and not self.model:
            raise InvalidParameterError("model: a model or route is required", "model")
        return self


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``. ``echo`` returns the prompt before each choice's text
    (with ``logprobs``, the prompt tokens' logprobs too); ``max_tokens: 0`` is allowed with
    ``echo`` only (the prompt alone: how lm-evaluation-harness scores text)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: Annotated[int, Field(ge=0)] | None = Field(
        None, description="tokens to generate (default 16); 0 only with echo: the prompt alone"
    )
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = Field(
        False,
        description="the prompt before each choice's text; with logprobs, the prompt tokens' "
        "logprobs too (the first is null; local models only, else a 400 naming echo)",
    )
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
