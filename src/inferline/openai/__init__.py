"""The OpenAI API as data, with no transport: request bodies and their mapping to
`GenerationRequest`s, and outputs back to response bodies and stream chunks.

Pure (pydantic only), so the server, the batch jobs, the upstream client and the evals
share one mapping.
"""

from inferline.openai.requests import (
    CallerContext,
    ChatGeneration,
    chat_generation,
    completion_generations,
)
from inferline.openai.responses import (
    ChatChunker,
    CompletionChunker,
    chat_completion,
    sse,
    text_completion,
    usage,
)
from inferline.openai.schemas import ChatCompletionRequest, CompletionRequest

__all__ = [
    "CallerContext",
    "ChatChunker",
    "ChatCompletionRequest",
    "ChatGeneration",
    "CompletionChunker",
    "CompletionRequest",
    "chat_completion",
    "chat_generation",
    "completion_generations",
    "sse",
    "text_completion",
    "usage",
]
