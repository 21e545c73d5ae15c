"""Request bodies of Anthropic's Messages API (pydantic; unknown fields ignored).

Content blocks are one lenient model (``type`` plus the fields of each kind) rather than a
closed union, so a block we do not serve (an image, a document) reaches the mapping, which
answers a 400 that names it (``messages[0].content[1].type``) instead of a pydantic error
listing every union member.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class LenientModel(BaseModel):
    """Fields Anthropic accepts but we do not use (``cache_control``, ``service_tier``,
    ``citations``) are ignored, not rejected."""

    model_config = ConfigDict(extra="ignore")


class ContentBlock(LenientModel):
    """One block of a message's content: ``text``; ``tool_use`` (an assistant's call:
    ``id``, ``name``, ``input``); ``tool_result`` (a user's answer to a call:
    ``tool_use_id``, ``content`` as a string or text blocks, ``is_error``). Other types
    are refused by the mapping."""

    type: Annotated[str, Field(min_length=1)]
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[ContentBlock] | None = None
    is_error: bool = False


class InputMessage(LenientModel):
    """One turn: its role and its content (a string or content blocks)."""

    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]


class Tool(LenientModel):
    """A client tool: its name, description and the JSON Schema of its ``input``. Anthropic's
    server tools (``web_search_*``, ``bash_*``...) have a ``type`` and are refused."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    type: str | None = None


class ToolChoice(LenientModel):
    """``auto`` (the model decides), ``any`` (some tool must be called), ``tool`` (the one
    ``name``d must be), ``none``; ``disable_parallel_tool_use``: at most one call."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(LenientModel):
    """``metadata``: ``user_id`` becomes the request's user (traces, sticky routing)."""

    user_id: Annotated[str, Field(max_length=256)] | None = None


class OutputFormat(LenientModel):
    """``output_config.format``: the answer is JSON that follows ``schema``."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(LenientModel):
    """``output_config``: ``format`` (structured output) is honoured; ``effort`` is
    accepted and ignored (our models have no effort setting)."""

    format: OutputFormat | None = None
    effort: str | None = None


class CountTokensRequest(LenientModel):
    """``POST /v1/messages/count_tokens``: what a message request would send as input."""

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[InputMessage], Field(min_length=1)]
    system: str | list[ContentBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None  # accepted and ignored, as in MessagesRequest


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``. ``max_tokens`` is required (as Anthropic requires it);
    ``temperature`` is 0..1 (Anthropic's range, passed on as is; the SDK no longer has the
    sampling fields, older clients and ``extra_body`` still send them). ``thinking`` is
    accepted and ignored: our models answer without separate reasoning blocks."""

    max_tokens: Annotated[int, Field(ge=1)]
    stop_sequences: list[Annotated[str, Field(min_length=1)]] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    stream: bool = False
