"""inferline: an inference runtime with its own LLM engine.

The root package stays light: `LLM` is imported lazily so that `import inferline.core`
(or, later, `inferline.server`) never pulls in torch.
"""

from typing import TYPE_CHECKING, Any

from inferline.core.outputs import CompletionOutput, RequestOutput
from inferline.core.sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "CompletionOutput", "RequestOutput", "SamplingParams", "__version__"]

if TYPE_CHECKING:
    from inferline.engine.llm import LLM


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from inferline.engine.llm import LLM

        return LLM
    raise AttributeError(f"module 'inferline' has no attribute {name!r}")
