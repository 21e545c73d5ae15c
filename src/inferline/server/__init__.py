"""The OpenAI-compatible HTTP server; it receives a `core.Generator`, never builds one."""

from inferline.server.app import create_app
from inferline.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
