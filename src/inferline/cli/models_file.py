"""The one-pass entries of the config file: which micro-batched models a server runs beside
its LLMs, and how each batches (read by `inferline.cli.config_file`).

```yaml
models:
  - name: all-minilm-l6-v2          # the name clients send as `model`
    kind: sentence-embeddings       # sentence-embeddings | onnx | sklearn | torch | noop
    source: all-minilm-l6-v2        # a built-in name, a package, a directory or a file
    batching: {max_batch_size: 32, max_wait_ms: 10}
  - name: risk-classifier
    kind: onnx
    source: example:risk-classifier
```

Every mistake (unknown key, missing field, wrong type) is an error naming its place in the
file, e.g. ``models[1].batching.max_wait_ms``, raised before anything is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inferline.batching import BatcherConfig
from inferline.core.errors import InvalidParameterError

KINDS = ("sentence-embeddings", "onnx", "sklearn", "torch", "noop")
_KEYS = {"name", "kind", "source", "batching", "options"}
_BATCHING_KEYS = {"max_batch_size", "max_wait_ms", "max_queue_rows", "adaptive"}


@dataclass(frozen=True)
class PredictorSpec:
    """One entry of the models file.

    Attributes:
        name: the served name.
        kind: how to load it (see ``KINDS``).
        source: what to load; relative paths are relative to the models file.
        batching: the batcher's settings.
        options: kind-specific settings (``threads``, ``num_features``, ``outputs``,
            ``feature_names``, ``class_names``).
    """

    name: str
    kind: str
    source: str = ""
    batching: BatcherConfig = field(default_factory=BatcherConfig)
    options: dict[str, Any] = field(default_factory=dict)


def parse_predictor(entry: Any, where: str, base_dir: Path) -> PredictorSpec:
    """One entry of a one-pass kind (the ``where`` names its place in the file)."""
    if not isinstance(entry, dict):
        raise InvalidParameterError(f"{where}: expected a mapping", where)
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise InvalidParameterError(f"{where}: unknown key {unknown[0]!r}", f"{where}.{unknown[0]}")
    name = _string(entry, "name", where)
    kind = _string(entry, "kind", where)
    if kind not in KINDS:
        raise InvalidParameterError(
            f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}", f"{where}.kind"
        )
    source = str(entry.get("source", ""))
    if kind not in ("noop", "sentence-embeddings") and not source:
        raise InvalidParameterError(
            f"{where}.source: a {kind} model needs a source", f"{where}.source"
        )
    if source and not source.startswith("example:") and kind != "sentence-embeddings":
        source = str((base_dir / Path(source).expanduser()).resolve())
    options = entry.get("options", {})
    if not isinstance(options, dict):
        raise InvalidParameterError(f"{where}.options: expected a mapping", f"{where}.options")
    return PredictorSpec(name, kind, source, _batching(entry.get("batching", {}), where), options)


def _batching(raw: Any, where: str) -> BatcherConfig:
    place = f"{where}.batching"
    if not isinstance(raw, dict):
        raise InvalidParameterError(f"{place}: expected a mapping", place)
    unknown = sorted(set(raw) - _BATCHING_KEYS)
    if unknown:
        raise InvalidParameterError(f"{place}: unknown key {unknown[0]!r}", f"{place}.{unknown[0]}")
    for key, value in raw.items():
        if key == "adaptive":
            valid = isinstance(value, bool)
        elif key == "max_wait_ms":
            valid = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            valid = isinstance(value, int) and not isinstance(value, bool)
        if not valid:
            raise InvalidParameterError(
                f"{place}.{key}: {value!r} has the wrong type", f"{place}.{key}"
            )
    try:
        return BatcherConfig(**raw)
    except InvalidParameterError as error:
        raise InvalidParameterError(
            f"{place}: {error.message}", f"{place}.{error.param}"
        ) from error


def _string(entry: dict[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidParameterError(
            f"{where}.{key}: a non-empty string is required", f"{where}.{key}"
        )
    return value
