"""Per-architecture facts, one small entry per model family.

The withdrawal engine never branches on the architecture: everything it needs to know about a family
(where the decoder layers are, which token ids are vision tokens, which config describes the text
model) is looked up here. Supporting a new family means adding an entry, not editing the engine.

The package: :mod:`~vtwcli.adapters.mechanism` (the `Adapter` entry and its generic mechanisms),
:mod:`~vtwcli.adapters.entries` (`ADAPTERS`, one entry per family), :mod:`~vtwcli.adapters.uncovered`
(`PLANNED`, `NOT_APPLICABLE`) and the lookups below.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtwcli.adapters.entries import (ADAPTERS, GRANITE4_VISION_DEEPSTACK, IMAGE_AND_VIDEO, QWEN3_VL_DEEPSTACK,
                                     QWEN_VL_COMPONENTS)
from vtwcli.adapters.mechanism import LLAVA_COMPONENTS, VISION_KINDS, Adapter, DeepStack, parse_kinds, validate_kinds
from vtwcli.adapters.uncovered import NOT_APPLICABLE, PLANNED, Uncovered
from vtwcli.errors import UnsupportedError

if TYPE_CHECKING:  # annotations only: `vtw models` must not wait for torch
    from torch import nn

__all__ = ["ADAPTERS", "Adapter", "DERIVED", "DeepStack", "GRANITE4_VISION_DEEPSTACK", "IMAGE_AND_VIDEO", "LLAVA_COMPONENTS",
           "NOT_APPLICABLE", "PLANNED", "QWEN3_VL_DEEPSTACK", "QWEN_VL_COMPONENTS", "Uncovered", "VISION_KINDS",
           "adapter_for", "adapter_for_architecture", "has_entry", "is_listed", "parse_kinds", "supported_architectures",
           "validate_kinds"]


def supported_architectures() -> list[str]:
    return [arch for adapter in ADAPTERS for arch in adapter.architectures]


# Adapters derived at run time for architectures without an entry (`--generic`, vtwcli/generic.py), by class
# name; only ever filled after `vtw verify` passed on the model.
DERIVED: dict[str, Adapter] = {}


def has_entry(architecture: str) -> bool:
    """True where an adapter entry (not a --generic derivation) lists ``architecture``."""
    return any(architecture in adapter.architectures for adapter in ADAPTERS)


def is_listed(architecture: str) -> bool:
    """True where `vtw models` names ``architecture``: an adapter entry, or a planned / not-applicable family."""
    return has_entry(architecture) or any(architecture in entry.architectures for entries in (PLANNED, NOT_APPLICABLE)
                                          for entry in entries.values())


def adapter_for_architecture(architecture: str) -> Adapter:
    for adapter in ADAPTERS:
        if architecture in adapter.architectures:
            return adapter
    if architecture in DERIVED:
        return DERIVED[architecture]
    why = next((f" ({status}: {entry.reason})" for status, entries in (("planned", PLANNED),
                                                                         ("not applicable", NOT_APPLICABLE))
                for entry in entries.values() if architecture in entry.architectures), "")
    raise UnsupportedError(
        f"architecture {architecture} has no vtwcli adapter{why}; supported: {', '.join(supported_architectures())} "
        "(see `vtw models`)"
    )


def adapter_for(model: nn.Module) -> Adapter:
    return adapter_for_architecture(type(model).__name__)
