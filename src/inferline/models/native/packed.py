"""Weights packed for the native kernels: `Q4Weight` (our 4-bit format) and
`PackedInt8Weight` (int8 panels for ``i8_gemm.c``), each holding the kernels that multiply
by it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from inferline.models.quant import Int8Rows, Int32Product

if TYPE_CHECKING:
    from inferline.models.native import NativeKernels


@dataclass
class Q4Weight:
    """A weight in our own 4-bit format (`NativeKernels.pack_q4`), with the kernels that
    multiply by it."""

    packed: torch.Tensor  # uint8, q4_packed_bytes(out, in) bytes
    out_features: int
    in_features: int
    kernels: NativeKernels

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, in]`` float32 or bf16 -> ``[M, out]`` float32 (`NativeKernels.q4_matmul`)."""
        return self.kernels.q4_matmul(x.contiguous(), self)


@dataclass
class PackedInt8Weight:
    """An int8 weight packed for ``i8_gemm.c`` (`NativeKernels.pack_int8`): the
    `quant.W8A8Weight` the native forward multiplies by, the one copy of the weight kept."""

    packed: torch.Tensor  # int8, i8_packed_bytes(out, in) bytes
    comp: torch.Tensor  # int32 per column (padded to 64): -128 * the column's sum
    scale: torch.Tensor  # float32 [out]
    out_features: int
    in_features: int
    kernels: NativeKernels

    def matmul(self, x: Int8Rows) -> Int32Product:
        """The exact int32 products of int8 rows ``[M, in]`` (`NativeKernels.i8_matmul`)."""
        return self.kernels.i8_matmul(x, self)

    def scaled(self, x: Int8Rows, dtype: torch.dtype) -> torch.Tensor:
        """The products of int8 rows dequantized as ``dtype`` (`NativeKernels.i8_matmul_scaled`)."""
        return self.kernels.i8_matmul_scaled(x, self, dtype)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """Float rows ``[M, in]`` -> ``x W^T`` float32 (`NativeKernels.i8_linear`)."""
        return self.kernels.i8_linear(x, self)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors a product reads."""
        return self.packed, self.comp

    @classmethod
    def concatenated(cls, parts: list[PackedInt8Weight]) -> PackedInt8Weight:
        """One weight of parts along the outputs, each but the last a whole number of
        64-column panels (the packing is per panel)."""
        if any(part.out_features % 64 for part in parts[:-1]):
            raise ValueError("only the last part may end in a partial panel")
        first = parts[0]
        return cls(
            torch.cat([part.packed for part in parts]),
            torch.cat([part.comp for part in parts]),
            torch.cat([part.scale for part in parts]),
            sum(part.out_features for part in parts),
            first.in_features,
            first.kernels,
        )
