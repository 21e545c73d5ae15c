"""A fast parser for the GGUF header: key/value metadata and the tensor index.

Layout (all little-endian): magic ``GGUF``, version u32, tensor count u64, kv count u64;
then each key (string) with a typed value; then each tensor's name, dims, type and offset;
then tensor data, aligned to ``general.alignment`` (32 by default). Strings are u64 length +
UTF-8 bytes. Tensor data is exposed as a read-only memory map, never read eagerly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inferline.core.errors import ModelLoadError

_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                   10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_NUMPY_TYPES = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
                10: "<u8", 11: "<i8", 12: "<f8"}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor's index entry; ``shape`` is in GGUF order (fastest dimension first)."""

    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # bytes from the start of the data section


@dataclass
class GGUFHeader:
    """Parsed metadata plus a memory map of the data section."""

    fields: dict[str, Any]
    tensors: list[GGUFTensorInfo]
    data: np.ndarray  # uint8 memmap of the data section


class _Cursor:
    def __init__(self, buffer: memoryview) -> None:
        self.buffer, self.pos = buffer, 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buffer, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        text = bytes(self.buffer[self.pos : self.pos + length]).decode("utf-8", errors="replace")
        self.pos += length
        return text

    def value(self, type_id: int) -> Any:
        if type_id == _STRING:
            return self.string()
        if type_id == _ARRAY:
            return self.array()
        if type_id not in _SCALAR_FORMATS:
            raise ModelLoadError(f"unknown GGUF value type {type_id}")
        return self.unpack(_SCALAR_FORMATS[type_id])

    def array(self) -> list[Any]:
        item_type, count = self.unpack("<I"), self.unpack("<Q")
        if item_type in _NUMPY_TYPES:
            dtype = np.dtype(_NUMPY_TYPES[item_type])
            items = np.frombuffer(self.buffer, dtype, count, self.pos)
            self.pos += count * dtype.itemsize
            return items.tolist()
        return [self.value(item_type) for _ in range(count)]


def read_gguf_header(path: Path) -> GGUFHeader:
    """Parses ``path``'s header; raises `ModelLoadError` on anything that is not GGUF v2/v3."""
    try:
        mapped = np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read GGUF file {path}: {exc}") from exc
    cursor = _Cursor(memoryview(mapped))  # type: ignore[arg-type]
    try:
        if bytes(mapped[:4]) != b"GGUF":
            raise ModelLoadError(f"{path} is not a GGUF file (bad magic)")
        cursor.pos = 4
        version = cursor.unpack("<I")
        if version not in (2, 3):
            raise ModelLoadError(f"{path}: GGUF version {version} is not supported")
        num_tensors, num_fields = cursor.unpack("<Q"), cursor.unpack("<Q")
        fields = {}
        for _ in range(num_fields):
            key = cursor.string()
            fields[key] = cursor.value(cursor.unpack("<I"))
        tensors = [_tensor_info(cursor) for _ in range(num_tensors)]
    except (struct.error, ValueError, IndexError) as exc:
        raise ModelLoadError(f"{path}: truncated or corrupt GGUF header ({exc})") from exc
    alignment = int(fields.get("general.alignment", 32))
    data_start = -(-cursor.pos // alignment) * alignment
    return GGUFHeader(fields, tensors, mapped[data_start:])


def _tensor_info(cursor: _Cursor) -> GGUFTensorInfo:
    name = cursor.string()
    num_dims = cursor.unpack("<I")
    shape = tuple(cursor.unpack("<Q") for _ in range(num_dims))
    type_id = cursor.unpack("<I")
    return GGUFTensorInfo(name, shape, type_id, cursor.unpack("<Q"))
