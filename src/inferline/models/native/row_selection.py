"""Per-row selections over logits on the C kernels (`row_select.c`): each row's top
candidates, its argmax, and the exact logits of its candidates (the LM head's steps)."""

from __future__ import annotations

import ctypes

import torch

from inferline.models.block_rows import BlockRows
from inferline.models.native.arguments import _p


class RowSelection:
    """`NativeKernels`' row selections (``lib``: the loaded library)."""

    lib: ctypes.CDLL

    def row_topk(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The indices ``[M, k]`` int64 of each row's ``k`` largest values of float32 ``x
        [M, N]``, in no set order (``x.topk(k).indices`` up to order and ties; NaN ranks
        lowest)."""
        if x.dtype != torch.float32 or x.dim() != 2 or not 0 < k <= x.shape[1]:
            raise ValueError(
                f"row_topk: float32 [M, N] and 0 < k <= N, got {x.dtype} {x.shape}, {k}"
            )
        x = x.contiguous()
        out = torch.empty(x.shape[0], k, dtype=torch.int64)
        if self.lib.row_topk(x.shape[0], x.shape[1], k, _p(x), _p(out)) != 0:
            raise MemoryError("row_topk: no memory for its buffers")
        return out

    def row_argmax(self, x: torch.Tensor) -> torch.Tensor:
        """``x.argmax(-1)`` of float32 ``x [M, N]`` (first index of the largest value, or
        of the first NaN): 64 x 49,152 logits in ~0.3 ms against torch's 2 ms (max) / 2.2
        (argmax)."""
        if x.dtype != torch.float32 or x.dim() != 2 or x.shape[1] == 0:
            raise ValueError(f"row_argmax: float32 [M, N > 0], got {x.dtype} {tuple(x.shape)}")
        x = x.contiguous()
        out = torch.empty(x.shape[0], dtype=torch.int64)
        self.lib.row_argmax(x.shape[0], x.shape[1], _p(x), _p(out))
        return out

    def rescore_candidates(
        self, logits: torch.Tensor, ids: torch.Tensor, table: torch.Tensor | BlockRows,
        x: torch.Tensor,
    ) -> None:  # fmt: skip
        """Sets ``logits [M, N]``'s entries ``ids [M, K]`` (int64, within N) to the float32
        dot products of ``table``'s rows ``ids`` (float32 ``[N, H]``, or `BlockRows` decoded
        as its ``rows`` decodes them) with float32 ``x [M, H]``: the head's exact logits
        without gathering the rows (32 x 64 of SmolLM2's: ~0.1 ms against ~0.8 for decoding,
        gathering and bmm)."""
        if logits.dtype != torch.float32 or not logits.is_contiguous():
            raise ValueError("rescore_candidates: contiguous float32 logits")
        x, ids = x.float().contiguous(), ids.to(torch.int64).contiguous()
        rows_n, cols = table.shape
        if not (logits.shape == (x.shape[0], rows_n) and ids.shape[0] == x.shape[0]):
            raise ValueError(
                f"rescore_candidates: logits {tuple(logits.shape)}, ids "
                f"{tuple(ids.shape)}, x {tuple(x.shape)}, table {rows_n} rows"
            )
        if x.shape[1] != cols or (
            ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < rows_n
        ):
            raise ValueError("rescore_candidates: x's width or an id does not fit the table")
        rows: tuple[int | None, int | None, int | None, int | None, int]
        if isinstance(table, BlockRows):
            parts = (table.codes, table.scale, *([] if table.offset is None else [table.offset]))
            if not all(part.is_contiguous() for part in parts):
                raise ValueError("rescore_candidates: contiguous blocks only")
            offset = None if table.offset is None else _p(table.offset)
            rows = (None, _p(table.codes), _p(table.scale), offset, table.group)
        elif table.dtype == torch.float32 and table.is_contiguous():
            rows = (_p(table), None, None, None, 0)
        else:
            raise ValueError("rescore_candidates: a contiguous float32 table or BlockRows")
        self.lib.rescore_candidates(
            ids.shape[0], ids.shape[1], logits.shape[1], x.shape[1], *rows, _p(x), _p(ids),
            _p(logits),
        )  # fmt: skip
