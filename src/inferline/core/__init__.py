"""Pure-Python types shared by every layer: sampling parameters, outputs, errors, registry."""

from inferline.core.errors import (
    ContextLengthExceededError,
    EngineDeadError,
    InferlineError,
    InvalidParameterError,
    ModelLoadError,
    OverloadedError,
    UnknownModelError,
)
from inferline.core.outputs import (
    CompletionOutput,
    FinishReason,
    Logprob,
    RequestMetrics,
    RequestOutput,
)
from inferline.core.protocols import GenerationRequest, Generator, GeneratorStats, HealthReport
from inferline.core.registry import Registry
from inferline.core.sampling_params import Priority, SamplingParams

__all__ = [
    "CompletionOutput",
    "ContextLengthExceededError",
    "EngineDeadError",
    "FinishReason",
    "GenerationRequest",
    "Generator",
    "GeneratorStats",
    "HealthReport",
    "InferlineError",
    "InvalidParameterError",
    "Logprob",
    "ModelLoadError",
    "OverloadedError",
    "Priority",
    "Registry",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "UnknownModelError",
]
