"""The prompt registry: versioned, labelled prompt templates a request names by id."""

from inferline.prompts.registry import DEFAULT_LABEL, PromptRegistry, ResolvedPrompt
from inferline.prompts.spec import PromptSpec

__all__ = ["DEFAULT_LABEL", "PromptRegistry", "PromptSpec", "ResolvedPrompt"]
