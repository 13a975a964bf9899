"""Shared-prefix (cascade) decode attention, imported as ``ted_sglang.kernels``.

``shared_prefix_decode`` runs Triton kernels on CUDA tensors and elsewhere a fused
CPU path (``cpu.py``, float32) or the torch reference; ``attention_with_lse``,
``ragged_attention_with_lse`` and ``merge_attention_states`` are the torch building
blocks. Submodules load on first
use, so importing this package does not import torch or triton.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "shared_prefix_decode": "decode",
    "plan_shared_prefix_decode": "plan",
    "SharedPrefixDecodePlan": "plan",
    "attention_with_lse": "reference",
    "ragged_attention_with_lse": "reference",
    "merge_attention_states": "reference",
    "shared_prefix_decode_torch": "reference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
