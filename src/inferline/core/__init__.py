"""Pure-Python types shared by every layer: sampling parameters, outputs, errors, registry."""

from inferline.core.errors import (
    ContextLengthExceededError,
    EngineDeadError,
    InferlineError,
    InvalidParameterError,
    ModelLoadError,
    UnknownModelError,
)
from inferline.core.outputs import CompletionOutput, FinishReason, Logprob, RequestOutput
from inferline.core.registry import Registry
from inferline.core.sampling_params import Priority, SamplingParams

__all__ = [
    "CompletionOutput",
    "ContextLengthExceededError",
    "EngineDeadError",
    "FinishReason",
    "InferlineError",
    "InvalidParameterError",
    "Logprob",
    "ModelLoadError",
    "Priority",
    "Registry",
    "RequestOutput",
    "SamplingParams",
    "UnknownModelError",
]
