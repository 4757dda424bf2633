"""Helpers of the model-contract suite (tests/models/test_contract.py) and the family tests: FX tracing as timm
does it, outputs and parameter gradients, module calls. (Images, parameter counts and ``randomise`` are in
tests/helpers.py; the ``one_intra_op_thread`` fixture in tests/models/conftest.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import torch
from timm.layers import get_notrace_functions, get_notrace_modules

T = TypeVar("T")


def trace_model(model: torch.nn.Module, train: bool) -> tuple[torch.nn.Module, str]:
    """The model traced by torch.fx (timm's leaf modules and functions kept whole) returning its last node, and
    that node's name, in train or eval mode. The traced module shares the model's parameters."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True
    )
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    nodes = train_nodes if train else eval_nodes
    return create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs
    ), nodes[-1]


def outputs_and_grads(
    forward: Callable[[], torch.Tensor | Sequence[torch.Tensor]],
    parameters: Iterable[torch.nn.Parameter],
    seed: int = 0,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """The outputs of ``forward()`` (one tensor or several) and the gradients of ``parameters`` for the loss
    sum(mean(out^2)) over the outputs. Gradients are zeroed first and torch is seeded with ``seed``, so dropout
    draws the same masks in every call."""
    parameters = list(parameters)
    for p in parameters:
        p.grad = None
    torch.manual_seed(seed)
    outputs = forward()
    outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    sum(out.float().square().mean() for out in outputs).backward()
    return [out.detach() for out in outputs], [None if p.grad is None else p.grad.clone() for p in parameters]


def module_calls(run: Callable[[], T]) -> tuple[int, T]:
    """How many module forward calls ``run()`` makes (a recomputation during backward counts again), and its
    result."""
    calls = 0

    def count(module: torch.nn.Module, args: object, output: object) -> None:
        nonlocal calls
        calls += 1

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        result = run()
    finally:
        handle.remove()
    return calls, result
