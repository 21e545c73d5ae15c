"""PyTorch modules saved as TorchScript (``torch.jit.save``) or exported programs
(``torch.export.save``, ``.pt2``): a float tensor ``[rows, features]`` in, ``[rows]`` or
``[rows, k]`` out.

What the output means is declared in the config: ``values`` (returned as is), ``logits``
(softmax -> class probabilities) or ``probabilities``. An exported program knows its input
width; for TorchScript ``num_features`` must be given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from inferline.core.errors import ModelLoadError
from inferline.predictors.tabular import TabularOutput, TabularPredictor

OutputKind = Literal["values", "logits", "probabilities"]


class TorchModulePredictor(TabularPredictor):
    """A TorchScript module or an exported program, run in inference mode."""

    def __init__(
        self,
        name: str,
        path: Path,
        *,
        num_features: int | None = None,
        outputs: OutputKind = "values",
        feature_names: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if outputs not in ("values", "logits", "probabilities"):
            raise ModelLoadError(f"{name}: outputs must be values, logits or probabilities")
        self.outputs = outputs
        self.module, exported_width = _load(name, path)
        width = num_features or exported_width or (len(feature_names) if feature_names else None)
        if width is None:
            raise ModelLoadError(f"{name}: a TorchScript model needs num_features in the config")
        super().__init__(name, width, feature_names, class_names)

    @torch.inference_mode()
    def infer(self, features: np.ndarray) -> TabularOutput:
        """Calls the module on the whole batch."""
        result = self.module(torch.from_numpy(features))
        if not isinstance(result, torch.Tensor) or result.shape[0] != len(features):
            raise RuntimeError(
                f"{self.name}: the module must return a tensor with one row per input"
            )
        values = result.float()
        if self.outputs == "values":
            array = values.numpy()
            return TabularOutput(array[:, 0] if array.ndim == 2 and array.shape[1] == 1 else array)
        probabilities = values.softmax(dim=-1) if self.outputs == "logits" else values
        return TabularOutput(probabilities.argmax(dim=-1).numpy(), probabilities.numpy())

    def describe(self) -> dict[str, Any]:
        """The tabular schemas plus the runtime."""
        return {**super().describe(), "runtime": "torch", "outputs": self.outputs}


def _load(name: str, path: Path) -> tuple[Any, int | None]:
    if not path.is_file():
        raise ModelLoadError(f"{name}: no file at {path}")
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as error:  # torch raises several kinds for bad archives
            raise ModelLoadError(f"{name}: cannot load the exported program: {error}") from error
        width = None
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and "val" in n.meta]
        user_inputs = program.graph_signature.user_inputs
        for node in placeholders:
            if node.name in user_inputs and len(node.meta["val"].shape) == 2:
                dim = node.meta["val"].shape[1]
                width = int(dim) if isinstance(dim, int) else None
        return program.module(), width
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise ModelLoadError(f"{name}: cannot load the TorchScript module: {error}") from error
    module.eval()
    return module, None
