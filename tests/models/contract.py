"""Helpers for the timm-contract tests of every model family (FX feature extraction, gradient checkpointing)."""

from __future__ import annotations

import torch
from timm.layers import get_notrace_functions, get_notrace_modules


def trace_model(model: torch.nn.Module, train: bool) -> tuple[torch.nn.Module, str]:
    """The model traced by torch.fx (timm's leaf modules and functions kept whole) returning its last node, and
    that node's name, in train or eval mode."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True
    )
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    nodes = train_nodes if train else eval_nodes
    return create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs
    ), nodes[-1]


def outputs_and_grads(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``model(x)`` and the gradients of every parameter for the loss mean(out^2) (gradients zeroed first)."""
    model.zero_grad()
    out = model(x)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]
