"""Fixtures shared by the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferline.models.native import NativeKernels, load_kernels


@pytest.fixture(scope="module")
def kernels(cache_dir: Path) -> NativeKernels:
    """The native kernels (a C compiler is part of the test set-up: failing, not skipping)."""
    native = load_kernels(cache_dir)
    if native is None:
        pytest.fail("the native kernels did not build: is a C compiler installed?")
    return native
