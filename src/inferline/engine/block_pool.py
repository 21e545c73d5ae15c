"""Fixed-size KV blocks: free list, reference counts and the prefix-cache hash map.

A full block is identified by a hash chained over its parent block's hash and its own
token ids, so equal hashes mean "same tokens after the same prefix". A lookup hit is
confirmed by comparing the tokens, so a hash collision can never serve wrong K/V.

Free blocks wait in LRU order. A freed block keeps its cached contents (and stays findable
by hash) until it is reused; reuse takes the least recently freed block first, one holding
no cached contents before one that does. Requests free their blocks tail-first, so a
prompt's last blocks are evicted before its shared head.

The pool grows by need: a block never used yet is handed out only when no used block is
free. The KV cache tensor is allocated but not written (`engine.kv_cache`), so only blocks
that were used occupy resident memory, and that stays at the peak of what requests held at
once (plus what the prefix cache keeps within it), not the whole budget: a b32 run held
~760 of SmolLM2's 1456 default blocks at its peak, but walking the free queue in id order
made all 512 MiB resident.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(eq=False)
class Block:
    """One block of ``block_size`` token slots in the KV cache."""

    block_id: int
    ref_count: int = 0
    block_hash: int | None = None  # set once the block is full and registered
    token_ids: tuple[int, ...] = ()  # the tokens the hash covers (to confirm a hit)
    parent_hash: int | None = None


@dataclass
class PrefixCacheStats:
    """Prefix-cache counters, in tokens (as vLLM's ``prefix_cache_queries/hits``)."""

    num_queried_tokens: int = 0
    num_hit_tokens: int = 0


def hash_block(parent_hash: int | None, token_ids: Sequence[int]) -> int:
    """The chained hash of a full block (deterministic: ints and tuples hash stably)."""
    return hash((parent_hash, tuple(token_ids)))


class BlockPool:
    """Allocates, shares and frees KV blocks; keeps the prefix-cache map.

    Invariants: a block with ``ref_count > 0`` is never in a free queue; every block in
    ``_cached`` has a hash and the same block id under that hash; block ids are 0..N-1;
    blocks ``num_blocks - _num_unused`` .. N-1 have never been handed out.
    """

    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # freed blocks, least recently freed first: without cached contents, then with
        self._free_empty: OrderedDict[int, Block] = OrderedDict()
        self._free_cached: OrderedDict[int, Block] = OrderedDict()
        self._num_unused = num_blocks  # never handed out: not resident yet
        self._cached: dict[int, Block] = {}
        self.stats = PrefixCacheStats()

    @property
    def num_blocks(self) -> int:
        """Total blocks in the pool."""
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        """Blocks that can be allocated now (including evictable cached ones)."""
        return len(self._free_empty) + len(self._free_cached) + self._num_unused

    @property
    def num_used_blocks(self) -> int:
        """Blocks referenced by at least one request."""
        return len(self.blocks) - self.num_free_blocks

    @property
    def num_touched_blocks(self) -> int:
        """Blocks handed out at least once: the part of the KV cache that is resident."""
        return len(self.blocks) - self._num_unused

    def can_allocate(self, num_blocks: int) -> bool:
        """True when ``num_blocks`` new blocks are available."""
        return num_blocks <= self.num_free_blocks

    def allocate(self, num_blocks: int) -> list[int]:
        """Takes ``num_blocks`` free blocks: freed ones first (those without cached contents,
        then evicting the least recently freed cached ones), never-used ones last."""
        if not self.can_allocate(num_blocks):
            raise RuntimeError(f"asked for {num_blocks} blocks, {self.num_free_blocks} free")
        ids = []
        for _ in range(num_blocks):
            if self._free_empty:
                _, block = self._free_empty.popitem(last=False)
            elif self._free_cached:
                _, block = self._free_cached.popitem(last=False)
                self._evict(block)
            else:
                block = self.blocks[len(self.blocks) - self._num_unused]
                self._num_unused -= 1
            block.ref_count = 1
            ids.append(block.block_id)
        # which blocks is decided above; in ascending order, a prompt's blocks read as one
        # forward stream (freed tail-first, they would come back in descending order)
        ids.sort()
        return ids

    def touch(self, block_ids: Sequence[int]) -> None:
        """Adds one reference to each block (sharing), taking free ones off the free queue.

        Only blocks handed out before can be shared (a cached or referenced block)."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                queue = self._free_empty if block.block_hash is None else self._free_cached
                del queue[block_id]
            block.ref_count += 1

    def free(self, block_ids: Sequence[int]) -> None:
        """Drops one reference from each block, in the order given (callers pass tail first)."""
        for block_id in block_ids:
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise RuntimeError(f"block {block_id} freed more often than allocated")
            block.ref_count -= 1
            if block.ref_count == 0:
                queue = self._free_empty if block.block_hash is None else self._free_cached
                queue[block_id] = block

    def find_cached_prefix(self, token_ids: Sequence[int]) -> list[int]:
        """Ids of the longest run of cached full blocks matching ``token_ids``' start.

        The block holding the last token is never a hit: that token must be computed to
        produce logits, and a shared block is never written. Counts queried and hit tokens.
        Does not take references: call `touch` on the result to keep the blocks.
        """
        if not self.enable_caching:
            return []
        hits: list[int] = []
        parent: int | None = None
        max_blocks = (len(token_ids) - 1) // self.block_size
        for start in range(0, max_blocks * self.block_size, self.block_size):
            tokens = tuple(token_ids[start : start + self.block_size])
            block = self._cached.get(hash_block(parent, tokens))
            if block is None or block.token_ids != tokens or block.parent_hash != parent:
                break
            hits.append(block.block_id)
            parent = block.block_hash
        self.stats.num_queried_tokens += len(token_ids)
        self.stats.num_hit_tokens += len(hits) * self.block_size
        return hits

    def cache_full_blocks(
        self,
        token_ids: Sequence[int],
        num_computed_tokens: int,
        block_ids: Sequence[int],
        block_hashes: list[int],
    ) -> None:
        """Registers every full, computed block after the ``len(block_hashes)`` known ones.

        The first ``num_computed_tokens`` of ``token_ids`` have their K/V in the cache;
        ``block_hashes`` (the request's chain so far) is extended in place.
        """
        if not self.enable_caching:
            return
        num_full = num_computed_tokens // self.block_size
        for index in range(len(block_hashes), num_full):
            tokens = tuple(token_ids[index * self.block_size : (index + 1) * self.block_size])
            parent = block_hashes[-1] if block_hashes else None
            block_hash = hash_block(parent, tokens)
            block_hashes.append(block_hash)
            block = self.blocks[block_ids[index]]
            if block.block_hash is None and block_hash not in self._cached:
                block.block_hash, block.token_ids, block.parent_hash = block_hash, tokens, parent
                self._cached[block_hash] = block

    def _evict(self, block: Block) -> None:
        if block.block_hash is not None:
            self._cached.pop(block.block_hash, None)
            block.block_hash, block.token_ids, block.parent_hash = None, (), None
