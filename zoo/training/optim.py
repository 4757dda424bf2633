"""Optimiser parameter groups: weight decay rules and per-parameter overrides, then timm's optimisers."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Parameter-name suffixes never weight-decayed, whatever their rank (tokens and embeddings of the zoo's models).
NO_DECAY_SUFFIXES = ("pos_embed", "cls_token", "reg_token", "dist_token")


def _layer_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """Per-parameter lr scale for layer-wise lr decay: ``layer_decay ** (last layer - layer)``, layers from the
    model's ``group_matcher`` (timm's grouping: stem, blocks..., head)."""
    from timm.models import group_parameters
    from timm.optim import auto_group_layers

    if hasattr(model, "group_matcher"):
        layer_map = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    else:
        layer_map = auto_group_layers(model)
    last = max(layer_map.values())
    return {name: layer_decay ** (last - layer) for name, layer in layer_map.items()}


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict[str, Any]]:
    """Split the trainable parameters into optimiser groups.

    Weight decay ``weight_decay`` applies to weight matrices and convolution kernels only. No decay for:
    1-D parameters (biases, norm scales), names in ``model.no_weight_decay()``, position embeddings and tokens.
    Then each parameter's ``_optim`` dict (the state-spaces convention, e.g. ``{"lr": 1e-3, "weight_decay":
    0.0}`` on SSM parameters; the group-rational coefficients carry ``{"weight_decay": 0.0}``) overrides its
    hyper-parameters. With ``layer_decay`` (e.g. 0.75, for fine-tuning), each group also gets an ``lr_scale``
    that timm's schedulers apply: the head learns at the full rate, each layer below at ``layer_decay`` times the
    one above. Parameters with equal hyper-parameters share a group; groups keep the model's order.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    scales = _layer_scales(model, layer_decay) if layer_decay else {}
    groups: dict[tuple, dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim <= 1 or name in skip or name.endswith(NO_DECAY_SUFFIXES)
        hyper = {"weight_decay": 0.0 if no_decay else weight_decay}
        if layer_decay:
            hyper["lr_scale"] = scales.get(name, 1.0)
        hyper.update(getattr(parameter, "_optim", {}))
        key = tuple(sorted(hyper.items()))
        groups.setdefault(key, {"params": [], "param_names": [], **hyper})
        groups[key]["params"].append(parameter)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def create_optimizer(
    model: nn.Module, name: str, lr: float, weight_decay: float, layer_decay: float | None = None, **kwargs: Any
) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2`` over :func:`param_groups` (``name``: adamw, sgd, lamb, ... any timm name)."""
    from timm.optim import create_optimizer_v2

    groups = param_groups(model, weight_decay, layer_decay)
    for group in groups:
        group.pop("param_names")
    if "betas" in kwargs and kwargs["betas"] is not None:
        kwargs["betas"] = tuple(kwargs["betas"])
    return create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=weight_decay, **kwargs)
