"""Atomic file writes: a temp file in the same directory, fsync, rename. Never a half-written file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vtwcli.errors import VtwError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes, *, option: str = "--output") -> Path:
    """Write ``data`` to ``path`` so that it appears complete or not at all; ``option`` names the CLI
    option the path came from, for the one-line error."""
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise VtwError(f"cannot write {path}: directory {directory} does not exist; create it or choose another "
                       f"{option}")
    try:
        fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise VtwError(f"cannot write {path}: directory {directory} is not writable ({error.strerror or error}); "
                       f"choose another {option}") from None
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp's 0600 would surprise whoever reads the file next
        os.replace(temp, path)
    except BaseException as error:
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise VtwError(f"cannot write {path}: {error.strerror or error}; check the disk and permissions") from None
        raise
    try:  # make the rename itself durable (best effort; not possible everywhere)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def atomic_write_text(path: str | Path, text: str, *, option: str = "--output") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), option=option)
