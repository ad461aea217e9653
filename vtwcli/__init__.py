"""vtwcli: Visual Tokens Withdrawal (arXiv 2405.05803) for Hugging Face multimodal LLMs.

    from vtwcli import withdraw
    with withdraw(model, layer=K):
        out = model.generate(**inputs)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from vtwcli.errors import CheckFailed, UnsupportedError, VtwError  # noqa: E402

# The public API, imported on first use: `vtw --version`, `vtw check` and `vtw compare` need no torch.
_LAZY = {
    "withdraw": "vtwcli.withdrawal",
    "WithdrawalHandle": "vtwcli.withdrawal",
    "bundled_model_path": "vtwcli.loading",
    "load_profile": "vtwcli.profile",
    "apply_profile": "vtwcli.apply",
}

__all__ = ["__version__", "withdraw", "WithdrawalHandle", "bundled_model_path", "VtwError", "UnsupportedError",
           "CheckFailed", "load_profile", "apply_profile"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vtwcli' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
