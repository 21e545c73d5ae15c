"""The LLM engine: paged KV cache, continuous batching, prefix sharing, chunked prefill."""

from inferline.engine.async_engine import AsyncEngine
from inferline.engine.block_pool import BlockPool
from inferline.engine.config import CacheConfig, EngineConfig, FrontendConfig, SchedulerConfig
from inferline.engine.llm import LLM
from inferline.engine.llm_engine import LLMEngine
from inferline.engine.request import Request, RequestStatus
from inferline.engine.scheduler import Scheduler
from inferline.engine.scheduler_output import ModelRunnerOutput, ScheduledRequest, SchedulerOutput
from inferline.engine.speculative import SpeculativeConfig

__all__ = [
    "LLM",
    "AsyncEngine",
    "BlockPool",
    "CacheConfig",
    "EngineConfig",
    "FrontendConfig",
    "LLMEngine",
    "ModelRunnerOutput",
    "Request",
    "RequestStatus",
    "ScheduledRequest",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerOutput",
    "SpeculativeConfig",
]
