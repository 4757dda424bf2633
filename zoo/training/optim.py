"""Optimiser parameter groups: weight decay rules and per-parameter overrides, then timm's optimisers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Parameter-name suffixes never weight-decayed, whatever their rank (tokens and embeddings of the zoo's models).
NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "reg_token", "dist_token")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split the trainable parameters into optimiser groups.

    Weight decay ``weight_decay`` applies to weight matrices and convolution kernels only. No decay for:
    1-D parameters (biases, norm scales), names in ``model.no_weight_decay()``, position embeddings and tokens.
    Then each parameter's ``_optim`` dict (the state-spaces convention, e.g. ``{"lr": 1e-3, "weight_decay":
    0.0}`` on SSM parameters; the group-rational coefficients carry ``{"weight_decay": 0.0}``) overrides its
    hyper-parameters. Parameters with equal hyper-parameters share a group; groups keep the model's order.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple, dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim <= 1 or name in skip or name.endswith(NO_DECAY_SUFFIXES)
        hyper = {"weight_decay": 0.0 if no_decay else weight_decay}
        hyper.update(getattr(parameter, "_optim", {}))
        key = tuple(sorted(hyper.items()))
        groups.setdefault(key, {"params": [], "param_names": [], **hyper})
        groups[key]["params"].append(parameter)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def create_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float, **kwargs: Any) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` over :func:`param_groups` (``name``: adamw, sgd, lamb, ... any timm name)."""
    from timm.optim import create_optimizer_v2

    groups = param_groups(model, weight_decay)
    for group in groups:
        group.pop("param_names")
    if "betas" in kwargs and kwargs["betas"] is not None:
        kwargs["betas"] = tuple(kwargs["betas"])
    return create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=weight_decay, **kwargs)
