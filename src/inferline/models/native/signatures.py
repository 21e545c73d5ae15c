"""The ctypes signatures of the C kernels (`NativeKernels` sets them on the library): each
exported function's argument types, and its result type where it returns one."""

from __future__ import annotations

import ctypes

_i64, _i32, _f32, _ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
_SOURCE_ARGS = [_ptr, _i32, _ptr, _ptr]  # values, kind, row scales, column scales
_SINK_ARGS = [_ptr, _i32, _ptr]  # values, kind, row scales (int8)
SIGNATURES = {
    "add_rms_norm": [_i64, _i32, *_SOURCE_ARGS, _ptr, _ptr, _f32, *_SINK_ARGS],
    "quantize_rows": [_i64, _i32, _ptr, _i32, _ptr, _ptr],
    "rope_store_kv": [_i64, _i32, _i32, _i32, *_SOURCE_ARGS, _ptr, _ptr, _ptr, _ptr, _ptr]
    + [_ptr, _ptr, _i32, _ptr],
    "decode_attention": [_i64, _i32, _i32, _i32, _ptr, _ptr, _ptr, _i32, _ptr, _i32, _ptr]
    + [_ptr, _i32, _f32, _ptr, _i32],
    "silu_mul": [_i64, _i32, *_SOURCE_ARGS, *_SINK_ARGS],
    "prefill_attention": [_i64, _i32, _i32, _i32, _ptr, _ptr, _ptr, _i32, _ptr, _i32, _ptr]
    + [_i32, _f32, _ptr, _i32],
    "prefill_attention_supported": [_i32, _i32, _i32],
    "q4_packed_bytes": [_i64, _i64],
    "q4_pack": [_i64, _i64, _ptr, _ptr],
    "q4_matmul": [_i64, _i64, _i64, _ptr, _i32, _ptr, _ptr],
    "q4_path": [],
    "flush_cache_lines": [_ptr, _i64],
    "i8_padded_columns": [_i64],
    "i8_packed_bytes": [_i64, _i64],
    "i8_pack": [_i64, _i64, _ptr, _ptr, _ptr],
    "i8_matmul": [_i64, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i32],
    "i8_path": [],
    "i8_amx_rows": [_i32],
    "i8_gate_up_silu": [_i64, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr],
    "quantize_rotated_rows": [_i64, _i32, _ptr, _ptr, _ptr, _ptr],
    "prefill_attention_amx": [_i32],
    "prefill_attention_i16": [_i32],
    "decode_attention_i16": [_i32],
    "decode_attention_amx": [_i32],
    "layer_stack": [_ptr, _ptr, _ptr, _ptr],  # models/layer_stack.py
    "row_topk": [_i64, _i64, _i32, _ptr, _ptr],
    "row_argmax": [_i64, _i64, _ptr, _ptr],
    "rescore_candidates": [_i64, _i32, _i64, _i64, _ptr, _ptr, _ptr, _ptr, _i32, _ptr, _ptr, _ptr],
}
RESULT_TYPES = {
    "decode_attention": ctypes.c_int,
    "prefill_attention": ctypes.c_int,
    "prefill_attention_supported": ctypes.c_int,
    "q4_packed_bytes": _i64,
    "q4_path": ctypes.c_char_p,
    "flush_cache_lines": ctypes.c_int,
    "i8_padded_columns": _i64,
    "i8_packed_bytes": _i64,
    "i8_matmul": ctypes.c_int,
    "i8_path": ctypes.c_char_p,
    "i8_amx_rows": ctypes.c_int,
    "i8_gate_up_silu": ctypes.c_int,
    "prefill_attention_amx": ctypes.c_int,
    "prefill_attention_i16": ctypes.c_int,
    "decode_attention_i16": ctypes.c_int,
    "decode_attention_amx": ctypes.c_int,
    "layer_stack": ctypes.c_int,
    "row_topk": ctypes.c_int,
}
