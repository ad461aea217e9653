"""Checkpoints of long runs: each finished batch is appended (and fsynced) to a JSONL file.

The first line is a header with a fingerprint of everything that decides the results (model, data,
options). ``--resume`` reuses the batches of a file whose fingerprint matches; a mismatch is refused
rather than silently mixing two runs. Every record carries the fingerprint too and is checked (shape,
keys, and by the caller's ``check`` its length and values) before it is trusted. A torn last line (the
process died mid-write) is ignored.

The file is created with the first finished batch, never through a link or onto a non-regular file, so
a run refused before any work leaves nothing behind; :meth:`CheckpointStore.discard` removes the file a
failed (not interrupted) run made, so it cannot block the corrected command.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Callable

from vtwcli.errors import VtwError

FORMAT = "vtwcli-checkpoint/1"


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_path(output: Path) -> Path:
    """Where the run writing ``output`` keeps its finished batches."""
    return output.with_name(output.name + ".partial.jsonl")


def _start_over(path: Path) -> str:
    return f"delete {path} or pass --force without --resume to start over"


def check_checkpoint(path: Path, *, resume: bool, force: bool) -> bool:
    """Refuse what the run could not use (called before the model loads, and again by the store): a
    checkpoint path that is a link or not a regular file, a leftover without --resume / --force, or
    --resume without one. Returns whether a checkpoint exists."""
    from vtwcli.atomic import check_output_directory, file_kind

    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise VtwError(f"checkpoint {path} is {file_kind(mode)}, not a regular file; vtw never writes through it: "
                       "remove it or choose another --output")
    check_output_directory(path, "checkpoint")
    if mode is not None and not resume and not force:
        raise VtwError(f"an interrupted run left its checkpoint at {path}; pass --resume to continue it, or --force "
                       "to start over")
    if resume and mode is None:
        raise VtwError(f"--resume: no checkpoint at {path}; run the same command without --resume")
    return mode is not None


class CheckpointStore:
    def __init__(self, path: Path, settings: dict, *, resume: bool, force: bool = False):
        self.path = Path(path)
        self.fingerprint = fingerprint(settings)
        self.entries: dict[str, object] = {}
        self.created = False  # this run made the file (so it may remove it again)
        exists = check_checkpoint(self.path, resume=resume, force=force)
        if resume:
            self._read()
        elif exists:  # --force: the old run's batches are dropped now, not mixed with the new ones
            self.path.unlink()

    def _open(self, flags: int) -> int:
        try:
            fd = os.open(self.path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o666)
        except OSError as error:
            raise VtwError(f"cannot open checkpoint {self.path}: {error.strerror or error}; choose a writable "
                           "--output") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else since the check
            os.close(fd)
            raise VtwError(f"checkpoint {self.path} is not a regular file; remove it or choose another --output")
        return fd

    def _read(self) -> None:
        fd = self._open(os.O_RDONLY)
        with os.fdopen(fd, "rb") as stream:
            raw = stream.read()
        try:
            lines = raw.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise VtwError(f"checkpoint {self.path} is corrupt (not UTF-8 text); {_start_over(self.path)}") from None
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or not isinstance(header.get("fingerprint"), str):
            raise VtwError(f"checkpoint {self.path} is corrupt or not a vtwcli checkpoint (bad first line); "
                           f"{_start_over(self.path)}")
        if header["fingerprint"] != self.fingerprint:
            raise VtwError(f"checkpoint {self.path} was made by a run with other model, data or options; resume with "
                           "the same command, or pass --force without --resume to start over")
        for number, line in enumerate(lines[1:], start=2):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    break  # torn write of the batch that was running when the process died
                raise VtwError(f"checkpoint {self.path}:{number}: corrupt record (not JSON); "
                               f"{_start_over(self.path)}") from None
            if (not isinstance(entry, dict) or set(entry) != {"key", "value", "fingerprint"}
                    or not isinstance(entry["key"], str) or entry["fingerprint"] != self.fingerprint):
                raise VtwError(f"checkpoint {self.path}:{number}: the record is not one of this run's batches; "
                               f"{_start_over(self.path)}")
            self.entries[entry["key"]] = entry["value"]

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str, check: Callable[[object], str | None] | None = None):
        """The saved value of ``key``, or None; ``check(value)`` returns what is wrong with it, if anything."""
        value = self.entries.get(key)
        if value is not None and check is not None:
            problem = check(value)
            if problem:
                raise VtwError(f"checkpoint {self.path}: the record {key!r} does not fit this run ({problem}); "
                               f"{_start_over(self.path)}")
        return value

    def put(self, key: str, value) -> None:
        try:
            record = json.dumps({"key": key, "value": value, "fingerprint": self.fingerprint}, allow_nan=False)
        except ValueError:
            raise VtwError(f"batch {key!r} has values that are not finite numbers (NaN or inf); nothing was saved "
                           "for it") from None
        self.entries[key] = value
        lines = record + "\n"
        if not os.path.lexists(self.path):  # the first finished batch creates the file
            lines = json.dumps({"format": FORMAT, "fingerprint": self.fingerprint}) + "\n" + lines
            self.created = True
        fd = self._open(os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            with os.fdopen(fd, "a", encoding="utf-8") as stream:
                stream.write(lines)
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as error:
            raise VtwError(f"cannot write checkpoint {self.path}: {error.strerror or error}; check the disk") from None

    def finish(self) -> None:
        """The run is complete: its checkpoint has served."""
        self.path.unlink(missing_ok=True)

    def discard(self) -> None:
        """The run failed (not interrupted): remove the file it made, so the corrected command starts clean."""
        if self.created:
            self.path.unlink(missing_ok=True)
