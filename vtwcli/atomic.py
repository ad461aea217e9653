"""Atomic file writes: a temp file in the same directory, fsync, rename. Never a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vtwcli.errors import VtwError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise VtwError(f"cannot write {path}: directory {directory} does not exist; create it or choose another path")
    try:
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise VtwError(f"cannot write {path}: {error.strerror.lower()} in {directory}; choose a writable path") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))
