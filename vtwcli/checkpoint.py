"""Checkpoints of long runs: each finished batch is appended (and fsynced) to a JSONL file.

The first line is a header with a fingerprint of everything that decides the results (model, data,
options). ``--resume`` reuses the batches of a file whose fingerprint matches; a mismatch is refused
rather than silently mixing two runs. A torn last line (the process died mid-write) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from vtwcli.errors import VtwError


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


class CheckpointStore:
    def __init__(self, path: Path, settings: dict, *, resume: bool, force: bool = False):
        self.path = Path(path)
        self.fingerprint = fingerprint(settings)
        self.entries: dict[str, object] = {}
        if self.path.exists() and not resume and not force:
            raise VtwError(f"an interrupted run left its checkpoint at {self.path}; pass --resume to continue it, "
                           "or --force to start over")
        if resume:
            if not self.path.exists():
                raise VtwError(f"--resume: no checkpoint at {self.path}; run the same command without --resume")
            self._read()
        else:
            self._start()

    def _start(self) -> None:
        directory = self.path.parent
        if not directory.is_dir():
            raise VtwError(f"cannot write checkpoint {self.path}: directory {directory} does not exist")
        try:
            with open(self.path, "w", encoding="utf-8") as stream:
                stream.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as error:
            raise VtwError(f"cannot write checkpoint {self.path}: {error.strerror}; choose a writable --output") from None

    def _read(self) -> None:
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            header = {}
        if header.get("fingerprint") != self.fingerprint:
            raise VtwError(f"checkpoint {self.path} was made by a run with other model, data or options; resume with "
                           "the same command, or pass --force without --resume to start over")
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break  # torn write of the batch that was running when the process died
            self.entries[entry["key"]] = entry["value"]

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str):
        return self.entries.get(key)

    def put(self, key: str, value) -> None:
        self.entries[key] = value
        with open(self.path, "a", encoding="utf-8") as stream:
            stream.write(json.dumps({"key": key, "value": value}) + "\n")
            stream.flush()
            os.fsync(stream.fileno())

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)
