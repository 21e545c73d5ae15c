"""The ``models:`` entries that generate text: ``kind: llm`` (a local engine in this
process) and ``kind: openai`` (any OpenAI-compatible server), read into specs.

```yaml
models:
  - name: small
    kind: llm
    source: smollm2-135m          # short name, .gguf file or Hugging Face directory
    weight_format: int8           # optional engine settings (default: serve's flags)
    generation_config: none       # auto: unset sampling fields from the model's own config
    speculative: off              # ngram (default): prompt-lookup speculative decoding
    kv_cache_gib: 0.5
  - name: partner
    kind: openai
    base_url: http://127.0.0.1:9001/v1
    model: served-name            # the name sent upstream (default: this entry's name)
    api_key_env: PARTNER_KEY      # read from the environment; never logged, never returned
    timeouts: {connect_s: 2, first_token_s: 10, idle_s: 5, total_s: 120}
    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}
    can_continue: false           # whether it accepts vLLM's continue_final_message
```
Both kinds also take ``price: {input_per_mtok, output_per_mtok, cached_input_per_mtok}``
(a local one also ``machine_per_hour``: its engine time is charged), ``breaker:
{failures, window_s, cooldown_s}``, ``retry_budget: {ratio, window_s, min_retries}`` and
``max_in_flight``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inferline.cli.config_fields import build, fail, mapping, section, value
from inferline.client import UpstreamConfig, UpstreamTimeouts
from inferline.cluster.deploy import Scale
from inferline.router.config import BreakerConfig, Price, RetryBudget, TargetConfig

ENGINE_FIELDS: dict[str, type] = {
    "weight_format": str,
    "kv_cache_gib": float,
    "kv_cache_dtype": str,
    "max_model_len": int,
    "max_num_seqs": int,
    "max_num_batched_tokens": int,
    "max_queued_requests": int,
    "kernels": str,
    "device": str,
    "generation_config": str,
    "speculative": str,
    "num_speculative_tokens": int,
}
_PRICE_FIELDS: dict[str, type] = {
    "input_per_mtok": float,
    "output_per_mtok": float,
    "cached_input_per_mtok": float,
    "machine_per_hour": float,  # local engines only
}
_TARGET_KEYS = {"name", "kind", "price", "breaker", "retry_budget", "max_in_flight"}
_LLM_KEYS = _TARGET_KEYS | {"source"} | set(ENGINE_FIELDS) | {
    "replicas", "autoscaling", "num_cpus", "threads", "routing"}  # fmt: skip
_OPENAI_KEYS = _TARGET_KEYS | {
    "base_url", "model", "api_key_env", "timeouts", "max_model_len", "can_continue",
    "max_connections", "headers",
}  # fmt: skip


@dataclass(frozen=True)
class LocalModelSpec:
    """A local engine: what to load and with which engine settings (``engine`` holds only
    the keys the entry sets; the serve command's flags fill the rest)."""

    name: str
    source: str
    engine: Mapping[str, Any]
    target: TargetConfig
    scale: Scale = Scale()  # replicas on a Ray cluster (``serve --ray``); one otherwise


@dataclass(frozen=True)
class UpstreamSpec:
    """A remote OpenAI-compatible server (``client.api_key`` read from ``api_key_env``)."""

    name: str
    client: UpstreamConfig
    api_key_env: str | None
    target: TargetConfig


def _target(entry: dict[str, Any], place: str, kind: str, can_continue: bool) -> TargetConfig:
    price = section(entry, "price", place, Price, _PRICE_FIELDS)
    breaker = section(
        entry, "breaker", place, BreakerConfig,
        {"failures": int, "window_s": float, "cooldown_s": float},
    )  # fmt: skip
    budget = section(
        entry, "retry_budget", place, RetryBudget,
        {"ratio": float, "window_s": float, "min_retries": int},
    )  # fmt: skip
    fields = {
        "name": entry["name"],
        "kind": kind,
        "price": price,
        "breaker": breaker,
        "retry_budget": budget,
        "can_continue": can_continue,
        "max_in_flight": value(entry, "max_in_flight", int, place, None),
    }
    return build(TargetConfig, fields, place)


def parse_llm(entry: dict[str, Any], place: str, base_dir: Path) -> LocalModelSpec:
    """A ``kind: llm`` entry."""
    mapping(entry, place, _LLM_KEYS)
    source = value(entry, "source", str, place)
    if source.endswith(".gguf") or "/" in source:
        source = str((base_dir / Path(source).expanduser()).resolve())
    engine: dict[str, Any] = {
        k: value(entry, k, t, place) for k, t in ENGINE_FIELDS.items() if k in entry
    }
    target = _target(entry, place, "llm", True)
    return LocalModelSpec(entry["name"], source, engine, target, _scale(entry, place))


def _scale(entry: dict[str, Any], place: str) -> Scale:
    """``replicas``, ``autoscaling``, ``num_cpus``, ``threads``, ``routing`` of an entry
    (read by ``serve --ray``)."""
    fields: dict[str, Any] = {
        "replicas": value(entry, "replicas", int, place, 1),
        "num_cpus": value(entry, "num_cpus", float, place, 1.0),
        "threads": value(entry, "threads", int, place, None),
    }
    fields["routing"] = value(entry, "routing", str, place, "prefix")
    auto = mapping(entry.get("autoscaling") or {}, f"{place}.autoscaling", set(_AUTOSCALING))
    fields.update({k: value(auto, k, t, f"{place}.autoscaling") for k, t in _AUTOSCALING.items()
                   if k in auto})  # fmt: skip
    if auto and "max_replicas" not in auto:
        raise fail(f"{place}.autoscaling.max_replicas", "is required")
    return build(Scale, fields, place)


_AUTOSCALING: dict[str, type] = {
    "min_replicas": int,
    "max_replicas": int,
    "target_queued_tokens": int,
    "upscale_delay_s": float,
    "downscale_delay_s": float,
}


def parse_openai(entry: dict[str, Any], place: str, environ: Mapping[str, str]) -> UpstreamSpec:
    """A ``kind: openai`` entry; its key is read from the environment variable it names."""
    mapping(entry, place, _OPENAI_KEYS)
    key_env = value(entry, "api_key_env", str, place, None)
    api_key = None
    if key_env is not None:
        api_key = environ.get(key_env)
        if not api_key:
            raise fail(f"{place}.api_key_env", f"the environment variable {key_env} is not set")
    timeouts = section(
        entry, "timeouts", place, UpstreamTimeouts,
        {"connect_s": float, "first_token_s": float, "idle_s": float, "total_s": float},
    )  # fmt: skip
    headers = mapping(entry.get("headers") or {}, f"{place}.headers")
    can_continue = value(entry, "can_continue", bool, place, False)
    client_fields = {
        "name": entry["name"],
        "base_url": value(entry, "base_url", str, place),
        "model": value(entry, "model", str, place, entry["name"]),
        "api_key": api_key,
        "timeouts": timeouts,
        "max_model_len": value(entry, "max_model_len", int, place, None),
        "can_continue": can_continue,
        "max_connections": value(entry, "max_connections", int, place, 100),
        "headers": {str(k): str(v) for k, v in headers.items()},
    }
    client = build(UpstreamConfig, client_fields, place)
    target = _target(entry, place, "openai", can_continue)
    return UpstreamSpec(entry["name"], client, key_env, target)
