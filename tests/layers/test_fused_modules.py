"""zoo/layers/_fused_modules.py: the layer-scaled residual takes its one-kernel form only where the drop path
does nothing and no hook would miss it."""

from __future__ import annotations

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from zoo.layers._fused_modules import hooked, scaled_residual


def _inputs():
    generator = torch.Generator().manual_seed(0)
    x, y = (torch.randn(3, 4, 5, 6, generator=generator, dtype=torch.float64) for _ in range(2))
    return x, torch.rand(1, 4, 1, 1, generator=generator, dtype=torch.float64), y


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
    for drop_path in (nn.Identity(), DropPath(0.5).eval()):
        torch.testing.assert_close(scaled_residual(x, gamma, y, drop_path), x + gamma * y, rtol=1e-14, atol=1e-14)
    assert len(addcmul_calls) == 2


def test_scaled_residual_keeps_stochastic_depth_and_hooks(addcmul_calls):
    x, gamma, y = _inputs()
    assert torch.equal(scaled_residual(x, gamma, y, DropPath(1.0).train()), x)  # every sample's branch dropped
    calls = []
    watched = nn.Identity()
    handle = watched.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    try:
        assert hooked(watched) and not hooked(nn.Identity())
        torch.testing.assert_close(scaled_residual(x, gamma, y, watched), x + gamma * y, rtol=1e-14, atol=1e-14)
        assert calls == [y.shape]  # the hook saw the drop path run
    finally:
        handle.remove()
    assert not addcmul_calls  # neither took the one-kernel form
