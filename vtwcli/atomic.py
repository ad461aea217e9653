"""Atomic file writes: a temp file in the same directory, fsync, rename. Never a half-written file."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from vtwcli.errors import VtwError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def file_kind(mode: int) -> str:
    """'a FIFO (named pipe)', 'a directory', ... for what an os.stat mode says a path is."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a regular file though something is in the way ("is a FIFO (named
    pipe), not a regular file", "is under …/x, which is a file, not a directory"); None when it is a regular
    file (or a link to one) or simply absent. Opening a FIFO blocks and a device never ends."""
    path = Path(path)
    if path.is_file():
        return None
    if path.exists():
        return f"is {file_kind(path.stat().st_mode)}, not a regular file"
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    return None if blocker is None else f"is under {blocker}, which is a file, not a directory"


def check_output_target(path: str | Path, option: str = "--output") -> Path:
    """Refuse an output path that cannot take a new regular file: one that exists as anything but a
    regular file (a symbolic link, even a dangling one, a FIFO, a device: writing would follow or replace
    it), or whose folder is missing or is a file. Called before the work and again when writing."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except NotADirectoryError:
        mode = None  # a parent is a file: said below
    except OSError as error:
        raise VtwError(f"{option} {path}: cannot inspect it ({error.strerror or error}); choose another "
                       f"{option}") from None
    if mode is not None and stat.S_ISLNK(mode):
        raise VtwError(f"{option} {path} is a symbolic link (to {os.readlink(path)}); vtw never writes through a "
                       f"link: pass the real path or remove the link")
    if mode is not None and stat.S_ISDIR(mode):
        raise VtwError(f"{option} {path} is a directory; pass a file name (e.g. {path / 'out.yaml'})")
    if mode is not None and not stat.S_ISREG(mode):
        raise VtwError(f"{option} {path} is {file_kind(mode)}, not a regular file; choose a file name")
    check_output_directory(path, option)
    return path


def check_output_directory(path: Path, option: str) -> None:
    """The folder of ``path`` exists and is a folder; else name the real cause (missing, or a file)."""
    directory = path.parent
    if directory.is_dir():
        return
    blocker = next((p for p in [directory, *directory.parents] if os.path.lexists(p)), None)
    if blocker is not None and not blocker.is_dir():
        raise VtwError(f"{option} {path}: {blocker} is a file, not a directory; choose another {option}")
    raise VtwError(f"{option} {path}: directory {directory} does not exist; create it or choose another {option}")


def atomic_write_bytes(path: str | Path, data: bytes, *, option: str = "--output") -> Path:
    """Write ``data`` to ``path`` so that it appears complete or not at all; ``option`` names the CLI
    option the path came from, for the one-line error. Never through a link or onto a non-regular file."""
    path = check_output_target(path, option)
    directory = path.parent
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
