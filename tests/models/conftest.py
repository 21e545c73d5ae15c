"""Fixtures shared by the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferline.models import quant_native
from inferline.models.native import NativeKernels, load_kernels


@pytest.fixture(scope="module")
def kernels(cache_dir: Path) -> NativeKernels:
    """The native kernels (a C compiler is part of the test set-up: failing, not skipping)."""
    native = load_kernels(cache_dir)
    if native is None:
        pytest.fail("the native kernels did not build: is a C compiler installed?")
    return native


@pytest.fixture(params=["torch", "native"])
def quant_kernels(request, cache_dir):  # type: ignore[no-untyped-def]
    """Runs a test once on the load-time torch code and once on its C kernels
    (`quant_native`)."""
    if request.param == "native" and quant_native.enable(cache_dir) is None:
        pytest.skip("no C compiler")
    if request.param == "torch":
        quant_native.disable()
    yield request.param
    quant_native.disable()
