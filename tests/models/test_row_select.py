"""Each row's k largest values (``native/row_select.c``): the LM head's exact candidates."""

from __future__ import annotations

import pytest
import torch

from inferline.models.block_rows import BlockRows
from inferline.models.native import NativeKernels


def assert_top(kernels: NativeKernels, x: torch.Tensor, k: int) -> None:
    """The chosen indices are k distinct positions holding exactly topk's values."""
    ids = kernels.row_topk(x, k)
    assert ids.shape == (x.shape[0], k) and ids.dtype == torch.int64
    for row in ids:
        assert len(set(row.tolist())) == k
    expected = x.topk(k, dim=-1).values.sort(-1).values
    assert torch.equal(x.gather(1, ids).sort(-1).values, expected)


SIZES = [(n, k) for n in (1, 15, 16, 17, 100, 1000, 49152) for k in (1, 7, 64) if k <= n]


@pytest.mark.parametrize(("n", "k"), SIZES)
def test_row_topk_keeps_each_rows_largest_values(kernels: NativeKernels, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(n * 100 + k)
    assert_top(kernels, torch.randn(3, n, generator=gen), k)
    assert_top(kernels, torch.randint(0, 3, (3, n), generator=gen).float(), k)  # ties
    assert_top(kernels, torch.arange(float(n)).repeat(2, 1), k)  # each value a new best
    assert_top(kernels, torch.arange(float(n), 0, -1).repeat(2, 1), k)


def test_row_topk_fills_in_with_minus_infinity_and_nan_last(kernels: NativeKernels) -> None:
    x = torch.full((2, 40), float("-inf"))
    x[0, 3], x[0, 30], x[1, 7] = 2.0, 1.0, float("nan")
    ids = kernels.row_topk(x, 4)
    assert ids[0, :2].tolist() == [3, 30] or ids[0, :2].tolist() == [30, 3]
    assert len(set(ids[0].tolist())) == 4 and len(set(ids[1].tolist())) == 4
    assert 7 not in ids[1].tolist()  # 39 values of -inf rank above the NaN


def test_row_topk_refuses_what_it_cannot_choose(kernels: NativeKernels) -> None:
    with pytest.raises(ValueError):
        kernels.row_topk(torch.randn(2, 5), 6)
    with pytest.raises(ValueError):
        kernels.row_topk(torch.randn(2, 5, dtype=torch.float64), 2)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000, 49152])
def test_row_argmax_equals_torchs(kernels: NativeKernels, n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    rows = [
        torch.randn(4, n, generator=gen),
        torch.randint(0, 3, (4, n), generator=gen).float(),  # ties: the first index wins
        torch.full((2, n), float("-inf")),
    ]
    nan = torch.randn(3, n, generator=gen)
    nan[0, n // 2] = float("nan")  # torch: the first NaN's index
    nan[1, -1] = float("nan")
    rows.append(nan)
    for x in rows:
        assert torch.equal(kernels.row_argmax(x), x.argmax(-1)), x


def test_row_argmax_refuses_empty_rows(kernels: NativeKernels) -> None:
    with pytest.raises(ValueError):
        kernels.row_argmax(torch.randn(2, 0))


def random_table(gen: torch.Generator, group: int, with_offset: bool) -> BlockRows:
    """A small `BlockRows` table of 50 x 96 values (groups of ``group``)."""
    rows, cols = 50, 96
    return BlockRows(
        torch.randint(-128, 128, (rows, cols), generator=gen, dtype=torch.int8),
        torch.rand(rows, cols // group, generator=gen) / 64,
        torch.randn(rows, cols // group, generator=gen) / 8 if with_offset else None,
        group,
    )


@pytest.mark.parametrize(("group", "with_offset"), [(32, False), (16, True), (6, True)])
def test_rescore_candidates_sets_the_exact_dot_products(
    kernels: NativeKernels, group: int, with_offset: bool
) -> None:
    """Only the candidates' logits change, each to the dot product of its decoded row (or
    float32 row) with the row's x; the other logits are left as they were."""
    gen = torch.Generator().manual_seed(group)
    table = random_table(gen, group, with_offset)
    x = torch.randn(4, 96, generator=gen)
    ids = torch.stack([torch.randperm(50, generator=gen)[:7] for _ in range(4)])
    for source in (table, table.dequantize()):
        logits = torch.full((4, 50), -7.0)
        kernels.rescore_candidates(logits, ids, source, x)
        expected = torch.einsum("mkh,mh->mk", table.rows(ids).double(), x.double())
        torch.testing.assert_close(logits.gather(1, ids).double(), expected, rtol=0, atol=1e-5)
        untouched = torch.ones_like(logits, dtype=torch.bool).scatter_(1, ids, False)
        assert torch.all(logits[untouched] == -7.0)


def test_rescore_candidates_refuses_what_does_not_fit(kernels: NativeKernels) -> None:
    """An id past the table, a row width other than the table's, or logits of another shape
    are refused before the kernel reads anything."""
    table = torch.randn(50, 96)
    logits, x = torch.zeros(2, 50), torch.randn(2, 96)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.rescore_candidates(logits, torch.tensor([[1, 50], [0, 2]]), table, x)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.rescore_candidates(logits, torch.tensor([[1, 3], [0, 2]]), table, x[:, :64])
    with pytest.raises(ValueError, match="logits"):
        kernels.rescore_candidates(torch.zeros(2, 49), torch.tensor([[1], [2]]), table, x)
    kernels.rescore_candidates(logits, torch.tensor([[1], [2]]), table, x)
    assert logits[0, 1] != 0 and logits[1, 2] != 0 and logits[0, 0] == 0
