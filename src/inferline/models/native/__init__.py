"""Fused CPU kernels in C, compiled on first use with the system compiler, called by ctypes.

The decoder layer's row-wise work (residual add + RMSNorm, bias + RoPE + KV-cache write,
decode attention over the paged cache, SiLU-gate) runs as one call each instead of ~45
eager torch ops per layer; torch keeps the matrix multiplications. The library is built
with ``-O3 -march=native -fopenmp`` into the model cache (keyed by source, compiler and
CPU) in about a second, so nothing is compiled at install time. Without a C compiler, or
with ``INFERLINE_NATIVE_KERNELS=0``, `load_kernels` returns None and the model runs its
plain torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernels.c")
COMPILE_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c11")

_i64, _i32, _f32, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
_SIGNATURES = {
    "add_rms_norm": [_i64, _i32, _ptr, _i32, _ptr, _ptr, _f32, _ptr, _i32],
    "rope_store_kv": [_i64, _i32, _i32, _i32, _ptr, _i32, _ptr, _ptr, _ptr, _ptr, _ptr]
    + [_ptr, _ptr, _ptr],
    "decode_attention": [_i64, _i32, _i32, _i32, _ptr, _ptr, _ptr, _ptr, _i32, _ptr, _ptr]
    + [_i32, _f32, _ptr, _i32],
    "silu_mul": [_i64, _i32, _ptr, _i32, _ptr, _i32],
}


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build(compiler: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / target.name
        subprocess.run(
            [compiler, *COMPILE_FLAGS, "-o", str(partial), str(SOURCE), "-lm"],
            check=True,
            capture_output=True,
            text=True,
        )
        partial.replace(target)  # atomic: concurrent builders never see half a library


def library_path(cache_dir: Path, compiler: str) -> Path:
    """Where the library for this source, compiler and CPU is cached."""
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, check=False
    ).stdout
    key = hashlib.sha256(
        "\n".join([SOURCE.read_text(), compiler, version, " ".join(COMPILE_FLAGS)]).encode()
        + _cpu_signature().encode()
    ).hexdigest()[:16]
    return cache_dir / "kernels" / f"cpu_kernels-{key}.so"


@cache
def load_kernels(cache_dir: Path) -> NativeKernels | None:
    """The compiled kernels, building them if needed; None where they cannot be had."""
    if os.environ.get("INFERLINE_NATIVE_KERNELS", "1") == "0":
        return None
    compiler = _compiler()
    if compiler is None:
        logger.warning("no C compiler found: running the plain torch path (slower)")
        return None
    try:
        path = library_path(cache_dir, compiler)
        if not path.exists():
            _build(compiler, path)
        return NativeKernels(ctypes.CDLL(str(path)))
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        logger.warning("native kernels unavailable (%s): running the torch path", detail)
        return None


def _p(tensor: torch.Tensor | None) -> int | None:
    if tensor is None:
        return None
    if not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError("native kernels need contiguous CPU tensors")
    return tensor.data_ptr()


def _is_bf16(tensor: torch.Tensor) -> int:
    if tensor.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"native kernels take float32 or bfloat16, got {tensor.dtype}")
    return int(tensor.dtype == torch.bfloat16)


class NativeKernels:
    """Typed wrappers over the C functions; each allocates and returns its output."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        for name, argtypes in _SIGNATURES.items():
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = None
        self.lib = lib

    def add_rms_norm(
        self,
        residual: torch.Tensor,  # [T, hidden] float32, updated in place
        delta: torch.Tensor | None,  # [T, hidden] float32 or bf16
        weight: torch.Tensor,
        eps: float,
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        """``residual += delta``; returns ``rms_norm(residual) * weight`` in ``out_dtype``."""
        out = torch.empty(residual.shape, dtype=out_dtype)
        delta_bf16 = 0 if delta is None else _is_bf16(delta)
        rows, hidden = residual.shape
        self.lib.add_rms_norm(
            rows, hidden, _p(delta), delta_bf16, _p(residual), _p(weight), eps, _p(out),
            _is_bf16(out),
        )  # fmt: skip
        return out

    def rope_store_kv(
        self,
        qkv: torch.Tensor,  # [T, (heads + 2 kv_heads) * head_dim]
        bias: torch.Tensor | None,
        shape: tuple[int, int, int],  # heads, kv_heads, head_dim
        positions: torch.Tensor,  # [T] int64
        cos: torch.Tensor,  # [max_positions, head_dim]
        sin: torch.Tensor,
        slots: torch.Tensor,  # [T] int64
        kv_cache: torch.Tensor,  # [2, num_slots, kv_heads, head_dim] float32
    ) -> torch.Tensor:
        """Writes rotated k and v to the cache; returns rotated q ``[T, heads, head_dim]``."""
        heads, kv_heads, head_dim = shape
        rows = qkv.shape[0]
        q = torch.empty(rows, heads, head_dim)
        self.lib.rope_store_kv(
            rows, heads, kv_heads, head_dim, _p(qkv), _is_bf16(qkv), _p(bias), _p(positions),
            _p(cos), _p(sin), _p(slots), _p(kv_cache[0]), _p(kv_cache[1]), _p(q),
        )  # fmt: skip
        return q

    def decode_attention(
        self,
        q: torch.Tensor,  # [T, heads, head_dim] float32
        kv_cache: torch.Tensor,  # [2, num_slots, kv_heads, head_dim] float32
        block_tables: torch.Tensor,  # [S, max_blocks] int32
        context_lens: torch.Tensor,  # [S] int32
        token_rows: torch.Tensor,  # [S] int64: each sequence's row of q and out
        block_size: int,
        out: torch.Tensor,  # [T, heads * head_dim] float32 or bf16, rows filled here
    ) -> None:
        """Attention of one query token per sequence over its paged context."""
        _, heads, head_dim = q.shape
        kv_heads = kv_cache.shape[2]
        self.lib.decode_attention(
            token_rows.shape[0], heads, kv_heads, head_dim, _p(q), _p(kv_cache[0]),
            _p(kv_cache[1]), _p(block_tables), block_tables.shape[1], _p(context_lens),
            _p(token_rows), block_size, head_dim**-0.5, _p(out), _is_bf16(out),
        )  # fmt: skip

    def silu_mul(self, gate_up: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """``[T, 2I]`` -> ``silu(gate) * up`` ``[T, I]`` in ``out_dtype``."""
        rows, width = gate_up.shape
        out = torch.empty(rows, width // 2, dtype=out_dtype)
        self.lib.silu_mul(rows, width // 2, _p(gate_up), _is_bf16(gate_up), _p(out), _is_bf16(out))
        return out
