"""Compiling a C source into a shared library on first use, cached per source, compiler,
flags and CPU (``-march=native`` code is only valid on the CPU it was built for), and
built atomically so concurrent builders never load half a library."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path


def compiler() -> str | None:
    """``$CC``, else ``cc`` or ``gcc`` on the PATH (None: no compiler)."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def library_path(
    sources: tuple[Path, ...], flags: tuple[str, ...], cache_dir: Path, cc: str
) -> Path:
    """Where the library of these sources (and the headers beside them and in the ``-I``
    folders), compiler, flags and CPU is cached (named after the first source)."""
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    folders = {source.parent for source in sources}
    folders |= {Path(flag[2:]) for flag in flags if flag.startswith("-I")}
    headers = sorted({h for folder in folders for h in folder.glob("*.h")})
    texts = [path.read_text() for path in (*sources, *headers)]
    key = hashlib.sha256(
        "\n".join([*texts, cc, version, " ".join(flags), _cpu_flags()]).encode()
    ).hexdigest()[:16]
    return cache_dir / "kernels" / f"{sources[0].stem}-{key}.so"


def compiled(
    sources: tuple[Path, ...], flags: tuple[str, ...], cache_dir: Path, cc: str
) -> ctypes.CDLL:
    """One library of ``sources``, built first if it is not cached (raises `OSError` or
    `subprocess.CalledProcessError` when it cannot be built or loaded)."""
    target = library_path(sources, flags, cache_dir, cc)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            partial = Path(tmp) / target.name
            subprocess.run([cc, *flags, "-o", str(partial), *map(str, sources), "-lm"],
                           check=True, capture_output=True, text=True)  # fmt: skip
            partial.replace(target)
    return ctypes.CDLL(str(target))
