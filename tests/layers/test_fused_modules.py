"""zoo/layers/_fused_modules.py: the layer-scaled residual takes its one-kernel form where the drop path is an
``nn.Identity`` or timm's ``DropPath`` without hooks, with timm's random numbers, and the modules' form otherwise."""

from __future__ import annotations

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from zoo.layers._fused_modules import hooked, sample_keep_scale, scaled_residual


def _inputs(requires_grad: bool = False):
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randn(3, 4, 5, 6, generator=generator, dtype=torch.float64) for _ in range(2))
    gamma = torch.rand(1, 4, 1, 1, generator=generator, dtype=torch.float64)
    return [t.requires_grad_(requires_grad) for t in (x, gamma, y)]


@pytest.fixture
def addcmul_calls(monkeypatch) -> list[int]:
    """Counts the calls of ``torch.addcmul`` (the one-kernel form)."""
    calls = []
    original = torch.addcmul

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "addcmul", counted)
    return calls


def test_scaled_residual_is_one_addcmul_where_the_drop_path_is_idle(addcmul_calls):
    x, gamma, y = _inputs()
    for drop_path in (nn.Identity(), DropPath(0.5).eval(), DropPath(0.0).train()):
        assert sample_keep_scale(drop_path, 3, torch.float64, x.device) is None
        torch.testing.assert_close(scaled_residual(x, gamma, y, drop_path), x + gamma * y, rtol=1e-14, atol=1e-14)
    assert len(addcmul_calls) == 3


@pytest.mark.parametrize("drop_prob", [0.5, 1.0])
def test_scaled_residual_in_training_draws_timms_samples(drop_prob, addcmul_calls):
    """With the same seed the one-kernel form drops the samples timm's DropPath drops, and gives its values and
    gradients (drop_prob 1: every branch dropped, the residual alone)."""
    drop_path = DropPath(drop_prob).train()
    grads = []
    for fused in (True, False):
        x, gamma, y = _inputs(requires_grad=True)
        torch.manual_seed(7)
        out = scaled_residual(x, gamma, y, drop_path) if fused else x + drop_path(gamma * y)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out))
        grads.append([out.detach(), x.grad, gamma.grad, y.grad])
    for got, want in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    assert len(addcmul_calls) == 1
    if drop_prob == 1.0:
        assert torch.equal(grads[0][0], _inputs()[0])


def test_scaled_residual_runs_a_hooked_or_other_drop_path_as_a_module(addcmul_calls):
    x, gamma, y = _inputs()
    calls = []
    watched = nn.Identity()
    handle = watched.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    try:
        assert hooked(watched) and not hooked(nn.Identity())
        torch.testing.assert_close(scaled_residual(x, gamma, y, watched), x + gamma * y, rtol=1e-14, atol=1e-14)
        assert calls == [y.shape]  # the hook saw the drop path run
    finally:
        handle.remove()

    class Halve(nn.Module):
        def forward(self, t):
            return t / 2

    torch.testing.assert_close(scaled_residual(x, gamma, y, Halve()), x + gamma * y / 2, rtol=1e-14, atol=1e-14)
    assert not addcmul_calls  # neither took the one-kernel form
