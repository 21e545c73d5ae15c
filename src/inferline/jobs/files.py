"""File contents on disk under the data directory; their records in the job store."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from inferline.core.errors import NotFoundError
from inferline.store.jobs import JobStore


class FileStorage:
    """Writes files atomically (temp file + rename) and registers them in the store."""

    def __init__(self, store: JobStore, directory: Path) -> None:
        self.store = store
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        """Stores an uploaded file; returns its record."""
        file_id = f"file-{uuid.uuid4().hex}"
        return self._register(file_id, filename, purpose, lambda f: f.write(content))

    def add_jsonl(
        self, file_id: str, filename: str, purpose: str, rows: Iterable[dict[str, Any]]
    ) -> dict[str, Any]:
        """Writes ``rows`` as JSON lines under a given id (idempotent: an existing id is kept)."""
        existing = self.store.get_file(file_id)
        if existing is not None:
            return existing

        def write(file: Any) -> None:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")

        return self._register(file_id, filename, purpose, write)

    def _register(self, file_id: str, filename: str, purpose: str, write: Any) -> dict[str, Any]:
        path = self.directory / file_id
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        with partial.open("wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        partial.replace(path)
        row = {
            "id": file_id,
            "filename": filename,
            "purpose": purpose,
            "bytes": path.stat().st_size,
            "created_at": int(time.time()),
            "path": str(path),
        }
        self.store.add_file(row)
        return row

    def get(self, file_id: str) -> dict[str, Any]:
        """The record of a file that exists, else `NotFoundError`."""
        row = self.store.get_file(file_id)
        if row is None or not Path(row["path"]).is_file():
            raise NotFoundError(f"No such file: {file_id!r}", "file_id")
        return row

    def delete(self, file_id: str) -> None:
        """Forgets the file and removes its content."""
        row = self.get(file_id)
        self.store.delete_file(file_id)
        Path(row["path"]).unlink(missing_ok=True)
