"""Unwrapping of training checkpoints, shared by every model family's ``checkpoint_filter_fn``."""

from __future__ import annotations

from typing import Any

from torch import Tensor

# Keys under which training scripts store the model's state dict, tried in this order at each level.
CHECKPOINT_CONTAINERS = ("state_dict", "model", "model_ema", "state_dict_ema", "module")


def unwrap_state_dict(state_dict: dict[str, Any], depth: int = 2) -> dict[str, Tensor]:
    """The model's state dict inside a checkpoint: the first of ``CHECKPOINT_CONTAINERS`` found, at up to ``depth``
    levels (e.g. ``{"model": {...}}`` or ``{"state_dict": {"module": {...}}}``), with a ``module.`` prefix
    (DistributedDataParallel) stripped from the keys. A bare state dict comes back as it is (prefix stripped)."""
    for _ in range(depth):
        for key in CHECKPOINT_CONTAINERS:
            if key in state_dict and isinstance(state_dict[key], dict):
                state_dict = state_dict[key]
                break
    return {k.removeprefix("module."): v for k, v in state_dict.items()}
