"""Engine configuration: frozen, composed per concern, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from inferline.core.errors import InvalidParameterError
from inferline.engine.speculative import SpeculativeConfig
from inferline.models.kv_layout import KV_DTYPES

_GIB = 1024**3


GENERATION_CONFIGS = ("auto", "none")


def _require_positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise InvalidParameterError(f"{name} must be positive, got {value}", name)


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache.

    The budget is absolute (``kv_cache_tokens`` or ``kv_cache_gib``), never "all free
    memory": a shared machine keeps its memory. ``kv_cache_tokens`` wins when both are set.
    It is a ceiling, not a reservation: the pool holds no more blocks than the engine's
    sequences could ever fill (`num_blocks`), and the blocks it holds become resident only
    as requests first use them (`engine.block_pool`).
    """

    block_size: int = 16
    kv_cache_gib: float = 0.5
    kv_cache_tokens: int | None = None
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"

    def resolve_dtype(self, weight_format: str, native: bool = False) -> str:
        """``auto``: float32 beside fp32 weights (the reference numerics); beside quantized
        weights int8 where the model runs the native CPU kernels (``native``), else
        bfloat16. Int8 rows are half a bf16 cache's bytes, and decode attention at 32
        streams reads the cache from memory (SmolLM2 at ~450 positions: ~0.55 ms a layer,
        ~17 of a 33 ms layer stack, about this VM's ~21 GB/s): the 32-stream decode step
        37 -> 28 ms; next-token KL to fp32 with int8 rows (keys balanced at load,
        `models.key_balance`) against bf16 rows: SmolLM2 0.0050 / 0.0048, Qwen2.5-Coder-0.5B
        0.0025 / 0.0017 (`benchmarks/accuracy_agreement.py`)."""
        if self.kv_cache_dtype != "auto":
            return self.kv_cache_dtype
        if weight_format == "fp32":
            return "float32"
        return "int8" if native else "bfloat16"

    def __post_init__(self) -> None:
        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128):
            raise InvalidParameterError(
                f"block_size must be a power of two up to 128, got {self.block_size}",
                "block_size",
            )
        _require_positive("kv_cache_gib", self.kv_cache_gib)
        _require_positive("kv_cache_tokens", self.kv_cache_tokens)
        if self.kv_cache_dtype not in ("auto", *KV_DTYPES):
            raise InvalidParameterError(
                "kv_cache_dtype must be auto, float32, bfloat16 or int8, "
                f"got {self.kv_cache_dtype!r}",
                "kv_cache_dtype",
            )

    def num_blocks(
        self, kv_bytes_per_token: int, max_num_seqs: int | None = None, max_model_len: int = 0
    ) -> int:
        """Blocks that fit the budget for a model storing ``kv_bytes_per_token``, and no
        more than ``max_num_seqs`` sequences of ``max_model_len`` tokens can hold at once
        (each a block more: the copied last prompt block of an ``n > 1`` sibling)."""
        if self.kv_cache_tokens is not None:
            tokens = self.kv_cache_tokens
        else:
            tokens = int(self.kv_cache_gib * _GIB) // kv_bytes_per_token
        num_blocks = tokens // self.block_size
        if max_num_seqs is not None:
            per_seq = -(-max_model_len // self.block_size) + 1
            num_blocks = min(num_blocks, max_num_seqs * per_seq)
        if num_blocks < 2:
            raise InvalidParameterError(
                f"the KV cache budget holds only {tokens} tokens; raise it", "kv_cache_gib"
            )
        return num_blocks


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits.

    Attributes:
        max_num_batched_tokens: token budget of one step (decodes + prefill chunks); a
            longer prompt is prefilled in chunks of at most this size. 1024: against 512,
            served SmolLM2 on a 2-core AMX Xeon (two rounds each) gave c0 (16 x 1,088-token
            prompts) 214/221 -> 222/225 tok/s, c 520/533 -> 569/557 with TTFT p99 450 ->
            412-424 ms, b32 803/838 -> 841/851 with TTFT p50 ~265 -> ~310 ms; 2048 moved
            b32's TTFT p50 to 540 ms for c0 +4 %.
        max_num_seqs: the most requests running at once.
        batch_token_share: in a step with interactive work, batch-priority requests hold at
            most this share of the step's tokens; in a step without, they use it all.
        batch_prefill_tokens: prompt tokens batch-priority requests may prefill in one step,
            so a live request arriving mid-step never waits behind a long batch prefill.
        batch_kv_reserve: share of the KV blocks a batch-priority request may not take when
            it is admitted, so live arrivals find blocks without preempting.
    """

    max_num_batched_tokens: int = 1024
    max_num_seqs: int = 64
    batch_token_share: float = 0.25
    batch_prefill_tokens: int = 128
    batch_kv_reserve: float = 0.15

    def __post_init__(self) -> None:
        _require_positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _require_positive("max_num_seqs", self.max_num_seqs)
        _require_positive("batch_prefill_tokens", self.batch_prefill_tokens)
        if not 0.0 <= self.batch_kv_reserve < 1.0:
            raise InvalidParameterError("batch_kv_reserve must be in [0, 1)", "batch_kv_reserve")
        if not 0.0 <= self.batch_token_share <= 1.0:
            raise InvalidParameterError("batch_token_share must be in [0, 1]", "batch_token_share")


@dataclass(frozen=True)
class EngineConfig:
    """Which model to run, where, and with what cache and scheduler limits.

    Attributes:
        model: short name (``smollm2-135m``), ``.gguf`` path or Hugging Face directory.
        cache_dir: where assembled model files are kept.
        max_model_len: cap on the context window (``None`` = the model's own).
        weight_format: ``auto`` (int4 on the CPU, fp32 on CUDA), ``fp32``, ``int8`` (W8A8)
            or ``int4`` (weight-only); see `inferline.models.quant`.
        kernels: ``auto`` (fused C kernels on the CPU where a compiler can build them),
            ``native`` (required) or ``torch`` (plain torch ops); see `inferline.models.native`.
        generation_config: ``auto`` fills the sampling fields a request leaves unset from
            the model's own generation config (vLLM's ``--generation-config auto``);
            ``none`` keeps inferline's defaults (vLLM's ``--generation-config vllm``).
        speculative: n-gram speculative decoding (`inferline.engine.speculative`).
    """

    model: str = "smollm2-135m"
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "inferline")
    device: str = "cpu"
    weight_format: str = "auto"
    kernels: str = "auto"
    max_model_len: int | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    generation_config: str = "auto"
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)

    def __post_init__(self) -> None:
        _require_positive("max_model_len", self.max_model_len)
        if self.generation_config not in GENERATION_CONFIGS:
            raise InvalidParameterError(
                f"generation_config must be auto or none, got {self.generation_config!r}",
                "generation_config",
            )
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise InvalidParameterError(
                f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}", "device"
            )


@dataclass(frozen=True)
class FrontendConfig:
    """The async front end around the engine loop.

    Attributes:
        max_queued_requests: requests that may wait for admission; one more is refused with
            `OverloadedError` (the server answers 503 with Retry-After).
        stall_timeout_s: a step running longer than this means the engine is hung: health
            fails and every waiting request gets an error.
    """

    max_queued_requests: int = 256
    stall_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        _require_positive("max_queued_requests", self.max_queued_requests)
        _require_positive("stall_timeout_s", self.stall_timeout_s)
