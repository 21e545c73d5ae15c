"""BlockPool: exact block ids, ref counts, LRU eviction of cached blocks."""

import pytest

from inferline.engine.block_pool import BlockPool, hash_block


def make_pool(num_blocks: int = 8, block_size: int = 4) -> BlockPool:
    return BlockPool(num_blocks, block_size, enable_caching=True)


def test_allocate_reuses_freed_blocks_before_new_ones() -> None:
    pool = make_pool()
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.num_free_blocks == 5 and pool.num_touched_blocks == 3
    pool.free([2, 1, 0])  # tail first, as requests free
    assert pool.allocate(2) == [1, 2]  # least recently freed first, in ascending order
    assert pool.allocate(2) == [0, 3]  # then a new one
    assert pool.num_touched_blocks == 4  # the resident part grows only by need
    assert pool.allocate(4) == [4, 5, 6, 7]
    assert pool.num_free_blocks == 0 and pool.num_touched_blocks == 8


def test_blocks_without_cached_contents_are_reused_first() -> None:
    pool = make_pool(num_blocks=4)
    cached, plain = pool.allocate(1), pool.allocate(1)
    pool.cache_full_blocks([1, 2, 3, 4], 4, cached, [])
    pool.free(cached + plain)
    assert pool.allocate(1) == plain
    assert pool.find_cached_prefix([1, 2, 3, 4, 5]) == cached
    assert pool.allocate(1) == cached  # evicted before a never-used block is touched
    assert pool.find_cached_prefix([1, 2, 3, 4, 5]) == []
    assert pool.num_touched_blocks == 2


def test_ref_counts_share_and_release() -> None:
    pool = make_pool()
    ids = pool.allocate(2)
    pool.touch(ids)
    assert [pool.blocks[i].ref_count for i in ids] == [2, 2]
    pool.free(ids)
    assert pool.num_free_blocks == 6  # still held once
    pool.free(ids)
    assert pool.num_free_blocks == 8
    with pytest.raises(RuntimeError):
        pool.free([ids[0]])


def test_allocate_more_than_free_is_an_error() -> None:
    pool = make_pool(num_blocks=2)
    assert not pool.can_allocate(3)
    with pytest.raises(RuntimeError):
        pool.allocate(3)


def test_full_blocks_are_found_by_chained_hash_but_not_the_last_token_block() -> None:
    pool = make_pool()
    tokens = list(range(10))  # blocks [0..3], [4..7], partial [8, 9]
    ids = pool.allocate(3)
    hashes: list[int] = []
    pool.cache_full_blocks(tokens, 10, ids, hashes)
    assert hashes == [hash_block(None, (0, 1, 2, 3)), hash_block(hashes[0], (4, 5, 6, 7))]
    assert pool.find_cached_prefix(tokens) == [0, 1]
    assert pool.find_cached_prefix(list(range(8))) == [0]  # block 1 holds the last token
    assert pool.find_cached_prefix([0, 1, 2, 3, 9, 9, 9, 9, 9]) == [0]
    assert pool.find_cached_prefix([7, 1, 2, 3, 4, 5, 6, 7, 8]) == []
    assert pool.stats.num_queried_tokens == 10 + 8 + 9 + 9
    assert pool.stats.num_hit_tokens == 8 + 4 + 4


def test_only_computed_blocks_are_cached() -> None:
    pool = make_pool()
    ids = pool.allocate(2)
    hashes: list[int] = []
    pool.cache_full_blocks(list(range(8)), 5, ids, hashes)  # K/V exist for 5 tokens only
    assert len(hashes) == 1
    assert pool.find_cached_prefix(list(range(9))) == [0]


def test_freed_cached_blocks_stay_findable_until_reused_lru() -> None:
    pool = make_pool(num_blocks=4)
    a = pool.allocate(2)
    pool.cache_full_blocks(list(range(8)), 8, a, [])
    pool.free(list(reversed(a)))  # cached free queue: 1, 0
    assert pool.find_cached_prefix(list(range(9))) == [0, 1]
    assert pool.allocate(1) == [1]  # evicts the tail block of the prefix first
    assert pool.find_cached_prefix(list(range(9))) == [0]
    assert pool.blocks[1].block_hash is None


def test_touching_a_free_cached_block_takes_it_off_the_free_queue() -> None:
    pool = make_pool(num_blocks=3)
    a = pool.allocate(1)
    pool.cache_full_blocks([1, 2, 3, 4], 4, a, [])
    pool.free(a)
    hit = pool.find_cached_prefix([1, 2, 3, 4, 5])
    pool.touch(hit)
    assert pool.blocks[0].ref_count == 1
    assert pool.num_free_blocks == 2
    assert pool.allocate(2) == [1, 2]


def test_duplicate_content_is_registered_once() -> None:
    pool = make_pool()
    a, b = pool.allocate(1), pool.allocate(1)
    pool.cache_full_blocks([5, 6, 7, 8], 4, a, [])
    pool.cache_full_blocks([5, 6, 7, 8], 4, b, [])
    assert pool.blocks[a[0]].block_hash is not None
    assert pool.blocks[b[0]].block_hash is None
    assert pool.find_cached_prefix([5, 6, 7, 8, 9]) == a


def test_disabled_caching_never_hits() -> None:
    pool = BlockPool(4, 4, enable_caching=False)
    ids = pool.allocate(1)
    hashes: list[int] = []
    pool.cache_full_blocks([1, 2, 3, 4], 4, ids, hashes)
    assert hashes == [] and pool.find_cached_prefix([1, 2, 3, 4, 5]) == []
