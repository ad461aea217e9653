"""The profile's header: ``schema_version``, ``created_at``, ``tool`` and ``environment`` around a ``model`` block."""

from __future__ import annotations

import copy
import datetime as _dt
import platform
import shlex
import sys
from pathlib import Path

from vtwcli.profile.schema import SCHEMA_VERSION

__all__ = ["now_iso", "device_name", "environment_section", "new_profile", "MEASURED_SECTIONS", "extend_profile"]

# The sections `vtw profile` measures: a profile it extends loses its old ones (maybe of another K).
MEASURED_SECTIONS = ("withdrawal", "flops", "latency", "memory")


def now_iso() -> str:
    """Current time, UTC, ISO 8601 with seconds (``2026-11-26T07:00:00+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def device_name(device) -> str:
    """What profiles call ``device``: the CUDA device's name, Apple MPS, else the CPU's model name."""
    import torch

    device = torch.device(device) if not isinstance(device, torch.device) else device
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"Apple MPS ({platform.processor() or platform.machine()})"
    return _cpu_name()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def environment_section(device) -> dict:
    """The profile's ``environment`` block: package versions, platform and the name of ``device``."""
    import torch
    import transformers

    from vtwcli import __version__

    return {
        "vtwcli": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "device_name": device_name(device),
    }


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("vtw", "vtw.exe"):
        return shlex.join(["vtw", *argv[1:]])
    return shlex.join(argv) if argv else "python"


def new_profile(model_section: dict, device, *, command: str | None = None) -> dict:
    """A fresh profile dict holding the header: schema_version, created_at, tool, model, environment.

    Callers add their sections (``calibration``, ``flops``, ...) and pass it to :func:`write_profile`.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": now_iso(),
        "tool": {"name": "vtwcli", "command": command if command is not None else _command_line()},
        "model": dict(model_section),
        "environment": environment_section(device),
    }


def extend_profile(base: dict, device, sections: dict) -> dict:
    """A copy of the profile dict ``base`` with a fresh header (created_at, tool, environment) and
    ``sections`` in place of its measured ones: stale figures of an earlier run never survive."""
    data = copy.deepcopy(base)
    header = new_profile(data["model"], device)
    data.update(created_at=header["created_at"], tool=header["tool"], environment=header["environment"])
    for key in MEASURED_SECTIONS:
        data.pop(key, None)
    data.update(sections)
    return data
