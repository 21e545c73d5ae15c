"""A faster LM head that keeps each row's best candidates exact.

The vocabulary projection is the largest single read of a decode step (SmolLM2: 113 MB of
fp32 per token; a full fp32 GEMM costs 10 ms at one row, 24 ms at 32 rows on 2 cores).
`ApproximateThenExactHead` first scores every token with quantized weights, then
recomputes exact fp32 logits for the ``num_exact`` best candidates of each row. Greedy
choices, top-k/top-p candidates and returned logprob alternatives come from exact logits;
only far-tail logits (whose probabilities are tiny) keep the approximation: 4-bit
weights up to a number of rows, int8 W8A8 above. With the native kernels the 4-bit pass is
ours (`Q4Weight`, up to the model's measured crossover: on the 2026-12-03 AMX Xeon 0.48 /
0.75 / 2.6 ms at 1 / 8 / 32 rows against W8A8's 3.3 / 3.6 / 5.4), else torch's int4 up to
`INT4_MAX_ROWS` rows (0.83 ms at one row, 10.3 at 32).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from inferline.models.block_rows import BlockRows
from inferline.models.native import NativeKernels, Q4Weight
from inferline.models.quant import (
    W8A8Weight,
    int4_matmul,
    int8_linear,
    quantize_in_chunks,
    quantize_int4,
    quantize_int8,
)
from inferline.models.row_choice import kernel_rows

INT4_MAX_ROWS = 8  # measured crossover: int4 3.0 ms vs W8A8 2.9 ms at 8 rows


class ApproximateThenExactHead:
    """Quantized scores for the whole vocabulary, exact fp32 for each row's top candidates."""

    def __init__(
        self,
        weight: torch.Tensor,
        num_exact: int = 64,
        q4: NativeKernels | None = None,
        q4_max_rows: int = 0,
    ) -> None:
        """``q4``: score with our 4-bit kernel up to ``q4_max_rows`` rows (torch's int4 up
        to `INT4_MAX_ROWS` without it)."""
        self.kernels = q4  # also picks the candidates (`NativeKernels.row_topk`)
        self.int4 = q4.pack_q4(weight) if q4 is not None else quantize_int4(weight)
        self.int4_max_rows = q4_max_rows if q4 is not None else INT4_MAX_ROWS
        int8 = quantize_int8(weight)
        self.int8: W8A8Weight = q4.pack_int8(int8) if q4 is not None else int8
        self.weight = weight  # fp32 [vocab, hidden], shared with the embeddings when tied
        self.table: BlockRows | None = None  # the exact rows' blocks (`from_table`)
        self.num_exact = min(num_exact, weight.shape[0])
        # ids [M, K] -> exact fp32 rows [M, K, hidden]
        self.exact_rows: Callable[[torch.Tensor], torch.Tensor] = self.weight.__getitem__

    @classmethod
    def from_table(
        cls,
        table: BlockRows,
        num_exact: int = 64,
        q4: NativeKernels | None = None,
        q4_max_rows: int = 0,
    ) -> ApproximateThenExactHead:
        """The head of a compact table (a GGUF file's blocks): quantized a few thousand
        float rows at a time (the same values as from the whole float weight, which never
        exists: Qwen2.5-0.5B's is 544 MB), exact rows decoded from ``table``."""
        head = cls.__new__(cls)
        head.kernels = q4
        head.int4, head.int8 = quantize_in_chunks(table.rows, table.shape[0], q4=q4)
        head.int4_max_rows = q4_max_rows if q4 is not None else INT4_MAX_ROWS
        head.weight = torch.empty(0)
        head.table = table
        head.num_exact = min(num_exact, table.shape[0])
        head.exact_rows = table.rows
        return head

    def approximate(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized logits ``[M, vocab]`` float32; the kernel is chosen by ``M``, or in a
        step with speculative drafts by the rows the step has without them (`row_choice`),
        as the layers choose theirs: the 4-bit pass reads the weights once for all rows."""
        if kernel_rows(x.shape[0]) <= self.int4_max_rows:
            if isinstance(self.int4, Q4Weight):
                return self.int4.matmul(x)
            return int4_matmul(x.to(torch.bfloat16), self.int4).float()
        return int8_linear(x, self.int8)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, hidden]`` float32 -> logits ``[M, vocab]`` float32."""
        logits = self.approximate(x)
        if self.kernels is not None:  # 32 rows of 49,152: 0.32 ms against topk's 1.3
            candidates = self.kernels.row_topk(logits, self.num_exact)  # [M, K]
        else:
            candidates = logits.topk(self.num_exact, dim=-1).indices
        if self.kernels is not None:  # the dot products without gathering the rows
            table = self.table if self.table is not None else self.weight
            self.kernels.rescore_candidates(logits, candidates, table, x)
            return logits
        rows = self.exact_rows(candidates)  # [M, K, hidden]
        exact = torch.bmm(rows, x.unsqueeze(-1)).squeeze(-1)  # [M, K]
        return logits.scatter_(1, candidates, exact)
