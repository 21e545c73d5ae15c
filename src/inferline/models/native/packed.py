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

    def gate_up_silu(self, x: Int8Rows) -> Int8Rows | None:
        """This weight as gate/up (gate the first half of the outputs, up the second): the
        down projection's int8 rows of ``silu(gate) * up`` for int8 rows ``[M, in]``, bit
        for bit `NativeKernels.silu_mul` of `matmul`'s products without storing them
        (``i8_gemm.c``'s ``i8_gate_up_silu``, which the layer stack runs); None where that
        kernel does not run (no AMX, fewer rows than it takes, shapes not multiples of 64)."""
        from inferline.models.native.arguments import _p  # (the package imports this module)

        if self.out_features % 2 or x.values.shape[1] != self.in_features:
            raise ValueError(f"gate_up_silu: {x.values.shape[1]} inputs for {self.in_features}")
        rows, inter = x.values.shape[0], self.out_features // 2
        rotated, tops = torch.empty(rows, inter), torch.empty(rows, max(inter // 64, 1))
        lib = self.kernels.lib
        args = (x.values, self.packed, x.scales, self.scale, rotated, tops)
        if lib.i8_gate_up_silu(rows, inter, self.in_features, *map(_p, args)) != 0:
            return None
        values, scales = torch.empty(rows, inter, dtype=torch.int8), torch.empty(rows, 1)
        lib.quantize_rotated_rows(rows, inter, *map(_p, (rotated, tops, values, scales)))
        return Int8Rows(values, scales)

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
