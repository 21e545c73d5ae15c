"""Anthropic's Messages API as data, with no transport: request bodies mapped to OpenAI
chat requests (so they are served by the same path), and outputs back to message objects
and stream events.

Pure (pydantic only), beside `inferline.openai`, whose chat request it maps to.
"""

from inferline.anthropic.requests import chat_messages, chat_request, chat_tools
from inferline.anthropic.responses import message, new_message_id, stop_reason, usage
from inferline.anthropic.schemas import CountTokensRequest, MessagesRequest
from inferline.anthropic.stream import MessageChunker

__all__ = [
    "CountTokensRequest",
    "MessageChunker",
    "MessagesRequest",
    "chat_messages",
    "chat_request",
    "chat_tools",
    "message",
    "new_message_id",
    "stop_reason",
    "usage",
]
