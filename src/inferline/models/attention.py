"""Paged attention in plain PyTorch: K/V live in slots of a shared cache, read by block table.

The engine flattens every scheduled token of every request into one batch of ``T`` tokens.
For attention, tokens are regrouped per request into padded ``[G, Q]`` query tiles, and each
request's keys are gathered from the cache slots listed by its block table. Requests are
split into at most two groups (single-token decodes, and multi-token prefill chunks), so a
long prefill chunk does not pad every decode in the batch to its length.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from inferline.models.kv_layout import read_rows, write_rows


@dataclass
class AttentionGroup:
    """Requests whose queries are padded to one tile shape ``[G, Q]``.

    Attributes:
        query_token_index: ``[G, Q]`` index into the flat token batch (padding -> any valid
            index; masked out).
        key_slots: ``[G, K]`` cache slot of each key position 0..K-1 (padding -> slot 0).
        mask: ``[G, 1, Q, K]`` True where query i of request g may attend to key j (causal,
            within the request's context).
        token_index: ``[N]`` flat token indices this group produces output for.
        tile_index: ``[N]`` matching positions in the flattened ``[G * Q]`` tile.
    """

    query_token_index: torch.Tensor
    key_slots: torch.Tensor
    mask: torch.Tensor
    token_index: torch.Tensor
    tile_index: torch.Tensor


@dataclass
class DecodeBatch:
    """Single-token queries for the native decode kernel, which reads the paged cache itself.

    Attributes:
        token_rows: ``[S]`` int64 flat token index of each sequence's query.
        block_tables: ``[S, max_blocks]`` int32 cache blocks of each sequence (padded with 0).
        context_lens: ``[S]`` int32 keys each query attends to (its position + 1).
        block_size: slots per cache block.
    """

    token_rows: torch.Tensor
    block_tables: torch.Tensor
    context_lens: torch.Tensor
    block_size: int


@dataclass
class PrefillBatch:
    """Multi-token chunks for the native prefill kernel, which reads the paged cache itself.

    Attributes:
        chunks: ``[C, 3]`` int64: each chunk's first flat token index, the position of its
            first token, its token count.
        block_tables: ``[C, max_blocks]`` int32 cache blocks of each chunk's request.
        block_size: slots per cache block.
    """

    chunks: torch.Tensor
    block_tables: torch.Tensor
    block_size: int


@dataclass
class AttentionMetadata:
    """Per-step attention inputs shared by all layers.

    Attributes:
        slot_mapping: ``[T]`` cache slot each new token's K/V is written to.
        groups: `AttentionGroup`s (at most two) for torch's SDPA: what the native
            kernels do not compute.
        decode: single-token queries left to the native decode kernel.
        prefill: multi-token chunks left to the native prefill kernel (only where it
            handles the model's head layout). ``groups``, ``decode`` and ``prefill``
            together cover all ``T`` tokens exactly once.
    """

    slot_mapping: torch.Tensor
    groups: list[AttentionGroup]
    decode: DecodeBatch | None = None
    prefill: PrefillBatch | None = None


def paged_attention(
    query: torch.Tensor,  # [T, num_heads, head_dim]
    key: torch.Tensor,  # [T, num_kv_heads, head_dim]
    value: torch.Tensor,  # [T, num_kv_heads, head_dim]
    kv_cache: torch.Tensor,  # [2, num_slots, num_kv_heads, width] (kv_layout)
    metadata: AttentionMetadata,
) -> torch.Tensor:
    """Writes this step's K/V into the cache, then attends over each request's context.

    Returns ``[T, num_heads * head_dim]``.
    """
    write_rows(kv_cache[0], metadata.slot_mapping, key)
    write_rows(kv_cache[1], metadata.slot_mapping, value)
    num_tokens, num_heads, head_dim = query.shape
    out = query.new_empty(num_tokens, num_heads * head_dim)
    attend_groups(query, kv_cache, metadata.groups, out)
    return out


def attend_groups(
    query: torch.Tensor,  # [T, num_heads, head_dim]
    kv_cache: torch.Tensor,  # [2, num_slots, num_kv_heads, width] with this step's K/V
    groups: list[AttentionGroup],
    out: torch.Tensor,  # [T, num_heads * head_dim]: the groups' rows are filled here
) -> None:
    """Gathers each group's keys by slot and runs one SDPA call per group."""
    num_heads, head_dim = query.shape[1:]
    for group in groups:
        q = query[group.query_token_index].transpose(1, 2)  # [G, H, Q, D]
        k = read_rows(kv_cache[0], group.key_slots, query.dtype).transpose(1, 2)  # [G, KVH, K, D]
        v = read_rows(kv_cache[1], group.key_slots, query.dtype).transpose(1, 2)  # [G, KVH, K, D]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=group.mask, enable_gqa=True)
        tile = o.transpose(1, 2).reshape(-1, num_heads * head_dim)  # [G * Q, H * D]
        tile = tile.index_select(0, group.tile_index)
        out.index_copy_(0, group.token_index, tile.to(out.dtype))
