"""Computing what a few modules compute in fewer passes, where no hook would miss a module's call (the results agree
up to rounding; docs/design.md §25)."""

from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import Tensor, nn

__all__ = ["hooked", "sample_keep_scale", "scaled_residual"]


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


def _idle(drop_path: nn.Module) -> bool:
    """Whether an ``nn.Identity`` or timm's ``DropPath`` returns its input as it is (eval mode, probability 0)."""
    return type(drop_path) is nn.Identity or not drop_path.training or drop_path.drop_prob == 0.0


def sample_keep_scale(drop_path: nn.Module, batch: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """The per-sample factor ``[batch]`` by which timm's ``DropPath`` multiplies its input in training (0 for a
    dropped sample, 1 / keep or 1 for a kept one), drawn as it draws it (``bernoulli_`` of a ``dtype`` tensor of
    ``batch`` elements: the same random numbers); None where the drop path does nothing (an ``nn.Identity``, eval
    mode, probability 0). Only for an ``nn.Identity`` or timm's ``DropPath`` itself."""
    if _idle(drop_path):
        return None
    keep = 1.0 - drop_path.drop_prob
    scale = torch.empty(batch, dtype=dtype, device=device).bernoulli_(keep)
    if keep > 0.0 and drop_path.scale_by_keep:
        scale.div_(keep)
    return scale


def scaled_residual(x: Tensor, gamma: Tensor, y: Tensor, drop_path: nn.Module) -> Tensor:
    """``x + drop_path(gamma * y)`` (``gamma`` broadcastable to ``y``) as one ``torch.addcmul`` where the drop path
    is an ``nn.Identity`` or timm's ``DropPath`` without hooks: in training its per-sample factor joins gamma
    (:func:`sample_keep_scale`, an [N, C]-sized product). One kernel that reads x and y and writes the sum, instead
    of the product's, the drop path's and the sum's (three passes over the activations instead of five, seven with
    the drop path, where x, gamma and y share a dtype; a mixed dtype adds a cast either way); backward two passes
    fewer than the modules' (the drop path's). It rounds once where the modules round two or three times."""
    if type(drop_path) not in (nn.Identity, DropPath) or hooked(drop_path):
        return x + drop_path(gamma * y)
    if not _idle(drop_path):
        if isinstance(y, torch.fx.Proxy):  # FX symbolic tracing records the drop path's module
            return x + drop_path(gamma * y)
        scale = sample_keep_scale(drop_path, y.shape[0], torch.promote_types(gamma.dtype, y.dtype), y.device)
        gamma = gamma * scale.view(-1, *([1] * (y.dim() - 1)))
    return torch.addcmul(x, gamma, y)
