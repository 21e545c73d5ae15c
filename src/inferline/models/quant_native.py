"""Load-time C kernels (``quant_kernels.c``): GGUF decoding and int4/int8 quantization.

They compute bit for bit what the torch code in `inferline.models.gguf_quants` and
`inferline.models.quant` computes (the tests compare both on the real model files), in one
pass per value instead of ten whole-tensor torch ops: Qwen2.5-0.5B's weights decode and
quantize in well under a second instead of ~10 s. Built on first use with the system
compiler into ``<cache>/kernels`` (keyed by source, compiler and CPU), like
`inferline.models.native`; `enable` is called by the loader. Without a compiler, or with
``INFERLINE_NATIVE_KERNELS=0``, nothing is enabled and the torch code runs (same values,
slower).
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import threading
from functools import cache
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from inferline.models.native.build import compiled, compiler

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("quant_kernels.c")
# -ffp-contract=off: no fused multiply-add, so every value rounds as in numpy and torch;
# -I: native/hadamard.h, the rotation the int8 weights share with the activations
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fPIC", "-shared",
                 f"-I{SOURCE.parent / 'native'}")  # fmt: skip

Q = GGMLQuantizationType
# the formats with C kernels: dq_<name> decodes blocks, fields_<name>_rows splits them
_FORMATS = {
    Q.Q4_0: "q4_0",
    Q.Q4_1: "q4_1",
    Q.Q5_0: "q5_0",
    Q.Q5_1: "q5_1",
    Q.Q8_0: "q8_0",
    Q.Q4_K: "q4_k",
    Q.Q5_K: "q5_k",
    Q.Q6_K: "q6_k",
}
_i64, _i32, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
_SIGNATURES = {
    **{f"dq_{name}": [_ptr, _i64, _ptr, _i32] for name in _FORMATS.values()},
    **{f"fields_{name}_rows": [_ptr, _i64, _ptr, _ptr, _ptr, _i32] for name in _FORMATS.values()},
    "quantize_int4_rows": [_ptr, _i64, _i64, _ptr, _ptr, _ptr, _i32],
    "quantize_int8_rows": [_ptr, _i64, _i64, _ptr, _ptr, _ptr, _i32],
}
_active: QuantKernels | None = None


class QuantKernels:
    """The compiled library, with typed entry points."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self.library = library
        self._local = threading.local()
        for name, argtypes in _SIGNATURES.items():
            function = getattr(library, name)
            function.argtypes, function.restype = argtypes, None

    def can_dequantize(self, qtype: GGMLQuantizationType) -> bool:
        """Whether ``qtype`` has C kernels (`dequantize_into`, `block_fields`)."""
        return qtype in _FORMATS

    def dequantize_into(
        self, raw: np.ndarray, qtype: GGMLQuantizationType, out: torch.Tensor
    ) -> None:
        """Decodes ``raw`` (whole blocks of ``qtype``) into contiguous float32 ``out``."""
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        if not out.is_contiguous() or out.dtype != torch.float32:
            raise ValueError("out must be contiguous float32")
        num_blocks = out.numel() // block_size
        if raw.size != num_blocks * type_size or not raw.flags.c_contiguous:
            raise ValueError(f"{raw.size} bytes do not hold {out.numel()} {qtype.name} values")
        function = getattr(self.library, f"dq_{_FORMATS[qtype]}")
        function(raw.ctypes.data, num_blocks, out.data_ptr(), torch.get_num_threads())

    def block_fields(
        self,
        raw: np.ndarray,
        qtype: GGMLQuantizationType,
        codes: torch.Tensor,
        scale: torch.Tensor,
        offset: torch.Tensor | None,
    ) -> None:
        """Splits ``raw`` (whole blocks of ``qtype``, contiguous) into int8 ``codes`` (one
        per value), float32 ``scale`` and, for the asymmetric formats, ``offset`` (one per
        group), contiguous: the fields of `inferline.models.block_rows.BlockRows`."""
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        num_blocks = codes.numel() // block_size
        if raw.size != num_blocks * type_size or not raw.flags.c_contiguous:
            raise ValueError(f"{raw.size} bytes do not hold {codes.numel()} {qtype.name} values")
        function = getattr(self.library, f"fields_{_FORMATS[qtype]}_rows")
        function(
            raw.ctypes.data, num_blocks, codes.data_ptr(), scale.data_ptr(),
            None if offset is None else offset.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip

    def quantize_int4(
        self, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes ``[out, in]`` int32, scales and zeros ``[out, in / 32]`` float32.

        The codes live in this thread's scratch buffer, valid until its next call: they are
        packed at once, and a fresh 4-bytes-a-value buffer per weight would cost more page
        faults than the quantization itself (Qwen2.5-0.5B: 1.4 GB of them).
        """
        rows, cols = weight.shape
        q = self._scratch(rows * cols).view(rows, cols)
        scale, zero = torch.empty(rows, cols // 32), torch.empty(rows, cols // 32)
        self.library.quantize_int4_rows(
            weight.data_ptr(), rows, cols, q.data_ptr(), scale.data_ptr(), zero.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        return q, scale, zero

    def _scratch(self, num_values: int) -> torch.Tensor:
        buffer = getattr(self._local, "buffer", None)
        if buffer is None or buffer.numel() < num_values:
            buffer = self._local.buffer = torch.empty(num_values, dtype=torch.int32)
        return buffer[:num_values]

    def release_scratch(self) -> None:
        """Frees this thread's scratch buffer (the loader calls it when done)."""
        self._local.buffer = None

    def quantize_int8(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Transposed codes ``[in, out]`` int8 and per-row scales ``[out]`` float32."""
        rows, cols = weight.shape
        w8_t, scale = torch.empty(cols, rows, dtype=torch.int8), torch.empty(rows)
        threads = torch.get_num_threads()
        tile = torch.empty(threads * 64 * cols, dtype=torch.int8)  # rows of 64 per thread
        self.library.quantize_int8_rows(
            weight.data_ptr(), rows, cols, w8_t.data_ptr(), scale.data_ptr(), tile.data_ptr(),
            threads,
        )  # fmt: skip
        return w8_t, scale


def active() -> QuantKernels | None:
    """The kernels `enable` loaded, if any."""
    return _active


def enable(cache_dir: Path) -> QuantKernels | None:
    """Builds (once per source, compiler and CPU) and activates the kernels."""
    global _active
    _active = _load(cache_dir)
    return _active


def disable() -> None:
    """Back to the torch code (tests compare the two)."""
    global _active
    _active = None


@cache
def _load(cache_dir: Path) -> QuantKernels | None:
    if os.environ.get("INFERLINE_NATIVE_KERNELS", "1") == "0":
        return None
    cc = compiler()
    if cc is None or not SOURCE.is_file():
        logger.info("no C compiler or kernel source: load-time quantization runs in torch")
        return None
    try:
        return QuantKernels(compiled((SOURCE,), COMPILE_FLAGS, cache_dir, cc))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        logger.warning("load-time kernels unavailable (%s): quantizing in torch", detail)
        return None
