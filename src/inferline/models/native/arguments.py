"""Tensors as the C kernels' ctypes arguments: pointers, activation kinds, output forms,
new outputs (the conversions `NativeKernels` makes for every call)."""

from __future__ import annotations

import torch

from inferline.models.quant import Int8Rows, Int32Product

# activation kinds, as in cpu_kernels.c
_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.int32: 2, torch.int8: 3}

Activation = torch.Tensor | Int8Rows | Int32Product
MatmulInput = torch.Tensor | Int8Rows


def _p(tensor: torch.Tensor | None) -> int | None:
    if tensor is None:
        return None
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError("native kernels need contiguous CPU tensors")
    return tensor.data_ptr()


def _is_bf16(tensor: torch.Tensor) -> int:
    if tensor.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"native kernels take float32 or bfloat16, got {tensor.dtype}")
    return int(tensor.dtype == torch.bfloat16)


# float32 rows in the rotated basis (cpu_kernels.c KIND_F32_ROTATED); attention's output
# form: bit 0 bf16, 2 left in the cache's basis (kernels_common.h OUT_CACHE_BASIS)
_F32_ROTATED = 4
_OUT_CACHE_BASIS = 2


def _out_form(out: torch.Tensor, in_cache_basis: bool) -> int:
    return _is_bf16(out) | (_OUT_CACHE_BASIS if in_cache_basis else 0)


def _source(x: Activation | None) -> tuple[int | None, int, int | None, int | None]:
    """An input activation as (values, kind, row scales, column scales) arguments."""
    if x is None:
        return None, 0, None, None
    if isinstance(x, Int32Product):
        return _p(x.values), _KINDS[torch.int32], _p(x.row_scales), _p(x.col_scales)
    if isinstance(x, Int8Rows):
        raise ValueError("int8 rows are a matmul input, not a kernel input")
    return _p(x), _is_bf16(x), None, None


def _sink(rows: int, width: int, dtype: torch.dtype) -> tuple[MatmulInput, list[int | None]]:
    """A new output activation and its (values, kind, scales) arguments."""
    if dtype == torch.int8:
        out = Int8Rows(torch.empty(rows, width, dtype=torch.int8), torch.empty(rows, 1))
        return out, [_p(out.values), _KINDS[torch.int8], _p(out.scales)]
    values = torch.empty(rows, width, dtype=dtype)
    return values, [_p(values), _is_bf16(values), None]


def _rows(x: Activation) -> tuple[int, int]:
    values = x if isinstance(x, torch.Tensor) else x.values
    return values.shape[0], values.shape[1]
