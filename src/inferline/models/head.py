"""A faster LM head for decode-sized batches that keeps the best candidates exact.

The vocabulary projection is the largest single read at batch 1 (SmolLM2: 113 MB of fp32
per token). For a few rows, `ApproximateThenExactHead` first scores every token with int8
weights (torch's weight-only kernel, bf16 output), then recomputes exact fp32 logits for
the ``num_exact`` best candidates of each row. Greedy choices, top-k/top-p candidates and
returned logprob alternatives come from exact logits; only far-tail logits (whose
probabilities are tiny) keep the int8 approximation.
"""

from __future__ import annotations

import torch

from inferline.models.quant import quantize_int8


class ApproximateThenExactHead:
    """int8 scores for the whole vocabulary, exact fp32 for each row's top candidates."""

    def __init__(self, weight: torch.Tensor, num_exact: int = 64, max_rows: int = 8) -> None:
        int8 = quantize_int8(weight)
        self.w8 = int8.w8_t.t().contiguous()  # [vocab, hidden]: the weight-only kernel's layout
        self.scale = int8.scale.to(torch.bfloat16)
        self.weight = weight  # fp32 [vocab, hidden], shared with the embeddings when tied
        self.num_exact = num_exact
        self.max_rows = max_rows

    def handles(self, num_rows: int) -> bool:
        """Beyond ``max_rows`` one fp32 GEMM is faster than the two passes."""
        return num_rows <= self.max_rows

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, hidden]`` float32 -> logits ``[M, vocab]`` float32."""
        approx = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), self.w8, self.scale)
        logits = approx.float()
        candidates = logits.topk(self.num_exact, dim=-1).indices  # [M, K]
        rows = self.weight[candidates]  # [M, K, hidden]
        exact = torch.bmm(rows, x.unsqueeze(-1)).squeeze(-1)  # [M, K]
        return logits.scatter_(1, candidates, exact)
