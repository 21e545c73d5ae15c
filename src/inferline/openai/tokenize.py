"""vLLM's ``/tokenize`` and ``/detokenize`` bodies (pydantic), and their mapping to and from
`inferline.core.TokenizeRequest` / `Tokenized`.

One ``/tokenize`` body takes either vLLM shape: ``{model, prompt}`` or ``{model, messages,
add_generation_prompt}``. ``add_special_tokens`` defaults to true for both (vLLM: false for
messages): a BOS where the model asks for one, as generation adds it, so ``count`` is a
request's ``prompt_tokens``.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from inferline.core.errors import InvalidParameterError
from inferline.core.protocols import Tokenized, TokenizeRequest
from inferline.openai.requests import template_message
from inferline.openai.schemas import ChatMessage, LenientModel

MAX_TOKEN_ID = 2**31 - 1


class TokenizeBody(LenientModel):
    """``POST /tokenize``: a prompt, or messages rendered with the model's chat template."""

    model: str = Field("", description="a model or route (default: the server's first)")
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    tools: list[dict[str, Any]] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = Field(
        True, description="a BOS where the model asks for one, as generation does"
    )

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeBody:
        if (self.prompt is None) == (self.messages is None):
            raise InvalidParameterError(
                "messages: set exactly one of prompt and messages", "messages"
            )
        return self

    def to_request(self) -> TokenizeRequest:
        """The transport-neutral request."""
        messages = None
        if self.messages is not None:  # rendered as a chat request's are
            messages = [template_message(m) for m in self.messages]
        return TokenizeRequest(
            self.model,
            self.prompt,
            messages,
            self.tools,
            self.add_generation_prompt,
            self.add_special_tokens,
        )


class TokenizeResponse(LenientModel):
    """vLLM's answer: the ids, how many, and the model's context window."""

    count: int
    max_model_len: int | None
    tokens: list[int]

    @classmethod
    def of(cls, tokenized: Tokenized) -> TokenizeResponse:
        """The response body of ``tokenized``."""
        ids = tokenized.token_ids
        return cls(count=len(ids), max_model_len=tokenized.max_model_len, tokens=ids)


class DetokenizeBody(LenientModel):
    """``POST /detokenize``: token ids back to text."""

    model: str = Field("", description="a model or route (default: the server's first)")
    tokens: list[Annotated[int, Field(ge=0, le=MAX_TOKEN_ID)]]


class DetokenizeResponse(LenientModel):
    """The text the tokens spell (special tokens kept)."""

    prompt: str
