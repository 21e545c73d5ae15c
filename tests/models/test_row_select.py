"""Each row's k largest values (``native/row_select.c``): the LM head's exact candidates."""

from __future__ import annotations

import pytest
import torch

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
