"""What a prompt version is: messages (templates), where it runs, how it samples.

The same shape arrives as ``POST /v1/prompts`` and as a YAML file (`inferline prompts push`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

PromptId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Label = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
SAMPLING_KEYS = (
    "temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty",
    "frequency_penalty", "top_k", "min_p", "repetition_penalty",
)  # fmt: skip


class TemplateMessage(BaseModel):
    """One message; ``content`` is a Jinja template over the prompt's variables."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class PromptSpec(BaseModel):
    """One version of a prompt (``labels``: move these labels to it once written)."""

    model_config = ConfigDict(extra="forbid")
    id: PromptId
    messages: Annotated[list[TemplateMessage], Field(min_length=1)]
    route: Annotated[str, Field(min_length=1)] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    defaults: dict[str, Any] = Field(default_factory=dict)  # variables not every caller sets
    checks: list[dict[str, Any]] | None = None  # the route's check entries, for this version
    message: str | None = None  # what changed (not part of the version's identity)
    labels: list[Label] = Field(default_factory=list)

    def body(self) -> dict[str, Any]:
        """What the version is: everything but its id, message and labels."""
        return self.model_dump(exclude={"id", "message", "labels"}, exclude_none=True)
