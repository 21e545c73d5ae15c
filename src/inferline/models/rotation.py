"""The rotation of int8 rows: a Walsh-Hadamard transform of each block of 64 values.

W8A8 weights and their input rows (`inferline.models.quant`) and the int8 KV cache's rows
(`inferline.models.kv_layout`) are rotated before their per-row scale is taken, so one
outlier channel no longer sets a whole row's int8 step; H64 / 8 is orthonormal and its own
inverse, so products and attention are unchanged ((x H)(W H)^T = x W^T). The C kernels do
the same (``native/hadamard.h``), bit for bit.
"""

from __future__ import annotations

import torch

ROTATION_BLOCK = 64


def rotated(x: torch.Tensor) -> torch.Tensor:
    """Rows ``[M, n]`` times H64 / 8 in each block of 64 columns (a copy; ``x`` itself where
    ``n`` is not a multiple of 64), the same float32 additions
    in the same order as ``native/hadamard.h`` (butterflies of distance 1, 2, ... 32), so
    the C kernels and this path agree bit for bit."""
    rows, width = x.shape
    if width % ROTATION_BLOCK:
        return x
    y = x.float()
    distance = 1
    while distance < ROTATION_BLOCK:
        pairs = y.reshape(rows, -1, 2, distance)
        low, high = pairs[:, :, 0], pairs[:, :, 1]
        y = torch.stack((low + high, low - high), dim=2)
        distance *= 2
    return y.reshape(rows, width) * 0.125
