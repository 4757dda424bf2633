"""Computing what a few modules compute in fewer passes, where no hook would miss a module's call (the results agree
up to rounding)."""

from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import Tensor, nn

__all__ = ["hooked", "scaled_residual"]


def hooked(*modules: nn.Module) -> bool:
    """Whether a forward or backward hook would see any of ``modules`` run (its own hooks or a global one): a fused
    op that replaces them would skip the hooks, so the caller runs the modules."""
    if (
        nn.modules.module._global_forward_hooks
        or nn.modules.module._global_forward_pre_hooks
        or nn.modules.module._global_backward_hooks
        or nn.modules.module._global_backward_pre_hooks
    ):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks for m in modules)


def scaled_residual(x: Tensor, gamma: Tensor, y: Tensor, drop_path: nn.Module) -> Tensor:
    """``x + drop_path(gamma * y)`` (``gamma`` broadcastable to ``y``). Where the drop path does nothing (an
    ``nn.Identity``, or timm's ``DropPath`` in eval mode, without hooks) one ``torch.addcmul``: one kernel that reads
    x and y and writes the sum, instead of the product's and the sum's (three passes over the activations instead
    of five where x, gamma and y share a dtype; a mixed dtype adds a cast either way). It rounds once where the
    product and the sum round twice."""
    idle = type(drop_path) is nn.Identity or (type(drop_path) is DropPath and not drop_path.training)
    if idle and not hooked(drop_path):
        return torch.addcmul(x, gamma, y)
    return x + drop_path(gamma * y)
